"""Application factory: explicit composition; the lifespan owns the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from wallet import rest
from wallet.auth import Authenticator, AuthMiddleware, BrowserGuardMiddleware, RateLimiter
from wallet.db.engine import create_engine
from wallet.errors import WalletError
from wallet.feed import BalanceFeed
from wallet.graphql_app import graphql_routes
from wallet.http import (
    BodyLimitMiddleware,
    RequestIdMiddleware,
    handle_client_disconnect,
    handle_database_error,
    handle_http_exception,
    handle_unexpected,
    handle_wallet_error,
)
from wallet.logging import configure_logging
from wallet.openapi import openapi_json
from wallet.resources import Resources
from wallet.settings import Settings


def create_app(settings: Settings) -> Starlette:
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (wallet serve sets it)")
    database_url = settings.database_url

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Resources]]:
        engine = create_engine(
            database_url,
            pool_size=settings.pool_size,
            pool_timeout_s=settings.pool_timeout_s,
            lock_timeout_ms=settings.lock_timeout_ms,
            statement_timeout_ms=settings.statement_timeout_ms,
        )
        feed = BalanceFeed(database_url)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Single-statement reads; it hears key changes on a connection of its own.
        auth = Authenticator(settings, autocommit, listen_url=database_url)
        auth.start()
        try:
            yield {
                "resources": Resources(
                    settings=settings,
                    engine=engine,
                    autocommit=autocommit,
                    feed=feed,
                    auth=auth,
                    rate_limiter=RateLimiter(
                        settings.rate_limit_per_second, settings.rate_limit_burst
                    ),
                )
            }
        finally:
            await auth.close()
            await feed.close()
            await engine.dispose()

    cors = (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origin_list,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["authorization", "content-type", "idempotency-key"],
                expose_headers=["idempotent-replayed", "retry-after", "x-request-id"],
                max_age=600,
            )
        ]
        if settings.cors_origin_list
        else []  # no frontend origin configured: no cross-origin access, no per-request cost
    )
    return Starlette(
        routes=[
            *rest.routes,
            Route("/openapi.json", openapi_json, methods=["GET"]),
            *graphql_routes(settings),
        ],
        middleware=[  # outermost first: CORS answers preflights before anyone asks who
            Middleware(RequestIdMiddleware),
            Middleware(
                BrowserGuardMiddleware,
                allowed_hosts=settings.allowed_host_list,
                allowed_origins=settings.cors_origin_list,
            ),
            *cors,
            Middleware(BodyLimitMiddleware, limit=settings.max_body_bytes),
            Middleware(AuthMiddleware),
        ],
        exception_handlers={
            WalletError: handle_wallet_error,
            ClientDisconnect: handle_client_disconnect,
            HTTPException: handle_http_exception,
            DBAPIError: handle_database_error,
            PoolTimeout: handle_database_error,
            OSError: handle_database_error,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )


def app_from_environment() -> Starlette:
    """Entry point for uvicorn worker processes (`factory=True`)."""
    settings = Settings()
    configure_logging(settings)
    return create_app(settings)
