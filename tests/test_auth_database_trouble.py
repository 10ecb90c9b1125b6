"""Database trouble met while checking credentials is a 503 with Retry-After, never a 500.

The gateway (wallet.gateway) runs outside the app's exception handlers, so it must map such errors
itself.
`python -m chaos` found the 500s: PostgreSQL restarting (pg-restart-*) and a full connection pool
(pool-exhaustion) while the auth cache was cold.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from tests.conftest import free_port
from tests.factories import in_process_resources
from wallet.db.engine import create_engine
from wallet.gateway import BrowserGuard, GatewayMiddleware
from wallet.observability import RequestObserver
from wallet.settings import Settings

A_KEY = "wk_0123456789ab_" + "x" * 43  # well-formed, so it is looked up in the database


async def never_reached(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the request got past authentication")


def client_for(engine: AsyncEngine) -> httpx.AsyncClient:
    """The gateway alone, with the resources the lifespan would give it (a loopback Host, so
    the browser guard asks nothing of the database and authentication meets the trouble)."""
    settings = Settings(database_url="postgresql://unused", env="test")
    resources = in_process_resources(settings, engine)
    middleware = GatewayMiddleware(
        never_reached,
        observer=RequestObserver(metrics=resources.metrics, routes=[], access_log=False),
        guard=BrowserGuard(allowed_hosts=[], allowed_origins=[]),
        body_limit=settings.max_body_bytes,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"resources": resources}
        await middleware(scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")


async def transact(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    body = {"userId": str(uuid.uuid4()), "amount": 1, "assetSlug": "gold_coins", "type": "TOPUP"}
    return await client.post(
        "/api/wallet/transact", json=body, headers={"Idempotency-Key": "k", **headers}
    )


@pytest.fixture
async def unreachable() -> AsyncIterator[AsyncEngine]:
    """An engine for a PostgreSQL that is down: nothing listens on its port."""
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/wallet")
    yield engine
    await engine.dispose()


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Bearer {A_KEY}"}])
async def test_database_down_while_authenticating_is_503_unavailable(
    unreachable: AsyncEngine, headers: dict[str, str]
) -> None:
    async with client_for(unreachable) as client:
        response = await transact(client, headers)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert response.headers["retry-after"] == "1"


async def test_full_pool_while_authenticating_is_503_busy(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, pool_timeout_s=0.2)
    try:
        async with engine.connect(), client_for(engine) as client:  # the pool's only connection
            response = await transact(client, {"Authorization": f"Bearer {A_KEY}"})
    finally:
        await engine.dispose()
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "BUSY"
    assert response.headers["retry-after"] == "1"
