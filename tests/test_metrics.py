"""GET /metrics over real HTTP from `wallet serve --workers 2`: known traffic, spread over both
workers, adds up to exactly what the counters say; the route label is the template; the scope
`metrics` guards it once credentials exist."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import create_database, drop_database, start_server
from tests.factories import Factory
from wallet import auth
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.seed import seed

pytestmark = pytest.mark.slow

TRANSACT = "/api/wallet/transact"
BALANCE = "/api/wallet/balance/{userId}"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str, headers: dict[str, str] | None = None) -> Samples:
    answer = httpx.get(f"{base}/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metrics_db(server_url: str) -> Iterator[str]:
    url = create_database(server_url, "wallet_metrics")
    migrate(url)
    _run(url, seed)
    yield url
    drop_database(server_url, url)


async def new_user(url: str, gold: int) -> str:
    """A user with `gold` coins, made in process (so outside the server's counters)."""
    engine = create_engine(url, pool_size=1)
    try:
        return str(await Factory(engine).user(gold=gold))
    finally:
        await engine.dispose()


def body(user: str, amount: int, kind: str) -> dict[str, object]:
    return {"userId": user, "amount": amount, "assetSlug": "gold_coins", "type": kind}


async def test_counters_add_up_across_two_workers(metrics_db: str, tmp_path: Path) -> None:
    shared = tmp_path / "prom"
    proc, base = start_server(metrics_db, workers=2, PROMETHEUS_MULTIPROC_DIR=str(shared))
    try:
        rich, poor = await new_user(metrics_db, 1_000), await new_user(metrics_db, 5)
        before = scrape(base)
        topups, spends_refused, replays = 12, 5, 7
        # A fresh connection per request (Connection: close), so the kernel spreads them over
        # both workers' accept queues.
        close = {"connection": "close"}

        async def send(
            method: str,
            path: str,
            *,
            json: dict[str, object] | None = None,
            headers: dict[str, str] | None = None,
        ) -> httpx.Response:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                return await c.request(method, path, json=json, headers=close | (headers or {}))

        keys = [f"topup-{uuid.uuid4()}" for _ in range(topups)]
        answers = await asyncio.gather(
            *[
                send("POST", TRANSACT, json=body(rich, 3, "TOPUP"), headers={"idempotency-key": k})
                for k in keys
            ],
            *[
                send(
                    "POST",
                    TRANSACT,
                    json=body(poor, 500, "SPEND"),
                    headers={"idempotency-key": f"refused-{uuid.uuid4()}"},
                )
                for _ in range(spends_refused)
            ],
        )
        assert [a.status_code for a in answers] == [200] * topups + [422] * spends_refused
        again = await asyncio.gather(
            *[
                send("POST", TRANSACT, json=body(rich, 3, "TOPUP"), headers={"idempotency-key": k})
                for k in keys[:replays]
            ]
        )
        assert all(a.headers.get("idempotent-replayed") == "true" for a in again)
        conflict = await send(
            "POST", TRANSACT, json=body(rich, 4, "TOPUP"), headers={"idempotency-key": keys[0]}
        )
        assert conflict.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
        reads = await asyncio.gather(
            *[send("GET", f"/api/wallet/balance/{u}") for u in [rich, poor] * 4]
        )
        assert all(r.status_code == 200 for r in reads)
        assert (await send("GET", "/no/such/route")).status_code == 404

        after = scrape(base)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        requests = "wallet_http_requests_total"
        assert delta(requests, method="POST", route=TRANSACT, status="200") == topups + replays
        assert delta(requests, method="POST", route=TRANSACT, status="422") == spends_refused + 1
        assert delta(requests, method="GET", route=BALANCE, status="200") == 8
        assert delta(requests, method="GET", route="<unmatched>", status="404") == 1
        timed = "wallet_http_request_duration_seconds_count"
        assert delta(timed, method="POST", route=TRANSACT) == topups + spends_refused + replays + 1
        postings = "wallet_postings_total"
        assert delta(postings, type="TOPUP", outcome="COMPLETED") == topups
        assert delta(postings, type="SPEND", outcome="INSUFFICIENT_FUNDS") == spends_refused
        assert sum(v for (n, _), v in after.items() if n == postings) == topups + spends_refused
        assert delta("wallet_idempotent_replays_total") == replays
        assert delta("wallet_idempotency_conflicts_total") == 1
        posts = topups + spends_refused + replays + 1
        assert delta("wallet_lock_wait_seconds_count") == posts
        # Labels are templates: no user id ever becomes a label value.
        assert not any(rich in dict(labels).get("route", "") for _, labels in after)
        # Gauges: every worker's pool is there, and no subscription is open.
        for pool in ("hot", "primary"):  # asyncpg's (postings, balances) and the engine's (keys)
            idle = value(after, "wallet_db_pool_connections", pool=pool, state="idle")
            # At least one connection went back to its pool (a worker the kernel gave no request
            # opens none: connections open on demand).
            assert idle >= 1, pool
        assert value(after, "wallet_feed_subscribers") == 0
        # Both workers answered some of it (each writes its own files).
        pids = {p.stem.rsplit("_", 1)[1] for p in shared.glob("counter_*.db")}
        assert len(pids) == 2, pids
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_busy_is_counted(metrics_db: str) -> None:
    proc, base = start_server(metrics_db, WALLET_LOCK_TIMEOUT_MS="200")
    try:
        user = await new_user(metrics_db, 10)
        before = value(scrape(base), "wallet_busy_total")
        holder = await asyncpg.connect(metrics_db)
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", uuid.UUID(user)
                )
                async with httpx.AsyncClient(timeout=30) as client:
                    answer = await client.post(
                        f"{base}{TRANSACT}",
                        json=body(user, 1, "SPEND"),
                        headers={"idempotency-key": f"busy-{uuid.uuid4()}"},
                        timeout=30,
                    )
        finally:
            await holder.close()
        assert answer.status_code == 503
        assert answer.json()["code"] == "BUSY"
        assert value(scrape(base), "wallet_busy_total") == before + 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_metrics_need_the_metrics_scope_once_keys_exist(metrics_db: str) -> None:
    async def keys(conn: AsyncConnection) -> tuple[str, str]:
        watcher = await auth.create_key(conn, name="prometheus", scopes=["metrics"])
        reader = await auth.create_key(conn, name="reader", scopes=["read", "transact", "admin"])
        return watcher, reader

    watcher, reader = _run(metrics_db, keys)
    proc, base = start_server(metrics_db)
    try:
        assert httpx.get(f"{base}/metrics").status_code == 401
        refused = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {reader}"})
        assert refused.status_code == 403
        assert refused.json()["code"] == "FORBIDDEN"
        samples = scrape(base, {"authorization": f"Bearer {watcher}"})
        assert any(name == "wallet_http_requests_total" for name, _ in samples)
        # A metrics key reads nothing else.
        other = httpx.get(
            f"{base}/api/wallet/balance/a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            headers={"authorization": f"Bearer {watcher}"},
        )
        assert other.status_code == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)
