"""WebSockets under HTTP's rules: every operation re-checks its credential and pays the rate
limit, a socket whose credential ends is closed (also one that only streams a subscription),
every frame is capped and read strictly, malformed ones close 4400 without a traceback, and an
unauthenticated context runs nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from graphql import GraphQLSyntaxError, Source
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from websockets.typing import Origin, Subprotocol

from tests.conftest import create_database, drop_database, start_server
from tests.factories import Factory, in_process_resources
from tests.graphql_client import PROTOCOLS, TRANSACT
from wallet import auth
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.graphql_ws import WalletTransportWSHandler
from wallet.resolvers.context import build_context
from wallet.schema.build import build_schema
from wallet.seed import seed
from wallet.settings import Settings

SECRET = "ws-test-jwt-secret-0123456789-abcdef"
TTL = 1.0  # WALLET_AUTH_CACHE_SECONDS of the server under test
BALANCE_CHANGED = "subscription ($id: UUID!) { balanceChanged(userId: $id) { amount } }"
ASSETS = "{ assets { slug } }"


def user_token(user: uuid.UUID, *, lifetime: float) -> tuple[str, float]:
    """A user JWT and the moment it expires."""
    expires = int(time.time() + lifetime)
    return jwt.encode({"sub": str(user), "exp": expires}, SECRET, algorithm="HS256"), expires


@dataclass(frozen=True)
class Server:
    base: str
    database_url: str
    admin: str  # Authorization header of an admin key

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/graphql"


@pytest.fixture(scope="module")
def server(server_url: str) -> Iterator[Server]:
    """Its own database (keys close a database for good), JWTs, users who may SPEND."""
    url = create_database(server_url, "wallet_ws")
    migrate(url)
    _run(url, seed)

    async def admin_key(conn: AsyncConnection) -> str:
        return await auth.create_key(conn, name="ops", scopes=["admin"])

    admin = _run(url, admin_key)
    proc, base = start_server(
        url,
        WALLET_JWT_SECRET=SECRET,
        WALLET_AUTH_CACHE_SECONDS=str(TTL),
        WALLET_USER_CAN_SPEND="true",
    )
    try:
        yield Server(base, url, f"Bearer {admin}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


@pytest.fixture(scope="module")
async def ws_engine(server: Server) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(server.database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
def users(ws_engine: AsyncEngine) -> Factory:
    return Factory(ws_engine)


async def new_key(server: Server, *scopes: str) -> tuple[str, str]:
    """A fresh key made over HTTP: its name and its Authorization header."""
    name = f"k-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
        made = await client.post(
            "/api/admin/keys",
            json={"name": name, "scopes": list(scopes)},
            headers={"Authorization": server.admin},
        )
    assert made.status_code == 201, made.text
    return name, f"Bearer {made.json()['data']['key']}"


async def revoke(server: Server, name: str) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
        answer = await client.delete(
            f"/api/admin/keys/{name}", headers={"Authorization": server.admin}
        )
    assert answer.status_code == 200, answer.text


class Socket:
    """One graphql-transport-ws connection, driven message by message."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket

    async def send(self, message: object) -> None:
        await self.socket.send(json.dumps(message))

    async def receive(self, wait: float = 10) -> dict[str, Any]:
        """The next message that is not a ping."""
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(self.socket.recv(), wait))
            if message["type"] != "ping":
                return message

    async def init(self, payload: dict[str, object] | None = None) -> None:
        await self.send({"type": "connection_init", **({"payload": payload} if payload else {})})
        ack = await self.receive()
        assert ack["type"] == "connection_ack", ack

    async def operation(
        self, op_id: str, query: str, variables: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run a query or mutation; its `next` (or `error`) message."""
        await self.send(
            {"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables}}
        )
        answer = await self.receive()
        if answer["type"] == "next":
            assert (await self.receive())["type"] == "complete"
        return answer

    async def closed_with(self, wait: float = 10) -> int | None:
        """Wait for the server to close the socket; its close code (no message may come first)."""
        try:
            message = await self.receive(wait)
        except websockets.exceptions.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        raise AssertionError(f"expected a close, got {message}")


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Any]:
    """connect(header=None) opens a socket to the module's server (closed at the test's end)."""
    opened: list[websockets.ClientConnection] = []

    async def open_socket(header: str | None = None, *, url: str | None = None) -> Socket:
        extra = {"Authorization": header} if header else {}
        socket = await websockets.connect(
            url or server.ws, subprotocols=PROTOCOLS, additional_headers=extra, max_size=None
        )
        opened.append(socket)
        return Socket(socket)

    yield open_socket
    for socket in opened:
        await socket.close()


def topup(user: uuid.UUID, amount: int, kind: str = "TOPUP") -> dict[str, Any]:
    return {
        "input": {
            "userId": str(user),
            "amount": amount,
            "assetSlug": "gold_coins",
            "type": kind,
            "idempotencyKey": str(uuid.uuid4()),
        }
    }


async def test_a_key_revoked_over_http_stops_working_on_an_open_socket(
    server: Server, connect: Any, users: Factory
) -> None:
    user = await users.user(gold=10)
    name, header = await new_key(server, "transact")
    socket = await connect(header)
    await socket.init()
    done = await socket.operation("1", TRANSACT, topup(user, 5))
    assert done["payload"]["data"]["transact"]["__typename"] == "TransactSuccess"
    await revoke(server, name)
    await asyncio.sleep(TTL)  # the longest any process may trust its cache
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):  # the periodic check won
        await socket.send(
            {
                "id": "2",
                "type": "subscribe",
                "payload": {"query": TRANSACT, "variables": topup(user, 5)},
            }
        )
    assert await socket.closed_with() == 4401
    assert await users.balance(user) == 15  # the second TOPUP never ran


async def test_an_expired_token_stops_working_on_an_open_socket(
    connect: Any, users: Factory
) -> None:
    user = await users.user(gold=10)
    token, expires = user_token(user, lifetime=2.5)
    socket = await connect()
    await socket.init({"Authorization": f"Bearer {token}"})
    spent = await socket.operation("1", TRANSACT, topup(user, 1, "SPEND"))
    assert spent["payload"]["data"]["transact"]["__typename"] == "TransactSuccess"
    await asyncio.sleep(expires - time.time() + 0.05)
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        await socket.send(
            {
                "id": "2",
                "type": "subscribe",
                "payload": {"query": TRANSACT, "variables": topup(user, 1, "SPEND")},
            }
        )
    assert await socket.closed_with() == 4401
    assert await users.balance(user) == 9


async def test_every_operation_checks_the_token_at_once(connect: Any, users: Factory) -> None:
    """Per operation, not only periodically: a token is refused the moment it expires."""
    user = await users.user(gold=10)
    token, expires = user_token(user, lifetime=3.0)
    socket = await connect()
    await socket.init({"Authorization": f"Bearer {token}"})
    query = f'{{ wallet(userId: "{user}") {{ username }} }}'
    answers = 0
    while time.time() < expires - 0.3:  # every one allowed while the token lives
        assert "errors" not in (await socket.operation(str(answers), query))["payload"]
        answers += 1
        await asyncio.sleep(0.1)
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.02)
    started = time.monotonic()
    try:
        await socket.operation("late", query)
        raise AssertionError("an operation ran after the token expired")
    except websockets.exceptions.ConnectionClosed as closed:
        assert closed.rcvd is not None
        assert closed.rcvd.code == 4401
    assert answers >= 10
    assert time.monotonic() - started < 0.5  # refused by that operation, not by a later check


@pytest.mark.parametrize("how", ["revoked key", "expired token"])
async def test_a_subscription_ends_with_its_credential(
    server: Server, connect: Any, users: Factory, how: str
) -> None:
    user = await users.user(gold=10)
    if how == "revoked key":
        name, header = await new_key(server, "read")
        socket = await connect(header)
        await socket.init()
    else:
        token, expires = user_token(user, lifetime=2.5)
        socket = await connect()
        await socket.init({"Authorization": f"Bearer {token}"})
    await socket.send(
        {
            "id": "1",
            "type": "subscribe",
            "payload": {"query": BALANCE_CHANGED, "variables": {"id": str(user)}},
        }
    )
    await asyncio.sleep(0.5)  # subscribed, streaming, sending nothing more
    if how == "revoked key":
        await revoke(server, name)
        ended = time.time()
    else:
        ended = expires
    assert await socket.closed_with(wait=10) == 4401
    # Checked at least every auth-cache TTL (plus one TTL for a cache that still held it).
    assert time.time() - ended < 2 * TTL + 1.0


async def test_a_subscription_ends_when_its_key_may_no_longer_read(
    server: Server, connect: Any, users: Factory, ws_engine: AsyncEngine
) -> None:
    user = await users.user(gold=10)
    name, header = await new_key(server, "read")
    socket = await connect(header)
    await socket.init()
    await socket.send(
        {
            "id": "1",
            "type": "subscribe",
            "payload": {"query": BALANCE_CHANGED, "variables": {"id": str(user)}},
        }
    )
    await asyncio.sleep(0.5)
    async with ws_engine.begin() as conn:  # an operator narrows the key (as the schema owner)
        await conn.execute(
            text("UPDATE api_keys SET scopes = ARRAY['transact'] WHERE name = :name"),
            {"name": name},
        )
    narrowed = time.monotonic()
    assert await socket.closed_with(wait=10) == 4403
    assert time.monotonic() - narrowed < 2 * TTL + 1.0


async def test_operations_on_a_socket_pay_the_rate_limit(server: Server, connect: Any) -> None:
    proc, base = start_server(
        server.database_url,
        WALLET_JWT_SECRET=SECRET,
        WALLET_RATE_LIMIT_PER_SECOND="5",
        WALLET_RATE_LIMIT_BURST="5",
    )
    try:
        _, header = await new_key(server, "read")
        socket = await connect(header, url=base.replace("http://", "ws://") + "/graphql")
        await socket.init()
        started = time.monotonic()
        for i in range(40):
            await socket.send({"id": str(i), "type": "subscribe", "payload": {"query": ASSETS}})
        outcomes: dict[str, str] = {}
        while len(outcomes) < 40:
            message = await socket.receive()
            if message["type"] == "next":
                outcomes[message["id"]] = "ran"
            elif message["type"] == "error":
                outcomes[message["id"]] = message["payload"][0]["extensions"]["code"]
        elapsed = time.monotonic() - started
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            after = await client.get("/api/wallet/balance/" + str(uuid.uuid4()), headers={
                "Authorization": header
            })  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ran = sum(o == "ran" for o in outcomes.values())
    assert set(outcomes.values()) <= {"ran", "RATE_LIMITED"}
    assert 1 <= ran <= 5 + int(elapsed * 5) + 1
    assert after.status_code == 429  # one bucket per principal, whatever the transport


async def test_a_message_over_the_body_cap_closes_4413_unparsed(
    server: Server, connect: Any
) -> None:
    cap = 64 * 1024  # WALLET_MAX_BODY_BYTES

    def ping(size: int) -> str:
        head = '{"type": "ping", "payload": {"pad": "'
        return head + "x" * (size - len(head) - 3) + '"}}'

    socket = await connect(server.admin)
    await socket.init()
    await socket.socket.send(ping(cap))  # exactly the cap: read
    assert (await socket.receive())["type"] == "pong"
    await socket.socket.send(ping(cap + 1))
    assert await socket.closed_with() == 4413

    socket = await connect(server.admin)
    await socket.init()
    started = time.monotonic()
    await socket.socket.send(ping(15_000_000))
    assert await socket.closed_with() == 4413
    assert time.monotonic() - started < 3
    async with httpx.AsyncClient(base_url=server.base, timeout=5) as client:
        assert (await client.get("/healthz")).status_code == 200

    socket = await connect(server.admin)  # multi-byte characters count as bytes
    await socket.init()
    await socket.socket.send(ping(cap // 2 + 100).replace("x", "é"))  # < cap characters
    assert await socket.closed_with() == 4413


MALFORMED: dict[str, str | bytes] = {
    "a JSON array": "[]",
    "a JSON string": '"connection_init"',
    "null": "null",
    "not JSON": "{type: ping}",
    "invalid UTF-8 (binary frame)": b'{"type": "ping", "payload": {"a": "\xff\xfe"}}',
    "invalid UTF-8 (text frame)": b'{"type": "ping", "payload": {"a": "\xc3\x28"}}',
    "duplicate keys": '{"type": "ping", "type": "pong"}',
    "nested too deep": '{"type": "ping", "payload": ' + '{"a": ' * 40 + "1" + "}" * 41,
    "a number as type": '{"type": 5}',
    "an unknown type": '{"type": "' + "x" * 500 + '"}',
    "no type": '{"id": "1"}',
    "subscribe with payload null": '{"id": "1", "type": "subscribe", "payload": null}',
    "subscribe without query": '{"id": "1", "type": "subscribe", "payload": {}}',
    "subscribe with a number as query": '{"id": "1", "type": "subscribe", "payload": {"query": 5}}',
    "subscribe with a number as id": (
        '{"id": 1, "type": "subscribe", "payload": {"query": "{ assets { slug } }"}}'
    ),
    "subscribe with a list of variables": (
        '{"id": "1", "type": "subscribe",'
        ' "payload": {"query": "{ assets { slug } }", "variables": [1]}}'
    ),
    "subscribe with a number as operationName": (
        '{"id": "1", "type": "subscribe",'
        ' "payload": {"query": "{ assets { slug } }", "operationName": 7}}'
    ),
    "complete with a list as id": '{"id": [1], "type": "complete"}',
    "ping with a list as payload": '{"type": "ping", "payload": [1]}',
    "connection_init with a list as payload": '{"type": "connection_init", "payload": [1]}',
}


async def test_malformed_frames_close_4400_without_a_traceback(
    database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    proc, base = start_server(database_url)  # started here, so capfd holds its log
    url = base.replace("http://", "ws://") + "/graphql"
    outcomes: dict[str, object] = {}
    try:
        for name, frame in MALFORMED.items():
            for initialised in (False, True):
                async with websockets.connect(url, subprotocols=PROTOCOLS) as raw:
                    socket = Socket(raw)
                    if initialised:
                        await socket.init()
                    await raw.send(frame, text="(text frame)" in name or isinstance(frame, str))
                    outcomes[f"{name}, initialised={initialised}"] = await socket.closed_with()
        async with websockets.connect(url, subprotocols=PROTOCOLS) as raw:
            socket = Socket(raw)  # a well-formed message, but no such operation in the document
            await socket.init()
            await socket.send(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": ASSETS, "operationName": "Nope"},
                }
            )
            outcomes["an operationName the document lacks"] = await socket.closed_with()
        async with websockets.connect(url, subprotocols=PROTOCOLS) as raw:  # still serving
            socket = Socket(raw)
            await socket.send({"type": "connection_init", "payload": None})  # null is allowed
            assert (await socket.receive())["type"] == "connection_ack"
            assert "errors" not in (await socket.operation("1", ASSETS))["payload"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert outcomes == dict.fromkeys(outcomes, 4400)
    log = capfd.readouterr()
    assert "Traceback" not in log.out + log.err
    assert "Exception" not in log.out + log.err


@contextlib.asynccontextmanager
async def logged_server(database_url: str, log: Path) -> AsyncIterator[str]:
    """A server of its own whose output goes to `log`; its WebSocket URL."""
    proc, base = start_server(database_url, log=log)
    try:
        yield base.replace("http://", "ws://") + "/graphql"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def assert_quiet(log: Path) -> None:
    """Nothing a client sent made the server log an error or a traceback."""
    text = log.read_text()
    for sign in ("Traceback", "Exception", "ERROR", '"level": "error"', '"level":"error"'):
        assert sign not in text, text


async def test_a_document_that_does_not_parse_gets_an_error_message(
    database_url: str, tmp_path: Path
) -> None:
    """As a validation error does (and as HTTP answers it): an `error` message with a code, no
    traceback, and the socket goes on. ParserCache parses where Strawberry catches nothing."""
    log = tmp_path / "server.log"
    async with (
        logged_server(database_url, log) as url,
        websockets.connect(url, subprotocols=PROTOCOLS) as raw,
    ):
        socket = Socket(raw)
        await socket.init()
        await socket.send({"id": "1", "type": "subscribe", "payload": {"query": "subscription {"}})
        assert await socket.receive() == {
            "id": "1",
            "type": "error",
            "payload": [
                {
                    "message": "Syntax Error: Expected Name, found <EOF>.",
                    "locations": [{"line": 1, "column": 15}],
                    "extensions": {"code": "VALIDATION_ERROR"},
                }
            ],
        }
        invalid = await socket.operation("2", "{ nope }")  # a validation error: the same shape
        assert invalid["type"] == "error"
        assert invalid["payload"][0]["extensions"] == {"code": "VALIDATION_ERROR"}
        assert set(invalid["payload"][0]) == {"message", "locations", "extensions"}
        too_long = "{ " + "assets { slug } " * 700 + "}"  # over the 2000-token limit
        refused = await socket.operation("3", too_long)
        assert refused["type"] == "error"
        assert [e["extensions"] for e in refused["payload"]] == [{"code": "QUERY_TOO_COMPLEX"}]
        assert "errors" not in (await socket.operation("1", ASSETS))["payload"]  # id free again
    assert_quiet(log)


def test_no_parser_makes_a_syntax_error_close_the_socket() -> None:
    """Without ParserCache, Strawberry's own parser reports a syntax error as a pre-execution
    error, which it would answer by closing the socket: the wallet answers it as above."""
    syntax = GraphQLSyntaxError(Source("subscription {"), 14, "Expected Name, found <EOF>.")
    assert WalletTransportWSHandler._get_pre_execution_close_reason(syntax) is None


async def test_an_operation_name_with_a_lone_surrogate_closes_4400(
    database_url: str, tmp_path: Path
) -> None:
    """The close reason names the operation; a surrogate cannot be sent as UTF-8, so it is
    replaced: the socket closes as for any unknown name, with nothing sent first."""
    log = tmp_path / "server.log"
    query = f'subscription A {{ balanceChanged(userId: "{uuid.uuid4()}") {{ amount }} }}'
    async with logged_server(database_url, log) as url:
        for name, reason in (
            ("B", 'Unknown operation named "B".'),
            ("\ud800", 'Unknown operation named "?".'),
        ):
            async with websockets.connect(url, subprotocols=PROTOCOLS) as raw:
                socket = Socket(raw)
                await socket.init()
                payload = {"query": query, "operationName": name}
                await socket.send({"id": "1", "type": "subscribe", "payload": payload})
                with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                    message = await socket.receive()
                    raise AssertionError(f"expected a close, got {message}")
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4400, reason)
    assert_quiet(log)


async def test_operations_over_the_per_socket_limit_get_a_coded_error(
    server: Server, connect: Any, users: Factory
) -> None:
    """Strawberry allows 100 operations at once on a socket; the 101st is refused with a code
    (the rate limit's: the client may retry once one of them ended), and the socket goes on."""
    user = await users.user(gold=10)
    _, header = await new_key(server, "read")
    socket = await connect(header)
    await socket.init()
    subscribe = {"query": BALANCE_CHANGED, "variables": {"id": str(user)}}
    for i in range(100):
        await socket.send({"id": str(i), "type": "subscribe", "payload": subscribe})
    await socket.send({"id": "100", "type": "subscribe", "payload": {"query": ASSETS}})
    assert await socket.receive() == {
        "id": "100",
        "type": "error",
        "payload": [
            {"message": "Subscription limit reached", "extensions": {"code": "RATE_LIMITED"}}
        ],
    }
    await socket.send({"id": "0", "type": "complete"})  # one ends: room for another
    assert "errors" not in (await socket.operation("100", ASSETS))["payload"]


async def test_only_graphql_transport_ws_is_spoken(server: Server) -> None:
    """The legacy graphql-ws protocol would skip every check above: it is not offered."""
    legacy = [Subprotocol("graphql-ws")]
    headers = {"Authorization": server.admin}
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        async with websockets.connect(
            server.ws, subprotocols=legacy, additional_headers=headers
        ) as raw:
            await raw.send(json.dumps({"type": "connection_init"}))
            await asyncio.wait_for(raw.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4406


async def test_a_socket_runs_nothing_before_it_authenticates(server: Server, connect: Any) -> None:
    socket = await connect()  # no header: connection_init must authenticate
    await socket.send({"id": "1", "type": "subscribe", "payload": {"query": ASSETS}})
    assert await socket.closed_with() == 4401
    socket = await connect()
    await socket.send({"type": "connection_init", "payload": {"Authorization": "Bearer nope"}})
    assert await socket.closed_with() == 4403


def test_a_context_needs_a_principal(engine: AsyncEngine) -> None:
    resources = in_process_resources(Settings(database_url="postgresql://unused"), engine)
    with pytest.raises(TypeError):
        build_context(resources)  # type: ignore[call-arg]


async def test_an_unauthenticated_context_runs_nothing(
    engine: AsyncEngine, factory: Factory
) -> None:
    """Nobody authenticated (a WebSocket before connection_init): every root field refuses."""
    settings = Settings(database_url="postgresql://unused")
    resources = in_process_resources(settings, engine)
    schema = build_schema(settings)
    user = await factory.user(gold=10)
    for document, variables in [
        (ASSETS, None),
        (f'{{ wallet(userId: "{user}") {{ username }} }}', None),
        (f'{{ transaction(id: "{uuid.uuid4()}") {{ id }} }}', None),
        (TRANSACT, topup(user, 5)),
    ]:
        context = build_context(resources, principal=None)
        result = await schema.execute(document, variable_values=variables, context_value=context)
        assert result.errors is not None, document
        assert result.errors[0].extensions == {"code": "UNAUTHENTICATED"}, document
    context = build_context(resources, principal=None)
    stream = await schema.subscribe(
        BALANCE_CHANGED, variable_values={"id": str(user)}, context_value=context
    )
    first = await anext(stream)
    assert first.errors is not None
    assert first.errors[0].extensions == {"code": "UNAUTHENTICATED"}
    assert await factory.balance(user) == 10


async def test_a_refused_upgrade_is_not_logged_as_an_error(
    database_url: str, tmp_path: Path
) -> None:
    """A cross-site upgrade gets the gateway's JSON 403, never a 101, and the log says only that
    it was rejected (uvicorn logged an ERROR for each: a client could fill the error log)."""
    log = tmp_path / "server.log"
    async with logged_server(database_url, log) as url:
        for _ in range(3):
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with websockets.connect(
                    url, subprotocols=PROTOCOLS, origin=Origin("https://evil.example")
                ):
                    pass
            assert refused.value.response.status_code == 403
            body = json.loads(bytes(refused.value.response.body or b""))
            assert body["code"] == "ORIGIN_NOT_ALLOWED"
        async with websockets.connect(url, subprotocols=PROTOCOLS) as raw:
            await Socket(raw).init()  # a socket the gateway lets through still works
    assert_quiet(log)
    assert "rejected" in log.read_text()
