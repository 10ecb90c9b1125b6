"""Balances: now, at a past instant, and the changes a feed subscriber missed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.errors import UserNotFound
from wallet.ledger.common import Balance, asset_in, asset_of
from wallet.ledger.users import UserRecord, user_exists

# Ids travel as text[], which asyncpg encodes natively: a uuid[] argument costs every new
# connection three round trips of type introspection. One id (a request's usual batch) goes
# by `=`, not ANY: PostgreSQL judges a generic plan of ANY over a parameter array dearer than
# the plan for one element, so it planned every such read again (most of its CPU); for `=`
# it keeps one generic plan per connection.
BALANCES_BY_USER_SQL: Final = (
    "SELECT a.user_id, a.id, a.balance, a.version, a.held,"
    "       s.id AS asset_id, s.slug, s.name, s.decimals"
    "  FROM accounts a JOIN assets s ON s.id = a.asset_id"
    " WHERE a.user_id = ANY($1::text[]::uuid[]) AND a.kind = 'USER'"
    " ORDER BY s.slug"
)
BALANCES_OF_USER_SQL: Final = BALANCES_BY_USER_SQL.replace("= ANY($1::text[]::uuid[])", "= $1")


async def balances_by_user(
    pg: asyncpg.Connection, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Balance]]:
    """Each user's accounts, by asset slug; users without accounts map to []."""
    if len(user_ids) == 1:
        rows = await pg.fetch(BALANCES_OF_USER_SQL, user_ids[0])
    else:
        rows = await pg.fetch(BALANCES_BY_USER_SQL, [str(u) for u in user_ids])
    found: dict[uuid.UUID, list[Balance]] = {user_id: [] for user_id in user_ids}
    for r in rows:
        balance = Balance(r["id"], asset_in(r), r["balance"], r["version"], r["held"])
        found[r["user_id"]].append(balance)
    return found


# A wallet's owner with its balances, in one round trip (GraphQL's wallet reads both): one row
# per account, by asset slug; a user without accounts is one row of NULL account columns.
WALLETS_BY_ID_SQL: Final = (
    "SELECT u.id AS user_id, u.username, u.created_at,"
    "       a.id, a.balance, a.version, a.held, s.id AS asset_id, s.slug, s.name, s.decimals"
    "  FROM users u"
    "  LEFT JOIN accounts a ON a.user_id = u.id AND a.kind = 'USER'"
    "  LEFT JOIN assets s ON s.id = a.asset_id"
    " WHERE u.id = ANY($1::text[]::uuid[])"
    " ORDER BY s.slug"
)
WALLET_BY_ID_SQL: Final = WALLETS_BY_ID_SQL.replace("= ANY($1::text[]::uuid[])", "= $1")


@dataclass(frozen=True, slots=True)
class WalletRecord:
    user: UserRecord
    balances: list[Balance]


async def wallets_by_id(
    pg: asyncpg.Connection, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, WalletRecord]:
    """The users found, each with its accounts by asset slug."""
    found: dict[uuid.UUID, WalletRecord] = {}
    if len(user_ids) == 1:
        rows = await pg.fetch(WALLET_BY_ID_SQL, user_ids[0])
    else:
        rows = await pg.fetch(WALLETS_BY_ID_SQL, [str(u) for u in user_ids])
    for r in rows:
        wallet = found.get(r["user_id"])
        if wallet is None:
            user = UserRecord(r["user_id"], r["username"], r["created_at"], created=False)
            wallet = found[user.id] = WalletRecord(user, [])
        if r["id"] is not None:
            wallet.balances.append(
                Balance(r["id"], asset_in(r), r["balance"], r["version"], r["held"])
            )
    return found


# The hot path's read, on asyncpg: one round trip, the user's existence included (a user
# without accounts is one row of NULLs; an unknown user, no row).
_BALANCES_PG = (
    "SELECT a.id, a.balance, a.version, a.held, s.id AS asset_id, s.slug, s.name, s.decimals"
    "  FROM users u"
    "  LEFT JOIN accounts a ON a.user_id = u.id AND a.kind = 'USER'"
    "  LEFT JOIN assets s ON s.id = a.asset_id"
    " WHERE u.id = $1 ORDER BY s.slug"
)


_BALANCES_SQL = text(_BALANCES_PG.replace("$1", ":user_id"))


async def balances(conn: AsyncConnection, user_id: uuid.UUID) -> list[Balance]:
    """One row per asset the user holds an account for, by asset slug."""
    rows = (await conn.execute(_BALANCES_SQL, {"user_id": user_id})).mappings().all()
    return _balances(rows, user_id)


async def balances_pg(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[Balance]:
    """`balances` on an asyncpg connection (the hot path's): the same statement."""
    return _balances(await conn.fetch(_BALANCES_PG, user_id), user_id)


def _balances(rows: Sequence[Any], user_id: uuid.UUID) -> list[Balance]:
    if not rows:
        raise UserNotFound(f"User {user_id} not found.")
    return [
        Balance(
            r["id"],
            asset_in(r),
            r["balance"],
            r["version"],
            r["held"],
        )
        for r in rows
        if r["id"] is not None
    ]


# An account's entries are in the same order by time and by version (a posting takes its
# timestamp after its locks), so the last entry at or before the instant is the balance then.
# What was held then comes from the holds alive at that instant.
_AT_SQL = text(
    "SELECT a.id, e.balance_after, e.account_version, s.id AS asset_id, s.slug, s.name,"
    "       s.decimals,"
    "       (SELECT coalesce(sum(h.amount), 0) FROM holds h"
    "         WHERE h.account_id = a.id AND h.created_at <= :at"
    "           AND (h.finished_at IS NULL OR h.finished_at > :at)) AS held"
    "  FROM accounts a"
    "  JOIN assets s ON s.id = a.asset_id"
    "  CROSS JOIN LATERAL ("
    "       SELECT x.balance_after, x.account_version FROM entries x"
    "        WHERE x.account_id = a.id AND x.created_at <= :at"
    "        ORDER BY x.created_at DESC, x.account_version DESC LIMIT 1) e"
    " WHERE a.user_id = :user_id AND a.kind = 'USER'"
    " ORDER BY s.slug"
)


async def balances_at(conn: AsyncConnection, user_id: uuid.UUID, at: datetime) -> list[Balance]:
    """Each balance as it stood at `at`; assets with no entry by then are left out."""
    if not await user_exists(conn, user_id):
        raise UserNotFound(f"User {user_id} not found.")
    rows = await conn.execute(_AT_SQL, {"user_id": user_id, "at": at})
    return [Balance(r.id, asset_of(r), r.balance_after, r.account_version, r.held) for r in rows]


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
    return [Balance(r.account_id, asset_of(r), r.balance_after, r.account_version) for r in rows]
