"""Reads on a real hot standby: a private primary and a standby made by pg_basebackup, streaming
on loopback (Debian's PostgreSQL binaries), behind `wallet serve` with DATABASE_READ_URL.

History pages and GraphQL ledger pages go to the replica once it has replayed every write;
current balances never do; with replay paused a caller still sees its own write (from the
primary); with the replica down every read is answered by the primary, never a 5xx."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.standby import NoServerBinaries, Pair, Server
from tests.conftest import start_server
from tests.factories import Factory
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.seed import seed

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Deployment:
    pair: Pair
    base: str  # the service

    @property
    def standby(self) -> Server:
        return self.pair.standby


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    try:
        pair = Pair()
    except NoServerBinaries as missing:
        pytest.skip(str(missing))
    proc = None
    try:
        pair.start_primary()
        migrate(pair.primary_url)
        _run(pair.primary_url, seed)
        pair.start_standby()
        proc, service = start_server(
            pair.primary_url, DATABASE_READ_URL=pair.standby_url, WALLET_REPLICA_RETRY_S="1"
        )
        yield Deployment(pair, service)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        pair.close()


@pytest.fixture
async def factory(deployment: Deployment) -> AsyncIterator[Factory]:
    engine = create_engine(deployment.pair.primary_url, pool_size=2)
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
    deployment: Deployment, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    posted = await topup(deployment.base, user, 5)
    await deployment.pair.caught_up()
    before, log_start = replica_reads(deployment.base), deployment.standby.log.stat().st_size
    assert posted in await history(deployment.base, user)
    async with httpx.AsyncClient(base_url=deployment.base, timeout=30) as client:
        page = await client.post("/graphql", json={"query": LEDGER, "variables": {"id": str(user)}})
    edges = page.json()["data"]["wallet"]["ledger"]["edges"]
    assert posted in [e["node"]["transaction"]["id"] for e in edges]
    assert grown(before, replica_reads(deployment.base)) == {("replica", "caught_up"): 2}
    standby_log = deployment.standby.log.read_text(errors="replace")[log_start:]
    assert "pg_last_wal_replay_lsn" in standby_log
    assert "FROM entries" in standby_log  # the pages themselves ran there
    # Current balances read the primary: nothing more reaches the standby.
    before, log_start = replica_reads(deployment.base), deployment.standby.log.stat().st_size
    async with httpx.AsyncClient(base_url=deployment.base, timeout=30) as client:
        balance = await client.get(f"/api/wallet/balance/{user}")
    assert balance.json()["data"][0]["balance"] == "15"
    assert grown(before, replica_reads(deployment.base)) == {}
    assert "execute" not in deployment.standby.log.read_text(errors="replace")[log_start:]


async def test_own_write_is_seen_while_the_replica_replays_nothing(
    deployment: Deployment, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    await deployment.pair.caught_up()
    standby = await asyncpg.connect(deployment.pair.standby_url)
    try:
        await standby.execute("SELECT pg_wal_replay_pause()")
        before = replica_reads(deployment.base)
        posted = await topup(deployment.base, user, 3)
        assert posted in await history(deployment.base, user)  # the primary answered
        assert grown(before, replica_reads(deployment.base)) == {("primary", "behind"): 1}
        missing = await standby.fetchval(
            "SELECT count(*) FROM transactions WHERE id = $1", uuid.UUID(posted)
        )
        assert missing == 0  # the replica really lacked it
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")
        await standby.close()
    await deployment.pair.caught_up()
    before = replica_reads(deployment.base)
    assert posted in await history(deployment.base, user)
    assert grown(before, replica_reads(deployment.base)) == {("replica", "caught_up"): 1}


async def test_a_replica_down_leaves_every_read_to_the_primary(
    deployment: Deployment, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    deployment.standby.stop("immediate")
    try:
        before = replica_reads(deployment.base)
        posted = await topup(deployment.base, user, 4)
        for _ in range(5):
            assert posted in await history(deployment.base, user)
        reads = grown(before, replica_reads(deployment.base))
        assert set(reads) == {("primary", "down")}
        assert reads[("primary", "down")] == 5
    finally:
        deployment.standby.start()
    await deployment.pair.caught_up()
    await asyncio.sleep(1.1)  # WALLET_REPLICA_RETRY_S: the service tries the replica again
    before = replica_reads(deployment.base)
    assert posted in await history(deployment.base, user)
    assert grown(before, replica_reads(deployment.base)) == {("replica", "caught_up"): 1}
