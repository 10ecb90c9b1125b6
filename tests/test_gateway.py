"""The one layer in front of the routes (wallet.gateway), in process: CORS keeps its place between
the browser guard and the body limit, and what it learns once stays bounded."""

from __future__ import annotations

import httpx

from wallet.app import create_app
from wallet.gateway import HOST_CACHE_SIZE, BrowserGuard
from wallet.observability import Metrics, RequestObserver
from wallet.settings import Settings

FRONTEND = "https://app.example"


def client(*, cors_origins: str = "") -> httpx.AsyncClient:
    """The whole app without its lifespan (Host names configured: nothing asks the database)."""
    settings = Settings(
        database_url="postgresql://unused",
        allowed_hosts="wallet.internal",
        cors_origins=cors_origins,
    )
    app = create_app(settings)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://wallet.internal"
    )


async def test_cors_answers_preflights_after_the_guard_and_before_the_body_limit() -> None:
    async with client(cors_origins=FRONTEND) as c:
        preflight = {"origin": FRONTEND, "access-control-request-method": "POST"}
        answered = await c.options("/api/wallet/transact", headers=preflight)
        assert answered.status_code == 200
        assert answered.headers["access-control-allow-origin"] == FRONTEND
        assert answered.headers["x-request-id"]
        # The browser guard comes first: a foreign Host is refused before CORS answers.
        refused = await c.options(
            "/api/wallet/transact", headers={**preflight, "host": "evil.example"}
        )
        assert (refused.status_code, refused.json()["code"]) == (400, "INVALID_HOST")
        assert "access-control-allow-origin" not in refused.headers
        # The body limit comes after: its refusal is marked for the page to read.
        too_large = await c.post(
            "/api/wallet/transact", content=b"x" * (64 * 1024 + 1), headers={"origin": FRONTEND}
        )
        assert (too_large.status_code, too_large.json()["code"]) == (413, "PAYLOAD_TOO_LARGE")
        assert too_large.headers["access-control-allow-origin"] == FRONTEND
        assert too_large.headers["x-request-id"]


async def test_without_cors_origins_a_preflight_meets_the_body_limit_and_auth_like_any() -> None:
    async with client() as c:
        answered = await c.request(
            "OPTIONS",
            "/api/wallet/transact",
            headers={"origin": FRONTEND, "access-control-request-method": "POST"},
            content=b"x" * (64 * 1024 + 1),
        )
    assert (answered.status_code, answered.json()["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert "access-control-allow-origin" not in answered.headers


def test_what_the_gateway_remembers_is_bounded() -> None:
    guard = BrowserGuard(allowed_hosts=["wallet.internal"], allowed_origins=[])
    for n in range(3 * HOST_CACHE_SIZE):
        assert guard._host(f"host-{n}.example".encode())[1] is False
    assert guard._host(b"wallet.internal:3000") == (("wallet.internal", 3000), True)
    assert len(guard._seen_hosts) <= HOST_CACHE_SIZE

    observer = RequestObserver(metrics=Metrics(), routes=[], access_log=False, max_unrouted=8)
    for n in range(100):
        assert observer.route({"type": "http", "path": f"/nowhere/{n}"}) == "<unmatched>"
    assert len(observer._unrouted) <= 8
