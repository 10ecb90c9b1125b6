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
request acts as the anonymous principal with every scope. Verified keys are cached for
`WALLET_AUTH_CACHE_SECONDS` (1 s); `wallet keys create` and `revoke` wait that long before they
return, so when they do, every server process sees the change.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

import jwt
from sqlalchemy import exists, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from wallet.db.models import ApiKey
from wallet.errors import Forbidden, RateLimited, Unauthenticated, ValidationError, WalletError
from wallet.http import error_response, handle_database_error
from wallet.inputs import TxType
from wallet.settings import Settings

SCOPES: Final = ("read", "transact", "admin")
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz"})
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


async def create_key(conn: AsyncConnection, *, name: str, scopes: Sequence[str]) -> str:
    """Store a new key and return its secret: the only time anyone sees it."""
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name):
        raise ValidationError(
            "name must be 1 to 64 letters, digits, '_', '.' or '-'.", field="name"
        )
    prefix = secrets.token_hex(6)
    secret = f"wk_{prefix}_{secrets.token_urlsafe(32)}"
    taken = await conn.scalar(select(exists().where(ApiKey.name == name)))
    if taken:
        raise ValidationError(f"A key named {name!r} exists already.", field="name")
    await conn.execute(
        insert(ApiKey).values(
            name=name, prefix=prefix, secret_hash=_digest(secret), scopes=parse_scopes(scopes)
        )
    )
    return secret


async def keys_exist(conn: AsyncConnection) -> bool:
    """Any key at all, live or revoked: once one was made, the service is closed."""
    return bool(await conn.scalar(select(exists().select_from(ApiKey))))


async def list_keys(conn: AsyncConnection) -> list[KeyRecord]:
    rows = await conn.execute(
        select(ApiKey.name, ApiKey.scopes, ApiKey.created_at, ApiKey.revoked_at).order_by(
            ApiKey.name
        )
    )
    return [KeyRecord(r.name, list(r.scopes), r.created_at, r.revoked_at) for r in rows]


async def revoke_key(conn: AsyncConnection, name: str) -> bool:
    """Revoke by name; False if no live key has that name."""
    result = await conn.execute(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now().astimezone())
    )
    return bool(result.rowcount)


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


class Authenticator:
    """Turns an Authorization header into a Principal (cached briefly, see the module note)."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.jwt = _JWTVerifier(settings) if settings.jwt_configured else None
        self._keys: dict[bytes, tuple[Principal, float]] = {}
        self._keys_exist: tuple[bool, float] = (False, 0.0)

    async def required(self) -> bool:
        """Is any credential configured? Once true it stays true (keys are revoked, not deleted)."""
        if self.jwt is not None:
            return True
        known, checked = self._keys_exist
        if known or time.monotonic() - checked < self.settings.auth_cache_seconds:
            return known
        async with self.engine.connect() as conn:
            found = await keys_exist(conn)
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
        if cached and time.monotonic() - cached[1] < self.settings.auth_cache_seconds:
            return cached[0]
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ApiKey.name, ApiKey.secret_hash, ApiKey.scopes, ApiKey.revoked_at).where(
                        ApiKey.prefix == prefix
                    )
                )
            ).one_or_none()
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            raise Unauthenticated("The credentials are not valid.")
        if row.revoked_at is not None:
            self._keys.pop(digest, None)
            raise Unauthenticated("This key has been revoked.")
        principal = Principal("key", row.name, frozenset(row.scopes))
        if len(self._keys) > 10_000:  # bounded: a flood of distinct keys cannot grow it
            self._keys.clear()
        self._keys[digest] = (principal, time.monotonic())
        return principal


class RateLimiter:
    """A token bucket per principal, per process: `rate` requests a second, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, int(rate)))
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, who: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            wait = max(1, int((1 - tokens) / self.rate + 0.999))
            self._buckets[who] = (tokens, now)
            raise RateLimited(f"Too many requests; retry in {wait} s.", retryAfter=wait)
        self._buckets[who] = (tokens - 1, now)


class AuthMiddleware:
    """Authenticate every request but the health checks; the routes decide what is allowed.

    A WebSocket without an Authorization header may authenticate in its `connection_init`
    payload instead (browsers cannot set headers on WebSockets); GraphQL checks that.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        resources = state["resources"]
        header = dict(scope["headers"]).get(b"authorization")
        try:
            if scope["type"] == "websocket" and header is None:
                principal = None if await resources.auth.required() else ANONYMOUS
            else:
                principal = await resources.auth.authenticate(
                    header.decode("latin-1") if header else None
                )
                resources.rate_limiter.check(principal.name)
        except WalletError as error:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4401, "reason": error.message})
                return
            headers = {"WWW-Authenticate": 'Bearer realm="wallet"'} if error.status == 401 else {}
            if error.status == 429:
                headers["Retry-After"] = str(error.details["retryAfter"])
            await error_response(error, headers=headers)(scope, receive, send)
            return
        except (DBAPIError, PoolTimeout, OSError) as trouble:
            # Out here, the app's exception handlers never see it: answer as they would, so a
            # database restart or a full pool is a 503 with Retry-After, not a 500.
            if scope["type"] != "http":
                raise
            response = await handle_database_error(Request(scope, receive), trouble)
            await response(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)
