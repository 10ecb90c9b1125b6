"""Application factory: explicit composition; the lifespan owns the engine."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import rest
from wallet.auth import Authenticator, RateLimiter
from wallet.db.engine import create_engine, create_pool
from wallet.errors import WalletError
from wallet.feed import BalanceFeed
from wallet.gateway import BrowserGuard, GatewayMiddleware
from wallet.graphql_app import graphql_routes
from wallet.http import (
    handle_client_disconnect,
    handle_database_error,
    handle_http_exception,
    handle_unexpected,
    handle_wallet_error,
)
from wallet.logging import configure_logging
from wallet.observability import Metrics, RequestObserver
from wallet.openapi import openapi_json
from wallet.resources import GroupCommit, Resources, open_replica, principal, resources
from wallet.rest.batches import BATCH_PATH
from wallet.settings import Settings
from wallet.sweeper import HoldSweeper
from wallet.tracing import Tracing

GAUGE_PERIOD_S = 1.0  # how often a worker refreshes its pool and subscriber gauges


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics (Prometheus text): open in open mode; otherwise the `metrics` scope."""
    principal(request).require("metrics")
    res = resources(request)
    res.metrics.sample(feed_subscribers=res.feed.subscriber_count)
    body, content_type = res.metrics.render()
    return Response(body, media_type=content_type)


async def _refresh_gauges(metrics: Metrics, feed: BalanceFeed) -> None:
    while True:
        metrics.sample(feed_subscribers=feed.subscriber_count)
        await asyncio.sleep(GAUGE_PERIOD_S)


def create_app(settings: Settings, *, tracing: Tracing | None = None) -> Starlette:
    """The service; `tracing` defaults to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (wallet serve sets it)")
    database_url = settings.database_url
    metrics = Metrics()
    tracing = tracing or Tracing.from_environment()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Resources]]:
        # The hot routes (balances, TOPUP/BONUS/SPEND) use the asyncpg pool below; everything
        # else the engine's. Both are WALLET_POOL_SIZE and open connections on demand.
        engine = create_engine(
            database_url,
            pool_size=settings.pool_size,
            pool_timeout_s=settings.pool_timeout_s,
            lock_timeout_ms=settings.lock_timeout_ms,
            statement_timeout_ms=settings.statement_timeout_ms,
        )
        feed = BalanceFeed(database_url)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        pool = await create_pool(  # the hot routes' (asyncpg itself, prepared statements)
            database_url,
            size=settings.pool_size,
            lock_timeout_ms=settings.lock_timeout_ms,
            statement_timeout_ms=settings.statement_timeout_ms,
        )
        # Single-statement reads; it hears key changes on a connection of its own.
        auth = Authenticator(settings, autocommit, listen_url=database_url)
        auth.start()
        sweeper = HoldSweeper(autocommit)  # releases expired holds, in every process
        sweeper.start()
        metrics.watch_pool("primary", engine)
        metrics.watch_asyncpg_pool("hot", pool)
        groups = GroupCommit(
            pool,
            max_size=settings.group_commit_max,
            in_flight=settings.group_commit_calls,
            timeout_s=settings.pool_timeout_s,
            metrics=metrics,
        )
        replica = open_replica(settings, autocommit)  # DATABASE_READ_URL, when set
        if replica is not None:
            metrics.watch_pool("replica", replica.engine)
        gauges = asyncio.create_task(_refresh_gauges(metrics, feed), name="metrics-gauges")
        # What starting made (modules, the GraphQL schema, the app) lives as long as the process:
        # frozen, full collections stop walking it again and again (a pause in the latency tail).
        gc.freeze()
        try:
            yield {
                "resources": Resources(
                    settings=settings,
                    engine=engine,
                    autocommit=autocommit,
                    pool=pool,
                    groups=groups,
                    feed=feed,
                    auth=auth,
                    rate_limiter=RateLimiter(
                        settings.rate_limit_per_second, settings.rate_limit_burst
                    ),
                    metrics=metrics,
                    tracing=tracing,
                    replica=replica,
                )
            }
        finally:
            gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauges
            metrics.process_exited()
            await sweeper.close()
            await auth.close()
            await feed.close()
            await groups.close()
            await pool.close()
            await engine.dispose()
            if replica is not None:
                await replica.dispose()
            if tracing is not None:
                tracing.shutdown()

    cors = (
        functools.partial(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type", "idempotency-key"],
            expose_headers=["idempotent-replayed", "retry-after", "x-request-id"],
            max_age=600,
        )
        if settings.cors_origin_list
        else None  # no frontend origin configured: no cross-origin access, no per-request cost
    )
    routes = [  # matched in order: the two APIs' busiest paths first, none overlaps another
        *graphql_routes(settings),
        *rest.routes,
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[  # one layer: request id, metrics, browser guard, CORS, body limit, auth
            Middleware(
                GatewayMiddleware,
                observer=RequestObserver(
                    metrics=metrics,
                    routes=routes,
                    access_log=settings.env == "production" or settings.log_json,
                ),
                guard=BrowserGuard(
                    allowed_hosts=settings.allowed_host_list,
                    allowed_origins=settings.cors_origin_list,
                ),
                body_limit=settings.max_body_bytes,
                path_body_limits={BATCH_PATH: settings.max_batch_bytes},
                tracing=tracing,
                cors=cors,  # between the browser guard and the body limit
            ),
        ],
        exception_handlers={
            WalletError: handle_wallet_error,
            ClientDisconnect: handle_client_disconnect,
            HTTPException: handle_http_exception,
            DBAPIError: handle_database_error,
            asyncpg.PostgresError: handle_database_error,
            asyncpg.InterfaceError: handle_database_error,
            asyncpg.InternalClientError: handle_database_error,
            PoolTimeout: handle_database_error,
            OSError: handle_database_error,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )
    # A path with a slash too many is a route that does not exist (404 NOT_FOUND, in JSON),
    # not a redirect to the path without it, built from the client's own Host header.
    app.router.redirect_slashes = False
    return app


def app_from_environment() -> Starlette:
    """Entry point for uvicorn worker processes (`factory=True`)."""
    settings = Settings()
    configure_logging(settings)
    return create_app(settings)
