"""What happened: a user's history (filterable), and transactions with their entries."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import Select, and_, cast, literal, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from wallet.db.models import Account, Asset, Entry, Transaction
from wallet.errors import AssetNotFound, UserNotFound
from wallet.ledger.common import ASSET_COLUMNS, AssetInfo, Direction, asset_of, encode_cursor
from wallet.ledger.users import user_exists

TransactionType = Literal["TOPUP", "SPEND", "BONUS", "TRANSFER", "REVERSAL"]
AccountKind = Literal["USER", "TREASURY"]


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    id: uuid.UUID
    type: TransactionType
    asset_id: int
    user_id: uuid.UUID
    amount: int
    principal: str
    created_at: datetime
    reference: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    reverses_id: uuid.UUID | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EntryRecord:
    transaction_id: uuid.UUID
    user_id: uuid.UUID | None  # None for the Treasury
    account_kind: AccountKind
    direction: Direction
    amount: int
    balance_after: int


@dataclass(frozen=True, slots=True)
class TransactionView:
    """A transaction with everything its REST view shows."""

    record: TransactionRecord
    asset: AssetInfo
    entries: list[EntryRecord]
    reversed_amount: int


@dataclass(frozen=True, slots=True)
class HistoryItem:
    entry_id: int
    transaction_id: uuid.UUID
    type: TransactionType
    principal: str
    asset: AssetInfo
    amount: int
    direction: Direction
    balance_after: int
    created_at: datetime
    reference: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    counterparty_user_id: uuid.UUID | None = None
    reverses_transaction_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryItem]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """History filters, ANDed; `metadata` values match a stored value's text."""

    asset_slug: str | None = None
    type: TransactionType | None = None
    reference: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None  # createdAt >= since
    until: datetime | None = None  # createdAt < until


_RECORD_COLUMNS = (
    Transaction.id,
    Transaction.type,
    Transaction.asset_id,
    Transaction.user_id,
    Transaction.amount,
    Transaction.principal,
    Transaction.created_at,
    Transaction.reference,
    Transaction.metadata_,
    Transaction.reverses_id,
    Transaction.reason,
)


def _record(r: Any) -> TransactionRecord:
    return TransactionRecord(
        r.id,
        r.type,
        r.asset_id,
        r.user_id,
        r.amount,
        r.principal,
        r.created_at,
        r.reference,
        r.metadata,
        r.reverses_id,
        r.reason,
    )


async def transactions_by_id(
    conn: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, TransactionRecord]:
    rows = await conn.execute(select(*_RECORD_COLUMNS).where(Transaction.id.in_(ids)))
    return {r.id: _record(r) for r in rows}


async def reversals_by_original(
    conn: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[TransactionRecord]]:
    """The reversals of each transaction, oldest first."""
    rows = await conn.execute(
        select(*_RECORD_COLUMNS)
        .where(Transaction.reverses_id.in_(ids))
        .order_by(Transaction.created_at, Transaction.id)
    )
    found: dict[uuid.UUID, list[TransactionRecord]] = defaultdict(list)
    for r in rows:
        found[r.reverses_id].append(_record(r))
    return found


async def entries_by_transaction(
    conn: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[EntryRecord]]:
    rows = await conn.execute(
        select(
            Entry.transaction_id,
            Account.user_id,
            Account.kind,
            Entry.direction,
            Entry.amount,
            Entry.balance_after,
        )
        .join(Account, Account.id == Entry.account_id)
        .where(Entry.transaction_id.in_(ids))
        .order_by(Entry.id)
    )
    found: dict[uuid.UUID, list[EntryRecord]] = defaultdict(list)
    for r in rows:
        found[r.transaction_id].append(
            EntryRecord(r.transaction_id, r.user_id, r.kind, r.direction, r.amount, r.balance_after)
        )
    return found


async def transaction_view(
    conn: AsyncConnection, transaction_id: uuid.UUID
) -> TransactionView | None:
    record = (await transactions_by_id(conn, [transaction_id])).get(transaction_id)
    if record is None:
        return None
    asset = (await conn.execute(select(*ASSET_COLUMNS).where(Asset.id == record.asset_id))).one()
    entries = (await entries_by_transaction(conn, [transaction_id]))[transaction_id]
    reversals = (await reversals_by_original(conn, [transaction_id])).get(transaction_id, [])
    return TransactionView(
        record=record,
        asset=asset_of(asset),
        entries=entries,
        reversed_amount=sum(r.amount for r in reversals),
    )


def _metadata_matches(key: str, text_value: str) -> Any:
    """The stored value's text equals `text_value`: as a string, or as the number, boolean or
    null that text spells. Each form is a containment test the GIN index answers.

    The forms are rendered into the statement (escaped by SQLAlchemy) rather than bound: a
    prepared statement may run on PostgreSQL's generic plan, which cannot know that a value is
    rare and would walk the user's whole history instead of asking the index. With the value
    in the text, each lookup is planned for its value (tests/test_rest_v2.py shows the plans)."""
    forms: list[object] = [text_value]
    if text_value in ("true", "false"):
        forms.append(text_value == "true")
    elif text_value == "null":
        forms.append(None)
    else:
        try:
            number = int(text_value)
        except ValueError:
            pass
        else:
            if str(number) == text_value and abs(number) <= 2**53 - 1:
                forms.append(number)
    return or_(
        *(
            Transaction.metadata_.op("@>")(
                cast(literal(orjson.dumps({key: form}).decode(), literal_execute=True), JSONB)
            )
            for form in forms
        )
    )


def _filtered(query: Select[Any], filters: HistoryFilter) -> Select[Any]:
    conditions = []
    if filters.asset_slug is not None:
        conditions.append(Asset.slug == filters.asset_slug)
    if filters.type is not None:
        conditions.append(Transaction.type == filters.type)
    if filters.reference is not None:
        conditions.append(Transaction.reference == filters.reference)
    if filters.metadata:  # the partial GIN index's own predicate, so the planner may use it
        conditions.append(Transaction.metadata_ != cast(literal("{}", literal_execute=True), JSONB))
    conditions.extend(_metadata_matches(k, v) for k, v in filters.metadata.items())
    if filters.since is not None:
        conditions.append(Entry.created_at >= filters.since)
    if filters.until is not None:
        conditions.append(Entry.created_at < filters.until)
    return query.where(and_(*conditions)) if conditions else query


async def history(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    limit: int,
    before: int | None = None,
    filters: HistoryFilter | None = None,
) -> HistoryPage:
    """The user's entries, newest first, keyset-paginated on the entry id.

    A user's entries on one account are written under that account's row lock, so their ids
    increase in commit order; a page boundary never skips or repeats a row a reader could see.
    """
    filters = filters or HistoryFilter()
    if not await user_exists(conn, user_id):
        raise UserNotFound(f"User {user_id} not found.")
    if (
        filters.asset_slug is not None
        and await conn.scalar(select(Asset.id).where(Asset.slug == filters.asset_slug)) is None
    ):
        raise AssetNotFound(f"Asset {filters.asset_slug!r} not found.")
    other_entry = aliased(Entry)
    other_account = aliased(Account)
    counterparty = (
        select(other_account.user_id)
        .join(other_entry, other_entry.account_id == other_account.id)
        .where(
            other_entry.transaction_id == Entry.transaction_id,
            other_entry.id != Entry.id,
            other_account.kind == "USER",
        )
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(
            Entry.id,
            Entry.transaction_id,
            Transaction.type,
            Transaction.principal,
            Transaction.reference,
            Transaction.metadata_.label("metadata"),
            Transaction.reverses_id,
            *ASSET_COLUMNS,
            Entry.amount,
            Entry.direction,
            Entry.balance_after,
            Entry.created_at,
            counterparty.label("counterparty"),
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
    rows = (await conn.execute(_filtered(query, filters))).all()
    items = [
        HistoryItem(
            entry_id=r.id,
            transaction_id=r.transaction_id,
            type=r.type,
            principal=r.principal,
            asset=asset_of(r),
            amount=r.amount,
            direction=r.direction,
            balance_after=r.balance_after,
            created_at=r.created_at,
            reference=r.reference,
            metadata=r.metadata,
            counterparty_user_id=r.counterparty,
            reverses_transaction_id=r.reverses_id,
        )
        for r in rows[:limit]
    ]
    next_cursor = encode_cursor(items[-1].entry_id) if len(rows) > limit else None
    return HistoryPage(items=items, next_cursor=next_cursor)
