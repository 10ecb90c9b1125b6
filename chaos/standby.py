"""A private PostgreSQL primary and a hot standby streaming from it, on loopback, from Debian's
server binaries: for the replica test (tests/test_replica.py) and its measurement
(python -m bench.replica). Data directories live under /tmp and go away on `close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg


class NoServerBinaries(RuntimeError):
    """No PostgreSQL server binaries here (install Debian's postgresql, or set PG_BINDIR)."""


def postgres_bindir() -> Path:
    """Debian's newest PostgreSQL binaries (PG_BINDIR overrides)."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_basebackup"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if not found:
        raise NoServerBinaries("no /usr/lib/postgresql/*/bin; set PG_BINDIR")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One data directory run by the binaries in `bindir` (as the `postgres` system user when
    we are root: the server refuses to run as root). It logs every statement, so a test can
    tell which server ran what (a measurement turns that off)."""

    bindir: Path
    datadir: Path
    port: int
    log_statements: bool = True

    @property
    def user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    @property
    def log(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / tool), *args],
            user=self.user,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.datadir}"
            f" -c log_statement={'all' if self.log_statements else 'none'}"
        )
        self.run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-o", options, "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.datadir), "-w", "-m", mode, "stop")


class Pair:
    """A primary with one database, and a standby made from it by pg_basebackup."""

    def __init__(self, database: str = "wallet", *, log_statements: bool = True) -> None:
        bindir = postgres_bindir()
        self.base = Path(tempfile.mkdtemp(prefix="wallet-replica-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.database = database
        self.primary = Server(bindir, self.base / "primary", free_port(), log_statements)
        self.standby = Server(bindir, self.base / "standby", free_port(), log_statements)

    @property
    def primary_url(self) -> str:
        return self.primary.url(self.database)

    @property
    def standby_url(self) -> str:
        return self.standby.url(self.database)

    def start_primary(self) -> None:
        """initdb and start the primary, with the (empty) database created."""
        self.primary.run(
            "initdb", "-D", str(self.primary.datadir), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.primary.start()
        asyncio.run(_create_database(self.primary.url("postgres"), self.database))

    def start_standby(self) -> None:
        """Copy the primary with pg_basebackup (-R: a standby streaming from it), start it and
        wait until it has replayed what the primary has written."""
        self.primary.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
            "-D", str(self.standby.datadir), "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        self.standby.start()
        asyncio.run(self.caught_up())

    async def caught_up(self, timeout_s: float = 10) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        primary = await asyncpg.connect(self.primary_url)
        standby = await asyncpg.connect(self.standby_url)
        try:
            target = await primary.fetchval("SELECT pg_current_wal_lsn()")
            async with asyncio.timeout(timeout_s):
                # Polled: PostgreSQL has no notification for replay progress.
                while not await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        finally:
            await primary.close()
            await standby.close()

    def close(self) -> None:
        for server in (self.standby, self.primary):
            with contextlib.suppress(subprocess.CalledProcessError):  # not running
                server.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


async def _create_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
