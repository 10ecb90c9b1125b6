"""Reads on a hot standby (DATABASE_READ_URL) that never lose a caller's own write.

The rule: a read runs on the replica only once the replica has replayed the primary's WAL up to
where the primary stood when the read began, so every write acknowledged before the read (by
any instance, to any caller) is there. Otherwise (the replica lags past a short wait, is down,
or is no standby) the read runs on the primary, as without a replica: never a 5xx for it.

Costs: the primary's position (`pg_current_wal_lsn()`, no table touched) comes from one query
shared by every read that began before it was sent, so a busy instance asks it about once per
round trip, not once per read; then the replica is asked its replay position (not when a
position it gave before already covers the read: no write since), then the read itself. A
replica that fails is left alone for WALLET_REPLICA_RETRY_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
log = structlog.get_logger("wallet.replica")
Reason = Literal["behind", "down", "not_standby", "failed"]

_PRIMARY_POSITION = text("SELECT pg_current_wal_lsn()::text")
# NULL on a server that is not replaying (a primary, or a promoted standby).
_REPLAYED = text("SELECT pg_last_wal_replay_lsn()::text")
POLL_S = 0.002


@dataclass(frozen=True, slots=True)
class OnReplica(Generic[T]):
    """The read's answer, from the replica."""

    value: T


@dataclass(frozen=True, slots=True)
class ToPrimary:
    """The read belongs to the primary, and why."""

    reason: Reason


class PrimaryPosition:
    """The primary's WAL position, read by a query sent after the caller asked for it.

    Callers that arrive while a query is out wait for the next one (the one out may have been
    sent before their read began); all callers waiting when a query is sent share it.
    """

    def __init__(self, primary: AsyncEngine) -> None:
        self._primary = primary
        self._waiting: asyncio.Future[str] | None = None
        self._fetching: asyncio.Task[None] | None = None

    async def after_now(self) -> str:
        if self._waiting is None:
            self._waiting = asyncio.get_running_loop().create_future()
        waiting = self._waiting
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch_while_waited())
        return await asyncio.shield(waiting)

    async def _fetch_while_waited(self) -> None:
        while self._waiting is not None:
            served, self._waiting = self._waiting, None
            try:
                async with self._primary.connect() as conn:
                    position = (await conn.execute(_PRIMARY_POSITION)).scalar_one()
            except Exception as error:  # every waiter hears it; their reads go to the primary
                served.set_exception(error)
            else:
                served.set_result(str(position))


class Replica:
    """One standby's pool and the rule above: `run` answers from the replica, or says why not."""

    def __init__(
        self,
        replica: AsyncEngine,
        primary: AsyncEngine,
        *,
        max_wait_s: float,
        retry_s: float,
    ) -> None:
        self.engine = replica
        self.position = PrimaryPosition(primary)
        self.max_wait_s = max_wait_s
        self.retry_s = retry_s
        self._down_until = 0.0
        # The furthest replay position seen: a target at or below it needs no asking (replay
        # only moves forward; forgotten whenever the replica fails, as after a restart).
        self._replayed = -1

    async def run(
        self, work: Callable[[AsyncConnection], Awaitable[T]]
    ) -> OnReplica[T] | ToPrimary:
        if time.monotonic() < self._down_until:
            return ToPrimary("down")
        try:
            target = lsn(await self.position.after_now())
        except (DBAPIError, PoolTimeout, OSError):
            return ToPrimary("failed")  # the primary's trouble: its own read will say so
        try:
            conn = await self.engine.connect()
        except (DBAPIError, PoolTimeout, OSError):
            return self._down()
        try:
            deadline = time.monotonic() + self.max_wait_s
            while target > self._replayed:
                replayed = (await conn.execute(_REPLAYED)).scalar()
                if replayed is None:
                    return ToPrimary("not_standby")
                self._replayed = max(self._replayed, lsn(replayed))
                if target <= self._replayed:
                    break
                if time.monotonic() >= deadline:
                    return ToPrimary("behind")
                await asyncio.sleep(POLL_S)
            return OnReplica(await work(conn))
        except OSError:
            return self._down()
        except DBAPIError as error:
            # A lost connection means a replica down; anything else (a statement cancelled by
            # a recovery conflict, say) costs this read a trip to the primary, nothing more.
            if error.connection_invalidated or _sqlstate(error).startswith(("08", "57P")):
                return self._down()
            log.warning(
                "replica_read_failed", sqlstate=_sqlstate(error), error=type(error).__name__
            )
            return ToPrimary("failed")
        finally:
            with contextlib.suppress(DBAPIError, OSError):
                await conn.close()

    def _down(self) -> ToPrimary:
        self._down_until = time.monotonic() + self.retry_s
        self._replayed = -1
        return ToPrimary("down")

    async def dispose(self) -> None:
        await self.engine.dispose()


def lsn(text: str) -> int:
    """A WAL position ('16/B374D848') as a number, to compare."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _sqlstate(error: DBAPIError) -> str:
    return str(getattr(error.orig, "sqlstate", "") or "")
