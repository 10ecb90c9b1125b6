"""`wallet`: serve, migrate, seed, audit, purge-idempotency."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Final, TypeVar

import asyncpg
import pydantic
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet import auth, ledger
from wallet.audit import audit
from wallet.db.engine import create_engine
from wallet.embedded import EmbeddedError, EmbeddedPostgres
from wallet.errors import WalletError
from wallet.http import JSONHttpToolsProtocol
from wallet.inputs import parse_asset_name, parse_int_range, parse_new_asset_slug
from wallet.ledger.common import sqlstate
from wallet.logging import configure_logging
from wallet.observability import MULTIPROC_ENV
from wallet.seed import seed
from wallet.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("wallet.cli")


def migrate(database_url: str) -> None:
    """Upgrade the database to the newest migration."""
    from wallet.migrations import upgrade

    upgrade(database_url)


def _run(
    database_url: str,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    isolation_level: str = "READ COMMITTED",
    lock_timeout_ms: int = 2000,
    statement_timeout_ms: int = 15000,
) -> T:
    """Run `work` in one committed transaction on a short-lived engine."""

    async def main() -> T:
        engine = create_engine(
            database_url,
            pool_size=1,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
        )
        try:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level=isolation_level)
                async with conn.begin():
                    return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(main())


@contextmanager
def database(settings: Settings, *, stop_embedded: bool, owner: bool = True) -> Iterator[str]:
    """DATABASE_URL if set (the owner's URL for operator commands, when `owner`); otherwise the
    embedded server, migrated and seeded."""
    if settings.database_url is not None:
        url = settings.owner_database_url if owner else settings.database_url
        yield url or settings.database_url
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
    with database(settings, stop_embedded=True, owner=False) as url:
        if not settings.jwt_configured and not _run(url, auth.keys_exist):
            if not _is_loopback(args.host) and not args.insecure_no_auth:
                print(
                    f"wallet: refusing to serve on {args.host} with no credentials configured:"
                    " anyone who can reach it could mint coins. Create a key (wallet keys create),"
                    " set WALLET_JWT_SECRET, bind to 127.0.0.1, or pass --insecure-no-auth.",
                    file=sys.stderr,
                )
                return 2
            log.warning(
                "NO AUTHENTICATION: no API key exists and no JWT is configured, so every caller"
                " may do anything. Fine on a laptop; create keys before exposing the service.",
                host=args.host,
            )
            if not _is_loopback(args.host) and not settings.allowed_host_list:
                log.warning(
                    "Open mode answers only requests addressed to localhost, 127.0.0.1 or [::1];"
                    " set WALLET_ALLOWED_HOSTS to the names clients use to reach this address.",
                    host=args.host,
                )
        os.environ["DATABASE_URL"] = url  # worker processes read their settings from here
        log.info("serving", host=args.host, port=args.port, workers=args.workers)
        with metrics_directory():
            uvicorn.run(
                "wallet.app:app_from_environment",
                factory=True,
                host=args.host,
                port=args.port,
                workers=args.workers,
                loop="uvloop",
                http=JSONHttpToolsProtocol,
                ws="wallet.graphql_ws:WalletWebSocketProtocol",  # malformed frames close 4400
                access_log=False,
                timeout_graceful_shutdown=30,
                log_level=settings.log_level.lower(),
            )
    return 0


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """PROMETHEUS_MULTIPROC_DIR for this server's workers: theirs if set (emptied first, as
    prometheus-client asks), else a fresh private directory removed on the way out. Set before
    any worker imports prometheus-client, so each writes its samples there and GET /metrics,
    whichever worker answers it, adds up all of them."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="wallet-metrics-") as created:
        os.environ[MULTIPROC_ENV] = created
        try:
            yield Path(created)
        finally:
            del os.environ[MULTIPROC_ENV]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NothingChanged(Exception):
    """A key change that changed nothing (so announced nothing)."""


def _change_keys(
    database_url: str, settings: Settings, work: Callable[[AsyncConnection, str], Awaitable[T]]
) -> T:
    """Run a key change in one transaction, as the service's admin routes do: its notice is
    heard back before this returns, so every listening server process has been sent it (and
    one not listening trusts no cache)."""

    async def main() -> T:
        engine = create_engine(database_url, pool_size=1)
        listener = auth.Authenticator(settings, engine, listen_url=database_url)
        listener.start()
        try:
            with contextlib.suppress(TimeoutError):  # not listening: it just cannot wait
                async with asyncio.timeout(5):
                    await listener.until_listening()
            async with listener.key_change() as notice, engine.begin() as conn:
                return await work(conn, notice)
        finally:
            await listener.close()
            await engine.dispose()

    return asyncio.run(main())


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings, stop_embedded=False) as url:
        if args.action == "create":
            secret = _change_keys(
                url,
                settings,
                lambda conn, notice: auth.create_key(
                    conn, name=args.name, scopes=auth.parse_scopes(args.scopes), notice=notice
                ),
            )
            print(f"key {args.name!r} created; its secret is shown this once:\n{secret}")
        elif args.action == "list":
            for key in _run(url, auth.list_keys):
                state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "live"
                print(
                    f"{key.name}\t{','.join(key.scopes)}\t{key.created_at:%Y-%m-%d %H:%M}\t{state}"
                )
        else:

            async def revoke(conn: AsyncConnection, notice: str) -> None:
                if not await auth.revoke_key(conn, args.name, notice=notice):
                    raise _NothingChanged

            try:
                _change_keys(url, settings, revoke)
            except _NothingChanged:
                print(f"wallet: no live key named {args.name!r}", file=sys.stderr)
                return 1
            print(f"key {args.name!r} revoked")
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
        report = _run(
            url,
            audit,
            isolation_level="REPEATABLE READ",
            lock_timeout_ms=settings.lock_timeout_ms,
            statement_timeout_ms=settings.statement_timeout_ms,
        )
    print(report.render())
    return 0 if report.ok else 1


def cmd_purge_idempotency(args: argparse.Namespace, settings: Settings) -> int:
    given = args.older_than_hours
    hours = settings.idempotency_retention_hours if given is None else given
    if hours < 24:
        print("refusing: idempotency keys are kept at least 24 hours", file=sys.stderr)
        return 2
    with database(settings, stop_embedded=False) as url:
        removed = _run(
            url,
            lambda conn: ledger.purge_idempotency(conn, older_than=timedelta(hours=hours)),
            lock_timeout_ms=settings.lock_timeout_ms,
            statement_timeout_ms=settings.statement_timeout_ms,
        )
    print(f"removed {removed} idempotency keys older than {hours} hours")
    return 0


def cmd_assets(args: argparse.Namespace, settings: Settings) -> int:
    """`assets create` (the same rules and answers as POST /api/admin/assets) and `assets list`."""
    if args.action == "create":
        slug = parse_new_asset_slug(args.slug, field="--slug")
        name = parse_asset_name(args.name, field="--name")
        decimals = parse_int_range(args.decimals, field="--decimals", low=0, high=18)
    with database(settings, stop_embedded=False) as url:
        if args.action == "list":
            for found in _run(url, ledger.assets):
                print(f"{found.slug}\t{found.name}\t{found.decimals}")
            return 0
        asset, created = _run(
            url,
            lambda conn: ledger.create_asset(conn, slug=slug, name=name, decimals=decimals),
        )
    state = "created" if created else "exists already, with the same fields"
    print(f"asset {asset.slug!r} ({asset.name}, {asset.decimals} decimals) {state}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="wallet", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve beyond loopback even though no credential is configured",
    )
    serve.set_defaults(handler=cmd_serve)
    keys = sub.add_parser("keys", help="service API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes", required=True, help=f"comma-separated, some of: {','.join(auth.SCOPES)}"
    )
    keys.add_parser("list", help="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    for command in keys.choices.values():
        command.set_defaults(handler=cmd_keys)
    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(handler=cmd_migrate)
    sub.add_parser("seed", help="create the demo assets and wallets").set_defaults(handler=cmd_seed)
    sub.add_parser("audit", help="check every ledger invariant").set_defaults(handler=cmd_audit)
    assets = sub.add_parser("assets", help="assets (currencies)").add_subparsers(
        dest="action", required=True
    )
    create_asset = assets.add_parser("create", help="create an asset and its Treasury")
    create_asset.add_argument("--slug", required=True, help="^[a-z][a-z0-9_]{0,63}$")
    create_asset.add_argument("--name", required=True, help="1 to 100 characters")
    create_asset.add_argument("--decimals", required=True, type=int, help="0 to 18")
    assets.add_parser("list", help="list assets by slug")
    for command in assets.choices.values():
        command.set_defaults(handler=cmd_assets)
    purge = sub.add_parser("purge-idempotency", help="delete expired idempotency keys")
    purge.add_argument("--older-than-hours", type=int, default=None)
    purge.set_defaults(handler=cmd_purge_idempotency)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except pydantic.ValidationError as error:  # a setting out of range: say which, no traceback
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else "settings"
            name = field if field.isupper() else f"WALLET_{field.upper()}"  # an alias, or ours
            print(f"wallet: {name}: {problem['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        code: int = args.handler(args, settings)
    except (EmbeddedError, WalletError) as error:
        print(f"wallet: {error}", file=sys.stderr)
        return 2
    except (ConnectionError, socket.gaierror) as error:  # no server there, or no such host
        print(f"wallet: cannot reach the database: {error}", file=sys.stderr)
        return 2
    except (DBAPIError, asyncpg.PostgresError) as error:
        state = sqlstate(error) or ""
        found = getattr(error, "orig", error)
        if state in _STOPPED:  # the command could not finish: not a breach (audit's exit 1)
            print(f"wallet: the database stopped the command: {found}", file=sys.stderr)
            print(
                f"wallet: WALLET_STATEMENT_TIMEOUT_MS is {settings.statement_timeout_ms},"
                f" WALLET_LOCK_TIMEOUT_MS {settings.lock_timeout_ms}: raise them for a longer"
                " run, or run it again once the session holding a lock is done",
                file=sys.stderr,
            )
            return 2
        if not state.startswith(_CANNOT_CONNECT):
            raise
        print(f"wallet: cannot connect to the database: {found}", file=sys.stderr)
        return 2
    return code


# SQLSTATE classes of a refused connection: connection exception, invalid authorization (a role
# or password), invalid catalog name (no such database).
_CANNOT_CONNECT: Final = ("08", "28", "3D")
# A statement cancelled (its timeout, or an operator's pg_cancel_backend) or a lock not granted
# within the lock timeout.
_STOPPED: Final = ("57014", "55P03")


if __name__ == "__main__":
    sys.exit(main())
