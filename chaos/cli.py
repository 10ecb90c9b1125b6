"""`python -m chaos`: every scenario (or the ones named) on a private PostgreSQL, then the table."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import structlog

from chaos.cluster import Cluster
from chaos.faults import FaultEvent
from chaos.report import Figures, as_json, crashed, figures, markdown
from chaos.runner import Budget, run_scenario
from chaos.scenarios import BY_NAME, SCENARIOS, Scenario
from wallet.embedded import EmbeddedError

RESULTS = Path(__file__).resolve().parent / "results"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    p.add_argument(
        "--scenarios",
        default="all",
        help=f"comma-separated, from: {', '.join(BY_NAME)} (default: all)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per scenario")
    p.add_argument(
        "--max-requests", type=int, default=200_000, help="requests per scenario, at most"
    )
    p.add_argument("--clients", type=int, default=64, help="concurrent clients")
    p.add_argument("--hot", type=int, default=4, help="hot wallets (half the traffic)")
    p.add_argument("--cold", type=int, default=200, help="cold wallets")
    p.add_argument("--seed", type=int, default=4, help="random seed of the workload and faults")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument(
        "--api-key",
        default=os.environ.get("WALLET_API_KEY") or None,
        help="send this as `Authorization: Bearer ...` (default: $WALLET_API_KEY) instead of"
        " minting a key in each scenario's database",
    )
    auth.add_argument(
        "--no-auth",
        action="store_true",
        help="create no key: the service runs open (loopback only)",
    )
    p.add_argument("--recovery-timeout", type=float, default=30.0, help="seconds to /readyz 200")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the run's files go")
    p.add_argument(
        "--publish", action="store_true", help="also write the table to <results>/latest.md"
    )
    p.add_argument("--keep", action="store_true", help="keep the cluster's directory and logs")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p


def _selected(spec: str) -> list[Scenario]:
    if spec == "all":
        return list(SCENARIOS)
    unknown = [n for n in spec.split(",") if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(unknown)} (see --list)")
    return [BY_NAME[n] for n in spec.split(",")]


async def _run_all(
    scenarios: list[Scenario], budget: Budget, cluster: Cluster, logs: Path
) -> tuple[list[Figures], list[list[FaultEvent]]]:
    rows: list[Figures] = []
    events: list[list[FaultEvent]] = []
    for scenario in scenarios:
        print(f"== {scenario.name}: {scenario.what}", flush=True)
        deadline = budget.duration_s + budget.drain_timeout_s + 300  # a stuck harness, bounded
        problem: str | None = None
        try:
            async with asyncio.timeout(deadline):
                result = await run_scenario(cluster, scenario, budget, logs=logs)
        except TimeoutError:
            problem = f"the scenario did not finish within {deadline:.0f} s"
        except Exception as error:  # report it as a failed scenario, then go on with the rest
            logging.getLogger("chaos").exception("scenario %s crashed", scenario.name)
            problem = f"the harness crashed: {type(error).__name__}: {error}"
        if problem is not None:
            print(f"   FAIL: {problem}", flush=True)
            rows.append(crashed(scenario, problem))
            events.append([])
            continue
        row = figures(result)
        rows.append(row)
        events.append(result.events)
        print(
            f"   {'PASS' if row.ok else 'FAIL'}: {row.sent} sent, {row.acknowledged} acked,"
            f" {row.refused} refused, {row.retried} retried, {row.ambiguous_resolved}"
            f" ambiguous->resolved, {row.lost} lost, {row.duplicated} duplicated, audit"
            f" {row.audit}, {row.faults} faults, recovery max {row.recovery_max_s} s"
            f" ({result.wall_s:.0f} s wall)",
            flush=True,
        )
        for problem in row.problems:
            print(f"   - {problem}", flush=True)
    return rows, events


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: the scenarios' clean-up (service, cluster) runs on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:22} {s.what}")
        return 0
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    scenarios = _selected(args.scenarios)
    budget = Budget(
        duration_s=args.duration,
        max_requests=args.max_requests,
        clients=args.clients,
        hot=args.hot,
        cold=args.cold,
        recovery_timeout_s=args.recovery_timeout,
        seed=args.seed,
        api_key=None if args.no_auth else args.api_key,
        open_service=args.no_auth,
    )
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(keep=args.keep)
    logs = cluster.base / "logs"
    logs.mkdir()
    rows: list[Figures] = []
    try:
        cluster.start()
        rows, events = _run_with_uvloop(scenarios, budget, cluster, logs)
    except EmbeddedError as error:  # e.g. as root, under a private directory: it says what to do
        print(f"chaos: {error}", file=sys.stderr)
        return 2
    finally:
        if not all(r.ok for r in rows) and not args.keep:  # keep the evidence of a failure
            kept = args.results / f"run-{stamp}-logs"
            shutil.copytree(logs, kept, dirs_exist_ok=True)
            if cluster.log_file.exists():
                shutil.copy(cluster.log_file, kept / "postgresql.log")
            print(f"logs of the failed run: {kept}")
        cluster.close()
    wall = time.monotonic() - started
    header = (
        f"Chaos run {stamp}: {len(scenarios)} scenarios, {budget.duration_s:.0f} s of load each,"
        f" {budget.clients} clients, {budget.hot} hot + {budget.cold} cold wallets,"
        f" seed {budget.seed}; {wall:.0f} s wall in all."
    )
    table = markdown(rows, header=header)
    print()
    print(table)
    document = {
        "stamp": stamp,
        "budget": {k: v for k, v in asdict(budget).items() if k != "api_key"},
        "wall_s": round(wall, 1),
        "scenarios": as_json(rows, events),
    }
    (args.results / f"run-{stamp}.md").write_text(table)
    (args.results / f"run-{stamp}.json").write_text(json.dumps(document, indent=2))
    if args.publish:
        (args.results / "latest.md").write_text(table)
    print(f"results: {args.results / f'run-{stamp}.json'}")
    return 0 if all(r.ok for r in rows) else 1


def _run_with_uvloop(
    scenarios: list[Scenario], budget: Budget, cluster: Cluster, logs: Path
) -> tuple[list[Figures], list[list[FaultEvent]]]:
    """uvloop when present (it is, with uvicorn[standard]): the harness shares two cores with
    the service and PostgreSQL, so its own overhead matters."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run_all(scenarios, budget, cluster, logs))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run_all(scenarios, budget, cluster, logs))


if __name__ == "__main__":
    sys.exit(main())
