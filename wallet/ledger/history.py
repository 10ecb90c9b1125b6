"""What happened: a user's history (filterable), and transactions with their entries."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg
import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.engine import driver
from wallet.db.models import Account, Asset, Entry, Transaction
from wallet.errors import AssetNotFound, UserNotFound
from wallet.ledger.common import (
    ASSET_COLUMNS,
    AssetInfo,
    Direction,
    asset_in,
    asset_of,
    encode_cursor,
)

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

    @property
    def bounded(self) -> bool:
        """A page costs its own rows whatever the history's length: nothing filters the entries
        an account's walk meets (a type, reference, metadata or time filter may walk a long
        history to fill a page; an asset filter only picks the accounts)."""
        return (
            self.type is None
            and self.reference is None
            and not self.metadata
            and self.since is None
            and self.until is None
        )


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


def _sql_literal(value: str) -> str:
    """`value` as an SQL string literal, whatever standard_conforming_strings says."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _metadata_matches(key: str, text_value: str) -> str:
    """The stored value's text equals `text_value`: as a string, or as the number, boolean or
    null that text spells. Each form is a containment test the GIN index answers.

    The forms are written into the statement as literals rather than bound: a prepared
    statement may run on PostgreSQL's generic plan, which cannot know that a value is rare and
    would walk the user's whole history instead of asking the index. With the value in the
    text, each lookup is planned for its value (tests/test_rest_v2.py shows the plans)."""
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
    tests = (
        f"t.metadata @> {_sql_literal(orjson.dumps({key: form}).decode())}::jsonb" for form in forms
    )
    return "(" + " OR ".join(tests) + ")"


# The page: each of the user's accounts contributes its newest matching entries (a backward
# walk of entries(account_id, id) that stops at the page size), then the newest of those win.
# A user's whole history is never read, however long: the cost is that of the page. Only a
# TRANSFER or a REVERSAL has another user (resolvers.transactions.counterparty): no other
# entry pays for the lookup, about half of a page of postings' reads.
# A page row's columns (`PageRows`), in the statement's order: a statement that reads a page
# along with other rows (ledger.overview) selects them from `history_statement` as a subquery.
PAGE_COLUMNS: Final = (
    "id, transaction_id, type, principal, reference, metadata, reverses_id,"
    " asset_id, slug, name, decimals, amount, direction, balance_after, created_at, counterparty"
)
_PAGE_SELECT: Final = (
    "SELECT e.id, e.transaction_id, e.type, e.principal, e.reference,"
    "       e.metadata::text AS metadata, e.reverses_id,"
    "       s.id AS asset_id, s.slug, s.name, s.decimals,"
    "       e.amount, e.direction, e.balance_after, e.created_at,"
    "       CASE WHEN e.type IN ('TRANSFER', 'REVERSAL') THEN"
    "       (SELECT oa.user_id FROM entries oe JOIN accounts oa ON oa.id = oe.account_id"
    "         WHERE oe.transaction_id = e.transaction_id AND oe.id <> e.id"
    "           AND oa.kind = 'USER' LIMIT 1) END AS counterparty"
    "  FROM accounts a"
    "  JOIN assets s ON s.id = a.asset_id"
    " CROSS JOIN LATERAL ("
    "       SELECT x.id, x.transaction_id, x.amount, x.direction, x.balance_after,"
    "              x.created_at, t.type, t.principal, t.reference, t.metadata, t.reverses_id"
    "         FROM entries x JOIN transactions t ON t.id = x.transaction_id"
    "        WHERE x.account_id = a.id"
)
_PAGE_ORDER: Final = " ORDER BY x.id DESC LIMIT {rows}) e WHERE a.user_id = $1 AND a.kind = 'USER'"
_PAGE_END: Final = " ORDER BY e.id DESC LIMIT {rows}"
# Pages hold 1 to 100 entries; one more row is read to tell whether another page follows.
MAX_PAGE_ROWS: Final = 101
# Why a page is empty: an unknown user, an unknown asset, or nothing that matches.
_KNOWN_SQL: Final = (
    "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS user_found,"
    " $2::text IS NULL OR EXISTS (SELECT 1 FROM assets WHERE slug = $2) AS asset_found"
)


def history_statement(
    user_id: uuid.UUID, *, limit: int, before: int | None, filters: HistoryFilter
) -> tuple[str, list[Any]]:
    """The page's statement and its arguments: fixed text per set of filters used and page size
    (so each shape is prepared once per connection), metadata values written in as literals.

    The page size is written in, not bound: with `LIMIT $n`, PostgreSQL's generic plan cannot
    tell how far each account's walk goes, judges it dearer than a plan made for the values, and
    so plans the statement again at every run (about 0.3 ms of PostgreSQL's CPU a page)."""
    rows = limit + 1
    if not 2 <= rows <= MAX_PAGE_ROWS:
        raise ValueError(f"a page holds 1 to {MAX_PAGE_ROWS - 1} entries, not {limit}")
    args: list[Any] = [user_id]
    inner: list[str] = []
    outer: list[str] = []

    def bound(where: list[str], condition: str, value: Any) -> None:
        args.append(value)
        where.append(condition.replace("?", f"${len(args)}"))

    if before is not None:
        bound(inner, " AND x.id < ?", before)
    if filters.type is not None:
        bound(inner, " AND t.type = ?", filters.type)
    if filters.reference is not None:
        bound(inner, " AND t.reference = ?", filters.reference)
    if filters.metadata:  # the partial GIN index's own predicate, so the planner may use it
        inner.append(" AND t.metadata <> '{}'::jsonb")
        inner.extend(f" AND {_metadata_matches(k, v)}" for k, v in filters.metadata.items())
    if filters.since is not None:
        bound(inner, " AND x.created_at >= ?", filters.since)
    if filters.until is not None:
        bound(inner, " AND x.created_at < ?", filters.until)
    if filters.asset_slug is not None:
        bound(outer, " AND s.slug = ?", filters.asset_slug)
    order, end = _PAGE_ORDER.format(rows=rows), _PAGE_END.format(rows=rows)
    statement = _PAGE_SELECT + "".join(inner) + order + "".join(outer) + end
    return statement, args


async def history(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    limit: int,
    before: int | None = None,
    filters: HistoryFilter | None = None,
) -> HistoryPage:
    """`history_on` the asyncpg connection under an engine's connection (primary or replica)."""
    async with driver(conn) as pg:
        return await history_on(pg, user_id, limit=limit, before=before, filters=filters)


async def history_on(
    pg: asyncpg.Connection,
    user_id: uuid.UUID,
    *,
    limit: int,
    before: int | None = None,
    filters: HistoryFilter | None = None,
) -> HistoryPage:
    """The user's entries, newest first, keyset-paginated on the entry id (`history_rows_on`)."""
    page = await history_rows_on(pg, user_id, limit=limit, before=before, filters=filters)
    return HistoryPage(items=[history_item(r) for r in page.rows], next_cursor=page.next_cursor)


@dataclass(frozen=True, slots=True)
class PageRows:
    """A page as read: rows of PAGE_COLUMNS, newest first, at most the page size, and the next
    page's cursor (None on the last page). GraphQL builds its objects straight from the rows;
    REST reads them as `HistoryItem`s."""

    rows: Sequence[asyncpg.Record]
    next_cursor: str | None


def page_of(rows: Sequence[asyncpg.Record], *, limit: int) -> PageRows:
    """A page of `limit` entries from the rows read for it (one more says another follows)."""
    if len(rows) <= limit:
        return PageRows(rows, None)
    rows = rows[:limit]
    return PageRows(rows, encode_cursor(rows[-1]["id"]))


async def history_rows(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    limit: int,
    before: int | None = None,
    filters: HistoryFilter | None = None,
) -> PageRows:
    """`history_rows_on` the asyncpg connection under an engine's connection."""
    async with driver(conn) as pg:
        return await history_rows_on(pg, user_id, limit=limit, before=before, filters=filters)


async def history_rows_on(
    pg: asyncpg.Connection,
    user_id: uuid.UUID,
    *,
    limit: int,
    before: int | None = None,
    filters: HistoryFilter | None = None,
) -> PageRows:
    """The user's entries, newest first, keyset-paginated on the entry id, as rows.

    A user's entries on one account are written under that account's row lock, so their ids
    increase in commit order; a page boundary never skips or repeats a row a reader could see.
    One round trip when the page has entries (they prove the user and the asset exist); an
    empty page asks once more why (UserNotFound, AssetNotFound, or nothing matched).
    """
    filters = filters or HistoryFilter()
    statement, args = history_statement(user_id, limit=limit, before=before, filters=filters)
    rows = await pg.fetch(statement, *args)
    if not rows:
        known = await pg.fetchrow(_KNOWN_SQL, user_id, filters.asset_slug)
        if known is None or not known["user_found"]:
            raise UserNotFound(f"User {user_id} not found.")
        if not known["asset_found"]:
            raise AssetNotFound(f"Asset {filters.asset_slug!r} not found.")
    return page_of(rows, limit=limit)


def history_item(r: asyncpg.Record) -> HistoryItem:
    """A page row (PAGE_COLUMNS) as REST's history shows it."""
    return HistoryItem(
        entry_id=r["id"],
        transaction_id=r["transaction_id"],
        type=r["type"],
        principal=r["principal"],
        asset=asset_in(r),
        amount=r["amount"],
        direction=r["direction"],
        balance_after=r["balance_after"],
        created_at=r["created_at"],
        reference=r["reference"],
        metadata=orjson.loads(r["metadata"]),
        counterparty_user_id=r["counterparty"],
        reverses_transaction_id=r["reverses_id"],
    )
