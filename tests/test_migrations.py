"""Migrations go up and down cleanly, and the models describe what they build."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Dialect, text
from sqlalchemy.dialects.postgresql import DOMAIN

from tests.conftest import create_database, drop_database
from wallet import ledger
from wallet.audit import CHECKS, audit
from wallet.cli import migrate
from wallet.db.engine import create_engine
from wallet.db.models import Base
from wallet.inputs import TxType
from wallet.migrations import alembic_config


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    url = create_database(server_url, "wallet_migrations")
    yield url
    drop_database(server_url, url)


def tables(url: str) -> set[str]:
    async def fetch() -> set[str]:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            rows = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " UNION ALL SELECT proname FROM pg_proc p JOIN pg_namespace n"
                " ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
            )
        finally:
            await conn.close()
        return {r[0] for r in rows}

    return asyncio.run(fetch())


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    config = alembic_config(empty_database)
    migrate(empty_database)
    ledger_objects = {"assets", "users", "accounts", "transactions", "entries", "idempotency_keys"}
    assert ledger_objects | {"wallet_transact"} <= tables(empty_database)
    command.downgrade(config, "base")
    assert tables(empty_database) == {"alembic_version"}
    command.upgrade(config, "head")
    assert ledger_objects <= tables(empty_database)


def test_models_match_the_migrated_schema(empty_database: str) -> None:
    migrate(empty_database)

    def diff(connection: Connection) -> list[tuple[object, bool]]:
        context = MigrationContext.configure(connection)
        return [
            (d, _domain_of_modelled(d, connection.dialect))
            for d in compare_metadata(context, Base.metadata)
        ]

    async def run() -> list[tuple[object, bool]]:
        engine = create_engine(empty_database, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(diff)
        finally:
            await engine.dispose()

    # Indexes and unique constraints live in the migration only; tables, columns, types,
    # nullability and foreign keys must agree. A column of a domain is modelled with the
    # domain's base type (see wallet/db/models.py): that, and only that, counts as agreeing.
    unmodelled = {"remove_index", "add_index", "remove_constraint", "add_constraint"}
    found = asyncio.run(run())
    relevant = [
        d
        for d, of_modelled in found
        if not (isinstance(d, tuple) and d[0] in unmodelled) and not of_modelled
    ]
    assert relevant == []
    domains = [d for d, of_modelled in found if of_modelled]
    assert len(domains) == 9, "the columns migration 0007 gave a domain"


def _domain_of_modelled(difference: object, dialect: Dialect) -> bool:
    """A `modify_type` whose database type is a domain over the type the model declares."""
    if not (isinstance(difference, list) and len(difference) == 1):
        return False
    change = difference[0]
    if change[0] != "modify_type":
        return False
    in_database, in_model = change[5], change[6]
    if not isinstance(in_database, DOMAIN):
        return False
    base = in_database.data_type.compile(dialect=dialect)
    return bool(base.split(" COLLATE ")[0] == in_model.compile(dialect=dialect))


def test_a_database_with_traffic_upgrades_in_place_and_its_keys_still_replay(
    empty_database: str,
) -> None:
    """Build the previous schema (0002), post real traffic through its own wallet_transact,
    upgrade with `wallet migrate`, audit before and after, and replay every stored key."""
    from wallet.migrations import upgrade

    upgrade(empty_database, "0002")
    users = [uuid.uuid4() for _ in range(4)]
    posted: list[tuple[ledger.TransactRequest, str, tuple[object, ...]]] = []

    async def traffic() -> None:
        engine = create_engine(empty_database, pool_size=2)
        try:
            async with engine.begin() as conn:
                await ledger.ensure_asset(conn, slug="gold_coins", name="Gold Coins")
                for n, user in enumerate(users):
                    await ledger.create_user(conn, user_id=user, username=f"u{n}")
            for n in range(60):
                user = users[n % len(users)]
                kind: TxType = ("TOPUP", "SPEND", "BONUS")[n % 3]
                request = ledger.TransactRequest(user, "gold_coins", 7 + n % 11, kind)
                key = f"old-{n}"
                async with engine.begin() as conn:  # the 0002 function: nine arguments
                    row = (
                        await conn.execute(
                            text(
                                "SELECT outcome, transaction_id, balance_before, balance_after,"
                                " created_at FROM wallet_transact(:scope, :key, :fp, :user,"
                                " 'gold_coins', :type, :amount, :txn, :principal)"
                            ),
                            {
                                "scope": "shop",
                                "key": key,
                                "fp": request.fingerprint(),
                                "user": user,
                                "type": kind,
                                "amount": request.amount,
                                "txn": uuid.uuid4(),
                                "principal": "shop",
                            },
                        )
                    ).one()
                posted.append((request, key, tuple(row)))
            async with engine.connect() as conn:  # the audit's checks the old schema can answer
                for name, sql in CHECKS:
                    if not any(new in sql for new in ("held", "holds", "hold_id", "reverses_id")):
                        assert list(await conn.execute(text(sql))) == [], name
        finally:
            await engine.dispose()

    asyncio.run(traffic())
    assert {p[2][0] for p in posted} == {"COMPLETED", "INSUFFICIENT_FUNDS"}
    before = _ledger_state(empty_database)
    migrate(empty_database)  # what `wallet migrate` runs
    assert _ledger_state(empty_database) == before

    async def replay() -> None:
        engine = create_engine(empty_database, pool_size=2)
        try:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="REPEATABLE READ")
                report = await audit(conn)
                assert report.ok, report.render()
                await conn.rollback()
            for request, key, (outcome, txn, bal_before, bal_after, created) in posted:
                async with engine.begin() as conn:
                    again = await ledger.transact(conn, request, key=key, principal="shop")
                assert again.replayed
                assert (again.outcome, again.transaction_id) == (outcome, txn)
                assert (again.balance_before, again.balance_after) == (bal_before, bal_after)
                if txn is not None:
                    assert again.created_at == created
        finally:
            await engine.dispose()

    asyncio.run(replay())
    assert _ledger_state(empty_database) == before  # replays moved nothing


def _ledger_state(url: str) -> tuple[object, ...]:
    async def fetch() -> tuple[object, ...]:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return tuple(
                [
                    await conn.fetchval("SELECT count(*) FROM transactions"),
                    await conn.fetchval("SELECT count(*) FROM entries"),
                    await conn.fetchval("SELECT count(*) FROM idempotency_keys"),
                    tuple(
                        await conn.fetch("SELECT id, balance, version FROM accounts ORDER BY id")
                    ),
                ]
            )
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_keys_a_completed_posting_wrote_once_replay_across_0010_down_and_up(
    empty_database: str,
) -> None:
    """Since 0010 a completed TOPUP, BONUS or SPEND leaves its key as its claim wrote it, without
    balances: a replay reads them from the transaction's entry on the wallet, at 0010, after a
    downgrade to 0009 (which stores them in the keys) and after the upgrade again."""
    migrate(empty_database)
    user = uuid.uuid4()
    postings: list[tuple[int, TxType]] = [
        (50, "TOPUP"),
        (20, "SPEND"),
        (500, "SPEND"),
        (5, "BONUS"),
    ]
    requests = [ledger.TransactRequest(user, "gold_coins", n, kind) for n, kind in postings]
    first: list[tuple[object, ...]] = []

    def answer(outcome: ledger.TransactOutcome) -> tuple[object, ...]:
        posted = outcome.created_at if outcome.transaction_id else None  # a refusal's: its key's
        return (
            outcome.outcome,
            outcome.transaction_id,
            outcome.balance_before,
            outcome.balance_after,
            posted,
        )

    async def post() -> list[tuple[object, ...]]:
        engine = create_engine(empty_database, pool_size=1)
        try:
            async with engine.begin() as conn:
                await ledger.ensure_asset(conn, slug="gold_coins", name="Gold Coins")
                await ledger.create_user(conn, user_id=user, username="once")
            for n, request in enumerate(requests):
                async with engine.begin() as conn:
                    done = await ledger.transact(conn, request, key=f"k{n}", principal="shop")
                first.append(answer(done))
            async with engine.connect() as conn:
                stored = await conn.execute(
                    text("SELECT outcome, balance_after IS NULL FROM idempotency_keys ORDER BY key")
                )
                return [tuple(r) for r in stored]
        finally:
            await engine.dispose()

    async def replay() -> list[tuple[object, ...]]:
        engine = create_engine(empty_database, pool_size=1)
        try:
            again = []
            for n, request in enumerate(requests):
                async with engine.begin() as conn:
                    done = await ledger.transact(conn, request, key=f"k{n}", principal="shop")
                assert done.replayed
                again.append(answer(done))
            return again
        finally:
            await engine.dispose()

    stored = asyncio.run(post())
    assert stored == [
        ("COMPLETED", True),
        ("COMPLETED", True),
        ("INSUFFICIENT_FUNDS", False),
        ("COMPLETED", True),
    ]
    assert [a[2:4] for a in first] == [(0, 50), (50, 30), (30, 30), (30, 35)]
    before = _ledger_state(empty_database)
    assert asyncio.run(replay()) == first
    command.downgrade(alembic_config(empty_database), "0009")
    assert asyncio.run(replay()) == first
    command.upgrade(alembic_config(empty_database), "head")
    assert asyncio.run(replay()) == first
    assert _ledger_state(empty_database) == before  # replays moved nothing


def test_the_empty_wallets_refusals_left_before_0013_go_at_0014(empty_database: str) -> None:
    """Before 0013 a refused credit could leave its new wallet (balance 0, nothing posted); 0014
    takes those away, and keeps every wallet something was posted to, emptied ones included."""
    config = alembic_config(empty_database)
    command.upgrade(config, "0013")
    user = uuid.uuid4()

    async def make() -> None:
        engine = create_engine(empty_database, pool_size=1)
        try:
            async with engine.begin() as conn:
                await ledger.ensure_asset(conn, slug="gold_coins", name="Gold Coins")
                await ledger.ensure_asset(conn, slug="diamonds", name="Diamonds")
                await ledger.create_user(conn, user_id=user, username="leftover")
            postings: list[tuple[int, TxType]] = [(5, "TOPUP"), (5, "SPEND")]
            for n, (amount, kind) in enumerate(postings):
                request = ledger.TransactRequest(user, "gold_coins", amount, kind)
                async with engine.begin() as conn:
                    await ledger.transact(conn, request, key=f"k{n}", principal="")
            async with engine.begin() as conn:  # what a refusal left before 0013
                await conn.execute(
                    text(
                        "INSERT INTO accounts (asset_id, kind, user_id)"
                        " SELECT id, 'USER', :u FROM assets WHERE slug = 'diamonds'"
                    ),
                    {"u": user},
                )
        finally:
            await engine.dispose()

    async def wallets() -> list[tuple[str, int, int]]:
        conn = await asyncpg.connect(empty_database.replace("+asyncpg", ""))
        try:
            rows = await conn.fetch(
                "SELECT s.slug, a.balance, a.version FROM accounts a"
                " JOIN assets s ON s.id = a.asset_id WHERE a.user_id = $1 ORDER BY s.slug",
                user,
            )
        finally:
            await conn.close()
        return [(r["slug"], r["balance"], r["version"]) for r in rows]

    asyncio.run(make())
    assert asyncio.run(wallets()) == [("diamonds", 0, 0), ("gold_coins", 0, 2)]
    command.upgrade(config, "head")
    assert asyncio.run(wallets()) == [("gold_coins", 0, 2)]
