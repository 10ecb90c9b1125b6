"""The ledger's side of the fault suite: the workload's wallets, seeded through real postings,
and everything the judge reads about them, in one REPEATABLE READ snapshot."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.ops import Batch, Op
from chaos.workload import Wallets
from wallet import ledger
from wallet.audit import AuditReport, audit

SEED_PRINCIPAL = "chaos-seed"  # the idempotency scope of the seed grants
Balances = dict[tuple[uuid.UUID, str], int]

# The transactions that touch the workload's wallets (by an entry, or by their user column),
# each with its user wallets' legs. Joins on aggregates, not a subquery per row, for the keys:
# idempotency_keys has no index on transaction_id.
_TRANSACTIONS = text(
    """
    WITH mine AS (
        SELECT e.transaction_id AS id
          FROM entries e JOIN accounts acc ON acc.id = e.account_id
         WHERE acc.kind = 'USER' AND acc.user_id = ANY(:users)
        UNION SELECT t.id FROM transactions t WHERE t.user_id = ANY(:users)
    ), k AS (
        SELECT transaction_id, array_agg(key ORDER BY key) AS keys, bool_or(scope = :seed) AS seed
          FROM idempotency_keys WHERE transaction_id IN (SELECT id FROM mine)
         GROUP BY transaction_id
    )
    SELECT t.id, t.type, t.user_id, t.amount, a.slug, t.principal, t.reverses_id, t.hold_id,
           k.keys, coalesce(k.seed, false) AS seed,
           (SELECT coalesce(jsonb_agg(jsonb_build_array(acc.user_id, e.direction,
                                                        e.balance_after)), '[]')
              FROM entries e JOIN accounts acc ON acc.id = e.account_id AND acc.kind = 'USER'
             WHERE e.transaction_id = t.id) AS legs
      FROM transactions t
      JOIN mine m ON m.id = t.id
      JOIN assets a ON a.id = t.asset_id
      LEFT JOIN k ON k.transaction_id = t.id
    """
)
_KEYS = text(
    "SELECT key, outcome, transaction_id, result FROM idempotency_keys"
    " WHERE key = ANY(:keys) AND scope <> :seed"
)
_ACCOUNTS = text(
    "SELECT acc.user_id, a.slug, acc.balance, acc.held FROM accounts acc"
    " JOIN assets a ON a.id = acc.asset_id"
    " WHERE acc.kind = 'USER' AND acc.user_id = ANY(:users)"
)
_HOLDS = text(
    "SELECT h.id, h.user_id, a.slug, h.amount, h.status, h.captured_amount, h.transaction_id,"
    " h.expires_at, h.finished_at FROM holds h JOIN assets a ON a.id = h.asset_id"
    " WHERE h.user_id = ANY(:users)"
)


async def seed_wallets(
    engine: AsyncEngine, rng: random.Random, *, hot: int, cold: int
) -> tuple[Wallets, Balances]:
    """Create the workload's users with starting balances (through real postings) and return
    them with the balances the ledger then holds."""
    hot_users = [uuid.uuid4() for _ in range(hot)]
    cold_users = [uuid.uuid4() for _ in range(cold)]
    grants: list[tuple[uuid.UUID, str, int]] = []
    for user in hot_users:
        grants += [(user, "gold_coins", 1_000_000), (user, "diamonds", 100_000)]
    for user in cold_users:
        grants.append((user, "gold_coins", rng.randint(0, 300)))
        if rng.random() < 0.5:
            grants.append((user, "diamonds", rng.randint(0, 50)))
    async with engine.begin() as conn:
        for user in [*hot_users, *cold_users]:
            await ledger.create_user(conn, user_id=user, username=f"chaos-{user.hex[:16]}")
        for user, slug, amount in grants:
            if amount:
                await ledger.transact(
                    conn,
                    ledger.TransactRequest(user, slug, amount, "TOPUP"),
                    key=f"{user}:{slug}",
                    principal=SEED_PRINCIPAL,
                )
    wallets = Wallets(hot=hot_users, cold=cold_users)
    return wallets, await balances(engine, wallets.all)


async def balances(engine: AsyncEngine, users: Sequence[uuid.UUID]) -> Balances:
    async with engine.connect() as conn:
        rows = await conn.execute(_ACCOUNTS, {"users": list(users)})
        return {(r.user_id, r.slug): r.balance for r in rows}


async def quiesce(engine: AsyncEngine, *, timeout_s: float = 30.0) -> bool:
    """Wait until no service connection is left on the database (a SIGKILLed server's backends
    finish their statement first); True when none is."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        async with engine.connect() as conn:
            left = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'wallet'"
                )
            )
        if not left:
            return True
        await asyncio.sleep(0.1)
    return False


async def database_now(engine: AsyncEngine) -> datetime:
    """The database's clock (holds expire by it)."""
    async with engine.connect() as conn:
        now: datetime = await conn.scalar(text("SELECT clock_timestamp()"))
        return now


@dataclass(frozen=True, slots=True)
class Txn:
    id: uuid.UUID
    type: str
    user_id: uuid.UUID
    amount: int
    slug: str
    principal: str
    reverses_id: uuid.UUID | None
    hold_id: uuid.UUID | None
    keys: tuple[str, ...]
    seed: bool
    legs: dict[uuid.UUID, tuple[str, int]]  # each user wallet's direction and balance after


@dataclass(frozen=True, slots=True)
class KeyRow:
    outcome: str | None
    transaction_id: uuid.UUID | None
    result: Any


@dataclass(frozen=True, slots=True)
class HoldRow:
    id: uuid.UUID
    user_id: uuid.UUID
    slug: str
    amount: int
    status: str
    captured_amount: int
    transaction_id: uuid.UUID | None
    expires_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The ledger's side, read at one instant."""

    txns: dict[uuid.UUID, Txn]
    keys: dict[str, KeyRow]
    accounts: dict[tuple[uuid.UUID, str], tuple[int, int]]  # balance, held
    holds: dict[uuid.UUID, HoldRow]
    audit: AuditReport


def _all_keys(ops: Iterable[Op]) -> list[str]:
    found = []
    for op in ops:
        found.append(op.key)
        if isinstance(op.request, Batch):
            found += [i.key for i in op.request.items if i.key is not None]
    return found


async def snapshot(engine: AsyncEngine, ops: Sequence[Op], users: Sequence[uuid.UUID]) -> Snapshot:
    params = {"users": list(users), "seed": SEED_PRINCIPAL}
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            txns = {
                r.id: Txn(
                    r.id,
                    r.type,
                    r.user_id,
                    r.amount,
                    r.slug,
                    r.principal,
                    r.reverses_id,
                    r.hold_id,
                    tuple(r.keys or ()),
                    r.seed,
                    {uuid.UUID(u): (d, int(b)) for u, d, b in r.legs},
                )
                for r in await conn.execute(_TRANSACTIONS, params)
            }
            keys = {
                r.key: KeyRow(r.outcome, r.transaction_id, r.result)
                for r in await conn.execute(_KEYS, {"keys": _all_keys(ops), "seed": SEED_PRINCIPAL})
            }
            accounts = {
                (r.user_id, r.slug): (r.balance, r.held)
                for r in await conn.execute(_ACCOUNTS, params)
            }
            holds = {r.id: HoldRow(*r) for r in await conn.execute(_HOLDS, params)}
            report = await audit(conn)
    return Snapshot(txns, keys, accounts, holds, report)
