"""`wallet serve` as a child process the suite can kill, restart and watch for readiness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServiceError(RuntimeError):
    """The service did not start, or did not become ready in time."""


class Service:
    """One `wallet serve` on a fixed loopback port; `restart` brings it back on the same port,
    the way a process supervisor would."""

    def __init__(
        self,
        database_url: str,
        *,
        log_file: Path,
        workers: int = 1,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.workers = workers
        self.port = port or free_port()
        self.log_file = log_file
        self.env = dict(env or {})
        self.headers = dict(headers or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the process (not waiting for it to be ready)."""
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "WALLET_ENV": "test",
            "WALLET_LOG_LEVEL": "WARNING",
            **self.env,
        }
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wallet.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill reaches its workers
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServiceError("the service was never started")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def ready(self, *, timeout_s: float = 30.0) -> float:
        """Poll /readyz until it answers 200; returns how long that took."""
        started = time.monotonic()
        deadline = started + timeout_s
        async with httpx.AsyncClient(base_url=self.base_url, headers=self.headers) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise ServiceError(
                        f"wallet serve exited with {self.proc.returncode} (see {self.log_file})"
                    )
                try:
                    response = await client.get("/readyz", timeout=1.0)
                    if response.status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise ServiceError(f"wallet serve was not ready within {timeout_s} s (see {self.log_file})")

    async def start(self, *, timeout_s: float = 30.0) -> float:
        self.spawn()
        return await self.ready(timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL the whole process group (the server and any workers), like an OOM kill."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def workers_pids(self) -> list[int]:
        """The uvicorn worker processes (spawned children), not multiprocessing's helpers."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        found = []
        for child in children:
            try:
                if any("spawn_main" in part for part in child.cmdline()):
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return found

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker; uvicorn's supervisor is expected to replace it by itself."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def terminate(self, *, timeout_s: float = 45.0) -> int:
        """SIGTERM and wait: a graceful shutdown. Returns the exit code (SIGKILL on timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL
