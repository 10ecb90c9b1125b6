"""Graceful shutdown: on SIGTERM `wallet serve` stops accepting, finishes what it started, exits 0;
so a rolling restart of two servers loses no acknowledged request.

Each test works on a database of its own (it mints an API key, which closes the service) and
judges the outcome with the chaos suite's judge: the ledger against every definite answer.
"""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.judge import Balances, judge, quiesce, seed_wallets
from chaos.service import Service
from chaos.workload import Client, Load, Mix, RetryPolicy, Wallets, auth_headers, resolve
from tests.conftest import create_database, drop_database
from wallet import auth
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.seed import seed

pytestmark = pytest.mark.slow


@dataclass
class World:
    url: str
    engine: AsyncEngine
    wallets: Wallets
    seed: Balances
    key_name: str
    token: str

    def service(self, log_file: Path, **env: str) -> Service:
        return Service(self.url, log_file=log_file, env=env, headers=auth_headers(self.token))


@pytest.fixture(scope="module")
def shutdown_db(server_url: str) -> Iterator[str]:
    url = create_database(server_url, "wallet_shutdown")
    migrate(url)
    _run(url, seed)
    yield url
    drop_database(server_url, url)


@pytest.fixture
async def world(shutdown_db: str) -> AsyncIterator[World]:
    """Fresh wallets (and a fresh key) on the module's database for each test."""
    engine = create_engine(shutdown_db, pool_size=4, application_name="shutdown-test")
    wallets, seeded = await seed_wallets(engine, random.Random(7), hot=2, cold=40)
    name = f"shutdown-test-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        token = await auth.create_key(conn, name=name, scopes=["read", "transact"])
    yield World(shutdown_db, engine, wallets, seeded, name, token)
    await engine.dispose()


async def _waiting_on_a_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'wallet' AND wait_event_type = 'Lock'"
            )
        )
    return bool(found)


async def test_sigterm_stops_accepting_finishes_in_flight_and_exits_0(
    world: World, tmp_path: Path
) -> None:
    service = world.service(tmp_path / "serve.log", WALLET_LOCK_TIMEOUT_MS="30000")
    await service.start()
    user = world.wallets.hot[0]
    headers = {**auth_headers(world.token), "Idempotency-Key": f"in-flight-{uuid.uuid4()}"}
    body = {"userId": str(user), "amount": 7, "assetSlug": "gold_coins", "type": "SPEND"}
    try:
        async with world.engine.connect() as holder, holder.begin():
            # Hold the wallet's row so the request is in flight, inside the database, for as
            # long as the test likes.
            await holder.execute(
                text("SELECT id FROM accounts WHERE user_id = :u FOR UPDATE"), {"u": user}
            )
            async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
                in_flight = asyncio.create_task(
                    client.post("/api/wallet/transact", json=body, headers=headers)
                )
                for _ in range(200):
                    if await _waiting_on_a_lock(world.engine):
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the request never reached the lock")

                assert service.proc is not None
                service.proc.send_signal(signal.SIGTERM)
                refused = False
                for _ in range(100):  # a new connection is refused: it stopped accepting
                    try:
                        async with httpx.AsyncClient(base_url=service.base_url) as fresh:
                            await fresh.get("/healthz", timeout=1)
                    # Refused, or reset: one that reached the listen queue as the socket closed.
                    except (httpx.ConnectError, httpx.ReadError):
                        refused = True
                        break
                    await asyncio.sleep(0.05)
                assert refused, "still accepting connections after SIGTERM"
                await asyncio.sleep(0.5)
                assert service.running(), "exited with a request in flight"
                assert not in_flight.done()

                await holder.commit()  # the lock goes; the request completes
                response = await in_flight
        assert response.status_code == 200, response.text
        assert response.json()["data"]["balanceAfter"] == str(world.seed[(user, "gold_coins")] - 7)
        assert await asyncio.to_thread(service.proc.wait, 30) == 0
    finally:
        if service.running():
            service.kill()
    async with world.engine.connect() as conn:
        posted = await conn.scalar(
            text("SELECT count(*) FROM idempotency_keys WHERE key = :k AND outcome = 'COMPLETED'"),
            {"k": headers["Idempotency-Key"]},
        )
    assert posted == 1


async def test_rolling_restart_of_two_servers_loses_no_acknowledged_request(
    world: World, tmp_path: Path
) -> None:
    servers = [world.service(tmp_path / f"serve-{i}.log") for i in range(2)]
    await asyncio.gather(*(s.start() for s in servers))
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        async with httpx.AsyncClient(limits=limits, headers=auth_headers(world.token)) as http:
            client = Client(http, [s.base_url for s in servers])  # attempts alternate
            load = Load(
                client=client,
                wallets=world.wallets,
                policy=RetryPolicy(max_backoff_s=0.5),
                mix=Mix(),
                clients=16,
                max_requests=100_000,
                seed=11,
            )
            running = asyncio.create_task(load.run())
            await asyncio.sleep(1.5)
            for server in servers:  # one at a time: the other carries the load meanwhile
                assert await server.terminate(timeout_s=30) == 0
                await asyncio.sleep(0.5)
                await server.start()
                await asyncio.sleep(1.5)
            load.stop()
            await asyncio.wait_for(running, timeout=120)
            await resolve(client, load.ops)
        for server in servers:
            assert await server.terminate(timeout_s=30) == 0
    finally:
        for server in servers:
            if server.running():
                server.kill()

    assert await quiesce(world.engine)
    verdict = await judge(
        world.engine, load.ops, world.wallets, world.seed, principal=world.key_name
    )
    assert verdict.ok, verdict.problems()
    attempts = [a for op in load.ops for a in op.attempts]
    assert not [a for a in attempts if a.kind == "internal"]
    assert verdict.acknowledged > 100  # the restarts happened under real load
    assert all(s.starts == 2 for s in servers)
