"""`wallet serve --workers N` as a child process: started, watched (worker RSS), stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
WALLET = Path(sys.executable).parent / "wallet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def workers(self) -> list[psutil.Process]:
        """uvicorn's worker processes (spawned children running spawn_main)."""
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
        return sorted(found, key=lambda p: p.pid)

    def worker_rss_mb(self) -> dict[int, float]:
        rss: dict[int, float] = {}
        for worker in self.workers():
            with contextlib.suppress(psutil.Error):
                rss[worker.pid] = worker.memory_info().rss / 2**20
        return rss


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=1) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def serve(
    database_url: str,
    *,
    workers: int,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    floor: bool = False,
) -> Iterator[Service]:
    """The service (or, with `floor`, bench/floor.py's lean app on the same stack) on a free
    loopback port, ready when this yields; stopped (SIGTERM) after."""
    port = free_port()
    command = (
        [sys.executable, "-m", "bench.floor", "--port", str(port), "--workers", str(workers)]
        if floor
        else [str(WALLET), "serve", "--port", str(port), "--workers", str(workers)]
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WALLET_ENV": "production",
        **(extra_env or {}),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )
    service = Service(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 60
        while not (_ready(service.base_url) and len(service.workers()) >= workers):
            if process.poll() is not None:
                raise RuntimeError(f"wallet serve exited ({process.returncode}); see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"wallet serve not ready in 60 s; see {log_path}")
            time.sleep(0.2)
        yield service
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
