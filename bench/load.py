"""wrk, the load generator: installed on demand (Debian's package), driven by bench/wrk.lua."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from bench.measure import Measurement

LUA = Path(__file__).resolve().parent / "wrk.lua"


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package first when it is missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("wrk is not installed: run `apt-get install wrk` (needs root)")
    print("installing wrk (Debian package)", flush=True)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk, yet it is not on PATH")
    return found


def run(
    base_url: str,
    *,
    name: str,
    mode: str,
    clients: int,
    duration_s: int,
    rep: int,
    users: int,
    history_users: int,
    hot_user: str,
    tag: str,
    query: str = "-",
    auth: str = "-",
) -> Measurement:
    """wrk for `duration_s` seconds with `clients` connections over min(clients, 2) threads."""
    if '"' in query or "\\" in query:
        raise ValueError("wrk.lua embeds the GraphQL document in JSON as is: no quotes allowed")
    command = [
        ensure_wrk(),
        "-t",
        str(min(clients, 2)),
        "-c",
        str(clients),
        "-d",
        f"{duration_s}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        base_url,
        "--",
        mode,
        str(users),
        str(history_users),
        hot_user,
        tag,
        query,
        auth,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    line = next(
        (x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")),
        None,
    )
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk {name} c={clients} failed:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = data["duration_us"] / 1e6
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return Measurement(
        name=name,
        kind="service",
        clients=clients,
        rep=rep,
        duration_s=seconds,
        requests=data["requests"],
        ok=data["ok"],
        errors=data["bad"] + socket_errors,
        tps=data["ok"] / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
    )
