"""One measured run (the service under wrk, or a ceiling under pgbench) and medians of them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["service", "ceiling"]


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str  # a scenario (service) or a ceiling
    kind: Kind
    clients: int
    rep: int
    duration_s: float
    requests: int  # answered (wrk) or transactions finished (pgbench)
    ok: int  # succeeded: a 200 whose body says so, or a committed pgbench transaction
    errors: int  # everything else: non-2xx, wrong body, socket errors, failed transactions
    tps: float  # successes per second
    p50_ms: float
    p99_ms: float
    mean_ms: float
    # Cores each party used during the run (bench.cpu.split), and CPU µs per success.
    cpu: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Cell:
    """The median of the repetitions of one (name, clients)."""

    name: str
    kind: Kind
    clients: int
    runs: int
    tps: float
    p50_ms: float
    p99_ms: float
    errors: int
    all_tps: list[float]
    cpu: dict[str, float]  # medians of the runs' CPU split and per-request costs

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def cell(runs: Sequence[Measurement]) -> Cell:
    first = runs[0]
    return Cell(
        name=first.name,
        kind=first.kind,
        clients=first.clients,
        runs=len(runs),
        tps=statistics.median(m.tps for m in runs),
        p50_ms=statistics.median(m.p50_ms for m in runs),
        p99_ms=statistics.median(m.p99_ms for m in runs),
        errors=sum(m.errors for m in runs),
        all_tps=[round(m.tps, 1) for m in runs],
        cpu={
            key: round(statistics.median(m.cpu.get(key, 0.0) for m in runs), 3)
            for key in runs[0].cpu
        },
    )


def paired_ratio(numerators: Sequence[Measurement], denominators: Sequence[Measurement]) -> float:
    """Median of per-repetition ratios: each pair ran back to back, under the same noise."""
    by_rep = {m.rep: m.tps for m in denominators}
    ratios = [m.tps / by_rep[m.rep] for m in numerators if by_rep.get(m.rep)]
    return statistics.median(ratios) if ratios else 0.0
