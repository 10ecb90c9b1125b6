"""Where the machine's CPU went during a run: the service's workers, PostgreSQL, the load
generator, and everything else (other people's jobs on a shared machine). Throughput on a noisy
2-core box says little alone; CPU per request says what each side costs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class Snapshot:
    machine_busy: float
    machine_idle: float
    service: float
    postgres: float
    bench: float  # this process and its reaped children: wrk, pgbench, py-spy


def _busy() -> tuple[float, float]:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = float(sum(times))
    return total - idle, idle


def _own(p: psutil.Process, *, children: bool) -> float:
    t = p.cpu_times()
    own = t.user + t.system
    return own + (t.children_user + t.children_system if children else 0.0)


def snapshot(service_pids: Iterable[int]) -> Snapshot:
    busy, idle = _busy()
    service = 0.0
    for pid in service_pids:
        with contextlib.suppress(psutil.Error):
            service += _own(psutil.Process(pid), children=False)
    postgres = 0.0
    for p in psutil.process_iter(["name", "ppid"]):
        with contextlib.suppress(psutil.Error):
            if p.info["name"] != "postgres":
                continue
            parent_is_postgres = False
            with contextlib.suppress(psutil.Error):
                parent_is_postgres = psutil.Process(p.info["ppid"]).name() == "postgres"
            # The postmaster also carries the time of backends that have exited (pgbench's).
            postgres += _own(p, children=not parent_is_postgres)
    bench = _own(psutil.Process(os.getpid()), children=True)
    return Snapshot(busy, idle, service, postgres, bench)


def split(before: Snapshot, after: Snapshot, seconds: float) -> dict[str, float]:
    """Cores used by each party over `seconds` (2.0 = both cores of this machine)."""
    if seconds <= 0:
        return {}
    busy = after.machine_busy - before.machine_busy
    service = after.service - before.service
    postgres = after.postgres - before.postgres
    bench = after.bench - before.bench
    return {
        "service": round(service / seconds, 3),
        "postgres": round(postgres / seconds, 3),
        "load_generator": round(bench / seconds, 3),
        "others": round(max(0.0, busy - service - postgres - bench) / seconds, 3),
        "idle": round((after.machine_idle - before.machine_idle) / seconds, 3),
    }
