"""Reads on a real hot standby: a private primary and a standby made by pg_basebackup, streaming
on loopback (Debian's PostgreSQL binaries), behind `wallet serve` with DATABASE_READ_URL.

History pages and GraphQL ledger pages go to the replica once it has replayed every write;
current balances never do; with replay paused a caller still sees its own write (from the
primary); with the replica down every read is answered by the primary, never a 5xx."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, start_server
from tests.factories import Factory
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.seed import seed

pytestmark = pytest.mark.slow


def postgres_bindir() -> Path | None:
    """Debian's newest PostgreSQL binaries (PG_BINDIR overrides)."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_basebackup"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> int:
    return int(Path(path).parent.parent.name)


@dataclass
class Cluster:
    """A PostgreSQL data directory of this test's, run by the binaries in `bindir` (as the
    `postgres` system user when the test runs as root: the server refuses to run as root)."""

    bindir: Path
    datadir: Path
    port: int

    @property
    def user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / tool), *args],
            user=self.user,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.datadir} -c log_statement=all"
        )
        self.run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-o", options, "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.datadir), "-w", "-m", mode, "stop")

    @property
    def log(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@dataclass(frozen=True)
class Pair:
    primary: Cluster
    standby: Cluster
    base: str  # the service
    primary_url: str
    standby_url: str


async def replayed_up_to_primary(pair: Pair) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    primary = await asyncpg.connect(pair.primary_url)
    standby = await asyncpg.connect(pair.standby_url)
    try:
        target = await primary.fetchval("SELECT pg_current_wal_lsn()")
        for _ in range(200):
            if await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the standby never caught up")
    finally:
        await primary.close()
        await standby.close()


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin); set PG_BINDIR")
    base = Path(tempfile.mkdtemp(prefix="wallet-replica-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    primary = Cluster(bindir, base / "primary", free_port())
    standby = Cluster(bindir, base / "standby", free_port())
    proc = None
    try:
        primary.run(
            "initdb",
            "-D",
            str(primary.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        primary.start()
        asyncio.run(_create_database(primary.url("postgres"), "wallet"))
        primary_url = primary.url("wallet")
        migrate(primary_url)
        _run(primary_url, seed)
        primary.run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(standby.datadir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        standby.start()
        pair = Pair(primary, standby, "", primary_url, standby.url("wallet"))
        asyncio.run(replayed_up_to_primary(pair))
        proc, service = start_server(
            primary_url,
            DATABASE_READ_URL=pair.standby_url,
            WALLET_REPLICA_RETRY_S="1",
        )
        yield Pair(primary, standby, service, primary_url, pair.standby_url)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        for cluster in (standby, primary):
            with contextlib.suppress(subprocess.CalledProcessError):  # not running
                cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


async def _create_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture
async def factory(pair: Pair) -> AsyncIterator[Factory]:
    engine = create_engine(pair.primary_url, pool_size=2)
    yield Factory(engine)
    await engine.dispose()


def replica_reads(base: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        (s.labels["target"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "wallet_replica_reads_total"
    }


def grown(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


async def topup(base: str, user: uuid.UUID, amount: int) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        answer = await client.post(
            "/api/wallet/transact",
            json={
                "userId": str(user),
                "amount": amount,
                "assetSlug": "gold_coins",
                "type": "TOPUP",
            },
            headers={"idempotency-key": str(uuid.uuid4())},
        )
    assert answer.status_code == 200, answer.text
    transaction_id: str = answer.json()["data"]["transactionId"]
    return transaction_id


async def history(base: str, user: uuid.UUID) -> list[str]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        answer = await client.get(f"/api/wallet/transactions/{user}")
    assert answer.status_code == 200, answer.text
    return [item["transactionId"] for item in answer.json()["data"]]


LEDGER = """
query Ledger($id: UUID!) {
  wallet(userId: $id) { ledger(first: 5) { edges { node { transaction { id } } } } }
}
"""


async def test_history_and_ledger_pages_read_the_caught_up_replica_balances_never(
    pair: Pair, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    posted = await topup(pair.base, user, 5)
    await replayed_up_to_primary(pair)
    before, log_start = replica_reads(pair.base), pair.standby.log.stat().st_size
    assert posted in await history(pair.base, user)
    async with httpx.AsyncClient(base_url=pair.base, timeout=30) as client:
        page = await client.post("/graphql", json={"query": LEDGER, "variables": {"id": str(user)}})
    edges = page.json()["data"]["wallet"]["ledger"]["edges"]
    assert posted in [e["node"]["transaction"]["id"] for e in edges]
    assert grown(before, replica_reads(pair.base)) == {("replica", "caught_up"): 2}
    standby_log = pair.standby.log.read_text(errors="replace")[log_start:]
    assert "pg_last_wal_replay_lsn" in standby_log
    assert "FROM entries" in standby_log  # the pages themselves ran there
    # Current balances read the primary: nothing more reaches the standby.
    before, log_start = replica_reads(pair.base), pair.standby.log.stat().st_size
    async with httpx.AsyncClient(base_url=pair.base, timeout=30) as client:
        balance = await client.get(f"/api/wallet/balance/{user}")
    assert balance.json()["data"][0]["balance"] == "15"
    assert grown(before, replica_reads(pair.base)) == {}
    assert "execute" not in pair.standby.log.read_text(errors="replace")[log_start:]


async def test_own_write_is_seen_while_the_replica_replays_nothing(
    pair: Pair, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    await replayed_up_to_primary(pair)
    standby = await asyncpg.connect(pair.standby_url)
    try:
        await standby.execute("SELECT pg_wal_replay_pause()")
        before = replica_reads(pair.base)
        posted = await topup(pair.base, user, 3)
        assert posted in await history(pair.base, user)  # the primary answered
        assert grown(before, replica_reads(pair.base)) == {("primary", "behind"): 1}
        missing = await standby.fetchval(
            "SELECT count(*) FROM transactions WHERE id = $1", uuid.UUID(posted)
        )
        assert missing == 0  # the replica really lacked it
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")
        await standby.close()
    await replayed_up_to_primary(pair)
    before = replica_reads(pair.base)
    assert posted in await history(pair.base, user)
    assert grown(before, replica_reads(pair.base)) == {("replica", "caught_up"): 1}


async def test_a_replica_down_leaves_every_read_to_the_primary(
    pair: Pair, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    pair.standby.stop("immediate")
    try:
        before = replica_reads(pair.base)
        posted = await topup(pair.base, user, 4)
        for _ in range(5):
            assert posted in await history(pair.base, user)
        reads = grown(before, replica_reads(pair.base))
        assert set(reads) == {("primary", "down")}
        assert reads[("primary", "down")] == 5
    finally:
        pair.standby.start()
    await replayed_up_to_primary(pair)
    await asyncio.sleep(1.1)  # WALLET_REPLICA_RETRY_S: the service tries the replica again
    before = replica_reads(pair.base)
    assert posted in await history(pair.base, user)
    assert grown(before, replica_reads(pair.base)) == {("replica", "caught_up"): 1}
