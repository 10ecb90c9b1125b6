"""Two `wallet serve` instances behind Debian's nginx running deploy/nginx.conf, on loopback:
concurrent SPENDs on one wallet, one idempotency key sent to both instances at once, and a
subscription held by one instance seeing postings made through the other."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, create_database, drop_database, free_port, start_server
from tests.factories import Factory
from tests.graphql_client import Subscription, subscribe
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.seed import seed

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BALANCE_CHANGED = """
subscription Changes($id: UUID!) { balanceChanged(userId: $id) { asset { slug } amount } }
"""


@dataclass(frozen=True)
class Deployment:
    balancer: str  # nginx
    instances: tuple[str, str]  # each `wallet serve`, directly
    database_url: str


def nginx_config(template: str, *, port: int, upstreams: list[int], directory: Path) -> str:
    """deploy/nginx.conf with this test's instances, port and (writable) paths."""
    servers = "".join(
        f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=5s;\n" for p in upstreams
    )
    config, count = re.subn(r"(?m)^\s*server 127\.0\.0\.1:\d+ [^\n]*\n", "", template)
    assert count == 2, "deploy/nginx.conf lists its upstream servers differently now"
    config = config.replace("        least_conn;\n", "        least_conn;\n" + servers, 1)
    config = config.replace("listen 8080;", f"listen 127.0.0.1:{port};", 1)
    config = config.replace("/var/log/nginx/", f"{directory}/", 1)
    temp = "".join(
        f"    {kind}_temp_path {directory}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return config.replace("http {\n", "http {\n" + temp, 1)


@pytest.fixture(scope="module")
def deployment(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not os.access(NGINX, os.X_OK):
        reason = f"nginx is not installed ({NGINX}); .ci/run installs Debian's nginx-light"
        if os.environ.get("WALLET_REQUIRE_NGINX"):
            pytest.fail(reason)
        pytest.skip(reason)
    url = create_database(server_url, "wallet_balancer")
    migrate(url)
    _run(url, seed)
    directory = tmp_path_factory.mktemp("nginx")
    # Small pools: the SPENDs on one wallet queue on its row lock anyway, and the shared server's
    # connections are not ours alone.
    first, first_base = start_server(url, WALLET_POOL_SIZE="4")
    second, second_base = start_server(url, WALLET_POOL_SIZE="4")
    port = free_port()
    upstreams = [int(b.rsplit(":", 1)[1]) for b in (first_base, second_base)]
    template = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    conf = directory / "nginx.conf"
    conf.write_text(nginx_config(template, port=port, upstreams=upstreams, directory=directory))
    nginx = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(directory),
            "-c",
            str(conf),
            "-g",
            f"daemon off; pid {directory}/nginx.pid; error_log {directory}/error.log;",
        ],
        stderr=subprocess.PIPE,
    )
    balancer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert nginx.poll() is None, nginx.stderr.read().decode() if nginx.stderr else ""
            try:
                if httpx.get(f"{balancer}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "nginx never answered"
            time.sleep(0.1)
        yield Deployment(balancer, (first_base, second_base), url)
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
        for proc in (first, second):
            proc.terminate()
            proc.wait(timeout=30)
        drop_database(server_url, url)


@pytest.fixture
async def factory(deployment: Deployment) -> AsyncIterator[Factory]:
    engine = create_engine(deployment.database_url, pool_size=2)
    yield Factory(engine)
    await engine.dispose()


def counters(base: str) -> dict[str, float]:
    """An instance's own metrics (asked directly: the balancer refuses /metrics)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0) + sample.value
    return totals


async def spend(
    base: str, user: uuid.UUID, amount: int, *, key: str | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return await client.post(
            "/api/wallet/transact",
            json={
                "userId": str(user),
                "amount": amount,
                "assetSlug": "gold_coins",
                "type": "SPEND",
            },
            headers={"idempotency-key": key or str(uuid.uuid4())},
        )


def test_metrics_are_not_served_through_the_balancer(deployment: Deployment) -> None:
    assert httpx.get(f"{deployment.balancer}/metrics").status_code == 404


async def test_concurrent_spends_through_the_balancer_pass_exactly_while_affordable(
    deployment: Deployment, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    before = [counters(b).get("wallet_postings_total", 0) for b in deployment.instances]
    answers = await asyncio.gather(*[spend(deployment.balancer, user, 7) for _ in range(30)])
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 14 + [422] * 16  # 14 x 7 = 98 <= 100 < 105
    assert all(a.json()["code"] == "INSUFFICIENT_FUNDS" for a in answers if a.status_code == 422)
    assert await factory.balance(user) == 2
    after = [counters(b).get("wallet_postings_total", 0) for b in deployment.instances]
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 30
    assert all(n > 0 for n in served), f"the balancer sent everything to one instance: {served}"


async def test_one_key_sent_to_both_instances_at_once_moves_coins_once(
    deployment: Deployment, factory: Factory
) -> None:
    user = await factory.user(gold=50)
    key = f"both-{uuid.uuid4()}"
    targets = [*deployment.instances, *[deployment.balancer] * 6]
    answers = await asyncio.gather(*[spend(target, user, 20, key=key) for target in targets])
    assert [a.status_code for a in answers] == [200] * len(targets)
    assert len({a.json()["data"]["transactionId"] for a in answers}) == 1
    fresh = [a for a in answers if a.headers.get("idempotent-replayed") != "true"]
    assert len(fresh) == 1
    assert await factory.balance(user) == 30


async def instance_holding(deployment: Deployment) -> int:
    """Which instance the balancer gave the subscription to (its subscriber gauge says)."""
    for _ in range(50):
        held = [counters(b).get("wallet_feed_subscribers", 0) for b in deployment.instances]
        if sorted(held) == [0, 1]:
            return held.index(1)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no single instance holds the subscription: {held}")


async def next_amount(sub: Subscription) -> int:
    return int((await sub.next())["data"]["balanceChanged"]["amount"])


async def test_a_subscription_on_one_instance_sees_postings_made_through_the_other(
    deployment: Deployment, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    async with subscribe(deployment.balancer, BALANCE_CHANGED, {"id": str(user)}) as sub:
        holder = await instance_holding(deployment)
        other = deployment.instances[1 - holder]
        # The first posting the subscription hears proves it is live; it may be a probe's.
        for _ in range(50):
            assert (await spend(other, user, 1)).status_code == 200
            try:
                seen = await next_amount(sub)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("the subscription never heard the other instance")
        while not await sub.nothing_within(0.3):
            pass
        balance = await factory.balance(user)
        assert balance <= seen
        for amount in (5, 11):
            assert (await spend(other, user, amount)).status_code == 200
            balance -= amount
            assert await next_amount(sub) == balance
