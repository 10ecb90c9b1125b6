"""`wallet serve` on the embedded PostgreSQL, end to end, as a real child process.

Each test gets a fresh data directory under /tmp (every parent readable and traversable by all:
as root, the service refuses anything else, see `wallet.embedded.check_location`) and stops what
it started, including any postgres server the service under test left running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from wallet.seed import ALICE, BOB

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30


def postmasters(under: Path) -> list[psutil.Process]:
    """Running postmasters with a data directory under `under` (their children show no path)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline: list[str] = proc.info["cmdline"] or []
        if (
            proc.info["name"] == "postgres"
            and proc.info["status"] != psutil.STATUS_ZOMBIE
            and any(arg.startswith(str(under)) for arg in cmdline)
        ):
            found.append(proc)
    return found


def stop_postmasters(under: Path) -> None:
    """Fast-shutdown (SIGINT) every postgres server under `under`; SIGKILL the stubborn ones."""
    procs = postmasters(under)
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Embedded:
    """Runs `wallet` commands on one embedded data directory; `close` kills what is left."""

    def __init__(self, data_dir: Path, logs: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pg"
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "WALLET_DATABASE_URL"}
        }
        return {**env, "WALLET_DATA_DIR": str(self.data_dir), "WALLET_ENV": "test"}

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        """What that `wallet serve` wrote to stdout and stderr."""
        return (self.logs / f"serve-{self.procs.index(proc)}.log").read_text(errors="replace")

    def serve(self) -> tuple[subprocess.Popen[bytes], httpx.Client]:
        """Start `wallet serve`; return it and a client for it once /readyz answers."""
        port = free_port()
        with (self.logs / f"serve-{len(self.procs)}.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wallet.cli", "serve", "--port", str(port)],
                env=self.env(),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"wallet serve exited with {proc.returncode}:\n{self.log(proc)}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    return proc, httpx.Client(base_url=base_url, timeout=10)
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"wallet serve was not ready in {READY_TIMEOUT_S} s:\n{self.log(proc)}")

    def terminate(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM `wallet serve` and wait for it to exit."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wallet.cli", *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def base() -> Iterator[Path]:
    """A fresh directory under /tmp with mode 0755; removed after, with any server left in it."""
    path = Path(tempfile.mkdtemp(prefix="wallet-embedded-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        stop_postmasters(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded(base: Path, tmp_path: Path) -> Iterator[Embedded]:
    harness = Embedded(base / "data", logs=tmp_path)
    try:
        yield harness
    finally:
        harness.close()


def balance(client: httpx.Client, user: uuid.UUID, slug: str = "gold_coins") -> str:
    response = client.get(f"/api/wallet/balance/{user}")
    assert response.status_code == 200, response.text
    by_slug = {b["slug"]: b["balance"] for b in response.json()["data"]}
    found: str = by_slug[slug]
    return found


def topup(client: httpx.Client, user: uuid.UUID, amount: int, *, key: str) -> httpx.Response:
    return client.post(
        "/api/wallet/transact",
        headers={"Idempotency-Key": key},
        json={"userId": str(user), "amount": amount, "assetSlug": "gold_coins", "type": "TOPUP"},
    )


def test_first_start_creates_migrates_and_seeds(embedded: Embedded) -> None:
    proc, client = embedded.serve()
    with client:
        assert balance(client, ALICE) == "100"
        assert balance(client, BOB) == "50"
    assert len(postmasters(embedded.pgdata)) == 1
    assert embedded.terminate(proc) == 0, embedded.log(proc)


def test_sigterm_stops_postgres_and_data_survives_a_restart(embedded: Embedded) -> None:
    proc, client = embedded.serve()
    with client:
        response = topup(client, ALICE, 25, key="embedded-restart")
        assert response.status_code == 200, response.text
        assert response.json()["data"]["balanceAfter"] == "125"
    assert embedded.terminate(proc) == 0, embedded.log(proc)
    assert postmasters(embedded.pgdata) == [], embedded.log(proc)

    proc, client = embedded.serve()
    with client:
        assert balance(client, ALICE) == "125"  # kept, and the seed did not grant 100 again
        assert balance(client, BOB) == "50"
        replay = topup(client, ALICE, 25, key="embedded-restart")
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert balance(client, ALICE) == "125"
    assert embedded.terminate(proc) == 0, embedded.log(proc)
    assert postmasters(embedded.pgdata) == []


def test_an_orphaned_server_is_adopted_then_stopped(embedded: Embedded) -> None:
    proc, client = embedded.serve()
    client.close()
    proc.kill()
    proc.wait(timeout=10)
    # The wheel's caveat: nothing stops the server of a SIGKILLed parent.
    orphans = postmasters(embedded.pgdata)
    assert len(orphans) == 1

    proc, client = embedded.serve()
    with client:
        assert balance(client, ALICE) == "100"
    assert [p.pid for p in postmasters(embedded.pgdata)] == [orphans[0].pid]
    assert embedded.terminate(proc) == 0, embedded.log(proc)
    assert postmasters(embedded.pgdata) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the wheel changes permissions only as root")
@pytest.mark.parametrize("mode", [0o700, 0o711], ids=["private", "traversable-unlistable"])
def test_refuses_a_data_dir_under_a_directory_others_cannot_read(
    base: Path, tmp_path: Path, mode: int
) -> None:
    private = base / "private"
    private.mkdir()
    private.chmod(mode)
    embedded = Embedded(private / "data", logs=tmp_path)

    started = time.monotonic()
    result = embedded.run("serve", "--port", str(free_port()), timeout=15)
    assert time.monotonic() - started < 10

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Refusing" in result.stderr
    assert str(private) in result.stderr
    assert stat.S_IMODE(private.stat().st_mode) == mode  # nothing was widened
    assert not embedded.data_dir.exists()
    assert postmasters(base) == []


def test_audit_adopts_a_running_server_or_starts_and_stops_its_own(embedded: Embedded) -> None:
    proc, client = embedded.serve()
    with client:
        assert topup(client, BOB, 5, key="embedded-audit").status_code == 200
        result = embedded.run("audit")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "audit passed" in result.stdout
        assert client.get("/readyz").status_code == 200  # the audit left the server running
    assert embedded.terminate(proc) == 0, embedded.log(proc)

    result = embedded.run("audit")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit passed" in result.stdout
    assert postmasters(embedded.pgdata) == []
