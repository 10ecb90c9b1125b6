"""`wallet audit` holds after a random workload and catches every kind of breach."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.conftest import ROOT, create_database, drop_database
from tests.factories import Factory
from wallet import ledger
from wallet.audit import CHECKS, audit
from wallet.cli import _run, migrate
from wallet.inputs import TxType
from wallet.seed import seed


async def test_audit_passes_after_a_random_concurrent_workload(
    engine: AsyncEngine, factory: Factory
) -> None:
    rng = random.Random(20261124)
    users = [await factory.user(gold=rng.randint(0, 50)) for _ in range(12)]

    async def one() -> None:
        kind: TxType = rng.choice(["TOPUP", "SPEND", "SPEND", "BONUS"])
        slug = rng.choice(["gold_coins", "gold_coins", "diamonds"])
        await factory.transact(rng.choice(users), rng.randint(1, 30), kind, slug=slug)

    await asyncio.gather(*(one() for _ in range(300)))
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        report = await audit(conn)
    assert report.ok, report.render()
    gold = next(a for a in report.assets if a.slug == "gold_coins")
    assert gold.circulating == -gold.treasury > 0


@pytest.mark.parametrize(
    ("corruption", "check"),
    [
        (
            "UPDATE accounts SET balance = balance + 1 WHERE user_id = :u",
            "each stored balance equals the sum of its entries",
        ),
        (
            "UPDATE accounts SET version = version + 1 WHERE user_id = :u",
            "each stored balance equals the sum of its entries",
        ),
        (
            "ALTER TABLE entries DISABLE TRIGGER USER;"
            " UPDATE entries SET amount = amount + 1 WHERE direction = 'CREDIT' AND account_id ="
            " (SELECT id FROM accounts WHERE user_id = :u)",
            "debits equal credits per asset",
        ),
        (
            "ALTER TABLE accounts DISABLE TRIGGER trg_accounts_held;"
            " UPDATE accounts SET balance = -5 WHERE user_id = :u",
            "no user balance is below what it holds (available >= 0)",
        ),
    ],
    ids=["balance drift", "version drift", "unbalanced entry", "negative user"],
)
async def test_audit_reports_a_breach(
    engine: AsyncEngine, factory: Factory, corruption: str, check: str
) -> None:
    """Corrupt inside a transaction, audit inside it, roll back: the breach is named."""
    user = await factory.user(gold=20)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        trans = await conn.begin()
        for statement in corruption.split(";"):
            await conn.execute(text(statement), {"u": user} if ":u" in statement else {})
        report = await audit(conn)
        await trans.rollback()
    assert not report.ok
    assert check in report.breaches
    assert "AUDIT FAILED" in report.render()


HOLD_CHECK = "a captured hold posted at most its amount, once, from its own wallet"


async def _hold(engine: AsyncEngine, user: uuid.UUID, amount: int = 1) -> uuid.UUID:
    async with engine.begin() as conn:
        held = await ledger.create_hold(
            conn, ledger.HoldRequest(user, "gold_coins", amount), key=str(uuid.uuid4()),
            principal="",
        )  # fmt: skip
    assert isinstance(held, ledger.HoldView)
    return held.hold_id


async def test_audit_reports_a_hold_a_transaction_claims_without_being_its_capture(
    engine: AsyncEngine, factory: Factory
) -> None:
    """A VOIDED hold that a transaction names (hold_id) posted something it never captured."""
    user = await factory.user(gold=20)
    hold = await _hold(engine, user)
    async with engine.begin() as conn:
        await ledger.void_hold(conn, hold, key=str(uuid.uuid4()), principal="")
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        trans = await conn.begin()
        await conn.execute(text("ALTER TABLE transactions DISABLE TRIGGER USER"))
        await conn.execute(
            text("UPDATE transactions SET hold_id = :h WHERE user_id = :u"), {"h": hold, "u": user}
        )
        report = await audit(conn)
        await trans.rollback()
    assert list(report.breaches) == [
        "a captured hold posted at most its amount, once, from its own wallet"
    ]
    (found,) = report.breaches[
        "a captured hold posted at most its amount, once, from its own wallet"
    ]
    assert found.startswith(f"hold {hold}: amount 1, captured 0")


def _subplans(node: dict[str, Any]) -> list[str]:
    """The subqueries a plan runs once per row of another (correlated: a SubPlan)."""
    found = [node["Subplan Name"]] if node.get("Parent Relationship") == "SubPlan" else []
    for child in node.get("Plans", []):
        found.extend(_subplans(child))
    return found


async def test_the_hold_check_runs_no_query_per_hold(engine: AsyncEngine, factory: Factory) -> None:
    """The hold check counted each hold's transactions with a subquery run once per hold, each a
    scan of every transaction (no index on hold_id): with 300,000 holds, past the 15 s statement
    timeout. It counts every hold's transactions at once, in one pass."""
    user = await factory.user(gold=100)
    for _ in range(3):
        await _hold(engine, user)
    async with engine.connect() as conn:
        found = (await conn.execute(text(dict(CHECKS)[HOLD_CHECK]))).all()
        plan = await conn.scalar(text("EXPLAIN (FORMAT JSON) " + dict(CHECKS)[HOLD_CHECK]))
    assert found == []
    assert _subplans(plan[0]["Plan"]) == []


@pytest.fixture
def scratch_database(server_url: str) -> Iterator[str]:
    url = create_database(server_url, "wallet_audit")
    migrate(url)
    _run(url, seed)
    yield url
    drop_database(server_url, url)


def wallet_cli(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wallet.cli", *args],
        env={**os.environ, "DATABASE_URL": database_url, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_audit_command_exits_non_zero_with_a_readable_report(scratch_database: str) -> None:
    clean = wallet_cli("audit", database_url=scratch_database)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "audit passed" in clean.stdout
    assert "gold_coins: 2 transactions, 150 held by users, treasury -150" in clean.stdout

    async def corrupt(conn: AsyncConnection) -> None:
        await conn.execute(text("UPDATE accounts SET balance = balance + 1 WHERE kind = 'USER'"))

    _run(scratch_database, corrupt)
    broken = wallet_cli("audit", database_url=scratch_database)
    assert broken.returncode == 1
    assert "[FAIL] each stored balance equals the sum of its entries" in broken.stdout
    assert "AUDIT FAILED" in broken.stdout


def test_seed_is_re_runnable(scratch_database: str) -> None:
    again = wallet_cli("seed", database_url=scratch_database)
    assert again.returncode == 0, again.stderr
    report = wallet_cli("audit", database_url=scratch_database)
    assert "gold_coins: 2 transactions, 150 held by users" in report.stdout


async def test_purge_idempotency_removes_only_expired_keys(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    old_key, new_key = f"old-{uuid.uuid4()}", f"new-{uuid.uuid4()}"
    async with engine.begin() as conn:
        for key in (old_key, new_key):
            await ledger.transact(
                conn, ledger.TransactRequest(user, "gold_coins", 1, "SPEND"), key=key, principal=""
            )
        await conn.execute(
            text(
                "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
                " WHERE key = :k"
            ),
            {"k": old_key},
        )
    async with engine.begin() as conn:
        removed = await ledger.purge_idempotency(conn, older_than=timedelta(hours=24))
        left = set(
            (
                await conn.execute(
                    text("SELECT key FROM idempotency_keys WHERE key IN (:a, :b)"),
                    {"a": old_key, "b": new_key},
                )
            ).scalars()
        )
    assert removed >= 1
    assert left == {new_key}


@pytest.mark.parametrize("hours", ["0", "23"])
def test_purge_idempotency_refuses_fewer_than_24_hours(scratch_database: str, hours: str) -> None:
    """`--older-than-hours 0` was taken as "not given" and purged at the default age."""
    refused = wallet_cli(
        "purge-idempotency", "--older-than-hours", hours, database_url=scratch_database
    )
    assert refused.returncode == 2
    assert "at least 24 hours" in refused.stderr


def test_a_setting_out_of_range_is_named_without_a_traceback(scratch_database: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": scratch_database,
        "WALLET_IDEMPOTENCY_RETENTION_HOURS": "5",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "wallet.cli", "audit"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.startswith("wallet: WALLET_IDEMPOTENCY_RETENTION_HOURS: ")
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://postgres@127.0.0.1:1/wallet", "cannot reach the database"),
        ("postgresql://postgres@127.0.0.1:5432/wallet_no_such_database", "does not exist"),
    ],
    ids=["no server", "no database"],
)
def test_a_database_it_cannot_connect_to_is_one_line_not_a_traceback(url: str, said: str) -> None:
    refused = wallet_cli("audit", database_url=url)
    assert refused.returncode == 2
    assert refused.stderr.startswith("wallet: ")
    assert said in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("timeouts", "said"),
    [
        ({"WALLET_STATEMENT_TIMEOUT_MS": "300"}, "canceling statement due to statement timeout"),
        ({"WALLET_LOCK_TIMEOUT_MS": "300"}, "canceling statement due to lock timeout"),
    ],
    ids=["statement timeout", "lock timeout"],
)
async def test_an_audit_the_database_stops_is_said_in_lines_not_a_breach(
    scratch_database: str, timeouts: dict[str, str], said: str
) -> None:
    """The CLI takes WALLET_STATEMENT_TIMEOUT_MS and WALLET_LOCK_TIMEOUT_MS; a statement either
    stops is exit 2 with what the database said (exit 1 means a breach; it was a traceback and
    exit 1). A session holding the holds table keeps the audit waiting."""
    blocker = await asyncpg.connect(scratch_database)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE holds IN ACCESS EXCLUSIVE MODE")
            refused = await asyncio.to_thread(
                wallet_cli,
                "audit",
                database_url=scratch_database,
                **{
                    "WALLET_STATEMENT_TIMEOUT_MS": "10000",
                    "WALLET_LOCK_TIMEOUT_MS": "10000",
                    **timeouts,
                },
            )
    finally:
        await blocker.close()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    first, second = refused.stderr.splitlines()
    assert first == f"wallet: the database stopped the command: {said}"
    assert second.startswith("wallet: WALLET_STATEMENT_TIMEOUT_MS is ")
    assert "Traceback" not in refused.stderr
