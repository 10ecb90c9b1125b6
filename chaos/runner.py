"""One scenario end to end: a fresh database, the service, load plus faults, then the verdict."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.cluster import Cluster
from chaos.faults import FaultEvent, Lab, fault_track
from chaos.judge import Verdict, database_now, judge, quiesce, seed_wallets
from chaos.ops import CLIENT_POOL, Op
from chaos.scenarios import Scenario
from chaos.service import Service, ServiceError
from chaos.workload import EVERY_KIND, Client, Load, Mix, RetryPolicy, auth_headers, resolve
from wallet import auth
from wallet.cli import migrate
from wallet.db.engine import create_engine
from wallet.seed import seed


@dataclass(frozen=True, slots=True)
class Budget:
    """How hard and how long each scenario pushes."""

    duration_s: float = 10.0
    max_requests: int = 200_000
    clients: int = 64
    hot: int = 4
    cold: int = 200
    recovery_timeout_s: float = 30.0
    drain_timeout_s: float = 120.0
    seed: int = 4
    # Authentication: mint an API key in each scenario's database and use it (the default);
    # or send `api_key` as given; or, with `open_service`, run the service with no credentials.
    api_key: str | None = None
    open_service: bool = False


@dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    ops: list[Op]
    events: list[FaultEvent]
    verdict: Verdict
    load_s: float
    wall_s: float
    clients: int
    shutdown_code: int | None
    service_starts: int
    log_file: Path
    harness_lag_s: float  # the worst delay of the harness's event loop during the load
    notes: list[str] = field(default_factory=list)  # failures beyond the judge's

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.notes


def _checks(result: ScenarioResult, policy: RetryPolicy) -> list[str]:
    """What must hold besides the ledger: recovery, prompt BUSYs, no 500s, no hangs."""
    s, notes = result.scenario, []
    attempts = [a for op in result.ops for a in op.attempts]
    for event in result.events:
        if event.recovery_s is None:
            notes.append(f"no recovery after {event.kind} at {event.at_s:.1f} s: {event.detail}")
    if s.tracks and not any(not e.detail.startswith("skipped") for e in result.events):
        notes.append("no fault was injected: raise --duration")
    starved = sum(a.code == CLIENT_POOL for a in attempts)
    if starved:
        notes.append(f"the harness's own HTTP pool had no connection free {starved} times")
    internal = [op for op in result.ops if any(a.kind == "internal" for a in op.attempts)]
    if internal:
        count = sum(a.kind == "internal" for op in internal for a in op.attempts)
        examples = ", ".join(f"{op.key} ({op.surface} {op.kind})" for op in internal[:3])
        notes.append(
            f"{count} answers were 500 INTERNAL_ERROR (transient trouble must be 503), e.g. to"
            f" {examples}"
        )
    rejected = [
        (op.kind, answer.code)
        for op in result.ops
        if op.answer is not None
        for answer in [op.answer, *(op.answer.results or [])]
        if answer.kind == "rejected"
    ]
    if rejected:
        codes = sorted({f"{kind} {code}" for kind, code in rejected})
        notes.append(f"{len(rejected)} requests (or batch operations) were refused with {codes}")
    no_retry_after = sum(
        a.kind in ("busy", "unavailable") and a.status == 503 and a.retry_after is None
        for a in attempts
    )
    if no_retry_after:
        notes.append(f"{no_retry_after} 503 answers without Retry-After")
    hangs = sum(
        a.kind == "timeout" and a.latency_s >= policy.max_timeout_s * 0.99 for a in attempts
    )
    if hangs:
        notes.append(f"{hangs} attempts got no answer in {policy.max_timeout_s:.0f} s (a hang)")
    busy = [a.latency_s for a in attempts if a.kind == "busy"]
    if s.expect_busy and not busy:
        notes.append("the fault never made the service answer 503 BUSY")
    slowest = max((a.latency_s for a in attempts if a.kind == "acked"), default=0.0)
    bound = s.busy_bound_s(slowest)
    if s.expect_busy and busy and max(busy) > bound:
        notes.append(f"a BUSY answer took {max(busy):.2f} s (bound {bound:.2f} s)")
    if result.shutdown_code != 0:
        notes.append(f"SIGTERM: wallet serve exited with {result.shutdown_code}, not 0")
    return notes


CHAOS_KEY = "chaos"


async def _watch_lag(stop: asyncio.Event, worst: list[float]) -> None:
    """How late the harness's own event loop runs: latencies include it, so report it."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.05)
        worst[0] = max(worst[0], time.monotonic() - before - 0.05)


async def _credentials(engine: AsyncEngine, budget: Budget) -> tuple[str | None, str | None]:
    """The bearer token the clients send, and the principal the ledger should record."""
    if budget.api_key is not None:
        return budget.api_key, None  # someone else's credential: its name is not ours to know
    if budget.open_service:
        return None, ""
    async with engine.begin() as conn:
        secret = await auth.create_key(conn, name=CHAOS_KEY, scopes=["read", "transact"])
    return secret, CHAOS_KEY


async def run_scenario(
    cluster: Cluster, scenario: Scenario, budget: Budget, *, logs: Path
) -> ScenarioResult:
    wall = time.monotonic()
    rng = random.Random(f"{budget.seed}:{scenario.name}")
    name = f"chaos_{scenario.name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    url = await cluster.create_database(name)
    await asyncio.to_thread(migrate, url)
    side = create_engine(
        url,
        pool_size=4,
        lock_timeout_ms=30_000,
        statement_timeout_ms=300_000,  # the judge reads every posting of the scenario at once
        application_name="chaos",
    )
    async with side.begin() as conn:
        await seed(conn)
    wallets, seed_balances = await seed_wallets(side, rng, hot=budget.hot, cold=budget.cold)
    token, principal = await _credentials(side, budget)
    headers = auth_headers(token)
    service = Service(
        url,
        log_file=logs / f"{scenario.name}.log",
        workers=scenario.workers,
        env=scenario.env,
        headers=headers,
    )
    clients = budget.clients * scenario.clients_factor
    policy = RetryPolicy(
        timeout_s=scenario.short_timeouts or (10.0, 10.0),
        short_timeout_share=scenario.short_timeout_share,
    )
    limits = httpx.Limits(max_connections=clients + 16, max_keepalive_connections=clients + 16)
    notes: list[str] = []
    shutdown_code: int | None = None
    lag = [0.0]
    try:
        await service.start(timeout_s=budget.recovery_timeout_s)
        async with httpx.AsyncClient(limits=limits, headers=headers) as http:
            client = Client(http, [service.base_url])
            load = Load(
                client=client,
                wallets=wallets,
                policy=policy,
                mix=Mix(kinds=EVERY_KIND),
                clients=clients,
                max_requests=budget.max_requests,
                seed=rng.randrange(2**32),
            )
            lab = Lab(
                cluster=cluster,
                service=service,
                side=side,
                wallets=wallets,
                rng=rng,
                lock_timeout_s=scenario.lock_timeout_ms / 1000,
                recovery_timeout_s=budget.recovery_timeout_s,
            )
            stop_faults = asyncio.Event()
            started = time.monotonic()
            load_task = asyncio.create_task(load.run())
            lag_task = asyncio.create_task(_watch_lag(stop_faults, lag))
            tracks = [
                asyncio.create_task(fault_track(lab, t.faults, t.every_s, stop_faults))
                for t in scenario.tracks
            ]
            await asyncio.wait({load_task}, timeout=budget.duration_s)
            load.stop()
            stop_faults.set()
            await asyncio.gather(*tracks, lag_task)  # each lifts its last fault first
            load_s = time.monotonic() - started
            try:
                await service.ready(timeout_s=budget.recovery_timeout_s)
            except ServiceError as error:
                notes.append(f"not ready after the last fault: {error}")
            done, _ = await asyncio.wait({load_task}, timeout=budget.drain_timeout_s)
            if not done:
                notes.append(f"clients still retrying after {budget.drain_timeout_s:.0f} s")
                load_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load_task
        # A fresh HTTP client: the load's may have been cancelled mid-request just above.
        async with httpx.AsyncClient(limits=limits, headers=headers) as http:
            await resolve(Client(http, [service.base_url]), load.ops)
        stopped_at = await database_now(side)
        shutdown_code = await service.terminate()
        if not await quiesce(side):
            notes.append("service connections still open 30 s after it stopped")
        verdict = await judge(
            side,
            load.ops,
            wallets,
            seed_balances,
            principal=principal,
            stopped_at=stopped_at,
            outages=lab.outages(),
        )
    finally:
        if service.running():
            service.kill()
        await side.dispose()

    result = ScenarioResult(
        scenario=scenario,
        ops=load.ops,
        events=lab.events,
        verdict=verdict,
        load_s=load_s,
        wall_s=time.monotonic() - wall,
        clients=clients,
        shutdown_code=shutdown_code,
        service_starts=service.starts,
        log_file=service.log_file,
        harness_lag_s=lag[0],
        notes=notes,
    )
    result.notes += _checks(result, policy)
    return result
