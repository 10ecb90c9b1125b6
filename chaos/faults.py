"""Fault injectors. Each one breaks something, lifts the fault, and reports what it did; the
caller then times how long the service takes to answer /readyz again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.cluster import Cluster
from chaos.service import Service, ServiceError
from chaos.workload import Wallets

FaultKind = Literal[
    "terminate",  # pg_terminate_backend on random service connections
    "pg-fast",  # PostgreSQL stopped with -m fast, down a moment, started again
    "pg-immediate",  # the same with -m immediate: a crash, WAL recovery on start
    "service-kill",  # SIGKILL the whole `wallet serve`; the supervisor (us) restarts it
    "worker-kill",  # SIGKILL one uvicorn worker; uvicorn's supervisor replaces it
    "lock-hold",  # a side transaction holds a hot wallet's rows longer than lock_timeout
    "slow-lock",  # the same but shorter than lock_timeout: requests wait, then succeed
]
# The faults that take the database or every server process down for a while.
OUTAGES: frozenset[FaultKind] = frozenset({"pg-fast", "pg-immediate", "service-kill"})


@dataclass(slots=True)
class FaultEvent:
    kind: FaultKind
    at_s: float  # since the load started
    duration_s: float  # from breaking to lifting
    detail: str
    recovery_s: float | None = None  # lifting to /readyz 200; None: did not recover in time


@dataclass(slots=True)
class Lab:
    """Everything a fault may touch."""

    cluster: Cluster
    service: Service
    side: AsyncEngine  # connections of our own (application_name 'chaos'), never terminated
    wallets: Wallets
    rng: random.Random
    lock_timeout_s: float
    recovery_timeout_s: float
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # the same instant
    events: list[FaultEvent] = field(default_factory=list)

    def outages(self) -> list[tuple[datetime, datetime]]:
        """When the database or the whole service was down on purpose: from breaking it to its
        return to readiness (the recovery timeout if it never came back)."""
        found = []
        for e in self.events:
            if e.kind in OUTAGES and not e.detail.startswith("skipped"):
                back = e.duration_s + (e.recovery_s or self.recovery_timeout_s)
                down = self.started_at + timedelta(seconds=e.at_s)
                found.append((down, down + timedelta(seconds=back)))
        return found


_SERVICE_BACKENDS = text(
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name = 'wallet'"
)


async def terminate(lab: Lab) -> str:
    async with lab.side.connect() as conn:
        pids = list((await conn.execute(_SERVICE_BACKENDS)).scalars())
        if not pids:
            return "no service connection open"
        chosen = lab.rng.sample(pids, lab.rng.randint(1, max(1, len(pids) // 2)))
        for pid in chosen:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await conn.commit()
    return f"terminated {len(chosen)} of {len(pids)} service connections"


async def _restart(lab: Lab, mode: Literal["fast", "immediate"]) -> str:
    downtime = lab.rng.uniform(0.2, 1.5)
    await lab.cluster.restart(mode, downtime_s=downtime)
    await lab.side.dispose()  # our own connections died with it
    return f"stopped -m {mode}, down {downtime:.2f} s"


async def pg_fast(lab: Lab) -> str:
    return await _restart(lab, "fast")


async def pg_immediate(lab: Lab) -> str:
    return await _restart(lab, "immediate")


async def service_kill(lab: Lab) -> str:
    pid = lab.service.pid
    lab.service.kill()
    lab.service.spawn()
    return f"SIGKILLed process group {pid}, restarted"


async def worker_kill(lab: Lab) -> str:
    workers = lab.service.workers_pids()
    if not workers:
        return "no worker to kill"
    victim = lab.rng.choice(workers)
    lab.service.kill_worker(victim)
    for _ in range(500):  # gone, or a zombie until uvicorn reaps it: at most 5 s
        if victim not in lab.service.workers_pids():
            break
        await asyncio.sleep(0.01)
    return f"SIGKILLed worker pid {victim} (one of {len(workers)})"


async def workers_replaced(lab: Lab, before: int) -> None:
    """Until uvicorn's supervisor (it looks every 0.5 s) has as many workers as before."""
    deadline = time.monotonic() + lab.recovery_timeout_s
    while len(lab.service.workers_pids()) < before:
        if time.monotonic() > deadline:
            raise ServiceError(f"the killed worker was not replaced in {lab.recovery_timeout_s} s")
        await asyncio.sleep(0.05)


async def _hold_hot_wallet(lab: Lab, hold_s: float) -> str:
    user = lab.rng.choice(list(lab.wallets.hot))
    try:
        async with lab.side.connect() as conn, conn.begin():
            await conn.execute(
                text("SELECT id FROM accounts WHERE user_id = :user ORDER BY id FOR UPDATE"),
                {"user": user},
            )
            await asyncio.sleep(hold_s)
    except (DBAPIError, OSError) as error:  # the mixed scenario may restart PostgreSQL under us
        return f"lock on {user} interrupted: {type(error).__name__}"
    return f"held {user}'s rows {hold_s:.2f} s"


async def lock_hold(lab: Lab) -> str:
    return await _hold_hot_wallet(lab, lab.lock_timeout_s + lab.rng.uniform(0.5, 1.5))


async def slow_lock(lab: Lab) -> str:
    return await _hold_hot_wallet(lab, lab.lock_timeout_s * lab.rng.uniform(0.3, 0.8))


INJECTORS: dict[FaultKind, Callable[[Lab], Awaitable[str]]] = {
    "terminate": terminate,
    "pg-fast": pg_fast,
    "pg-immediate": pg_immediate,
    "service-kill": service_kill,
    "worker-kill": worker_kill,
    "lock-hold": lock_hold,
    "slow-lock": slow_lock,
}


async def inject(lab: Lab, kind: FaultKind) -> FaultEvent:
    """Break, lift, then time the service's return to readiness (for a killed worker: to its
    replacement serving too)."""
    began = time.monotonic()
    failed: str | None = None
    workers = len(lab.service.workers_pids()) if kind == "worker-kill" else 0
    try:
        detail = await INJECTORS[kind](lab)
    except (DBAPIError, OSError) as error:  # e.g. terminating while PostgreSQL is down
        detail = f"skipped: {type(error).__name__}: {str(error)[:120]}"
    except ServiceError as error:
        detail, failed = "injected", str(error)
    lifted = time.monotonic()
    event = FaultEvent(kind, at_s=began - lab.started, duration_s=lifted - began, detail=detail)
    if failed is None:
        try:
            await workers_replaced(lab, workers)
            await lab.service.ready(timeout_s=lab.recovery_timeout_s)
            event.recovery_s = time.monotonic() - lifted
        except ServiceError as error:
            failed = str(error)
    if failed is not None:
        event.detail += f"; NOT RECOVERED: {failed}"
    lab.events.append(event)
    return event


async def fault_track(
    lab: Lab, kinds: tuple[FaultKind, ...], every_s: tuple[float, float], stop: asyncio.Event
) -> None:
    """Inject one of `kinds` every `every_s` seconds until `stop`; the last fault is always
    lifted before returning."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=lab.rng.uniform(*every_s))
            return
        except TimeoutError:
            pass
        event = await inject(lab, lab.rng.choice(kinds))
        if event.recovery_s is None:
            return  # no point breaking a service that did not come back; the verdict says so
