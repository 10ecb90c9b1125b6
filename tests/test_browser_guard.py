"""Web pages against the service, over raw Host and Origin headers on a real server (HTTP and
WebSocket): DNS rebinding against open mode, and cross-site writes in any mode."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import websockets
from websockets.typing import Origin

from tests.conftest import create_database, drop_database, start_server
from tests.graphql_client import PROTOCOLS
from tests.rawhttp import RawResponse, connect, exchange, request_bytes
from wallet import auth
from wallet.cli import _run, migrate
from wallet.seed import ALICE, seed

REBIND = "rebind.attacker.example:3000"
TOPUP = {"userId": str(ALICE), "amount": 1, "assetSlug": "gold_coins", "type": "TOPUP"}


@dataclass(frozen=True)
class Server:
    base: str
    port: int
    headers: dict[str, str]  # what every request carries (credentials, when secured)


def fresh_database(server_url: str, *, with_key: bool) -> tuple[str, str | None]:
    url = create_database(server_url, "wallet_guard")
    migrate(url)
    _run(url, seed)
    secret = None
    if with_key:
        secret = _run(url, lambda conn: auth.create_key(conn, name="all", scopes=list(auth.SCOPES)))
    return url, secret


@pytest.fixture(scope="module")
def databases(server_url: str) -> Iterator[dict[str, tuple[str, str | None]]]:
    made = {"open": fresh_database(server_url, with_key=False)}
    made["secured"] = fresh_database(server_url, with_key=True)
    try:
        yield made
    finally:
        for url, _ in made.values():
            drop_database(server_url, url)


@pytest.fixture(scope="module")
def servers(databases: dict[str, tuple[str, str | None]]) -> Iterator[dict[str, Server]]:
    configs = {
        "open": ("open", {}),
        "open-allowing": (
            "open",
            {
                "WALLET_ALLOWED_HOSTS": "wallet.internal, *.corp.example",
                "WALLET_CORS_ORIGINS": "https://app.example",
            },
        ),
        "open-any-host": ("open", {"WALLET_ALLOWED_HOSTS": "*"}),
        "secured": ("secured", {}),
        "secured-allowing": ("secured", {"WALLET_ALLOWED_HOSTS": "wallet.internal"}),
    }
    started = []
    found: dict[str, Server] = {}
    try:
        for name, (database, env) in configs.items():
            url, secret = databases[database]
            proc, base = start_server(url, workers=1, log=None, **env)
            started.append(proc)
            headers = {"Authorization": f"Bearer {secret}"} if secret else {}
            found[name] = Server(base, int(base.rsplit(":", 1)[1]), headers)
        yield found
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.wait(timeout=30)


def send(
    server: Server,
    method: str,
    target: str,
    *,
    host: str | None,
    origin: str | None = None,
    body: object = None,
    content_type: str = "application/json",
) -> RawResponse:
    headers = dict(server.headers)
    if origin is not None:
        headers["Origin"] = origin
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = content_type
        headers["Idempotency-Key"] = str(uuid.uuid4())
    return exchange(
        server.base, request_bytes(method, target, host=host, headers=headers, body=payload)
    )


def gold(server: Server) -> str:
    answer = send(server, "GET", f"/api/wallet/balance/{ALICE}", host="127.0.0.1")
    assert answer.status == 200, answer
    balance: str = next(b["balance"] for b in answer.json()["data"] if b["slug"] == "gold_coins")
    return balance


def assert_refused(answer: RawResponse, status: int, code: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert (body["success"], body["code"]) == (False, code)


async def websocket_outcome(server: Server, *, host: str, origin: str | None) -> tuple[int, bytes]:
    """The handshake's status (101 when accepted) and, when refused, the answer's body. The
    socket goes to the server; the URL only names `host`, as a rebound page's would."""
    with connect(server.base) as sock:
        sock.setblocking(False)
        try:
            async with websockets.connect(
                f"ws://{host}/graphql",
                sock=sock,
                proxy=None,
                subprotocols=PROTOCOLS,
                origin=Origin(origin) if origin else None,
                additional_headers=server.headers,
            ) as ws:
                await ws.send(json.dumps({"type": "connection_init"}))
                await asyncio.wait_for(ws.recv(), 5)
                return 101, b""
        except websockets.exceptions.InvalidStatus as refused:
            return refused.response.status_code, bytes(refused.response.body or b"")


# --------------------------------------------------------------------------------------------
# DNS rebinding against open mode
# --------------------------------------------------------------------------------------------


def test_rebinding_cannot_topup_in_open_mode(servers: dict[str, Server]) -> None:
    server = servers["open"]
    before = gold(server)
    answer = send(
        server,
        "POST",
        "/api/wallet/transact",
        host=REBIND,
        origin=f"http://{REBIND}",
        body=TOPUP,
        content_type="text/plain",
    )
    assert_refused(answer, 400, "INVALID_HOST")
    assert gold(server) == before


@pytest.mark.parametrize(
    "host", [REBIND, "192.168.1.20:3000", "evil.example", "localhost.evil", ""]
)
def test_open_mode_serves_only_loopback_names(servers: dict[str, Server], host: str) -> None:
    answer = send(servers["open"], "GET", f"/api/wallet/balance/{ALICE}", host=host)
    assert_refused(answer, 400, "INVALID_HOST")


def test_a_request_without_host_is_refused_in_open_mode(servers: dict[str, Server]) -> None:
    assert_refused(
        send(servers["open"], "GET", f"/api/wallet/balance/{ALICE}", host=None), 400, "INVALID_HOST"
    )


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
def test_loopback_names_any_port_are_served(servers: dict[str, Server], name: str) -> None:
    server = servers["open"]
    for host in (name, f"{name}:{server.port}", f"{name}:8080"):
        answer = send(server, "GET", f"/api/wallet/balance/{ALICE}", host=host)
        assert answer.status == 200, (host, answer)


def test_health_checks_answer_any_host(servers: dict[str, Server]) -> None:
    for path in ("/healthz", "/readyz"):
        assert send(servers["open"], "GET", path, host="10.0.0.7:3000").status == 200


async def test_rebinding_cannot_open_a_websocket_in_open_mode(servers: dict[str, Server]) -> None:
    status, body = await websocket_outcome(servers["open"], host=REBIND, origin=f"http://{REBIND}")
    assert status == 400
    assert json.loads(body)["code"] == "INVALID_HOST"
    accepted, _ = await websocket_outcome(
        servers["open"], host=f"127.0.0.1:{servers['open'].port}", origin=None
    )
    assert accepted == 101


def test_allowed_hosts_widen_open_mode(servers: dict[str, Server]) -> None:
    server = servers["open-allowing"]
    for host in ("wallet.internal", "wallet.internal:3000", "api.corp.example", "localhost"):
        answer = send(server, "GET", f"/api/wallet/balance/{ALICE}", host=host)
        assert answer.status == 200, (host, answer)
    for host in (REBIND, "corp.example.evil", "internal"):
        answer = send(server, "GET", f"/api/wallet/balance/{ALICE}", host=host)
        assert_refused(answer, 400, "INVALID_HOST")


def test_a_star_allows_any_host(servers: dict[str, Server]) -> None:
    answer = send(servers["open-any-host"], "GET", f"/api/wallet/balance/{ALICE}", host=REBIND)
    assert answer.status == 200


# --------------------------------------------------------------------------------------------
# Cross-site writes (every mode)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil:80"])
@pytest.mark.parametrize("mode", ["open", "secured"])
def test_a_cross_site_text_plain_post_is_refused(
    servers: dict[str, Server], mode: str, origin: str
) -> None:
    server = servers[mode]
    before = gold(server)
    answer = send(
        server,
        "POST",
        "/api/wallet/transact",
        host=f"127.0.0.1:{server.port}",
        origin=origin,
        body=TOPUP,
        content_type="text/plain",
    )
    assert_refused(answer, 403, "ORIGIN_NOT_ALLOWED")
    assert gold(server) == before


@pytest.mark.parametrize("mode", ["open", "secured"])
def test_a_cross_site_graphql_mutation_is_refused_as_a_graphql_response(
    servers: dict[str, Server], mode: str
) -> None:
    """The same guard on /graphql, answered in the shape GraphQL clients read."""
    server = servers[mode]
    before = gold(server)
    mutation = "mutation T($input: TransactInput!) { transact(input: $input) { __typename } }"
    topup = {"userId": str(ALICE), "amount": "1", "assetSlug": "gold_coins", "type": "TOPUP"}
    variables = {"input": {**topup, "idempotencyKey": str(uuid.uuid4())}}
    answer = send(
        server,
        "POST",
        "/graphql",
        host=f"127.0.0.1:{server.port}",
        origin="https://evil.example",
        body={"query": mutation, "variables": variables},
        content_type="text/plain",
    )
    assert answer.status == 403, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["errors"][0]["extensions"]["code"] == "ORIGIN_NOT_ALLOWED"
    assert gold(server) == before


@pytest.mark.parametrize("mode", ["open", "secured"])
def test_writes_from_our_own_or_loopback_origins_pass(
    servers: dict[str, Server], mode: str
) -> None:
    server = servers[mode]
    own = f"127.0.0.1:{server.port}"
    for origin in (f"http://{own}", "http://localhost:5173", "http://[::1]:8080", None):
        answer = send(server, "POST", "/api/wallet/transact", host=own, origin=origin, body=TOPUP)
        assert answer.status == 200, (origin, answer)


def test_configured_cors_origins_may_write(servers: dict[str, Server]) -> None:
    server = servers["open-allowing"]
    ok = send(
        server, "POST", "/api/wallet/transact", host="wallet.internal",
        origin="https://app.example", body=TOPUP,
    )  # fmt: skip
    assert ok.status == 200, ok
    refused = send(
        server, "POST", "/api/wallet/transact", host="wallet.internal",
        origin="https://other.example", body=TOPUP,
    )  # fmt: skip
    assert_refused(refused, 403, "ORIGIN_NOT_ALLOWED")


def test_reads_carry_no_origin_rule(servers: dict[str, Server]) -> None:
    """A cross-site GET changes nothing, and CORS keeps the page from reading the answer."""
    answer = send(
        servers["secured"], "GET", f"/api/wallet/balance/{ALICE}",
        host="127.0.0.1", origin="https://evil.example",
    )  # fmt: skip
    assert answer.status == 200


@pytest.mark.parametrize("mode", ["open", "secured"])
async def test_a_cross_site_websocket_is_refused(servers: dict[str, Server], mode: str) -> None:
    server = servers[mode]
    own = f"127.0.0.1:{server.port}"
    status, body = await websocket_outcome(server, host=own, origin="https://evil.example")
    assert status == 403
    assert json.loads(body)["code"] == "ORIGIN_NOT_ALLOWED"
    accepted, _ = await websocket_outcome(server, host=own, origin=f"http://{own}")
    assert accepted == 101


# --------------------------------------------------------------------------------------------
# Secured mode: the Host check only when WALLET_ALLOWED_HOSTS is set
# --------------------------------------------------------------------------------------------


def test_secured_mode_serves_any_host_unless_configured(servers: dict[str, Server]) -> None:
    path = f"/api/wallet/balance/{ALICE}"
    assert send(servers["secured"], "GET", path, host="wallet.example.com").status == 200
    assert_refused(
        send(servers["secured-allowing"], "GET", path, host="wallet.example.com"),
        400,
        "INVALID_HOST",
    )
    assert send(servers["secured-allowing"], "GET", path, host="wallet.internal").status == 200
