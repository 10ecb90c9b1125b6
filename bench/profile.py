"""py-spy on a worker under wrk load, and what its samples say: where the CPU time goes."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from bench import load, seeding
from bench.measure import Measurement
from bench.scenarios import Scenario
from bench.service import Service

PY_SPY = Path(sys.executable).parent / "py-spy"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Which layer a frame belongs to, by its file (first match wins).
LAYERS: list[tuple[str, str]] = [
    ("/wallet/", "wallet (the service's code)"),
    ("asyncpg", "asyncpg"),
    ("sqlalchemy", "SQLAlchemy"),
    ("strawberry", "Strawberry"),
    ("graphql/", "graphql-core"),
    ("starlette", "Starlette"),
    ("uvicorn", "uvicorn"),
    ("httptools", "httptools"),
    ("orjson", "JSON (orjson)"),
    ("json/", "JSON (stdlib json)"),
    ("structlog", "structlog"),
    ("pydantic", "pydantic"),
    ("uvloop", "uvloop"),
    ("asyncio/", "asyncio (stdlib)"),
    ("greenlet", "greenlet (SQLAlchemy async bridge)"),
    ("python3.11/", "other stdlib"),
    ("libpython", "CPython internals"),
]


def layer(file: str) -> str:
    for needle, name in LAYERS:
        if needle in file:
            return name
    return "other (native / unknown)"


def parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match.group("function"), match.group("file")


def _short_file(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def analyse(raw: str, *, title: str, top: int = 30) -> str:
    """Self and inclusive time, by function and by layer, from py-spy's raw (collapsed) output."""
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_layer: Counter[str] = Counter()
    incl_layer: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [parse_frame(f) for f in stack.split(";")]
        leaf_function, leaf_file = frames[-1]
        self_fn[f"{leaf_function} ({_short_file(leaf_file)})"] += count
        self_layer[layer(leaf_file)] += count
        for name in {f"{fn} ({_short_file(file)})" for fn, file in frames}:
            incl_fn[name] += count
        for name in {layer(file) for _, file in frames}:
            incl_layer[name] += count
    if total == 0:
        return f"{title}\n(no samples)\n"

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    out = [title, f"{total} samples (CPU only: idle time is not sampled)", ""]
    out.append("Self time by layer (the frame on top of the stack):")
    out += [f"  {pct(n)}  {name}" for name, n in self_layer.most_common()]
    out.append("")
    out.append("Inclusive time by layer (the layer anywhere on the stack):")
    out += [f"  {pct(n)}  {name}" for name, n in incl_layer.most_common()]
    out.append("")
    out.append(f"Top {top} functions by self time:")
    out += [f"  {pct(n)}  {name}" for name, n in self_fn.most_common(top)]
    out.append("")
    trunk = {name for name, n in incl_fn.items() if n >= 0.6 * total}
    out.append(
        f"Top {top} functions by inclusive time, below the common trunk"
        f" ({len(trunk)} frames on >= 60% of samples: event loop, uvicorn, middleware):"
    )
    branches = [(name, n) for name, n in incl_fn.most_common() if name not in trunk]
    out += [f"  {pct(n)}  {name}" for name, n in branches[:top]]
    return "\n".join(out) + "\n"


def record(
    svc: Service,
    *,
    scenario: Scenario,
    clients: int,
    seconds: int,
    rate: int,
    users: int,
    history_users: int,
    raw_dir: Path,
) -> str:
    """wrk on the service while py-spy samples worker 1 (raw) and worker 2 (flame graph)."""
    workers = svc.workers()
    if not workers:
        raise RuntimeError("no worker processes to profile")
    raw_path = raw_dir / f"{scenario.name}.raw.txt"
    svg_path = raw_dir / f"{scenario.name}.svg"
    result: list[Measurement] = []

    def drive() -> None:
        result.append(
            load.run(
                svc.base_url,
                name=scenario.name,
                mode=scenario.mode,
                clients=clients,
                duration_s=seconds + 4,
                rep=0,
                users=users,
                history_users=history_users,
                hot_user=str(seeding.HOT_WALLET),
                tag=f"profile-{time.time()}",
                query=scenario.query,
            )
        )

    driver = threading.Thread(target=drive)
    driver.start()
    time.sleep(2)
    cpu_before = {w.pid: w.cpu_times() for w in workers}
    spies = [
        subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(worker.pid),
                "--duration",
                str(seconds),
                "--rate",
                str(rate),
                "--full-filenames",
                "--nonblocking",
                "--format",
                fmt,
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for worker, fmt, path in zip(
            workers, ["raw", "flamegraph"], [raw_path, svg_path], strict=False
        )
    ]
    for spy in spies:
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    busy = []
    for w in workers:
        before, after = cpu_before[w.pid], w.cpu_times()
        busy.append((after.user + after.system - before.user - before.system) / seconds)
    driver.join()
    load_line = (
        f"under wrk: {result[0].tps:,.0f} ok/s, p50 {result[0].p50_ms:.1f} ms,"
        f" p99 {result[0].p99_ms:.1f} ms, errors {result[0].errors}"
        if result
        else "wrk did not report"
    )
    title = (
        f"py-spy profile of `{scenario.name}` ({scenario.title}), {clients} clients,"
        f" {seconds} s at {rate} Hz, worker {workers[0].pid}\n{load_line}\n"
        f"worker CPU while sampled (1.0 = one core): "
        + ", ".join(f"{b:.2f}" for b in busy)
        + f"; machine load average {psutil.getloadavg()[0]:.1f}"
    )
    return analyse(raw_path.read_text(), title=title)
