"""Health checks: the process, and its database."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet.errors import (
    Unavailable,
)
from wallet.http import error_response, ok
from wallet.resources import read, resources


async def healthz(request: Request) -> Response:
    return ok({"status": "ok"})


async def readyz(request: Request) -> Response:
    async def ping(conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(read(resources(request), ping), timeout=3)
    except (TimeoutError, SQLAlchemyError, OSError):
        return error_response(Unavailable("The database is not reachable."))
    return ok({"status": "ready"})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
