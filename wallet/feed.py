"""Balance changes as they commit, from PostgreSQL LISTEN/NOTIFY, fanned out inside one process.

`wallet_transact` calls `pg_notify('wallet_balance', ...)`; PostgreSQL delivers it at commit
(never for a rollback), to every process listening, in commit order. Each process keeps one
listening connection, outside the pool, opened on the first subscription, and registers it in
`feed_listeners`: postings notify only while such a row exists (NOTIFY serialises commits
cluster-wide, so nobody pays for it unless somebody listens). If the connection drops, it
reconnects and tells every subscriber to resynchronise from the database, since notifications
sent while it was away are gone.

A resync (and a notification whose version skips one) makes a subscriber read the entries it
missed, each with its account's balance and version after it, and push every one in order: it
never jumps to the latest balance, so no change is lost between two it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger("wallet.feed")

CHANNEL: Final = "wallet_balance"
RESYNC_AFTER_START_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class BalanceEvent:
    user_id: uuid.UUID
    account_id: int
    asset_slug: str
    amount: int
    version: int
    held: int = 0  # a hold changes it without an entry, so without a new version


class Resync:
    """Sent to subscribers after the listener (re)started: read the entries they may have missed."""


RESYNC: Final = Resync()
FeedItem = BalanceEvent | Resync


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class BalanceFeed:
    def __init__(self, database_url: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._subscribers: dict[uuid.UUID, set[asyncio.Queue[FeedItem]]] = defaultdict(set)
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def subscriber_count(self) -> int:
        """Subscriptions open in this process (the wallet_feed_subscribers gauge)."""
        return sum(len(queues) for queues in self._subscribers.values())

    @contextlib.asynccontextmanager
    async def subscribe(self, user_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[FeedItem]]:
        """A queue of the user's balance events, live from the moment this returns."""
        queue: asyncio.Queue[FeedItem] = asyncio.Queue()
        self._subscribers[user_id].add(queue)
        try:
            if self._task is None:
                self._task = asyncio.create_task(self._listen_forever(), name="balance-feed")
            await asyncio.wait_for(self._listening.wait(), timeout=10)
            yield queue
        finally:
            self._subscribers[user_id].discard(queue)
            if not self._subscribers[user_id]:
                del self._subscribers[user_id]

    def _resync_all(self) -> None:
        for queues in self._subscribers.values():
            for queue in queues:
                queue.put_nowait(RESYNC)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        data = json.loads(payload)
        event = BalanceEvent(
            user_id=uuid.UUID(data["userId"]),
            account_id=int(data["accountId"]),
            asset_slug=data["assetSlug"],
            amount=int(data["balance"]),
            version=int(data["version"]),
            held=int(data.get("held", 0)),
        )
        for queue in self._subscribers.get(event.user_id, ()):
            queue.put_nowait(event)

    @staticmethod
    async def _until_lost(conn: Any, lost: asyncio.Event) -> None:
        """Return when the connection ends; a periodic ping catches a silently dead peer."""
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), timeout=15)
            except TimeoutError:
                try:
                    await conn.execute("SELECT 1", timeout=5)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    return

    async def _listen_forever(self) -> None:
        delay = 0.1
        reconnecting = False
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=5, server_settings={"application_name": "wallet-feed"}
                )
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.warning("feed_connect_failed", error=str(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                conn.add_termination_listener(lambda _conn, event=lost: event.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                # Postings notify only while a listener is registered; forget the dead ones.
                await conn.execute(
                    "DELETE FROM feed_listeners"
                    " WHERE pid NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)"
                )
                await conn.execute(
                    "INSERT INTO feed_listeners (pid) VALUES (pg_backend_pid())"
                    " ON CONFLICT DO NOTHING"
                )
                self._listening.set()
                delay = 0.1
                if reconnecting:
                    self._resync_all()  # what was posted while the connection was away
                # A posting that looked for listeners just before the row above committed may
                # commit without notifying, after any read made now: re-read once it surely has.
                asyncio.get_running_loop().call_later(RESYNC_AFTER_START_S, self._resync_all)
                log.info("feed_listening", reconnected=reconnecting)
                await self._until_lost(conn, lost)
                log.warning("feed_connection_lost")
            finally:
                self._listening.clear()
                reconnecting = True
                if not conn.is_closed():
                    with contextlib.suppress(Exception):  # best effort: a dead row only costs
                        await conn.execute(
                            "DELETE FROM feed_listeners WHERE pid = pg_backend_pid()", timeout=2
                        )
                    await conn.close(timeout=2)
