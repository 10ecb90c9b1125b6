"""The database as the judge: the harness's record of definite answers against the ledger.

After a scenario, with the service stopped:
* every acknowledged op's key names exactly the transaction the client was told about, and that
  transaction exists once, for the user, asset, type and amount asked, with the balance the
  client was told (else it is *lost* or *mismatched*);
* every transaction of the workload's users is either a seed or the one transaction of exactly one
  acknowledged op (else it is *duplicated*, or the commit of an op that never got an answer);
* every refused op (INSUFFICIENT_FUNDS) moved nothing: its key records the refusal, no transaction;
* for every wallet and asset: balance = seed + acknowledged credits - acknowledged debits;
* `wallet audit` passes.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.workload import Op, Wallets
from wallet import ledger
from wallet.audit import AuditReport, audit

SEED_PRINCIPAL = "chaos-seed"  # the idempotency scope of the seed grants
Balances = dict[tuple[uuid.UUID, str], int]

# The workload's transactions, each with its user-side balance and the keys that name it. Joins
# on aggregates, not a subquery per row: idempotency_keys has no index on transaction_id.
_TRANSACTIONS = text(
    """
    WITH k AS (
        SELECT transaction_id, array_agg(key) AS keys, bool_or(scope = :seed) AS seed
          FROM idempotency_keys WHERE transaction_id IS NOT NULL GROUP BY transaction_id
    ), user_side AS (
        SELECT e.transaction_id, e.balance_after
          FROM entries e JOIN accounts acc ON acc.id = e.account_id AND acc.kind = 'USER'
    )
    SELECT t.id, t.user_id, t.type, t.amount, a.slug, t.principal, u.balance_after, k.keys,
           coalesce(k.seed, false) AS seed
      FROM transactions t
      JOIN assets a ON a.id = t.asset_id
      LEFT JOIN k ON k.transaction_id = t.id
      LEFT JOIN user_side u ON u.transaction_id = t.id
     WHERE t.user_id = ANY(:users)
    """
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
        rows = await conn.execute(
            text(
                "SELECT acc.user_id, a.slug, acc.balance FROM accounts acc"
                " JOIN assets a ON a.id = acc.asset_id"
                " WHERE acc.kind = 'USER' AND acc.user_id = ANY(:users)"
            ),
            {"users": list(users)},
        )
        return {(r.user_id, r.slug): r.balance for r in rows}


@dataclass(slots=True)
class Verdict:
    """What the judge found; `ok` only when nothing is wrong."""

    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    refused_moved: list[str] = field(default_factory=list)
    balance_breaches: list[str] = field(default_factory=list)
    unresolved: int = 0
    unresolved_committed: int = 0  # of those, how many the ledger shows posted
    wallets_checked: int = 0
    audit: AuditReport | None = None

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.duplicated
            and not self.mismatched
            and not self.refused_moved
            and not self.balance_breaches
            and self.unresolved == 0
            and self.audit is not None
            and self.audit.ok
        )

    def problems(self) -> list[str]:
        found = [
            *(f"lost: {x}" for x in self.lost),
            *(f"duplicated: {x}" for x in self.duplicated),
            *(f"answer disagrees with the ledger: {x}" for x in self.mismatched),
            *(f"refused but moved money: {x}" for x in self.refused_moved),
            *(f"balance: {x}" for x in self.balance_breaches),
        ]
        if self.unresolved:
            found.append(
                f"{self.unresolved} ops never got a definite answer"
                f" ({self.unresolved_committed} of them posted)"
            )
        if self.audit is not None and not self.audit.ok:
            found += [f"audit: {check}: {rows[0]}" for check, rows in self.audit.breaches.items()]
        return found


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


async def judge(
    engine: AsyncEngine,
    ops: Sequence[Op],
    wallets: Wallets,
    seed: Balances,
    *,
    principal: str | None,
) -> Verdict:
    """Compare the record with the ledger; `principal` is who the clients authenticated as
    (None: a credential the harness was handed, whose name it does not know)."""
    verdict = Verdict()
    users = wallets.all
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            txns = {
                r.id: r
                for r in await conn.execute(_TRANSACTIONS, {"users": users, "seed": SEED_PRINCIPAL})
            }
            keys = {
                r.key: r
                for r in await conn.execute(
                    text(
                        "SELECT key, outcome, transaction_id FROM idempotency_keys"
                        " WHERE key = ANY(:keys) AND scope <> :seed"
                    ),
                    {"keys": [op.key for op in ops], "seed": SEED_PRINCIPAL},
                )
            }
            final = {
                (r.user_id, r.slug): r.balance
                for r in await conn.execute(
                    text(
                        "SELECT acc.user_id, a.slug, acc.balance FROM accounts acc"
                        " JOIN assets a ON a.id = acc.asset_id"
                        " WHERE acc.kind = 'USER' AND acc.user_id = ANY(:users)"
                    ),
                    {"users": users},
                )
            }
            verdict.audit = await audit(conn)

    expected: dict[tuple[uuid.UUID, str], int] = defaultdict(int, seed)
    claimed: dict[uuid.UUID, str] = {}  # transaction id -> the acknowledged op's key
    for op in ops:
        answer = op.answer
        row = keys.get(op.key)
        if answer is None:
            verdict.unresolved += 1
            if row is not None and row.transaction_id is not None:
                verdict.unresolved_committed += 1
            continue
        if answer.kind == "refused":
            if row is None or row.outcome != "INSUFFICIENT_FUNDS" or row.transaction_id:
                outcome = row.outcome if row is not None else "no key row"
                verdict.refused_moved.append(f"{op.key}: the ledger says {outcome}")
            continue
        if answer.kind != "acked":
            continue  # rejected: reported by the figures, moved nothing by the ledger's rules
        verdict.acknowledged += 1
        expected[(op.user_id, op.asset)] += op.signed_amount
        txn = txns.get(answer.transaction_id) if answer.transaction_id else None
        if row is None or row.transaction_id != answer.transaction_id or txn is None:
            verdict.lost.append(
                f"{op.key} ({op.type} {op.amount} {op.asset}): told {answer.transaction_id},"
                f" ledger has {row.transaction_id if row is not None else 'no key'}"
            )
            continue
        if answer.transaction_id in claimed:
            verdict.duplicated.append(
                f"transaction {answer.transaction_id} acknowledged to {claimed[txn.id]}"
                f" and {op.key}"
            )
        claimed[txn.id] = op.key
        asked = (op.user_id, op.type, op.amount, op.asset, answer.balance_after)
        found = (txn.user_id, txn.type, txn.amount, txn.slug, txn.balance_after)
        if asked != found or (principal is not None and txn.principal != principal):
            verdict.mismatched.append(
                f"{op.key}: asked {op.type} {op.amount} {op.asset} for {op.user_id} as"
                f" {principal!r}, told balance {answer.balance_after}; ledger has {txn.type}"
                f" {txn.amount} {txn.slug} for {txn.user_id} by {txn.principal!r},"
                f" balance {txn.balance_after}"
            )

    unanswered = {op.key for op in ops if op.answer is None}
    for txn in txns.values():
        txn_keys: list[str] = list(txn.keys or [])
        if txn.seed or txn.id in claimed:
            if len(txn_keys) > 1:
                verdict.duplicated.append(f"transaction {txn.id} is claimed by keys {txn_keys}")
            continue
        if len(txn_keys) == 1 and txn_keys[0] in unanswered:
            continue  # counted as unresolved_committed above
        verdict.duplicated.append(
            f"transaction {txn.id} ({txn.type} {txn.amount} {txn.slug} for {txn.user_id})"
            f" matches no acknowledged request (keys {txn_keys})"
        )

    for wallet in sorted(set(expected) | set(final)):
        want, have = expected.get(wallet, 0), final.get(wallet, 0)
        if want != have:
            verdict.balance_breaches.append(
                f"{wallet[0]} {wallet[1]}: expected {want}, the ledger holds {have}"
            )
    verdict.wallets_checked = len(set(expected) | set(final))
    return verdict
