"""Figures per scenario, as a Markdown table for people and JSON for machines."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from chaos.faults import FaultEvent
from chaos.runner import ScenarioResult
from chaos.scenarios import Scenario


@dataclass(frozen=True, slots=True)
class Figures:
    scenario: str
    what: str
    ok: bool
    clients: int
    load_s: float
    sent: int  # logical requests, each with its own key
    attempts: int  # HTTP requests, retries included
    acknowledged: int
    refused: int
    rejected: int
    retried: int  # requests sent more than once
    ambiguous_resolved: int  # a timeout, drop or 5xx (effect unknown), then a definite answer
    replayed: int  # answered from the stored outcome: an earlier attempt had been decided
    unresolved: int
    lost: int
    duplicated: int
    mismatched: int
    balance_breaches: int
    wallets_checked: int
    audit: str
    faults: int
    recovery_max_s: float | None
    recovery_mean_s: float | None
    busy: int
    busy_max_s: float | None
    unavailable: int
    internal: int
    timeouts: int
    dropped: int
    unsent: int
    acked_per_s: float
    p50_s: float | None  # from the first attempt to the definite answer, pauses included
    p99_s: float | None
    shutdown_code: int | None
    harness_lag_s: float | None
    problems: list[str]
    answers: dict[str, int]  # every attempt, by "surface kind status code"


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figures(result: ScenarioResult) -> Figures:
    ops, v = result.ops, result.verdict
    kinds = Counter(a.kind for op in ops for a in op.attempts)
    answered = [op for op in ops if op.answer is not None]
    recoveries = [e.recovery_s for e in result.events if e.recovery_s is not None]
    injected = [e for e in result.events if not e.detail.startswith("skipped")]
    busy = [a.latency_s for op in ops for a in op.attempts if a.kind == "busy"]
    durations = [op.elapsed_s for op in answered]
    return Figures(
        scenario=result.scenario.name,
        what=result.scenario.what,
        ok=result.ok,
        clients=result.clients,
        load_s=round(result.load_s, 1),
        sent=len(ops),
        attempts=sum(len(op.attempts) for op in ops),
        acknowledged=sum(op.answer.kind == "acked" for op in answered if op.answer),
        refused=sum(op.answer.kind == "refused" for op in answered if op.answer),
        rejected=sum(op.answer.kind == "rejected" for op in answered if op.answer),
        retried=sum(len(op.attempts) > 1 for op in ops),
        ambiguous_resolved=sum(op.ambiguous for op in answered),
        replayed=sum(op.answer.replayed for op in answered if op.answer),
        unresolved=v.unresolved,
        lost=len(v.lost),
        duplicated=len(v.duplicated),
        mismatched=len(v.mismatched) + len(v.refused_moved),
        balance_breaches=len(v.balance_breaches),
        wallets_checked=v.wallets_checked,
        audit="pass" if v.audit is not None and v.audit.ok else "FAIL",
        faults=len(injected),
        recovery_max_s=round(max(recoveries), 3) if recoveries else None,
        recovery_mean_s=round(statistics.fmean(recoveries), 3) if recoveries else None,
        busy=kinds["busy"],
        busy_max_s=round(max(busy), 3) if busy else None,
        unavailable=kinds["unavailable"],
        internal=kinds["internal"],
        timeouts=kinds["timeout"],
        dropped=kinds["dropped"],
        unsent=kinds["unsent"],
        acked_per_s=round(v.acknowledged / result.load_s, 1) if result.load_s else 0.0,
        p50_s=_round(_quantile(durations, 0.5)),
        p99_s=_round(_quantile(durations, 0.99)),
        shutdown_code=result.shutdown_code,
        harness_lag_s=round(result.harness_lag_s, 3),
        problems=[*result.notes, *v.problems()][:50],
        answers=dict(
            Counter(
                f"{op.surface} {a.kind} {a.status or '-'} {a.code or '-'}"
                for op in ops
                for a in op.attempts
            ).most_common()
        ),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def markdown(rows: list[Figures], *, header: str) -> str:
    lines = [
        header,
        "",
        "| scenario | sent | acked | refused | retried | ambiguous→resolved | lost | duplicated"
        " | audit | faults | recovery (max) | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for f in rows:
        lines.append(
            f"| {f.scenario} | {f.sent} | {f.acknowledged} | {f.refused} | {f.retried}"
            f" | {f.ambiguous_resolved} | {f.lost} | {f.duplicated} | {f.audit} | {f.faults}"
            f" | {_s(f.recovery_max_s)} | {'PASS' if f.ok else '**FAIL**'} |"
        )
    lines += [
        "",
        "| scenario | clients | load | attempts | acked/s | p50 / p99 | replayed | 503 BUSY (max)"
        " | 503 unavailable | timeouts | dropped | unsent | 500s | unresolved | wallets"
        " | SIGTERM exit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in rows:
        lines.append(
            f"| {f.scenario} | {f.clients} | {f.load_s:.0f} s | {f.attempts} | {f.acked_per_s:.0f}"
            f" | {_s(f.p50_s)} / {_s(f.p99_s)} | {f.replayed}"
            f" | {f.busy} ({_s(f.busy_max_s)}) | {f.unavailable} | {f.timeouts} | {f.dropped}"
            f" | {f.unsent} | {f.internal} | {f.unresolved} | {f.wallets_checked}"
            f" | {f.shutdown_code} |"
        )
    failed = [f for f in rows if not f.ok]
    for f in failed:
        lines += ["", f"**{f.scenario} failed:**", *(f"- {p}" for p in f.problems)]
    return "\n".join(lines) + "\n"


def crashed(scenario: Scenario, error: str) -> Figures:
    """A scenario the harness could not finish: no figures, the error as the problem."""
    return Figures(
        scenario=scenario.name,
        what=scenario.what,
        ok=False,
        clients=0,
        load_s=0.0,
        sent=0,
        attempts=0,
        acknowledged=0,
        refused=0,
        rejected=0,
        retried=0,
        ambiguous_resolved=0,
        replayed=0,
        unresolved=0,
        lost=0,
        duplicated=0,
        mismatched=0,
        balance_breaches=0,
        wallets_checked=0,
        audit="-",
        faults=0,
        recovery_max_s=None,
        recovery_mean_s=None,
        busy=0,
        busy_max_s=None,
        unavailable=0,
        internal=0,
        timeouts=0,
        dropped=0,
        unsent=0,
        acked_per_s=0.0,
        p50_s=None,
        p99_s=None,
        shutdown_code=None,
        harness_lag_s=None,
        problems=[error],
        answers={},
    )


def as_json(rows: list[Figures], events: list[list[FaultEvent]]) -> list[dict[str, Any]]:
    out = []
    for f, scenario_events in zip(rows, events, strict=True):
        item = asdict(f)
        item["events"] = [asdict(e) for e in scenario_events]
        out.append(item)
    return out
