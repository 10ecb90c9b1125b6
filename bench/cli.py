"""`python -m bench run|soak|profile`: see bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import make_url

from bench import capture, cpu, load, pgbench, report, seeding, service
from bench.measure import Measurement
from bench.scenarios import (
    ALONE_ENV,
    CEILINGS,
    ORDER,
    REFERENCE_CEILING,
    REQUESTS,
    SAMPLE_USER,
    SCENARIOS,
    SECOND_USER,
    ceiling,
    scenario,
)
from wallet import auth as wallet_auth
from wallet.db.engine import create_engine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# What a kind of run beside the service sets in its environment.
_KIND_ENV: dict[str, dict[str, str]] = {"alone": ALONE_ENV}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_list(name: str, default: str) -> list[int]:
    return [int(x) for x in os.environ.get(name, default).replace(",", " ").split()]


@dataclass(frozen=True, slots=True)
class Config:
    server_url: str
    workers: int
    clients: list[int]
    duration_s: int
    target_clients: int
    target_reps: int
    warmup_s: int
    users: int
    history_users: int
    keep_database: bool
    results: Path
    service_env: dict[str, str]
    scenarios: list[str]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        return cls(
            server_url=args.server_url,
            workers=args.workers,
            clients=args.clients,
            duration_s=args.duration,
            target_clients=args.target_clients,
            target_reps=args.reps,
            warmup_s=args.warmup,
            users=args.users,
            history_users=min(args.history_users, args.users),
            keep_database=args.keep_database,
            results=args.results,
            service_env=dict(item.split("=", 1) for item in args.service_env),
            scenarios=[scenario(n.strip()).name for n in args.scenarios.split(",") if n.strip()],
        )


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {message}", flush=True)


def _check_dependencies() -> None:
    missing = [m for m in ("matplotlib",) if not _importable(m)]
    if missing:
        raise SystemExit(
            f"bench needs {', '.join(missing)} (pyproject's `bench` dependency group):"
            " install the lock, or `uv pip install --python .venv/bin/python --group bench`"
        )


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def code_state() -> dict[str, Any]:
    """Which service code was measured: the commit, and files changed on top of it."""
    import wallet

    root = Path(wallet.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "wallet")
    return {
        "root": str(root),
        "commit": git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)",
        "uncommitted_service_files": [line[3:] for line in changed.splitlines()],
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


@contextlib.contextmanager
def fresh_database(cfg: Config, clock: Clock) -> Iterator[str]:
    """A new wallet_bench_* database, migrated and seeded; dropped afterwards unless kept."""
    name = seeding.new_database_name()
    url = asyncio.run(seeding.create_database(cfg.server_url, name))
    clock.say(f"database {name}")
    try:
        seeded = asyncio.run(seeding.prepare(url, users=cfg.users, history_users=cfg.history_users))
        clock.say(
            f"migrated and seeded: {seeded.users:,} users, {seeded.postings:,} postings"
            f" through wallet_transact in {seeded.seconds:.0f} s"
        )
        yield url
    finally:
        if cfg.keep_database:
            clock.say(f"kept database {name}")
        else:
            asyncio.run(seeding.drop_database(cfg.server_url, name))


def _audit(url: str) -> tuple[bool, str]:
    done = subprocess.run(
        [str(service.WALLET), "audit"],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    return done.returncode == 0, done.stdout.strip()


def _scripts(url: str, cfg: Config) -> tuple[dict[str, str], dict[str, Any]]:
    """pgbench scripts from the service's own SQL, and what each request cost."""
    captured = asyncio.run(capture.capture_requests(url, REQUESTS))
    known = frozenset({SAMPLE_USER, seeding.HOT_WALLET})
    scripts: dict[str, str] = {}
    for c in CEILINGS:
        statements = captured[c.capture].statements
        try:
            scripts[c.name] = pgbench.script(
                statements,
                random_user=SAMPLE_USER if c.random_user else None,
                known=known,
                users=cfg.users if c.capture != "graphql-wallet" else cfg.history_users,
                replace=c.replace,
                second_user=SECOND_USER if c.second_user else None,
            )
        except ValueError as error:
            if not c.diagnostic:
                raise
            print(f"skipping diagnostic {c.name}: {error}")
    costs = {name: cap.summary() for name, cap in captured.items()}
    return scripts, costs


@dataclass
class Beside:
    """What is measured beside the service: the floor app on the same database, the service
    with an API key configured on a copy of it (each started for its runs only, so that idle
    pools do not crowd the server's connection slots), and the reference posting's database."""

    auth_url: str
    auth_key: str
    reference_url: str
    logs: Path


class Runner:
    """Runs one measured cell: maintenance first, then pgbench or wrk, with the CPU split."""

    def __init__(
        self,
        cfg: Config,
        url: str,
        svc: service.Service,
        scripts: dict[str, str],
        beside: Beside | None = None,
    ):
        self.cfg, self.url, self.svc, self.scripts = cfg, url, svc, scripts
        self.beside = beside
        self.tag = f"b{int(time.time())}"
        self.worker_pids = [w.pid for w in svc.workers()]

    def _measured(
        self, run: Callable[[], Measurement], *, pids: list[int] | None = None
    ) -> Measurement:
        asyncio.run(seeding.maintenance(self.url))
        pids = pids or self.worker_pids
        before, started = cpu.snapshot(pids), time.monotonic()
        m = run()
        after, seconds = cpu.snapshot(pids), time.monotonic() - started
        split: dict[str, float] = cpu.split(before, after, seconds)
        if m.ok:
            for party in ("service", "postgres"):
                split[f"{party}_us_per_ok"] = round(split[party] * seconds / m.ok * 1e6, 1)
        return replace(m, cpu=split)

    def ceiling(self, name: str, clients: int, rep: int, duration_s: int) -> Measurement:
        return self._measured(lambda: self._ceiling(name, clients, rep, duration_s))

    def service(self, name: str, clients: int, rep: int, duration_s: int) -> Measurement:
        return self._measured(lambda: self._service(name, clients, rep, duration_s))

    def _ceiling(self, name: str, clients: int, rep: int, duration_s: int) -> Measurement:
        return pgbench.run(
            self.url,
            self.scripts[name],
            name=name,
            clients=clients,
            duration_s=duration_s,
            rep=rep,
            env=dict(os.environ),
        )

    def other(self, kind: str, name: str, clients: int, rep: int, duration_s: int) -> Measurement:
        """A floor, auth-on, group-commit-off or reference run (named `floor/<scenario>` and
        the like)."""
        if self.beside is None:
            raise RuntimeError("no floor, auth-on service or reference beside this run")
        beside = self.beside
        if kind == "reference":
            return self._measured(
                lambda: pgbench.run(
                    beside.reference_url,
                    reference_script(),
                    name=name,
                    clients=clients,
                    duration_s=duration_s,
                    rep=rep,
                    env=dict(os.environ),
                )
            )
        floor, auth_on = kind == "floor", kind == "auth"
        with service.serve(
            beside.auth_url if auth_on else self.url,
            workers=self.cfg.workers,
            log_path=beside.logs / f"{kind}.log",
            extra_env=None if floor else {**self.cfg.service_env, **_KIND_ENV.get(kind, {})},
            floor=floor,
        ) as target:
            auth = beside.auth_key if auth_on else "-"
            label, base = f"{kind}/{name}", target.base_url
            # Fresh processes: warm their pools and prepared statements first, unmeasured.
            self._service(
                name, clients, -1, self.cfg.warmup_s, base_url=base, label=label, auth=auth
            )
            return self._measured(
                lambda: self._service(
                    name, clients, rep, duration_s, base_url=base, label=label, auth=auth
                ),
                pids=[w.pid for w in target.workers()],
            )

    def _service(
        self,
        name: str,
        clients: int,
        rep: int,
        duration_s: int,
        *,
        base_url: str | None = None,
        label: str | None = None,
        auth: str = "-",
    ) -> Measurement:
        s = scenario(name)
        return load.run(
            base_url or self.svc.base_url,
            auth=auth,
            name=label or name,
            mode=s.mode,
            clients=clients,
            duration_s=duration_s,
            rep=rep,
            users=self.cfg.users,
            history_users=self.cfg.history_users,
            hot_user=str(seeding.HOT_WALLET),
            tag=f"{self.tag}-{(label or name).replace('/', '-')}-c{clients}-r{rep}",
            query=s.query,
        )


def _wanted(scenarios: list[str]) -> set[str]:
    """The chosen scenarios, their ceilings, and the ceilings their targets name."""
    wanted = set(scenarios) | {scenario(n).ceiling for n in scenarios}
    if "topup-many" in wanted:
        wanted |= {"transact-hot-row", REFERENCE_CEILING}
    return wanted


async def _bench_key(url: str) -> str:
    """An API key on the auth-on copy: once one exists, that service requires credentials."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await wallet_auth.create_key(conn, name="bench", scopes=["read", "transact"])
    finally:
        await engine.dispose()


REFERENCE_DIR = Path(
    os.environ.get(
        "WALLET_BENCH_REFERENCE",
        str(Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "dbceiling"),
    )
)


def reference_script() -> str:
    """The reference's one-round-trip posting over 64 Treasury rows, as its run.sh runs it."""
    return (REFERENCE_DIR / "wallet_sharded_fn.sql").read_text()


@contextlib.contextmanager
def beside_the_service(cfg: Config, url: str, out: Path, clock: Clock) -> Iterator[Beside]:
    """The floor on `url`, an auth-on service on a copy of it, and the reference database."""
    source = make_url(url).database
    auth_name, reference_name = f"{source}_auth", f"{source}_reference"
    auth_url = asyncio.run(seeding.clone_database(cfg.server_url, str(source), auth_name))
    reference_url = asyncio.run(seeding.create_database(cfg.server_url, reference_name))
    try:
        secret = asyncio.run(_bench_key(auth_url))
        if REFERENCE_DIR.is_dir():
            asyncio.run(seeding.load_reference(reference_url, str(REFERENCE_DIR)))
        else:
            clock.say(f"no reference at {REFERENCE_DIR} (WALLET_BENCH_REFERENCE): not measured")
        yield Beside(auth_url, secret, reference_url, out)
    finally:
        for name in (auth_name, reference_name):
            asyncio.run(seeding.drop_database(cfg.server_url, name))


def _line(m: Measurement) -> str:
    c = m.cpu
    return (
        f"{m.kind:7} {m.name:18} c={m.clients:<3} {m.tps:9,.0f}/s  p50 {m.p50_ms:6.1f}  "
        f"p99 {m.p99_ms:6.1f} ms  errors {m.errors}  cores: service {c.get('service', 0):.2f}"
        f" pg {c.get('postgres', 0):.2f} load {c.get('load_generator', 0):.2f}"
        f" others {c.get('others', 0):.2f} idle {c.get('idle', 0):.2f}"
    )


def cmd_run(cfg: Config) -> int:
    _check_dependencies()
    clock = Clock()
    load.ensure_wrk()
    pgbench.pgbench_binary()
    run_id = time.strftime("%Y%m%dT%H%M%S")
    out = cfg.results / "tmp" / run_id
    out.mkdir(parents=True, exist_ok=True)
    facts = {"machine": machine(), "code": code_state()}
    with fresh_database(cfg, clock) as url:
        facts["postgres"] = asyncio.run(seeding.server_facts(url))
        scripts, costs = _scripts(url, cfg)
        for name, text in scripts.items():
            (out / f"{name}.pgbench.sql").write_text(text)
        clock.say("captured the service's SQL: " + _costs_line(costs))
        measurements: list[Measurement] = []
        warmups: list[Measurement] = []
        with (
            beside_the_service(cfg, url, out, clock) as beside,
            service.serve(
                url, workers=cfg.workers, log_path=out / "serve.log", extra_env=cfg.service_env
            ) as svc,
        ):
            runner = Runner(cfg, url, svc, scripts, beside)
            rss_start = svc.worker_rss_mb()
            clock.say(f"wallet serve --workers {cfg.workers}: RSS {_mb(rss_start)}")
            for name in cfg.scenarios:
                levels = scenario(name).levels
                warmups.append(runner.service(name, levels[0] if levels else 8, -1, cfg.warmup_s))
            clock.say("warmed up")
            wanted = _wanted(cfg.scenarios)
            for clients in cfg.clients:
                reps = cfg.target_reps if clients == cfg.target_clients else 1
                for rep in range(reps):
                    for kind, name in ORDER:
                        if name not in wanted:
                            continue
                        at_target = clients == cfg.target_clients
                        if kind in ("auth", "reference") and not at_target:
                            continue
                        if kind == "reference" and not REFERENCE_DIR.is_dir():
                            continue
                        if kind in ("floor", "auth", "reference", "alone"):
                            m = runner.other(kind, name, clients, rep, cfg.duration_s)
                        elif kind == "service" and scenario(name).levels:
                            if not at_target:  # measured once per target round, at its level
                                continue
                            level = scenario(name).levels[0]
                            m = runner.service(name, level, rep, cfg.duration_s)
                        elif kind == "ceiling":
                            c = ceiling(name)
                            if name not in scripts or (
                                c.diagnostic and clients != cfg.target_clients
                            ):
                                continue
                            m = runner.ceiling(name, clients, rep, cfg.duration_s)
                        else:
                            m = runner.service(name, clients, rep, cfg.duration_s)
                        measurements.append(m)
                        clock.say(_line(m))
            rss_end = svc.worker_rss_mb()
        clock.say(f"stopped the service: RSS {_mb(rss_end)}")
        hot = asyncio.run(seeding.hot_wallet_check(url))
        spend_runs = [
            m for m in [*measurements, *warmups] if m.name in ("spend-hot", "spend-one-row")
        ]
        acknowledged = sum(m.ok for m in spend_runs) + 2  # + the capture's two SPENDs
        hot["acknowledged"] = acknowledged
        hot["lost_acknowledged"] = max(0, acknowledged - int(hot["spends"]))
        hot["ok"] = bool(hot["ok"]) and hot["lost_acknowledged"] == 0
        audit_ok, audit_text = _audit(url)
        clock.say(f"hot wallet: {json.dumps(hot)}; audit {'passed' if audit_ok else 'FAILED'}")
    results = report.Results(measurements)
    found = report.targets(results, at=cfg.target_clients, hot_wallet=hot, audit_ok=audit_ok)
    document = {
        "run_id": run_id,
        "config": {
            "workers": cfg.workers,
            "clients": cfg.clients,
            "duration_s": cfg.duration_s,
            "target_clients": cfg.target_clients,
            "target_reps": cfg.target_reps,
            "users": cfg.users,
            "history_users": cfg.history_users,
            "service_env": cfg.service_env,
        },
        **facts,
        "round_trips_per_request": costs,
        "measurements": [m.as_json() for m in measurements],
        "cells": [c.as_json() for c in results.cells.values()],
        "targets": [t.as_json() for t in found],
        "hot_wallet": hot,
        "audit": {"ok": audit_ok, "report": audit_text},
        "worker_rss_mb": report.rss_summary(rss_start, rss_end),
        "elapsed_s": round(time.monotonic() - clock.started),
    }
    header = (
        f"## Bench run {run_id}: {cfg.workers} workers, {cfg.duration_s} s per run,"
        f" {cfg.target_reps} paired runs at {cfg.target_clients} clients"
    )
    extra = [
        "### Round trips per request (captured from the service itself)",
        "",
        "| request | statements | round trips |",
        "|---|---:|---:|",
        *[f"| {k} | {v['statements']} | {v['round_trips']} |" for k, v in costs.items()],
        "",
        f"Worker RSS (MB), start → end of this run: {_rss_text(rss_start, rss_end)}.",
    ]
    md = report.markdown(results, found_targets=found, header=header, extra=extra)
    title = (
        f"wallet bench {run_id}: {facts['machine']['cores']} cores,"
        f" PostgreSQL {facts['postgres'].get('server_version', '?')}, {cfg.workers} workers"
    )
    for directory in (out, cfg.results):
        stem = "latest" if directory == cfg.results else "run"
        (directory / f"{stem}.json").write_text(json.dumps(document, indent=1) + "\n")
        (directory / f"{stem}.md").write_text(md)
        report.chart(results, directory / f"{stem}.png", title=title)
    print()
    print(md)
    for t in found:
        print(t.line())
    clock.say(f"done: {cfg.results / 'latest.md'}, latest.json, latest.png")
    return 0


def _costs_line(costs: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v['statements']} stmt/{v['round_trips']} trips" for k, v in costs.items()
    )


def _mb(rss: dict[int, float]) -> str:
    return ", ".join(f"{pid}: {mb:.0f} MB" for pid, mb in sorted(rss.items()))


def _rss_text(start: dict[int, float], end: dict[int, float]) -> str:
    return "; ".join(
        f"worker {pid}: {mb:.0f} → {end.get(pid, 0):.0f}" for pid, mb in sorted(start.items())
    )


def cmd_soak(cfg: Config, *, seconds: int, clients: int, chunk_s: int) -> int:
    """Mixed load for `seconds`, RSS of every worker sampled between chunks."""
    clock = Clock()
    load.ensure_wrk()
    out = cfg.results / "tmp" / time.strftime("soak-%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    with (
        fresh_database(cfg, clock) as url,
        service.serve(
            url, workers=cfg.workers, log_path=out / "serve.log", extra_env=cfg.service_env
        ) as svc,
    ):
        runner = Runner(cfg, url, svc, {})
        started = time.monotonic()
        samples.append({"t_s": 0, "rss_mb": svc.worker_rss_mb(), "tps": None})
        clock.say(f"start: RSS {_mb(samples[0]['rss_mb'])}")
        chunk = 0
        while time.monotonic() - started < seconds:
            s = SCENARIOS[chunk % len(SCENARIOS)]
            left = seconds - (time.monotonic() - started)
            m = load.run(
                svc.base_url,
                name=s.name,
                mode=s.mode,
                clients=clients,
                duration_s=max(1, min(chunk_s, round(left))),
                rep=chunk,
                users=cfg.users,
                history_users=cfg.history_users,
                hot_user=str(seeding.HOT_WALLET),
                tag=f"{runner.tag}-soak-{chunk}",
                query=s.query,
            )
            rss = svc.worker_rss_mb()
            samples.append(
                {
                    "t_s": round(time.monotonic() - started),
                    "rss_mb": rss,
                    "scenario": s.name,
                    "tps": round(m.tps),
                    "errors": m.errors,
                }
            )
            clock.say(f"{s.name:18} {m.tps:8,.0f}/s errors {m.errors}  RSS {_mb(rss)}")
            chunk += 1
    warm = next((x for x in samples if x["t_s"] >= 60), samples[-1])
    end = samples[-1]
    verdicts = []
    for pid, start_mb in samples[0]["rss_mb"].items():
        warm_mb, end_mb = warm["rss_mb"].get(pid, 0.0), end["rss_mb"].get(pid, 0.0)
        growth = (end_mb - warm_mb) / warm_mb if warm_mb else 0.0
        verdicts.append(
            {
                "pid": pid,
                "start_mb": round(start_mb, 1),
                "after_60s_mb": round(warm_mb, 1),
                "end_mb": round(end_mb, 1),
                "growth_after_60s": round(growth, 4),
                "flat": growth <= 0.05,
            }
        )
    flat = all(v["flat"] for v in verdicts)
    document = {
        "code": code_state(),
        "machine": machine(),
        "seconds": seconds,
        "clients": clients,
        "workers": cfg.workers,
        "samples": [
            {**x, "rss_mb": {str(k): round(v, 1) for k, v in x["rss_mb"].items()}} for x in samples
        ],
        "workers_rss": verdicts,
        "flat": flat,
    }
    for path in (out / "soak.json", cfg.results / "soak-latest.json"):
        path.write_text(json.dumps(document, indent=1) + "\n")
    for v in verdicts:
        print(
            f"[{'PASS' if v['flat'] else 'FAIL'}] worker {v['pid']} RSS: start {v['start_mb']} MB,"
            f" after 60 s {v['after_60s_mb']} MB, end {v['end_mb']} MB"
            f" ({v['growth_after_60s']:+.1%} after warm-up; needs <= +5%)"
        )
    return 0


def cmd_profile(cfg: Config, *, names: list[str], seconds: int, clients: int, rate: int) -> int:
    from bench import profile

    clock = Clock()
    load.ensure_wrk()
    out = cfg.results / "profile"
    raw = cfg.results / "tmp" / time.strftime("profile-%Y%m%dT%H%M%S")
    raw.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with (
        fresh_database(cfg, clock) as url,
        service.serve(
            url, workers=cfg.workers, log_path=raw / "serve.log", extra_env=cfg.service_env
        ) as svc,
    ):
        for name in names:
            s = scenario(name)
            for c in (8, clients):  # warm the caches first
                load.run(
                    svc.base_url,
                    name=name,
                    mode=s.mode,
                    clients=c,
                    duration_s=2,
                    rep=-1,
                    users=cfg.users,
                    history_users=cfg.history_users,
                    hot_user=str(seeding.HOT_WALLET),
                    tag=f"warm-{time.time()}",
                    query=s.query,
                )
            summary = profile.record(
                svc,
                scenario=s,
                clients=clients,
                seconds=seconds,
                rate=rate,
                users=cfg.users,
                history_users=cfg.history_users,
                raw_dir=raw,
            )
            (out / f"{name}.txt").write_text(summary)
            clock.say(f"profiled {name}: {out / (name + '.txt')}")
            print(summary)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    top.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (maintenance database) where wallet_bench_* databases are made",
    )
    top.add_argument("--workers", type=int, default=_env_int("BENCH_WORKERS", 2))
    top.add_argument(
        "--clients", type=int, nargs="+", default=_env_list("BENCH_CLIENTS", "1 8 32 64")
    )
    top.add_argument(
        "--duration",
        type=int,
        default=_env_int("BENCH_DURATION", 5),
        help="seconds per measured run (BENCH_DURATION)",
    )
    top.add_argument("--target-clients", type=int, default=32)
    top.add_argument(
        "--reps",
        type=int,
        default=_env_int("BENCH_REPS", 3),
        help="paired repetitions at the target concurrency (BENCH_REPS)",
    )
    top.add_argument("--warmup", type=int, default=2)
    top.add_argument("--users", type=int, default=10_000)
    top.add_argument("--history-users", type=int, default=1_000)
    top.add_argument(
        "--scenarios",
        default=os.environ.get("BENCH_SCENARIOS", ",".join(s.name for s in SCENARIOS)),
        help="comma-separated subset to run (their ceilings come along)",
    )
    top.add_argument("--keep-database", action="store_true")
    top.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for `wallet serve`, e.g. WALLET_POOL_SIZE=4 (repeatable)",
    )
    top.add_argument("--results", type=Path, default=RESULTS)
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the whole measurement (make bench)")
    soak = sub.add_parser("soak", help="worker RSS over a long mixed run (make bench-soak)")
    soak.add_argument("--seconds", type=int, default=_env_int("BENCH_SOAK_SECONDS", 300))
    soak.add_argument("--soak-clients", type=int, default=32)
    soak.add_argument("--chunk", type=int, default=20)
    prof = sub.add_parser("profile", help="py-spy on a worker under wrk load")
    prof.add_argument("--scenario", default="topup-many,read-balance,graphql-wallet")
    prof.add_argument("--seconds", type=int, default=20)
    prof.add_argument("--profile-clients", type=int, default=32)
    prof.add_argument("--rate", type=int, default=200)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cfg = Config.from_args(args)
    commands: dict[str, Callable[[], int]] = {
        "run": lambda: cmd_run(cfg),
        "soak": lambda: cmd_soak(
            cfg, seconds=args.seconds, clients=args.soak_clients, chunk_s=args.chunk
        ),
        "profile": lambda: cmd_profile(
            cfg,
            names=[n.strip() for n in args.scenario.split(",") if n.strip()],
            seconds=args.seconds,
            clients=args.profile_clients,
            rate=args.rate,
        ),
    }
    try:
        return commands[args.command]()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
