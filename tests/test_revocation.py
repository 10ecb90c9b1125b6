"""Key changes take effect in every server process before they are acknowledged.

The servers here trust their key cache for 30 s (WALLET_AUTH_CACHE_SECONDS), so a change that
only waited for the cache to expire would be seen for half a minute after its answer. They run
two worker processes; every request opens a fresh connection, and requests go out in parallel
so that both workers take some.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import httpx
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.conftest import ROOT, create_database, drop_database, start_server
from wallet import auth
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.errors import Unauthenticated
from wallet.seed import ALICE, seed
from wallet.settings import Settings

CACHE_SECONDS = "30"
BALANCE = f"/api/wallet/balance/{ALICE}"


@dataclass(frozen=True)
class Served:
    base: str
    database_url: str
    admin: dict[str, str]  # headers of an admin caller ({} while the service is open)
    pid: int  # `wallet serve`; its worker processes are its children


def fresh_database(server_url: str) -> str:
    url = create_database(server_url, "wallet_revoke")
    migrate(url)
    _run(url, seed)
    return url


@pytest.fixture
async def engine_for() -> AsyncIterator[dict[str, AsyncEngine]]:
    """Engines on the test's own databases, by URL, disposed at the end."""
    engines: dict[str, AsyncEngine] = {}
    yield engines
    for engine in engines.values():
        await engine.dispose()


async def listeners(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": auth.LISTENER_NAME},
        )
        return {row.pid for row in rows}


async def until_listening(
    engine: AsyncEngine, *, count: int, not_in: AbstractSet[int] = frozenset()
) -> set[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = await listeners(engine) - not_in
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} auth listeners did not connect")


async def workers_that_served(server_pid: int, engine: AsyncEngine) -> int:
    """How many worker processes hold a pooled database connection, i.e. have served requests
    that asked the database (matched by the connections' TCP ports)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT client_port FROM pg_stat_activity"
                " WHERE application_name = 'wallet' AND datname = current_database()"
            )
        )
        ports = {row.client_port for row in rows if row.client_port is not None}
    if not ports:
        pytest.skip("the database is reached over a Unix socket: cannot tell workers apart")
    serving = 0
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            local = {c.laddr.port for c in child.net_connections(kind="tcp") if c.raddr}
        except psutil.Error:
            continue
        serving += bool(local & ports)
    return serving


async def statuses(base: str, headers: dict[str, str], *, count: int = 60) -> list[int]:
    """`count` GETs at once, each on a connection of its own (none is kept alive)."""
    fresh = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=fresh) as client:
        answers = await asyncio.gather(
            *(client.get(BALANCE, headers=headers) for _ in range(count))
        )
    return [answer.status_code for answer in answers]


@pytest.fixture(scope="module")
def secured(server_url: str) -> Iterator[Served]:
    url = fresh_database(server_url)
    secret = _run(url, lambda conn: auth.create_key(conn, name="ops", scopes=["admin"]))
    proc, base = start_server(url, workers=2, WALLET_AUTH_CACHE_SECONDS=CACHE_SECONDS)
    try:
        yield Served(base, url, {"Authorization": f"Bearer {secret}"}, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


async def test_revoked_over_http_is_refused_by_every_worker_at_once(
    secured: Served, engine_for: dict[str, AsyncEngine]
) -> None:
    engine = engine_for.setdefault("db", create_engine(secured.database_url, pool_size=1))
    await until_listening(engine, count=2)
    async with httpx.AsyncClient(base_url=secured.base, timeout=30) as admin:
        for _ in range(3):
            name = f"victim-{uuid.uuid4().hex[:8]}"
            made = await admin.post(
                "/api/admin/keys", json={"name": name, "scopes": ["read"]}, headers=secured.admin
            )
            assert made.status_code == 201, made.text
            victim = {"Authorization": f"Bearer {made.json()['data']['key']}"}
            assert set(await statuses(secured.base, victim)) == {200}  # cached by both workers
            assert await workers_that_served(secured.pid, engine) == 2
            gone = await admin.delete(f"/api/admin/keys/{name}", headers=secured.admin)
            assert gone.status_code == 200
            after = await statuses(secured.base, victim)
            assert set(after) == {401}, after


async def test_revocation_survives_a_lost_listener(
    secured: Served, engine_for: dict[str, AsyncEngine]
) -> None:
    engine = engine_for.setdefault("db", create_engine(secured.database_url, pool_size=1))
    before = await until_listening(engine, count=2)
    async with engine.connect() as conn:
        await conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
            {"pids": sorted(before)},
        )
    await until_listening(engine, count=2, not_in=before)  # both processes reconnected
    async with httpx.AsyncClient(base_url=secured.base, timeout=30) as admin:
        name = f"victim-{uuid.uuid4().hex[:8]}"
        made = await admin.post(
            "/api/admin/keys", json={"name": name, "scopes": ["read"]}, headers=secured.admin
        )
        victim = {"Authorization": f"Bearer {made.json()['data']['key']}"}
        assert set(await statuses(secured.base, victim)) == {200}
        assert (await admin.delete(f"/api/admin/keys/{name}", headers=secured.admin)).is_success
        assert set(await statuses(secured.base, victim)) == {401}


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "WALLET_AUTH_CACHE_SECONDS": CACHE_SECONDS}
    return subprocess.run(
        [sys.executable, "-m", "wallet.cli", "keys", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


async def test_revoked_by_the_cli_is_refused_when_it_returns(
    secured: Served, engine_for: dict[str, AsyncEngine]
) -> None:
    engine = engine_for.setdefault("db", create_engine(secured.database_url, pool_size=1))
    await until_listening(engine, count=2)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    secret = cli(secured.database_url, "create", "--name", name, "--scopes", "read")
    victim = {"Authorization": f"Bearer {secret.stdout.strip().splitlines()[-1]}"}
    assert set(await statuses(secured.base, victim)) == {200}
    started = time.monotonic()
    cli(secured.database_url, "revoke", name)
    assert time.monotonic() - started < 10  # it does not wait the 30 s cache out
    assert set(await statuses(secured.base, victim)) == {401}


async def test_the_first_key_closes_open_mode_in_every_worker_at_once(
    server_url: str, engine_for: dict[str, AsyncEngine]
) -> None:
    for how in ("http", "cli"):
        url = await asyncio.to_thread(fresh_database, server_url)
        proc, base = await asyncio.to_thread(
            start_server, url, workers=2, WALLET_AUTH_CACHE_SECONDS=CACHE_SECONDS
        )
        try:
            engine = engine_for.setdefault(url, create_engine(url, pool_size=1))
            await until_listening(engine, count=2)
            assert set(await statuses(base, {})) == {200}  # open, and cached as open
            if how == "http":
                async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                    made = await client.post(
                        "/api/admin/keys", json={"name": "first", "scopes": ["read"]}
                    )
                assert made.status_code == 201
                secret = made.json()["data"]["key"]
            else:
                created = cli(url, "create", "--name", "first", "--scopes", "read")
                secret = created.stdout.strip().splitlines()[-1]
            assert set(await statuses(base, {})) == {401}, how
            assert set(await statuses(base, {"Authorization": f"Bearer {secret}"})) == {200}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            await engine_for.pop(url).dispose()
            await asyncio.to_thread(drop_database, server_url, url)


# --------------------------------------------------------------------------------------------
# The cache is trusted only while the process listens
# --------------------------------------------------------------------------------------------


async def revoke_silently(engine: AsyncEngine, name: str) -> None:
    """Revoke with no announcement: what a process that was not listening would miss."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE name = :name"), {"name": name}
        )


async def test_without_its_listener_a_process_trusts_no_cache(
    secured: Served, engine_for: dict[str, AsyncEngine]
) -> None:
    engine = engine_for.setdefault("db", create_engine(secured.database_url, pool_size=2))
    settings = Settings(auth_cache_seconds=30)
    names = [f"inproc-{uuid.uuid4().hex[:8]}" for _ in range(2)]

    async def make(conn: AsyncConnection) -> list[str]:
        return [await auth.create_key(conn, name=n, scopes=["read"]) for n in names]

    async with engine.begin() as conn:
        deaf_secret, hearing_secret = await make(conn)

    # Its database is unreachable: it never listens, so every check asks the database.
    deaf = auth.Authenticator(settings, engine, listen_url="postgresql://nobody@127.0.0.1:1/x")
    deaf.start()
    hearing = auth.Authenticator(settings, engine, listen_url=secured.database_url)
    hearing.start()
    try:
        await asyncio.wait_for(hearing.until_listening(), 10)
        assert not deaf.listening
        for authenticator, secret in ((deaf, deaf_secret), (hearing, hearing_secret)):
            assert (await authenticator.authenticate(f"Bearer {secret}")).name in names
        await revoke_silently(engine, names[0])
        with pytest.raises(Unauthenticated):
            await deaf.authenticate(f"Bearer {deaf_secret}")
        # A listening process does trust its cache: an unannounced revocation goes unseen...
        await revoke_silently(engine, names[1])
        assert (await hearing.authenticate(f"Bearer {hearing_secret}")).name == names[1]
        # ...and the announcement every real revocation makes evicts it.
        async with engine.begin() as conn:
            await auth.announce_key_change(conn, name=names[1])
        deadline = time.monotonic() + 5  # well within the 30 s the cache would keep it
        while True:
            try:
                await hearing.authenticate(f"Bearer {hearing_secret}")
            except Unauthenticated:
                break
            assert time.monotonic() < deadline, "the announcement did not evict the cache"
            await asyncio.sleep(0.02)
    finally:
        await deaf.close()
        await hearing.close()
