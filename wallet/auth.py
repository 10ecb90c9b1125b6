"""Who is calling, and what they may do.

Two kinds of callers:
* Back ends hold service API keys (`wk_<prefix>_<secret>`), created with `wallet keys create`.
  Only a SHA-256 of the secret is stored (the secret is 256 random bits, so a fast hash is the
  right tool); the lookup is by prefix and the comparison is constant-time. Scopes: `read`,
  `transact`, `admin`.
* Frontends act for one user with a JWT whose `sub` is the user id: they may read that wallet
  (balances, history, subscription) and nothing else; never TOPUP or BONUS; SPEND from their own
  wallet only when `WALLET_USER_CAN_SPEND=true`.

With no key in the database and no JWT setting, the service is open (local development): every
request acts as the anonymous principal with every scope, and only loopback Host names are served
(wallet.gateway's BrowserGuard), so a web page cannot reach it through DNS rebinding. The gateway
asks the Authenticator who is calling, on every request but the health checks.

Key changes are pushed, not waited out: creating or revoking a key calls `pg_notify('wallet_auth')`
in the same transaction, and every server process holds a listening connection (Authenticator,
opened in the app's lifespan) that drops its cache when the notice arrives. A process trusts its
cache (for at most `WALLET_AUTH_CACHE_SECONDS`) only while that connection is up; without it, it
asks the database on every request. The process that made the change forgets at once and waits to
hear its own notice before answering, so by then every listening process has been sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg
import jwt
import structlog
from sqlalchemy import Row, exists, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from wallet.db.engine import async_url, with_connection
from wallet.db.models import ApiKey
from wallet.errors import (
    Forbidden,
    RateLimited,
    Unauthenticated,
    ValidationError,
)
from wallet.inputs import TxType
from wallet.settings import Settings

log = structlog.get_logger("wallet.auth")

SCOPES: Final = ("read", "transact", "admin", "metrics")  # ck_api_keys_scopes agrees
AUTH_CHANNEL: Final = "wallet_auth"
LISTENER_NAME: Final = "wallet-auth-listener"  # application_name of the listening connections
_KEY = re.compile(r"wk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["anonymous", "key", "user"]
    name: str  # recorded on every transaction it makes; scopes its idempotency keys
    scopes: frozenset[str] = frozenset()
    user_id: uuid.UUID | None = None

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    def may_read_wallet(self, user_id: uuid.UUID) -> bool:
        return self.can("read") or self.user_id == user_id

    def may_transact(self, user_id: uuid.UUID, tx_type: TxType, *, user_can_spend: bool) -> bool:
        if self.can("transact"):
            return True
        return self.user_id == user_id and tx_type == "SPEND" and user_can_spend

    def may_transfer(self, from_user_id: uuid.UUID, *, user_can_transfer: bool) -> bool:
        """A key needs `transact`; an end-user token may move coins out of its own wallet only,
        and only when WALLET_USER_CAN_TRANSFER allows it."""
        if self.can("transact"):
            return True
        return user_can_transfer and self.user_id is not None and self.user_id == from_user_id

    def may_read_transaction(self, user_ids: Iterable[uuid.UUID | None]) -> bool:
        """`user_ids`: the users of a transaction's entries (None for system accounts). `read`
        reads any; an end-user token one with an entry on its own wallet."""
        return self.can("read") or (self.user_id is not None and self.user_id in set(user_ids))

    def shown_principal(self, recorded: str) -> str:
        """Who made a transaction, as this caller may see it: an end user sees its own
        `user:<id>` and `service` for anyone else (key names describe our back ends)."""
        if self.kind != "user" or recorded == self.name:
            return recorded
        return "service"

    # The checks both surfaces make: they raise the same FORBIDDEN with the same words.
    def require(self, scope: str) -> None:
        if not self.can(scope):
            raise Forbidden(f"These credentials lack the {scope!r} scope.")

    def require_wallet_reader(self, user_id: uuid.UUID) -> None:
        if not self.may_read_wallet(user_id):
            raise Forbidden("These credentials may not read this wallet.")

    def require_transact(
        self, user_id: uuid.UUID, tx_type: TxType, *, user_can_spend: bool
    ) -> None:
        if not self.may_transact(user_id, tx_type, user_can_spend=user_can_spend):
            raise Forbidden(f"These credentials may not {tx_type} on this wallet.")

    def require_transfer(self, from_user_id: uuid.UUID, *, user_can_transfer: bool) -> None:
        if not self.may_transfer(from_user_id, user_can_transfer=user_can_transfer):
            raise Forbidden("These credentials may not TRANSFER from this wallet.")

    def require_reverse(self) -> None:
        """Only a key with `transact` reverses: an end-user token never does."""
        self.require("transact")

    def require_transaction_reader(self, user_ids: Iterable[uuid.UUID | None] | None) -> None:
        """`None`: no such transaction. A caller that may not read every transaction gets the
        same FORBIDDEN for an unknown id as for another's, so it cannot probe which ids exist
        (whoever may read it is told TRANSACTION_NOT_FOUND by the caller of this check)."""
        if not self.may_read_transaction(user_ids or ()):
            raise Forbidden("These credentials may not read this transaction.")

    def may_hold(self) -> bool:
        """Holds are a back end's tool: a key (or open mode) with `transact`, never an end-user
        token, whatever it may do with its own wallet."""
        return self.kind != "user" and self.can("transact")

    def may_read_holds(self) -> bool:
        return self.kind != "user" and self.can("read")

    def require_hold(self) -> None:
        """Place, capture or void a hold."""
        if not self.may_hold():
            raise Forbidden("These credentials may not place, capture or void holds.")

    def require_hold_reader(self) -> None:
        if not self.may_read_holds():
            raise Forbidden("These credentials may not read holds.")


ANONYMOUS: Final = Principal("anonymous", "", frozenset(SCOPES))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def parse_scopes(raw: str | Sequence[str]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = {s.strip() for s in items if s.strip()}
    if not scopes or not scopes <= set(SCOPES):
        raise ValidationError(f"scopes must be some of {', '.join(SCOPES)}.", field="scopes")
    return [s for s in SCOPES if s in scopes]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_key_name(value: object, *, field: str = "name") -> str:
    """A key's name; anything else can name no key, so it never reaches the database."""
    if not isinstance(value, str) or not _KEY_NAME.fullmatch(value):
        raise ValidationError(
            f"{field} must be 1 to 64 letters, digits, '_', '.' or '-'.", field=field
        )
    return value


async def announce_key_change(conn: AsyncConnection, *, name: str, notice: str = "") -> None:
    """Tell every server process, when this transaction commits, to forget cached verdicts."""
    payload = json.dumps({"key": name, "notice": notice})
    await conn.execute(select(func.pg_notify(AUTH_CHANNEL, payload)))


async def create_key(
    conn: AsyncConnection, *, name: str, scopes: Sequence[str], notice: str = ""
) -> str:
    """Store a new key and return its secret: the only time anyone sees it."""
    name = parse_key_name(name)
    prefix = secrets.token_hex(6)
    secret = f"wk_{prefix}_{secrets.token_urlsafe(32)}"
    taken = ValidationError(f"A key named {name!r} exists already.", field="name")
    if await conn.scalar(select(exists().where(ApiKey.name == name))):
        raise taken
    try:
        await conn.execute(
            insert(ApiKey).values(
                name=name, prefix=prefix, secret_hash=_digest(secret), scopes=parse_scopes(scopes)
            )
        )
    except IntegrityError as error:  # a concurrent create of the same name committed first
        driver_error = error.orig.__cause__ if error.orig is not None else None  # asyncpg's
        if getattr(driver_error, "constraint_name", None) == "uq_api_keys_name":
            raise taken from None
        raise
    await announce_key_change(conn, name=name, notice=notice)  # open mode ends everywhere
    return secret


async def keys_exist(conn: AsyncConnection) -> bool:
    """Any key at all, live or revoked: once one was made, the service is closed."""
    return bool(await conn.scalar(select(exists().select_from(ApiKey))))


async def _key_by_prefix(
    conn: AsyncConnection, prefix: str
) -> Row[str, bytes, list[str], datetime | None] | None:
    statement = select(ApiKey.name, ApiKey.secret_hash, ApiKey.scopes, ApiKey.revoked_at)
    return (await conn.execute(statement.where(ApiKey.prefix == prefix))).one_or_none()


async def list_keys(conn: AsyncConnection) -> list[KeyRecord]:
    rows = await conn.execute(
        select(ApiKey.name, ApiKey.scopes, ApiKey.created_at, ApiKey.revoked_at).order_by(
            ApiKey.name
        )
    )
    return [KeyRecord(r.name, list(r.scopes), r.created_at, r.revoked_at) for r in rows]


async def revoke_key(conn: AsyncConnection, name: str, *, notice: str = "") -> bool:
    """Revoke by name, announced to every server process; False if no live key has that name."""
    result = await conn.execute(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now().astimezone())
    )
    if not result.rowcount:
        return False
    await announce_key_change(conn, name=name, notice=notice)
    return True


@dataclass
class _JWTVerifier:
    settings: Settings
    keys: dict[str | None, Any] = field(default_factory=dict)
    algorithms: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.settings.jwt_secret is not None:
            self.keys[None] = self.settings.jwt_secret.get_secret_value()
            self.algorithms = ["HS256"]
        elif self.settings.jwt_public_key_file is not None:
            text = self.settings.jwt_public_key_file.read_text()
            self.algorithms = ["RS256", "ES256"]
            if text.lstrip().startswith("{"):  # a JWKS document
                for key in jwt.PyJWKSet.from_dict(json.loads(text)).keys:
                    self.keys[key.key_id] = key.key
            else:  # one PEM public key
                self.keys[None] = text

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(header.get("kid")) or self.keys.get(None)
            if key is None:
                raise jwt.InvalidTokenError("unknown key id")
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.settings.jwt_audience is not None,
                },
            )
            user_id = uuid.UUID(str(claims["sub"]))
        except (jwt.InvalidTokenError, ValueError, TypeError) as error:
            raise Unauthenticated(f"The token is not valid ({type(error).__name__}).") from None
        return Principal("user", f"user:{user_id}", frozenset(), user_id)


def _listener_dsn(database_url: str) -> str:
    """The service's database URL in the form asyncpg itself accepts."""
    url = make_url(async_url(database_url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Authenticator:
    """Turns an Authorization header into a Principal (cached briefly, see the module note)."""

    def __init__(
        self, settings: Settings, engine: AsyncEngine, *, listen_url: str | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.jwt = _JWTVerifier(settings) if settings.jwt_configured else None
        self._keys: dict[bytes, tuple[Principal, float]] = {}
        self._keys_exist: tuple[bool, float] = (False, 0.0)
        self._dsn = _listener_dsn(listen_url) if listen_url else None
        self._listening = asyncio.Event()  # the cache is trusted only while this is set
        self._generation = 0  # bumped by every forget(): a read that spans one is not cached
        self._notices: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def until_listening(self) -> None:
        """Return once the listening connection is up (bound it with a timeout)."""
        await self._listening.wait()

    def start(self) -> None:
        """Open the listening connection in the background (the app's lifespan calls this)."""
        if self._dsn is not None and self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="auth-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def forget(self) -> None:
        """Drop every cached verdict; reads already under way will not cache theirs."""
        self._generation += 1
        self._keys.clear()
        known, _ = self._keys_exist
        self._keys_exist = (known, 0.0)  # "a key exists" stays true: keys are never deleted

    @contextlib.asynccontextmanager
    async def key_change(self) -> AsyncIterator[str]:
        """Around a key change that announces the notice yielded: on success, forget at once
        and wait (a second at most) to hear the notice, so every listener has been sent it."""
        notice = secrets.token_hex(8)
        heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._notices[notice] = heard
        try:
            try:
                yield notice
            finally:
                self.forget()
            if self.listening:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heard, timeout=1.0)
        finally:
            del self._notices[notice]

    def _fresh(self, checked: float) -> bool:
        return self.listening and time.monotonic() - checked < self.settings.auth_cache_seconds

    async def required(self) -> bool:
        """Is any credential configured? Once true it stays true (keys are revoked, not deleted)."""
        if self.jwt is not None:
            return True
        known, checked = self._keys_exist
        if known or self._fresh(checked):
            return known
        generation = self._generation
        found = await with_connection(self.engine, keys_exist, begin=False, retry=True)
        if found or generation == self._generation:
            self._keys_exist = (found, time.monotonic())
        return found

    async def authenticate(self, authorization: str | None) -> Principal:
        if not await self.required():
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated("Credentials are required: Authorization: Bearer <key or token>.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("Use Authorization: Bearer <key or token>.")
        match = _KEY.fullmatch(token)
        if match:
            return await self._verify_key(match.group(1), token)
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.verify(token)
        raise Unauthenticated("The credentials are not valid.")

    async def _verify_key(self, prefix: str, secret: str) -> Principal:
        digest = _digest(secret)
        cached = self._keys.get(digest)
        if cached and self._fresh(cached[1]):
            return cached[0]
        generation = self._generation
        row = await with_connection(
            self.engine, lambda conn: _key_by_prefix(conn, prefix), begin=False, retry=True
        )
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            raise Unauthenticated("The credentials are not valid.")
        if row.revoked_at is not None:
            self._keys.pop(digest, None)
            raise Unauthenticated("This key has been revoked.")
        principal = Principal("key", row.name, frozenset(row.scopes))
        if self.listening and generation == self._generation:
            if len(self._keys) > 10_000:  # bounded: a flood of distinct keys cannot grow it
                self._keys.clear()
            self._keys[digest] = (principal, time.monotonic())
        return principal

    def _on_notice(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.forget()
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            heard = self._notices.get(json.loads(payload).get("notice", ""))
            if heard is not None and not heard.done():
                heard.set_result(None)

    async def _listen_forever(self) -> None:
        assert self._dsn is not None
        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=5, server_settings={"application_name": LISTENER_NAME}
                )
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.warning("auth_listener_connect_failed", error=str(error)[:300])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(AUTH_CHANNEL, self._on_notice)
                self.forget()  # what was cached while nobody listened may be stale
                self._listening.set()
                delay = 0.1
                await self._until_lost(conn, lost)
                log.warning("auth_listener_lost")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                log.warning("auth_listener_failed", error=str(error)[:300])
            finally:
                self._listening.clear()
                self.forget()
                if not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)

    @staticmethod
    async def _until_lost(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection ends; a ping every few seconds finds a silent peer."""
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), timeout=5)
            except TimeoutError:
                try:
                    await conn.execute("SELECT 1", timeout=5)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    return


class RateLimiter:
    """A token bucket per principal, per process: `rate` requests a second, `burst` at once.

    Bounded memory, however many principals (end users) it sees: a bucket idle long enough to
    be full again is the same as no bucket, so it is dropped; past `max_buckets`, the least
    recently used go first (they are the fullest). Buckets are kept in order of last use.
    """

    def __init__(self, rate: float, burst: int, *, max_buckets: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, int(rate)))
        self.max_buckets = max_buckets
        self._refill_s = self.burst / rate if rate > 0 else 0.0  # from empty to full
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, who: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.pop(who, (self.burst, now))
        self._drop_idle(now)
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            wait = max(1, int((1 - tokens) / self.rate + 0.999))
            self._buckets[who] = (tokens, now)
            raise RateLimited(f"Too many requests; retry in {wait} s.", retryAfter=wait)
        self._buckets[who] = (tokens - 1, now)

    def _drop_idle(self, now: float) -> None:
        """Drop, oldest first, the buckets that are full again, then any beyond the cap."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets))
            if now - buckets[oldest][1] < self._refill_s and len(buckets) < self.max_buckets:
                return
            del buckets[oldest]
