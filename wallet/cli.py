"""`wallet`: serve, migrate, seed, audit, purge-idempotency."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet import ledger
from wallet.audit import audit
from wallet.db.engine import create_engine
from wallet.embedded import EmbeddedError, EmbeddedPostgres
from wallet.http import JSONHttpToolsProtocol
from wallet.logging import configure_logging
from wallet.seed import seed
from wallet.settings import Settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
log = structlog.get_logger("wallet.cli")


def migrate(database_url: str) -> None:
    """Upgrade the database to the newest migration."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, "head")


def _run(
    database_url: str,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    isolation_level: str = "READ COMMITTED",
) -> T:
    """Run `work` in one committed transaction on a short-lived engine."""

    async def main() -> T:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level=isolation_level)
                async with conn.begin():
                    return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(main())


@contextmanager
def database(settings: Settings, *, stop_embedded: bool) -> Iterator[str]:
    """DATABASE_URL if set; otherwise the embedded server, migrated and seeded."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    url = embedded.start()
    try:
        migrate(url)
        _run(url, seed)
        yield url
    finally:
        if stop_embedded or not embedded.was_running:
            embedded.stop()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as SystemExit, so that `finally` blocks (stopping the embedded server) run."""
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the handler it found;
    # the default one would kill us before `database` stops the embedded server.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with database(settings, stop_embedded=True) as url:
        os.environ["DATABASE_URL"] = url  # worker processes read their settings from here
        log.info("serving", host=args.host, port=args.port, workers=args.workers)
        uvicorn.run(
            "wallet.app:app_from_environment",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http=JSONHttpToolsProtocol,
            access_log=False,
            timeout_graceful_shutdown=30,
            log_level=settings.log_level.lower(),
        )
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings, stop_embedded=False) as url:
        if settings.database_url is not None:
            migrate(url)
    print("database is at the newest migration")
    return 0


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings, stop_embedded=False) as url:
        if settings.database_url is not None:
            _run(url, seed)
    print("seed data present")
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings, stop_embedded=False) as url:
        report = _run(url, audit, isolation_level="REPEATABLE READ")
    print(report.render())
    return 0 if report.ok else 1


def cmd_purge_idempotency(args: argparse.Namespace, settings: Settings) -> int:
    hours = args.older_than_hours or settings.idempotency_retention_hours
    if hours < 24:
        print("refusing: idempotency keys are kept at least 24 hours", file=sys.stderr)
        return 2
    with database(settings, stop_embedded=False) as url:
        removed = _run(
            url, lambda conn: ledger.purge_idempotency(conn, older_than=timedelta(hours=hours))
        )
    print(f"removed {removed} idempotency keys older than {hours} hours")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="wallet", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=cmd_serve)
    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(handler=cmd_migrate)
    sub.add_parser("seed", help="create the demo assets and wallets").set_defaults(handler=cmd_seed)
    sub.add_parser("audit", help="check every ledger invariant").set_defaults(handler=cmd_audit)
    purge = sub.add_parser("purge-idempotency", help="delete expired idempotency keys")
    purge.add_argument("--older-than-hours", type=int, default=None)
    purge.set_defaults(handler=cmd_purge_idempotency)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    try:
        code: int = args.handler(args, settings)
    except EmbeddedError as error:
        print(f"wallet: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
