"""The hold sweeper: every server process releases expired holds once a second.

Any number of processes and hosts may sweep at once: `wallet_expire_holds` takes only holds no
one else has locked (SKIP LOCKED), so they share the work instead of queueing on it. A hold is
released within a period of its expiry (a capture after expiry is refused even before that).
Database trouble is logged and retried on the next tick; `close` stops between two sweeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from wallet import ledger

log = structlog.get_logger("wallet.sweeper")

SWEEP_PERIOD_S: Final = 1.0
SWEEP_LIMIT: Final = 500  # holds per statement: bounds one statement's locks and time
STOP_GRACE_S: Final = 5.0  # how long close() waits for a sweep in flight before cancelling it


class HoldSweeper:
    def __init__(self, autocommit: AsyncEngine, *, period_s: float = SWEEP_PERIOD_S) -> None:
        self._engine = autocommit  # each sweep statement is its own transaction
        self._period_s = period_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hold-sweeper")

    async def close(self) -> None:
        """Stop after the sweep in flight, if any (cancelled if it outlasts the grace)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_S)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def sweep(self) -> int:
        """Release every hold past its expiry, SWEEP_LIMIT per statement; how many."""
        total = 0
        while not self._stop.is_set():
            async with self._engine.connect() as conn:
                released = await ledger.expire_holds(conn, limit=SWEEP_LIMIT)
            total += released
            if released < SWEEP_LIMIT:
                break
        return total

    async def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                released = await self.sweep()
            except Exception as error:  # database trouble must not end the loop
                if not failing:
                    log.warning(
                        "hold_sweep_failed", error=type(error).__name__, detail=str(error)[:300]
                    )
                failing = True
            else:
                if failing:
                    log.info("hold_sweep_recovered")
                failing = False
                if released:
                    log.debug("holds_expired", count=released)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._period_s)
