"""Engine factory: one pool per process, created by whoever owns the process's lifetime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar, cast

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")


def async_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` as well as `postgresql+asyncpg://`."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")
    return parsed.render_as_string(hide_password=False)


def create_engine(
    url: str,
    *,
    pool_size: int = 8,
    pool_timeout_s: float = 5.0,
    lock_timeout_ms: int = 2000,
    statement_timeout_ms: int = 15000,
    application_name: str = "wallet",
) -> AsyncEngine:
    """A pool sized to the cores, with timeouts so no request waits forever on a lock."""
    server_settings = _server_settings(
        application_name=application_name,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_ms=statement_timeout_ms,
    )
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout_s,
        # No pre-ping (a round trip per checkout): a connection the server dropped fails once,
        # is invalidated with its peers, and the request is retried (with_connection, below).
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={"server_settings": server_settings, "timeout": 5},
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (RESET ALL, UNLISTEN *, CLOSE ALL, advisory
    unlocks: a round trip per request, as long as the balance read itself). The hot pool runs
    only the ledger's functions and its balance read, which leave no session state behind; an
    open transaction is still rolled back by asyncpg before this is called."""


def _server_settings(
    *, application_name: str, lock_timeout_ms: int, statement_timeout_ms: int
) -> dict[str, Any]:
    return {
        "application_name": application_name,
        "lock_timeout": str(lock_timeout_ms),
        "statement_timeout": str(statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(max(statement_timeout_ms, 60_000)),
    }


async def create_pool(
    url: str,
    *,
    size: int = 8,
    lock_timeout_ms: int = 2000,
    statement_timeout_ms: int = 15000,
    application_name: str = "wallet",
) -> asyncpg.Pool:
    """The hot routes' pool: asyncpg itself, whose statements are prepared once per connection
    and whose rows need no result processing (the balance read and the postings). Connections
    open on demand, up to `size`, with the engine's timeouts."""
    dsn = (
        make_url(async_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    return await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=size,
        timeout=5,
        max_inactive_connection_lifetime=1800,
        reset=_keep_session,
        server_settings=_server_settings(
            application_name=application_name,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
        ),
    )


async def with_connection(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    begin: bool = True,
    retry: bool = False,
) -> T:
    """Run `work` on its own pooled connection, committing at the end when `begin`.

    With `retry`, a connection the database dropped (restart, terminated backend) is retried
    once on a fresh one. Pass it only for work that is safe to run twice: reads, and postings
    keyed by an idempotency key (a retry of one that did commit replays it). Anything else
    (creating a user or a key, revoking one) may have committed before the answer was lost, and
    a retry would turn that success into a conflict: it fails with 503 and the client decides.
    """
    for attempt in (1, 2) if retry else (2,):
        try:
            async with engine.connect() as conn:
                if not begin:
                    return await work(conn)
                async with conn.begin():
                    return await work(conn)
        except DBAPIError as error:
            if not error.connection_invalidated or attempt == 2:
                raise
    raise AssertionError("unreachable")


# What asyncpg raises once PostgreSQL ended a connection (a terminated backend, a restart, a
# standby gone): the connection is dead for good. InternalClientError is how asyncpg reports a
# connection left mid-way by a FATAL message that arrived while it was idle in a pool.
DROPPED: Final = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    OSError,
)


@contextlib.asynccontextmanager
async def driver(conn: AsyncConnection) -> AsyncIterator[asyncpg.Connection]:
    """The asyncpg connection under an engine's connection (the primary's or the replica's):
    fixed SQL runs on it directly, prepared once per connection, its rows read as asyncpg
    returns them, without SQLAlchemy's statement building and result processing.

    Its errors leave as SQLAlchemy's would, so callers handle them as before: a DBAPIError
    around asyncpg's; and a connection PostgreSQL dropped is invalidated with its peers (they
    most likely went with it: a restart, a failover), as SQLAlchemy does on a disconnect, and
    the error says so (`connection_invalidated`): `with_connection` retries a read once on a
    fresh connection, a replica read goes to the primary."""
    raw = await conn.get_raw_connection()
    pg = cast(asyncpg.Connection, raw.driver_connection)
    try:
        yield pg
    except (asyncpg.PostgresError, asyncpg.InterfaceError, *DROPPED) as error:
        dropped = isinstance(error, DROPPED) or pg.is_closed()
        if dropped:
            # What SQLAlchemy's own disconnect handling calls: every connection of the pool
            # opened before now is replaced at its next checkout.
            conn.sync_engine.pool._invalidate(raw, error)
            await conn.invalidate(error)
        raise DBAPIError(None, None, error, connection_invalidated=dropped) from error
