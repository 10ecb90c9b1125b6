"""Migrations go up and down cleanly, and the models describe what they build."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from tests.conftest import create_database, drop_database
from wallet.cli import migrate
from wallet.db.engine import create_engine
from wallet.db.models import Base
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

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection)
        return list(compare_metadata(context, Base.metadata))

    async def run() -> list[object]:
        engine = create_engine(empty_database, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(diff)
        finally:
            await engine.dispose()

    # Indexes and unique constraints live in the migration only; tables, columns, types,
    # nullability and foreign keys must agree.
    unmodelled = {"remove_index", "add_index", "remove_constraint", "add_constraint"}
    relevant = [d for d in asyncio.run(run()) if not (isinstance(d, tuple) and d[0] in unmodelled)]
    assert relevant == []
