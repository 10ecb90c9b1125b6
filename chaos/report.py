"""Figures per scenario, as a Markdown table for people and JSON for machines."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from chaos.faults import FaultEvent
from chaos.ops import OP_KINDS, Batch, Op
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
    conservation_breaches: int  # the bank invariant, per asset
    hold_breaches: int
    available_breaches: int
    wallets_checked: int
    holds_checked: int
    expiry_lag_max_s: float | None  # the longest a hold stayed HELD past its expiry
    late_expiries: int  # holds released more than EXPIRY_GRACE_S after it
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
    by_kind: dict[str, dict[str, int]]  # requests of each kind: sent, acked, refused
    answers: dict[str, int]  # every attempt, by "surface request attempt status code"


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
        conservation_breaches=len(v.conservation),
        hold_breaches=len(v.hold_breaches),
        available_breaches=len(v.available_breaches),
        wallets_checked=v.wallets_checked,
        holds_checked=v.holds_checked,
        expiry_lag_max_s=v.expiry_lag_max_s,
        late_expiries=len(v.late_expiries),
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
        by_kind=_by_kind(ops),
        answers=dict(
            Counter(
                f"{op.surface} {op.kind} {a.kind} {a.status or '-'} {a.code or '-'}"
                for op in ops
                for a in op.attempts
            ).most_common()
        ),
    )


def _by_kind(ops: list[Op]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {k: {"sent": 0, "acked": 0, "refused": 0} for k in OP_KINDS}
    for op in ops:
        row = counts[op.kind]
        row["sent"] += 1
        if op.answer is not None and op.answer.kind in ("acked", "refused"):
            row[op.answer.kind] += 1
        if isinstance(op.request, Batch):
            row["atomic"] = row.get("atomic", 0) + op.request.atomic
            row["operations"] = row.get("operations", 0) + len(op.request.items)
    for kind, row in counts.items():
        answered = [op.elapsed_s for op in ops if op.kind == kind and op.answer is not None]
        p50 = _quantile(answered, 0.5)
        if p50 is not None:
            row["p50_ms"] = round(p50 * 1000)
    return counts


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _breaches(count: int) -> str:
    return "ok" if count == 0 else f"**{count} breaches**"


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
    lines += [
        "",
        "| scenario | transact | transfer | reverse | hold | capture | void | batch"
        " | bank invariant | holds | available ≥ 0 | expiry lag (max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for f in rows:
        cells = [
            f"{f.by_kind[k]['acked']} / {f.by_kind[k]['refused']}" if k in f.by_kind else "-"
            for k in OP_KINDS
        ]
        lines.append(
            f"| {f.scenario} | {' | '.join(cells)} | {_breaches(f.conservation_breaches)}"
            f" | {f.holds_checked} checked, {_breaches(f.hold_breaches)}"
            f" | {_breaches(f.available_breaches)} | {_s(f.expiry_lag_max_s)}"
            f"{'' if not f.late_expiries else f' (**{f.late_expiries} late**)'} |"
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
        conservation_breaches=0,
        hold_breaches=0,
        available_breaches=0,
        wallets_checked=0,
        holds_checked=0,
        expiry_lag_max_s=None,
        late_expiries=0,
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
        by_kind={},
        answers={},
    )


def as_json(rows: list[Figures], events: list[list[FaultEvent]]) -> list[dict[str, Any]]:
    out = []
    for f, scenario_events in zip(rows, events, strict=True):
        item = asdict(f)
        item["events"] = [asdict(e) for e in scenario_events]
        out.append(item)
    return out
