"""The ledger: the one place money moves. REST and GraphQL both call these functions.

Design note
-----------
* Double entry. Every transaction is exactly two entries of the same amount and asset: a DEBIT on
  one account and a CREDIT on another. An account's balance is the sum of its CREDIT entries minus
  the sum of its DEBIT entries, so the balances of all accounts of an asset always sum to zero.
  PostgreSQL enforces it: a deferred constraint trigger rejects an unbalanced transaction at commit,
  triggers reject UPDATE, DELETE and TRUNCATE on transactions and entries, and a CHECK rejects a
  negative balance on a user account.
* Users and the Treasury. TOPUP and BONUS debit the asset's Treasury and credit the user; SPEND
  debits the user and credits the Treasury. The Treasury issues the coins, so its balance is
  negative: minus everything in circulation.
* No hot account. The Treasury is N rows ("shards", `accounts.kind = 'TREASURY'`), and each posting
  updates one of them chosen at random, as its last write, without locking it up front. Its balance
  is the sum of its shards, exact at any snapshot; no row is written by every transaction.
* Pessimistic locking. The user's account row is locked `FOR UPDATE` before the balance check, so
  concurrent SPENDs of one wallet queue up and the late ones see the true balance. A posting locks
  one user row and then one Treasury shard, always in that order, so postings cannot deadlock; code
  that must lock several user accounts locks them in ascending id order.
* One round trip. The posting is the SQL function `wallet_transact` (see the first migration): the
  lock is held for one statement, not for a conversation between Python and the database.
* Idempotency. The key row is inserted first, in the same database transaction as the posting,
  with a fingerprint of the request. A concurrent duplicate blocks on that row until the first
  commits and then reads its stored outcome; if the first rolls back, the duplicate runs itself.
  Outcomes the ledger decided (COMPLETED, INSUFFICIENT_FUNDS) are stored and replayed; not-found
  and validation errors roll back, so a corrected retry can run.
* History is a lookup: each entry records its account's balance and version after it.

The functions here take a connection and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import orjson
from sqlalchemy import Row, bindparam, delete, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import Account, Asset, Entry, IdempotencyKey, Transaction, User
from wallet.errors import (
    AssetNotFound,
    IdempotencyKeyReused,
    UserAlreadyExists,
    UserNotFound,
    ValidationError,
)
from wallet.inputs import TxType

Outcome = Literal["COMPLETED", "INSUFFICIENT_FUNDS", "BALANCE_LIMIT_EXCEEDED"]
Direction = Literal["DEBIT", "CREDIT"]

TRANSACT_ROUTE = "POST /api/wallet/transact"
MAX_ENTRY_ID = 2**63 - 1  # entries.id is a bigint

_TRANSACT_SQL = text(
    "SELECT outcome, replayed, fingerprint_matches, transaction_id, balance_before,"
    " balance_after, created_at FROM wallet_transact(:scope, :key, :fingerprint, :user_id,"
    " :asset, :type, :amount, :txn, :principal, :reference, CAST(:metadata AS jsonb))"
).bindparams(bindparam("fingerprint", type_=IdempotencyKey.fingerprint.type))


def fingerprint(
    route: str,
    fields: Mapping[str, Any],
    *,
    reference: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """What identifies a request for idempotency: its route and every field, canonically.

    `reference` and `metadata` count only when given, so a request without them keeps the
    fingerprint it had before they existed (keys stored then still replay)."""
    canonical = dict(fields)
    if reference is not None:
        canonical["reference"] = reference
    if metadata:
        canonical["metadata"] = dict(metadata)
    body = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(route.encode() + b"\n" + body).digest()


@dataclass(frozen=True, slots=True)
class TransactRequest:
    """What a client asks for; its fingerprint identifies it for idempotency."""

    user_id: uuid.UUID
    asset_slug: str
    amount: int
    type: TxType
    reference: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> bytes:
        return fingerprint(
            TRANSACT_ROUTE,
            {
                "amount": self.amount,
                "assetSlug": self.asset_slug,
                "type": self.type,
                "userId": str(self.user_id),
            },
            reference=self.reference,
            metadata=self.metadata,
        )


@dataclass(frozen=True, slots=True)
class TransactOutcome:
    """What the ledger decided; the same whether it just happened or is being replayed."""

    request: TransactRequest
    outcome: Outcome
    replayed: bool
    transaction_id: uuid.UUID | None
    balance_before: int
    balance_after: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AssetInfo:
    id: int
    slug: str
    name: str
    decimals: int


@dataclass(frozen=True, slots=True)
class Balance:
    """A user's account in one asset; `version` counts its entries (it orders balance changes)."""

    account_id: int
    asset: AssetInfo
    amount: int
    version: int


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    id: uuid.UUID
    type: TxType
    asset_id: int
    user_id: uuid.UUID
    amount: int
    principal: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryItem:
    entry_id: int
    transaction_id: uuid.UUID
    type: TxType
    principal: str
    asset: AssetInfo
    amount: int
    direction: Direction
    balance_after: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryItem]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: uuid.UUID
    username: str
    created_at: datetime
    created: bool


def _sqlstate(error: DBAPIError) -> str | None:
    return cast(str | None, getattr(error.orig, "sqlstate", None))


async def transact(
    conn: AsyncConnection, request: TransactRequest, *, key: str, principal: str
) -> TransactOutcome:
    """Post one transaction exactly once per (principal, key); replay the stored outcome after.

    Keys are scoped per principal: two callers cannot collide on, or replay, each other's keys.
    The principal is recorded on the transaction.
    """
    try:
        result = await conn.execute(
            _TRANSACT_SQL,
            {
                "scope": principal,
                "key": key,
                "fingerprint": request.fingerprint(),
                "user_id": request.user_id,
                "asset": request.asset_slug,
                "type": request.type,
                "amount": request.amount,
                "txn": uuid.uuid4(),
                "principal": principal,
                "reference": request.reference,
                "metadata": orjson.dumps(request.metadata).decode(),
            },
        )
    except DBAPIError as error:
        state = _sqlstate(error)
        if state == "W0001":
            raise UserNotFound(f"User {request.user_id} not found.") from None
        if state == "W0002":
            raise AssetNotFound(f"Asset {request.asset_slug!r} not found.") from None
        raise
    row = result.one()
    if not row.fingerprint_matches:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used for a different request.",
            originalTransactionId=str(row.transaction_id) if row.transaction_id else None,
        )
    return TransactOutcome(
        request=request,
        outcome=row.outcome,
        replayed=row.replayed,
        transaction_id=row.transaction_id,
        balance_before=row.balance_before,
        balance_after=row.balance_after,
        created_at=row.created_at,
    )


async def user_exists(conn: AsyncConnection, user_id: uuid.UUID) -> bool:
    found = await conn.scalar(select(User.id).where(User.id == user_id))
    return found is not None


async def users_by_id(
    conn: AsyncConnection, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, UserRecord]:
    rows = await conn.execute(
        select(User.id, User.username, User.created_at).where(User.id.in_(user_ids))
    )
    return {r.id: UserRecord(r.id, r.username, r.created_at, created=False) for r in rows}


def _asset(row: Row[Any, *tuple[Any, ...]]) -> AssetInfo:
    return AssetInfo(row.asset_id, row.slug, row.name, row.decimals)


_ASSET_COLUMNS = (Asset.id.label("asset_id"), Asset.slug, Asset.name, Asset.decimals)


async def assets(conn: AsyncConnection) -> list[AssetInfo]:
    return [_asset(r) for r in await conn.execute(select(*_ASSET_COLUMNS).order_by(Asset.slug))]


async def assets_by_id(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, AssetInfo]:
    rows = await conn.execute(select(*_ASSET_COLUMNS).where(Asset.id.in_(ids)))
    return {r.asset_id: _asset(r) for r in rows}


async def assets_by_slug(conn: AsyncConnection, slugs: Sequence[str]) -> dict[str, AssetInfo]:
    rows = await conn.execute(select(*_ASSET_COLUMNS).where(Asset.slug.in_(slugs)))
    return {r.slug: _asset(r) for r in rows}


async def balances_by_user(
    conn: AsyncConnection, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Balance]]:
    """Each user's accounts, by asset slug; users without accounts map to []."""
    rows = await conn.execute(
        select(Account.user_id, Account.id, Account.balance, Account.version, *_ASSET_COLUMNS)
        .join(Asset, Asset.id == Account.asset_id)
        .where(Account.user_id.in_(user_ids), Account.kind == "USER")
        .order_by(Asset.slug)
    )
    found: dict[uuid.UUID, list[Balance]] = {user_id: [] for user_id in user_ids}
    for r in rows:
        found[r.user_id].append(Balance(r.id, _asset(r), r.balance, r.version))
    return found


async def balances(conn: AsyncConnection, user_id: uuid.UUID) -> list[Balance]:
    """One row per asset the user holds an account for, by asset slug."""
    found = (await balances_by_user(conn, [user_id]))[user_id]
    if not found and not await user_exists(conn, user_id):
        raise UserNotFound(f"User {user_id} not found.")
    return found


async def transactions_by_id(
    conn: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, TransactionRecord]:
    rows = await conn.execute(
        select(
            Transaction.id,
            Transaction.type,
            Transaction.asset_id,
            Transaction.user_id,
            Transaction.amount,
            Transaction.principal,
            Transaction.created_at,
        ).where(Transaction.id.in_(ids))
    )
    return {
        r.id: TransactionRecord(
            r.id, r.type, r.asset_id, r.user_id, r.amount, r.principal, r.created_at
        )
        for r in rows
    }


def encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"e:{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The cursor is opaque to clients; anything we did not issue is a validation error."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        prefix, _, number = raw.partition(":")
        if prefix != "e" or not number.isdigit() or len(number) > 19:
            raise ValueError(raw)
        if int(number) > MAX_ENTRY_ID:
            raise ValueError(raw)
        return int(number)
    except ValueError:
        raise ValidationError(
            "cursor is not a cursor this service issued.", field="cursor"
        ) from None


async def history(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    limit: int,
    before: int | None = None,
    asset_slug: str | None = None,
    tx_type: TxType | None = None,
) -> HistoryPage:
    """The user's entries, newest first, keyset-paginated on the entry id.

    A user's entries on one account are written under that account's row lock, so their ids
    increase in commit order; a page boundary never skips or repeats a row a reader could see.
    """
    if not await user_exists(conn, user_id):
        raise UserNotFound(f"User {user_id} not found.")
    if (
        asset_slug is not None
        and await conn.scalar(select(Asset.id).where(Asset.slug == asset_slug)) is None
    ):
        raise AssetNotFound(f"Asset {asset_slug!r} not found.")
    query = (
        select(
            Entry.id,
            Entry.transaction_id,
            Transaction.type,
            Transaction.principal,
            *_ASSET_COLUMNS,
            Entry.amount,
            Entry.direction,
            Entry.balance_after,
            Entry.created_at,
        )
        .join(Account, Account.id == Entry.account_id)
        .join(Transaction, Transaction.id == Entry.transaction_id)
        .join(Asset, Asset.id == Entry.asset_id)
        .where(Account.user_id == user_id, Account.kind == "USER")
        .order_by(Entry.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(Entry.id < before)
    if asset_slug is not None:
        query = query.where(Asset.slug == asset_slug)
    if tx_type is not None:
        query = query.where(Transaction.type == tx_type)
    rows = (await conn.execute(query)).all()
    items = [
        HistoryItem(
            entry_id=r.id,
            transaction_id=r.transaction_id,
            type=r.type,
            principal=r.principal,
            asset=_asset(r),
            amount=r.amount,
            direction=r.direction,
            balance_after=r.balance_after,
            created_at=r.created_at,
        )
        for r in rows[:limit]
    ]
    next_cursor = encode_cursor(items[-1].entry_id) if len(rows) > limit else None
    return HistoryPage(items=items, next_cursor=next_cursor)


async def create_user(
    conn: AsyncConnection, *, username: str, user_id: uuid.UUID | None = None
) -> UserRecord:
    """Create a user; repeating the same (id, username) returns the existing user."""
    new_id = user_id or uuid.uuid4()
    inserted = (
        await conn.execute(
            text(
                "INSERT INTO users (id, username) VALUES (:id, :username)"
                " ON CONFLICT DO NOTHING RETURNING id, username, created_at"
            ),
            {"id": new_id, "username": username},
        )
    ).one_or_none()
    if inserted is not None:
        return UserRecord(inserted.id, inserted.username, inserted.created_at, created=True)
    if user_id is not None:
        existing = (
            await conn.execute(
                select(User.id, User.username, User.created_at).where(User.id == user_id)
            )
        ).one_or_none()
        if existing is not None and existing.username == username:
            return UserRecord(existing.id, existing.username, existing.created_at, created=False)
        if existing is not None:
            raise UserAlreadyExists(f"User {user_id} already exists with another username.")
    raise UserAlreadyExists(f"Username {username!r} is taken.")


async def ensure_asset(
    conn: AsyncConnection, *, slug: str, name: str, decimals: int = 0, shards: int = 32
) -> int:
    """Create an asset and its Treasury shards if missing; return the asset id."""
    await conn.execute(
        text(
            "INSERT INTO assets (slug, name, decimals, treasury_shards)"
            " VALUES (:slug, :name, :decimals, :shards) ON CONFLICT (slug) DO NOTHING"
        ),
        {"slug": slug, "name": name, "decimals": decimals, "shards": shards},
    )
    asset_id = cast(int, await conn.scalar(select(Asset.id).where(Asset.slug == slug)))
    await conn.execute(
        text(
            "INSERT INTO accounts (asset_id, kind, shard)"
            " SELECT a.id, 'TREASURY', s FROM assets a, generate_series(0, a.treasury_shards - 1) s"
            " WHERE a.id = :asset_id ON CONFLICT DO NOTHING"
        ),
        {"asset_id": asset_id},
    )
    return asset_id


async def purge_idempotency(conn: AsyncConnection, *, older_than: timedelta) -> int:
    """Delete idempotency keys older than the retention; returns how many went."""
    result = await conn.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < func.now() - older_than)
    )
    return result.rowcount


_CHANGES_AFTER_SQL = text(
    "SELECT e.account_id, e.balance_after, e.account_version,"
    "       s.id AS asset_id, s.slug, s.name, s.decimals"
    "  FROM accounts a"
    "  JOIN assets s ON s.id = a.asset_id"
    "  LEFT JOIN unnest(CAST(:accounts AS bigint[]), CAST(:versions AS bigint[]))"
    "       AS seen (account_id, version) ON seen.account_id = a.id"
    "  CROSS JOIN LATERAL ("
    "       SELECT x.id, x.account_id, x.balance_after, x.account_version FROM entries x"
    "        WHERE x.account_id = a.id AND x.account_version > coalesce(seen.version, 0)"
    "        ORDER BY x.account_version LIMIT :limit) e"
    " WHERE a.user_id = :user_id AND a.kind = 'USER'"
    "   AND (CAST(:asset_slug AS text) IS NULL OR s.slug = :asset_slug)"
    " ORDER BY e.id LIMIT :limit"
)


async def balance_changes_after(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    after: dict[int, int],
    asset_slug: str | None = None,
    limit: int = 500,
) -> list[Balance]:
    """The user's balance changes past `after` (account id -> last version seen; other accounts
    from their first), oldest first, at most `limit`: read from the entries, which keep each
    account's balance and version after them, so a feed subscriber that missed notifications is
    sent every change it missed, not only the latest balance.

    Entries of one account are written under its row lock, so their ids follow its versions;
    each account's entries are found through (account_id, account_version), however long its
    history."""
    rows = await conn.execute(
        _CHANGES_AFTER_SQL,
        {
            "user_id": user_id,
            "accounts": list(after),
            "versions": list(after.values()),
            "asset_slug": asset_slug,
            "limit": limit,
        },
    )
    return [Balance(r.account_id, _asset(r), r.balance_after, r.account_version) for r in rows]
