"""Targets, the Markdown table and the chart, from one run's measurements."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.measure import Cell, Measurement, cell, paired_ratio
from bench.scenarios import (
    ALONE_SCENARIOS,
    AUTH_SCENARIOS,
    CEILINGS,
    FLOOR_SCENARIOS,
    REFERENCE_CEILING,
    SCENARIOS,
    scenario,
)

LEGACY_READS_PER_S = 4000  # the legacy Node.js service's balance reads on this machine kind


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float | None  # None: not measured in this run (the detail says what is missing)
    threshold: str
    passed: bool
    detail: str

    @property
    def shown(self) -> str:
        return "not measured" if self.value is None else f"{self.value:,.2f}"

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"[{verdict}] {self.name}: {self.shown} (needs {self.threshold}) {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Results:
    """All measurements of a run, indexed by (name, clients)."""

    def __init__(self, measurements: Sequence[Measurement]) -> None:
        self.measurements = list(measurements)
        grouped: dict[tuple[str, int], list[Measurement]] = defaultdict(list)
        for m in self.measurements:
            grouped[(m.name, m.clients)].append(m)
        self.runs = dict(grouped)
        self.cells = {key: cell(runs) for key, runs in grouped.items()}

    def get(self, name: str, clients: int) -> Cell | None:
        return self.cells.get((name, clients))

    def ratio(self, numerator: str, denominator: str, clients: int) -> float:
        num = self.runs.get((numerator, clients), [])
        den = self.runs.get((denominator, clients), [])
        return paired_ratio(num, den)

    def clients(self) -> list[int]:
        return sorted({c for _, c in self.cells})


def _not_measured(name: str, threshold: str, results: Results, at: int, *names: str) -> Target:
    """A target this run has no measurement for: it fails, and says which is missing (the
    reference posting when ../shared/reference/dbceiling is not beside the checkout, say)."""
    missing = [n for n in names if results.get(n, at) is None]
    why = (
        ": the team's ../shared/reference/dbceiling is not beside this checkout;"
        " WALLET_BENCH_REFERENCE names where it is"
        if REFERENCE_CEILING in missing
        else ""
    )
    return Target(name, None, threshold, False, f"(no {', '.join(missing)} in this run{why})")


def _ratio_target(
    results: Results, name: str, numerator: str, denominator: str, at: int, needs: float
) -> Target:
    """numerator / denominator at `at` clients (median of back-to-back pairs) >= needs."""
    num, den = results.get(numerator, at), results.get(denominator, at)
    if num is None or den is None:
        return _not_measured(f"{name}@{at}", f">= {needs:.2f}", results, at, numerator, denominator)
    ratio = results.ratio(numerator, denominator, at)
    return Target(
        f"{name}@{at}",
        ratio,
        f">= {needs:.2f}",
        ratio >= needs,
        f"({num.tps:,.0f} vs {den.tps:,.0f} per s)",
    )


def _p99_target(results: Results, name: str, at: int, limit_ms: float) -> Target:
    found = results.get(name, at)
    if found is None:
        return _not_measured(
            f"{name}@{at} p99 latency (ms)", f"<= {limit_ms:.0f}", results, at, name
        )
    return Target(
        f"{name}@{at} p99 latency (ms)",
        found.p99_ms,
        f"<= {limit_ms:.0f}",
        found.p99_ms <= limit_ms,
        f"(p50 {found.p50_ms:.1f} ms)",
    )


def _latency_target(results: Results, name: str, baseline: str, *, at: int, most: float) -> Target:
    """`name`'s median latency at `at` clients, at most `most` times `baseline`'s."""
    found, base = results.get(name, at), results.get(baseline, at)
    if found is None or base is None or not base.p50_ms:
        return _not_measured(
            f"{name} / {baseline}@{at}: p50 latency", f"<= {most:.2f}", results, at, name, baseline
        )
    ratio = found.p50_ms / base.p50_ms
    return Target(
        f"{name} / {baseline}@{at}: p50 latency",
        ratio,
        f"<= {most:.2f}",
        ratio <= most,
        f"({found.p50_ms:.2f} vs {base.p50_ms:.2f} ms; p99 {found.p99_ms:.1f} vs"
        f" {base.p99_ms:.1f} ms)",
    )


def targets(
    results: Results, *, at: int, hot_wallet: dict[str, Any], audit_ok: bool
) -> list[Target]:
    """The issues' targets at `at` clients; every ratio is a median of back-to-back pairs."""
    found: list[Target] = [
        _ratio_target(
            results, "read-balance / floor", "read-balance", "floor/read-balance", at, 0.7
        ),
        _p99_target(results, "read-balance", at, 25),
        _ratio_target(results, "topup-many / floor", "topup-many", "floor/topup-many", at, 0.8),
        _p99_target(results, "topup-many", at, 50),
        _ratio_target(
            results,
            "posting SQL ceiling / reference posting",
            "transact",
            REFERENCE_CEILING,
            at,
            0.65,
        ),
        _ratio_target(
            results, "graphql-wallet / read-balance", "graphql-wallet", "read-balance", at, 0.35
        ),
        # What GraphQL itself costs: the floor's Strawberry answers the same query with the same
        # SQL and nothing else (bench/floor.py); the service against it, and it against the bar.
        _ratio_target(
            results,
            "graphql-wallet / the floor's graphql-wallet",
            "graphql-wallet",
            "floor/graphql-wallet",
            at,
            0.7,
        ),
        _ratio_target(
            results,
            "the floor's graphql-wallet / the floor's read-balance",
            "floor/graphql-wallet",
            "floor/read-balance",
            at,
            0.35,
        ),
        _ratio_target(
            results, "graphql-transact / REST transact", "graphql-transact", "topup-many", at, 0.8
        ),
        _ratio_target(
            results,
            "graphql-transact / the floor's graphql-transact",
            "graphql-transact",
            "floor/graphql-transact",
            at,
            0.8,
        ),
        _ratio_target(
            results,
            "the floor's graphql-transact / the floor's topup-many",
            "floor/graphql-transact",
            "floor/topup-many",
            at,
            0.8,
        ),
        _ratio_target(
            results, "auth on / open: topup-many", "auth/topup-many", "topup-many", at, 0.9
        ),
        _ratio_target(
            results, "auth on / open: read-balance", "auth/read-balance", "read-balance", at, 0.9
        ),
        _ratio_target(
            results, "topup-many / its SQL under pgbench", "topup-many", "transact", at, 0.3
        ),
        _ratio_target(
            results,
            "topup-many / single-hot-row ceiling",
            "topup-many",
            "transact-hot-row",
            at,
            1.0,
        ),
        # Group commit (the moonshot): past the one-posting-per-call ceiling, and never slower
        # than each posting alone (the same service with WALLET_GROUP_COMMIT_MAX=1).
        _ratio_target(
            results,
            "group commit: topup-many / its SQL under pgbench",
            "topup-many",
            "transact",
            at,
            1.0,
        ),
        _ratio_target(
            results,
            "group commit / each alone: topup-many",
            "topup-many",
            "alone/topup-many",
            at,
            1.0,
        ),
        _latency_target(results, "topup-many", "alone/topup-many", at=1, most=1.1),
        _ratio_target(
            results, "transfer-many / its SQL under pgbench", "transfer-many", "transfer", at, 0.3
        ),
        _ratio_target(
            results, "spend-hot / one-row ceiling", "spend-hot", "spend-one-row", at, 0.5
        ),
    ]
    topup = results.get("topup-many", at)
    batch = _fixed(results, "batch-bonus-1000")
    batch_name = f"batch of 1,000 BONUS: postings/s / topup-many@{at}"
    if batch is not None and topup is not None:
        postings = batch.tps * scenario("batch-bonus-1000").postings_per_request
        found.append(
            Target(
                batch_name,
                postings / topup.tps if topup.tps else 0.0,
                ">= 5.00",
                postings >= 5 * topup.tps,
                f"({postings:,.0f} postings/s at {batch.clients} clients vs {topup.tps:,.0f})",
            )
        )
    else:
        missing = [n for n, c in (("batch-bonus-1000", batch), ("topup-many", topup)) if not c]
        found.append(
            Target(batch_name, None, ">= 5.00", False, f"(no {', '.join(missing)} in this run)")
        )
    small = _fixed(results, "batch-atomic-100")
    if small is None:
        found.append(
            Target(
                "atomic batch of 100: median latency (ms)",
                None,
                "<= 100",
                False,
                "(no batch-atomic-100 in this run)",
            )
        )
    else:
        found.append(
            Target(
                "atomic batch of 100: median latency (ms)",
                small.p50_ms,
                "<= 100",
                small.p50_ms <= 100,
                f"(p99 {small.p99_ms:.1f} ms, {small.clients} client)",
            )
        )
    found.append(
        Target(
            "spend-hot double spends (balance vs initial - SPENDs; audit)",
            float(abs(hot_wallet.get("discrepancy", 0))),
            "0 and audit passes",
            bool(hot_wallet.get("ok")) and audit_ok,
            f"({hot_wallet.get('spends', 0):,} SPENDs; audit {'passed' if audit_ok else 'FAILED'})",
        )
    )
    return found


def _fixed(results: Results, name: str) -> Cell | None:
    """The cell of a scenario measured at one client count only."""
    levels = scenario(name).levels
    return results.get(name, levels[0]) if levels else None


def _us(cpu: dict[str, float], key: str) -> str:
    return f"{cpu[key]:,.0f}" if key in cpu else ""


def _tps(results: Results, name: str, clients: int) -> str:
    found = results.get(name, clients)
    return f"{found.tps:,.0f}" if found else "n/a"


def markdown(
    results: Results,
    *,
    found_targets: Sequence[Target],
    header: str,
    extra: Sequence[str] = (),
) -> str:
    levels = results.clients()
    lines = [header, ""]
    lines.append("### Service vs its ceiling (successful requests per second; median of runs)")
    lines.append("")
    lines.append("| scenario | ceiling | " + " | ".join(f"{c} clients" for c in levels) + " |")
    lines.append("|---|---|" + "---:|" * len(levels))
    for s in SCENARIOS:
        row = [f"`{s.name}`", f"`{s.ceiling}`"]
        for c in levels:
            svc, ceil = results.get(s.name, c), results.get(s.ceiling, c)
            if svc is None or ceil is None:
                row.append("")
                continue
            row.append(
                f"{svc.tps:,.0f} / {ceil.tps:,.0f} (**{results.ratio(s.name, s.ceiling, c):.2f}**)"
            )
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("### Every cell")
    lines.append("")
    lines.append(
        "| kind | name | clients | runs | TPS (median) | p50 ms | p99 ms | errors | all TPS"
        " | CPU µs/ok: service | CPU µs/ok: PostgreSQL | cores: service/pg/load/others/idle |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    services = [
        *(s.name for s in SCENARIOS),
        *(f"floor/{n}" for n in FLOOR_SCENARIOS),
        *(f"auth/{n}" for n in AUTH_SCENARIOS),
        *(f"alone/{n}" for n in ALONE_SCENARIOS),
    ]
    order = [
        *((n, "service") for n in services),
        *((c.name, "ceiling") for c in CEILINGS),
        (REFERENCE_CEILING, "ceiling"),
    ]
    for name, kind in order:
        for c in levels:
            found = results.get(name, c)
            if found is None:
                continue
            cpu = found.cpu
            cores = "/".join(
                f"{cpu.get(k, 0):.2f}"
                for k in ("service", "postgres", "load_generator", "others", "idle")
            )
            lines.append(
                f"| {kind} | `{name}` | {c} | {found.runs} | {found.tps:,.0f} | "
                f"{found.p50_ms:.1f} | {found.p99_ms:.1f} | {found.errors} | "
                f"{', '.join(f'{t:,.0f}' for t in found.all_tps)} | "
                f"{_us(cpu, 'service_us_per_ok') if kind == 'service' else ''} | "
                f"{_us(cpu, 'postgres_us_per_ok')} | {cores} |"
            )
    lines.append("")
    lines.append("### Targets")
    lines.append("")
    lines.append("| target | measured | needs | result |")
    lines.append("|---|---:|---|---|")
    for t in found_targets:
        verdict = "PASS" if t.passed else "**FAIL**"
        lines.append(f"| {t.name} {t.detail} | {t.shown} | {t.threshold} | {verdict} |")
    lines.extend(["", *extra])
    return "\n".join(lines) + "\n"


def chart(results: Results, path: Path, *, title: str) -> None:
    """TPS vs clients per scenario, service against its ceiling; and the ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results.clients()
    fig, axes = plt.subplots(3, 3, figsize=(15, 13), constrained_layout=True)
    flat = list(axes.flat)
    for ax, s in zip(flat, SCENARIOS, strict=False):
        _series(ax, results, s.name, levels, "service", "o-", "tab:blue")
        _series(ax, results, s.ceiling, levels, f"ceiling: {s.ceiling}", "s--", "tab:red")
        if s.name in FLOOR_SCENARIOS:
            _series(ax, results, f"floor/{s.name}", levels, "floor app", "D-.", "tab:green")
        if s.name == "topup-many":
            _series(ax, results, "transact-hot-row", levels, "ceiling: one hot row", "^:", "k")
            _series(ax, results, "alone/topup-many", levels, "each posting alone", "v-", "tab:gray")
        values = [x.tps for c in levels for n in (s.name, s.ceiling) if (x := results.get(n, c))]
        if values and max(values) > 10 * max(1.0, min(values)):
            ax.set_yscale("log")  # a ceiling far above the service: keep both readable
        ax.set_title(f"{s.name}: {s.title}", fontsize=10)
        _axes(ax, levels, "successful requests / s")
    ratio_ax = flat[len(SCENARIOS)]
    for s in SCENARIOS:
        points = [(c, results.ratio(s.name, s.ceiling, c)) for c in levels]
        points = [(c, r) for c, r in points if r > 0]
        if points:
            ratio_ax.plot(*zip(*points, strict=True), "o-", label=s.name)
    ratio_ax.set_yscale("log")
    ratio_ax.set_title("service / ceiling (paired medians)", fontsize=10)
    _axes(ratio_ax, levels, "ratio")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _series(
    ax: Any, results: Results, name: str, levels: list[int], label: str, style: str, color: str
) -> None:
    points = [(c, x.tps) for c in levels if (x := results.get(name, c)) is not None]
    if points:
        ax.plot(*zip(*points, strict=True), style, color=color, label=label)


def _axes(ax: Any, levels: list[int], ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def rss_summary(start: dict[int, float], end: dict[int, float]) -> list[dict[str, float]]:
    return [
        {"pid": pid, "start_mb": round(start[pid], 1), "end_mb": round(end.get(pid, 0.0), 1)}
        for pid in sorted(start)
    ]


def median_or_zero(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0
