"""balanceChanged over graphql-transport-ws, fed by LISTEN/NOTIFY across server processes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import create_database, drop_database, start_server
from tests.factories import Factory
from tests.graphql_client import Subscription, subscribe
from wallet import ledger
from wallet.cli import migrate
from wallet.db.engine import create_engine
from wallet.feed import CHANNEL, asyncpg_dsn

BALANCE_CHANGED = """
subscription Changes($id: UUID!, $slug: String) {
  balanceChanged(userId: $id, assetSlug: $slug) { asset { slug } amount }
}
"""


@pytest.fixture(scope="module")
def other_server(database_url: str) -> Iterator[str]:
    """A second `wallet serve` process on the same database."""
    proc, base = start_server(database_url)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


async def post(
    base: str, user: uuid.UUID, amount: int, kind: str, slug: str = "gold_coins"
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        return await c.post(
            "/api/wallet/transact",
            json={"userId": str(user), "amount": amount, "assetSlug": slug, "type": kind},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )


async def go_live(sub: Subscription, base: str, user: uuid.UUID, slug: str = "gold_coins") -> int:
    """Post 1-coin TOPUPs until one is pushed: from then on the subscription is registered.
    Returns the balance that event carried."""
    for _ in range(50):
        assert (await post(base, user, 1, "TOPUP", slug)).status_code == 200
        try:
            payload = await sub.next(wait=0.5)
        except TimeoutError:
            continue
        amount = int(payload["data"]["balanceChanged"]["amount"])
        while not await sub.nothing_within(0.3):  # drain probes still in flight
            pass
        return amount
    raise AssertionError("the subscription never went live")


async def test_changes_made_on_another_process_arrive_in_order(
    base_url: str, other_server: str, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    async with subscribe(base_url, BALANCE_CHANGED, {"id": str(user)}) as sub:
        balance = await go_live(sub, other_server, user)
        balance = await factory.balance(user)
        expected: list[int] = []
        for amount, kind in [(5, "SPEND"), (7, "TOPUP"), (10_000, "SPEND"), (3, "BONUS")]:
            response = await post(other_server, user, amount, kind)
            if response.status_code == 200:
                balance += amount if kind != "SPEND" else -amount
                expected.append(balance)
            else:
                assert response.json()["code"] == "INSUFFICIENT_FUNDS"
        received = [int((await sub.next())["data"]["balanceChanged"]["amount"]) for _ in expected]
        assert received == expected
        assert await sub.nothing_within(1.0)  # the refused SPEND pushed nothing


async def test_concurrent_changes_are_each_pushed_once(
    base_url: str, other_server: str, factory: Factory
) -> None:
    user = await factory.user(gold=60)
    async with subscribe(base_url, BALANCE_CHANGED, {"id": str(user)}) as sub:
        await go_live(sub, other_server, user)
        start = await factory.balance(user)
        responses = await asyncio.gather(*(post(other_server, user, 4, "SPEND") for _ in range(30)))
        succeeded = sum(r.status_code == 200 for r in responses)
        received = [
            int((await sub.next())["data"]["balanceChanged"]["amount"]) for _ in range(succeeded)
        ]
        assert received == [start - 4 * i for i in range(1, succeeded + 1)]
        assert await sub.nothing_within(1.0)
        assert received[-1] == await factory.balance(user)


async def test_asset_filter(base_url: str, other_server: str, factory: Factory) -> None:
    user = await factory.user(gold=10, diamonds=10)
    variables = {"id": str(user), "slug": "diamonds"}
    async with subscribe(base_url, BALANCE_CHANGED, variables) as sub:
        await go_live(sub, other_server, user, slug="diamonds")
        assert (await post(other_server, user, 2, "SPEND")).status_code == 200  # gold: filtered
        assert (await post(other_server, user, 3, "SPEND", "diamonds")).status_code == 200
        payload = await sub.next()
        assert payload["data"]["balanceChanged"] == {
            "asset": {"slug": "diamonds"},
            "amount": str(await factory.balance(user, "diamonds")),
        }
        assert await sub.nothing_within(1.0)


async def test_a_lost_listener_connection_resyncs_without_losing_changes(
    base_url: str, other_server: str, factory: Factory, engine: AsyncEngine
) -> None:
    user = await factory.user(gold=50)
    async with subscribe(base_url, BALANCE_CHANGED, {"id": str(user)}) as sub:
        await go_live(sub, other_server, user)
        assert await drop_feed_listeners(engine)
        # Posted while the listeners may be away: its notification can be lost...
        assert (await post(other_server, user, 9, "SPEND")).status_code == 200
        final = await factory.balance(user)
        # ...but the resync after reconnecting pushes the balance it left.
        received = int((await sub.next(wait=20))["data"]["balanceChanged"]["amount"])
        assert received == final
        assert await sub.nothing_within(1.0)


async def test_every_change_reaches_a_subscriber_once_in_order_across_listener_restarts(
    base_url: str, factory: Factory, engine: AsyncEngine
) -> None:
    """Subscribe, then post three TOPUPs at once, 50 times, while the feed's listener (re)starts:
    postings that looked for a listener before it registered commit without notifying, those
    after it notify, and the listener re-reads on start, while they commit. A re-read of the
    latest balance alone pushed [53, 62] for [53, 57, 62]. A fourth TOPUP, afterwards, shows
    nothing came twice or out of order before it."""
    for run in range(50):
        user = await factory.user(gold=50)
        async with subscribe(base_url, BALANCE_CHANGED, {"id": str(user)}) as sub:
            await go_live(sub, base_url, user)
            start = await factory.balance(user)
            async with engine.begin() as conn:  # postings see no listener until one registers
                await conn.execute(text("DELETE FROM feed_listeners"))

            async def restart_listeners(delay: float) -> None:
                await asyncio.sleep(delay)
                assert await drop_feed_listeners(engine)

            restart = asyncio.create_task(restart_listeners(run % 5 * 0.004))
            posted = await asyncio.gather(*(post(base_url, user, n, "TOPUP") for n in (3, 4, 5)))
            await restart
            assert [r.status_code for r in posted] == [200, 200, 200]
            assert (await post(base_url, user, 1, "TOPUP")).status_code == 200
            async with engine.connect() as conn:
                page = await ledger.history(conn, user, limit=20)
            expected = sorted(i.balance_after for i in page.items if i.balance_after > start)
            assert len(expected) == 4
            received = []
            for _ in expected:
                try:
                    payload = await sub.next(wait=5)
                except TimeoutError:
                    break
                received.append(int(payload["data"]["balanceChanged"]["amount"]))
            assert received == expected, f"run {run}: pushed {received}, committed {expected}"


async def drop_feed_listeners(engine: AsyncEngine) -> int:
    """Terminate every server's listening connection on the test database; how many there were."""
    async with engine.begin() as conn:
        killed = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'wallet-feed' AND datname = current_database()"
            )
        )
    return int(killed or 0)


async def test_unknown_asset_filter_is_an_error(base_url: str, factory: Factory) -> None:
    user = await factory.user()
    async with subscribe(base_url, BALANCE_CHANGED, {"id": str(user), "slug": "rubies"}) as sub:
        message = await sub.socket.recv()
        assert "ASSET_NOT_FOUND" in str(message)


async def test_postings_notify_only_while_a_listener_is_registered(server_url: str) -> None:
    """NOTIFY serialises commits cluster-wide, so postings skip it when nobody listens."""
    url = await asyncio.to_thread(create_database, server_url, "wallet_notify")
    try:
        await asyncio.to_thread(migrate, url)
        listener = await asyncpg.connect(asyncpg_dsn(url))
        received: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(CHANNEL, lambda *args: received.put_nowait(args[3]))
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                await ledger.ensure_asset(conn, slug="gold_coins", name="Gold Coins")
                user = (await ledger.create_user(conn, username="listener-test")).id

            async def topup() -> None:
                async with engine.begin() as conn:
                    request = ledger.TransactRequest(user, "gold_coins", 5, "TOPUP")
                    await ledger.transact(conn, request, key=str(uuid.uuid4()), principal="")

            await topup()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(received.get(), 0.5)
            await listener.execute("INSERT INTO feed_listeners (pid) VALUES (pg_backend_pid())")
            await topup()
            payload = json.loads(await asyncio.wait_for(received.get(), 5))
            assert (payload["userId"], payload["balance"]) == (str(user), "10")
        finally:
            await listener.close()
            await engine.dispose()
    finally:
        await asyncio.to_thread(drop_database, server_url, url)
