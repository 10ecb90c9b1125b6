"""Fixtures: a fresh PostgreSQL database per test session, and a real server over real HTTP.

The database is `TEST_DATABASE_URL` (default: the local server on 127.0.0.1:5432). If that
server is down, the suite starts an embedded PostgreSQL of its own, so it always runs against
a real database. Tests isolate themselves by creating their own users (see `factories`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Factory
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.embedded import EmbeddedPostgres
from wallet.seed import seed

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(url: str) -> bool:
    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL (maintenance database); started embedded if none is up."""
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER)
    if _reachable(url):
        yield url
        return
    data_dir = Path(tempfile.gettempdir()) / f"wallet-test-pg-{os.getuid()}"  # traversable parents
    embedded = EmbeddedPostgres(data_dir)
    wallet_url = embedded.start()
    try:
        yield with_database(wallet_url, "postgres")
    finally:
        embedded.stop()


def create_database(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = make_url(url).database

    async def drop() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database for this session, migrated to head and seeded."""
    url = create_database(server_url, "wallet_test")
    migrate(url)
    _run(url, seed)
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=10, lock_timeout_ms=10_000)
    yield engine
    await engine.dispose()


@pytest.fixture
def factory(engine: AsyncEngine) -> Factory:
    return Factory(engine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(
    database_url: str, *, workers: int = 1, log: Path | None = None, **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`wallet serve` in a child process; returns it and its base URL once it answers.
    With `log`, its output (stdout and stderr) goes to that file, for a test to read."""
    port = free_port()
    output = log.open("ab") if log is not None else None
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wallet.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env={**os.environ, "DATABASE_URL": database_url, "WALLET_ENV": "test", **env},
        cwd=ROOT,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
    )
    if output is not None:
        output.close()  # the child holds its own descriptor
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"wallet serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("wallet serve did not become ready in 30 s")


@pytest.fixture(scope="session")
def base_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service under test, over real HTTP on loopback (its output: WALLET_TEST_SERVER_LOG,
    or a file in the session's temporary directory)."""
    log = Path(
        os.environ.get("WALLET_TEST_SERVER_LOG") or tmp_path_factory.mktemp("server") / "serve.log"
    )
    proc, base = start_server(database_url, log=log)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as c:
        yield c
