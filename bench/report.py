"""Targets, the Markdown table and the chart, from one run's measurements."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.measure import Cell, Measurement, cell, paired_ratio
from bench.scenarios import CEILINGS, SCENARIOS

LEGACY_READS_PER_S = 4000  # the legacy Node.js service's balance reads on this machine kind


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float
    threshold: str
    passed: bool
    detail: str

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"[{verdict}] {self.name}: {self.value:,.2f} (needs {self.threshold}) {self.detail}"

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


def targets(
    results: Results, *, at: int, hot_wallet: dict[str, Any], audit_ok: bool
) -> list[Target]:
    """The issue's targets at `at` clients; every ratio is a median of back-to-back pairs."""
    found: list[Target] = []
    topup = results.get("topup-many", at)
    if topup is not None:
        ratio = results.ratio("topup-many", "transact", at)
        found.append(
            Target(
                f"topup-many@{at} / one-round-trip ceiling",
                ratio,
                ">= 0.30",
                ratio >= 0.30,
                f"({topup.tps:,.0f} TPS vs {_tps(results, 'transact', at)})",
            )
        )
        found.append(
            Target(
                f"topup-many@{at} p99 latency (ms)",
                topup.p99_ms,
                "<= 50",
                topup.p99_ms <= 50,
                f"(p50 {topup.p50_ms:.1f} ms)",
            )
        )
        hot = results.ratio("topup-many", "transact-hot-row", at)
        found.append(
            Target(
                f"topup-many@{at} / single-hot-row ceiling",
                hot,
                "> 1.00",
                hot > 1.0,
                f"({topup.tps:,.0f} TPS vs {_tps(results, 'transact-hot-row', at)})",
            )
        )
    spend = results.get("spend-hot", at)
    if spend is not None:
        ratio = results.ratio("spend-hot", "spend-one-row", at)
        found.append(
            Target(
                f"spend-hot@{at} / one-row ceiling",
                ratio,
                ">= 0.50",
                ratio >= 0.5,
                f"({spend.tps:,.0f} TPS vs {_tps(results, 'spend-one-row', at)})",
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
    gql = results.get("graphql-transact", at)
    if gql is not None and topup is not None:
        ratio = results.ratio("graphql-transact", "topup-many", at)
        found.append(
            Target(
                f"graphql-transact@{at} / REST transact",
                ratio,
                ">= 0.60",
                ratio >= 0.6,
                f"({gql.tps:,.0f} vs {topup.tps:,.0f} TPS)",
            )
        )
    reads = results.get("read-balance", at)
    if reads is not None:
        ratio = results.ratio("read-balance", "balance-select", at)
        found.append(
            Target(
                f"read-balance@{at} / the route's SELECT under pgbench",
                ratio,
                ">= 0.50",
                ratio >= 0.5,
                f"({reads.tps:,.0f} vs {_tps(results, 'balance-select', at)} per s)",
            )
        )
        found.append(
            Target(
                f"read-balance@{at} requests/s",
                reads.tps,
                f">= {LEGACY_READS_PER_S:,}",
                reads.tps >= LEGACY_READS_PER_S,
                "(the legacy service's reads on this machine kind)",
            )
        )
    return found


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
    order = [(s.name, "service") for s in SCENARIOS] + [(c.name, "ceiling") for c in CEILINGS]
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
        lines.append(f"| {t.name} {t.detail} | {t.value:,.2f} | {t.threshold} | {verdict} |")
    lines.extend(["", *extra])
    return "\n".join(lines) + "\n"


def chart(results: Results, path: Path, *, title: str) -> None:
    """TPS vs clients per scenario, service against its ceiling; and the ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results.clients()
    fig, axes = plt.subplots(2, 3, figsize=(15, 9), constrained_layout=True)
    flat = list(axes.flat)
    for ax, s in zip(flat, SCENARIOS, strict=False):
        _series(ax, results, s.name, levels, "service", "o-", "tab:blue")
        _series(ax, results, s.ceiling, levels, f"ceiling: {s.ceiling}", "s--", "tab:red")
        if s.name == "topup-many":
            _series(ax, results, "transact-hot-row", levels, "ceiling: one hot row", "^:", "k")
            no_notify = [(c, results.get("transact-no-notify", c)) for c in levels]
            points = [(c, x.tps) for c, x in no_notify if x is not None]
            if points:
                ax.plot(*zip(*points, strict=True), "D", color="tab:green", label="no NOTIFY")
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
