"""A wallet at a glance: its owner, its balances and the first page of its ledger, in one
statement (GraphQL's wallet query selects all three; two round trips cost more than the rows).

The statement is the wallet's own read (`WALLET_BY_ID_SQL`: one row per account, by asset slug;
one row of NULL account columns for a user without accounts; no row for an unknown user) and an
unfiltered ledger page (`history_statement`, unchanged, as a subquery), as one UNION ALL. Every
row says which it is (`part`); both kinds share the asset columns and fill the other kind's with
NULL. One statement is one snapshot: the page and the balances agree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.engine import driver
from wallet.ledger.balances import WalletRecord
from wallet.ledger.common import Balance, asset_in
from wallet.ledger.history import PAGE_COLUMNS, HistoryFilter, PageRows, history_statement, page_of
from wallet.ledger.users import UserRecord

# The wallet's rows: what WALLET_BY_ID_SQL reads, under names that do not clash with a page
# row's (the account's id, the user's created_at), then PAGE_COLUMNS with NULL where a balance
# has none. Sorted by (part, k, id DESC): balances by slug as WALLET_BY_ID_SQL sorts them (the
# same collation), then the page newest first, as history_statement sorts it.
_WALLET_PART: Final = (
    "SELECT 0 AS part, s.slug AS k, u.username, u.created_at AS user_created_at,"
    "       a.id AS account_id, a.balance, a.version, a.held,"
    "       NULL::bigint AS id, NULL::uuid AS transaction_id,"
    "       NULL::ledger_transaction_type AS type, NULL::text AS principal,"
    "       NULL::text AS reference, NULL::text AS metadata, NULL::uuid AS reverses_id,"
    "       s.id AS asset_id, s.slug, s.name, s.decimals,"
    "       NULL::bigint AS amount, NULL::ledger_direction AS direction,"
    "       NULL::bigint AS balance_after, NULL::timestamptz AS created_at,"
    "       NULL::uuid AS counterparty"
    "  FROM users u"
    "  LEFT JOIN accounts a ON a.user_id = u.id AND a.kind = 'USER'"
    "  LEFT JOIN assets s ON s.id = a.asset_id"
    " WHERE u.id = $1"
)
_PAGE_PART: Final = "SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "  # then PAGE_COLUMNS
_ORDER: Final = " ORDER BY part, k, id DESC"
_UNFILTERED: Final = HistoryFilter()


@dataclass(frozen=True, slots=True)
class WalletOverview:
    wallet: WalletRecord
    page: PageRows


def overview_statement(
    user_id: uuid.UUID, *, limit: int, before: int | None
) -> tuple[str, list[object]]:
    """The statement and its arguments: fixed text per page size and cursor presence (the page
    size written in, as `history_statement` explains), so each shape is prepared once."""
    page, args = history_statement(user_id, limit=limit, before=before, filters=_UNFILTERED)
    page_part = _PAGE_PART + PAGE_COLUMNS + " FROM (" + page + ") p"
    statement = "(" + _WALLET_PART + ") UNION ALL (" + page_part + ")" + _ORDER
    return statement, args


async def wallet_overview_on(
    pg: asyncpg.Connection, user_id: uuid.UUID, *, limit: int, before: int | None = None
) -> WalletOverview | None:
    """The user with its balances (by asset slug) and its newest `limit` entries before the
    cursor `before`, or None for an unknown user."""
    statement, args = overview_statement(user_id, limit=limit, before=before)
    rows = await pg.fetch(statement, *args)
    if not rows:
        return None
    head = rows[0]  # part 0 sorts first, and a known user has at least one such row
    user = UserRecord(user_id, head["username"], head["user_created_at"], created=False)
    balances: list[Balance] = []
    wallet_rows = 0
    for r in rows:
        if r["part"]:
            break
        wallet_rows += 1
        if r["account_id"] is not None:
            balances.append(
                Balance(r["account_id"], asset_in(r), r["balance"], r["version"], r["held"])
            )
    page = page_of(rows[wallet_rows:], limit=limit)
    return WalletOverview(WalletRecord(user, balances), page)


async def wallet_overview(
    conn: AsyncConnection, user_id: uuid.UUID, *, limit: int, before: int | None = None
) -> WalletOverview | None:
    """`wallet_overview_on` the asyncpg connection under an engine's connection."""
    async with driver(conn) as pg:
        return await wallet_overview_on(pg, user_id, limit=limit, before=before)
