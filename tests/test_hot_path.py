"""The hot path (balances and TOPUP/BONUS/SPEND on the asyncpg pool) survives PostgreSQL ending
its pooled connections: a fresh connection and a retry with the same key, never a 500."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import create_database, drop_database, start_server
from tests.factories import Factory, in_process_resources
from wallet.auth import ANONYMOUS
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine, create_pool
from wallet.errors import Busy
from wallet.http import map_database_error
from wallet.resolvers import wallet as resolve
from wallet.resolvers.context import build_context
from wallet.resources import with_pg
from wallet.seed import seed
from wallet.settings import Settings


@pytest.fixture
def server(server_url: str, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A server of its own on a database of its own (its backends are terminated below)."""
    url = create_database(server_url, "wallet_hot")
    migrate(url)
    _run(url, seed)
    log = tmp_path / "serve.log"
    proc, base = start_server(url, log=log)
    try:
        yield base, url, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


async def _terminate_service_backends(url: str) -> int:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'wallet'"
            )
        )
    finally:
        await conn.close()


async def _user_with_gold(url: str) -> uuid.UUID:
    engine = create_engine(url, pool_size=1)
    try:
        return await Factory(engine).user(gold=1_000)
    finally:
        await engine.dispose()


async def test_postings_and_reads_survive_terminated_pool_connections(
    server: tuple[str, str, Path],
) -> None:
    base, url, log = server
    user = await _user_with_gold(url)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def topup() -> int:
            response = await client.post(
                "/api/wallet/transact",
                json={"userId": str(user), "amount": 1, "assetSlug": "gold_coins", "type": "TOPUP"},
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            return response.status_code

        async def read() -> int:
            return (await client.get(f"/api/wallet/balance/{user}")).status_code

        statuses: Counter[int] = Counter()
        for _ in range(5):
            # Fill the pool with idle connections, end them all, then use them at once.
            statuses.update(await asyncio.gather(*(topup() for _ in range(8))))
            assert await _terminate_service_backends(url) > 0
            await asyncio.sleep(0.2)  # the FATAL messages reach the idle connections
            statuses.update(await asyncio.gather(*(topup() for _ in range(8)), read(), read()))
    assert set(statuses) == {200}, statuses
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    assert "INTERNAL_ERROR" not in text


async def test_history_and_graphql_reads_survive_terminated_engine_connections(
    server: tuple[str, str, Path],
) -> None:
    """The ledger's fixed SQL runs on the asyncpg connection under the engine's (history, the
    GraphQL wallet's loaders without a hot pool): a connection PostgreSQL ended is discarded and
    the read retried on a fresh one, as for SQLAlchemy's own statements, never a 503."""
    base, url, log = server
    user = await _user_with_gold(url)
    query = (
        "query W($id: UUID!) { wallet(userId: $id) { username balances { amount }"
        " ledger(first: 5) { edges { node { amount } } } } }"
    )
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def history() -> int:
            response = await client.get(f"/api/wallet/transactions/{user}")
            return response.status_code

        async def wallet() -> int:
            response = await client.post(
                "/graphql", json={"query": query, "variables": {"id": str(user)}}
            )
            return 500 if "errors" in response.json() else response.status_code

        statuses: Counter[int] = Counter()
        for _ in range(5):
            reads = [*(history() for _ in range(6)), *(wallet() for _ in range(6))]
            statuses.update(await asyncio.gather(*reads))
            assert await _terminate_service_backends(url) > 0
            await asyncio.sleep(0.2)  # the FATAL messages reach the idle connections
            reads = [*(history() for _ in range(6)), *(wallet() for _ in range(6))]
            statuses.update(await asyncio.gather(*reads))
    assert set(statuses) == {200}, statuses
    assert "Traceback" not in log.read_text(errors="replace")


async def test_a_connection_broken_mid_state_is_discarded_and_the_work_retried(
    database_url: str,
) -> None:
    """asyncpg reports a connection that read a FATAL message while idle in the pool as an
    InternalClientError on its next use (seen by the fault suite): the pool must not hand that
    connection out again, and keyed work runs once more on a fresh one."""
    pool = await create_pool(database_url, size=2)
    try:
        broken: list[int] = []

        async def work(conn: asyncpg.Connection) -> int:
            pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
            if not broken:
                broken.append(pid)
                raise asyncpg.InternalClientError("cannot switch to state 12")
            return pid

        fresh = await with_pg(pool, work, timeout_s=5, retry=True)
        assert fresh != broken[0]
        for _ in range(50):  # terminated, not returned to the pool: its backend goes away
            async with pool.acquire() as conn:
                alive = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", broken[0]
                )
            if alive == 0:
                break
            await asyncio.sleep(0.05)
        assert alive == 0

        broken.clear()
        with pytest.raises(asyncpg.InternalClientError):  # not keyed: no second run
            await with_pg(pool, work, timeout_s=5, retry=False)
        assert map_database_error(asyncpg.InternalClientError("x")) is not None  # a 503
    finally:
        await pool.close()


async def test_a_hot_connection_goes_back_to_the_pool_without_a_round_trip(
    database_url: str,
) -> None:
    """Releasing a hot connection sends nothing (asyncpg's default reset is a query per request),
    and a transaction left open on it is still rolled back before anyone else gets it."""
    pool = await create_pool(database_url, size=1)
    try:
        sent: list[str] = []
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert sent == ["SELECT pg_backend_pid()"]
        async with pool.acquire() as again:
            assert await again.fetchval("SELECT pg_backend_pid()") == pid  # the same session
            await again.execute("BEGIN")
        async with pool.acquire() as third:
            assert not third.is_in_transaction()
            assert sent[-1] == "ROLLBACK"
    finally:
        await pool.close()


async def test_a_filtered_history_page_never_waits_for_the_postings_pool(
    engine: AsyncEngine, database_url: str, factory: Factory
) -> None:
    """An unfiltered page costs its own rows and runs on the hot pool; a filtered one may walk a
    long history, so it runs on the engine's pool and never holds a connection postings need.
    With the hot pool's only connection taken, the first waits (BUSY), the second answers."""
    user = await factory.user(gold=100)
    settings = Settings(database_url=database_url, pool_timeout_s=0.5)
    pool = await create_pool(database_url, size=1)
    res = replace(in_process_resources(settings, engine), pool=pool)
    context = build_context(res, principal=ANONYMOUS)
    try:
        async with pool.acquire():  # what a posting in progress holds
            page = await resolve.ledger_page(
                context, user, first=5, after=None, asset_slug=None, tx_type="TOPUP"
            )
            assert [row["type"] for row in page.rows] == ["TOPUP"]
            with pytest.raises(Busy):
                await resolve.ledger_page(
                    context, user, first=5, after=None, asset_slug=None, tx_type=None
                )
        page = await resolve.ledger_page(
            context, user, first=5, after=None, asset_slug="gold_coins", tx_type=None
        )
        assert [row["type"] for row in page.rows] == ["TOPUP"]
    finally:
        await pool.close()
