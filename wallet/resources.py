"""What the lifespan opens once per process and every request uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import HTTPConnection

from wallet.auth import ANONYMOUS, Authenticator, Principal, RateLimiter
from wallet.feed import BalanceFeed
from wallet.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    autocommit: AsyncEngine  # same pool; a single-statement posting is its own transaction
    feed: BalanceFeed
    auth: Authenticator
    rate_limiter: RateLimiter


def resources(connection: HTTPConnection) -> Resources:
    """The lifespan's resources, from a request's or a websocket's state."""
    found: Resources = connection.state.resources
    return found


def principal(connection: HTTPConnection) -> Principal:
    """Who AuthMiddleware found; anonymous in open mode. (A WebSocket may still be pending.)"""
    found: Principal | None = getattr(connection.state, "principal", ANONYMOUS)
    if found is None:
        raise RuntimeError("principal not authenticated yet")
    return found


async def with_connection(
    engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]], *, begin: bool = True
) -> T:
    """Run `work` on its own pooled connection, committing at the end when `begin`.

    A connection the database dropped (restart, terminated backend) is retried once on a fresh
    one. That is safe for reads, and for postings too: they carry an idempotency key, so a retry
    of one that did commit replays it instead of posting again.
    """
    for attempt in (1, 2):
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


async def read(res: Resources, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Reads run without BEGIN/COMMIT: each statement is its own snapshot (read committed),
    which saves two round trips a request."""
    return await with_connection(res.autocommit, work, begin=False)
