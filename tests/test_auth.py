"""Authentication and authorization: the matrix of every route and GraphQL operation against
every kind of caller, plus key lifecycle, token variants, rate limits and the open mode's rules."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import jwt
import pytest
import websockets
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from tests.conftest import ROOT, create_database, drop_database, free_port, start_server
from tests.factories import Factory, in_process_resources
from tests.graphql_client import PROTOCOLS
from tests.rawhttp import exchange, request_bytes
from wallet import auth, rest
from wallet.auth import RateLimiter
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine, with_connection
from wallet.errors import RateLimited
from wallet.resources import MissingPrincipal, principal
from wallet.seed import ALICE, BOB, seed
from wallet.settings import Settings

SECRET = "test-jwt-secret-0123456789-abcdefghij"
T = TypeVar("T")


def token(sub: uuid.UUID | str, *, secret: str = SECRET, expires_in: int = 600) -> str:
    claims = {"sub": str(sub), "exp": int(time.time()) + expires_in}
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True)
class KeyedServer:
    base: str
    headers: dict[str, dict[str, str]]  # caller -> its Authorization header ("none": no header)


@contextmanager
def keyed_server(
    server_url: str, prefix: str, keys: Mapping[str, list[str]], **env: str
) -> Iterator[KeyedServer]:
    """A real server on a seeded database of its own, with these API keys (name -> scopes),
    end-user tokens signed with SECRET, and callers: each key by name, "alice" (her token),
    "none" (no credentials)."""
    url = create_database(server_url, prefix)
    migrate(url)
    _run(url, seed)

    async def make_keys(conn: AsyncConnection) -> dict[str, str]:
        return {
            name: await auth.create_key(conn, name=name, scopes=scopes)
            for name, scopes in keys.items()
        }

    secrets = _run(url, make_keys)
    proc, base = start_server(url, workers=1, log=None, WALLET_JWT_SECRET=SECRET, **env)
    headers = {name: {"Authorization": f"Bearer {secret}"} for name, secret in secrets.items()}
    headers["alice"] = {"Authorization": f"Bearer {token(ALICE)}"}
    headers["none"] = {}
    try:
        yield KeyedServer(base, headers)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


def unsigned_token(sub: uuid.UUID) -> str:
    """`alg: none`: a token anyone can forge, which must never be accepted."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"sub": str(sub), "exp": int(time.time()) + 600}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def on_database(url: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Secured:
    base: str
    database_url: str
    credentials: dict[str, str | None]  # caller name -> Authorization header value


@pytest.fixture(scope="module")
def secured(server_url: str) -> Iterator[Secured]:
    """Its own database (keys close a database for good) and a server with JWT configured."""
    url = create_database(server_url, "wallet_auth")
    migrate(url)
    _run(url, seed)

    async def make_keys(conn: AsyncConnection) -> dict[str, str]:
        made = {
            name: await auth.create_key(conn, name=name, scopes=scopes)
            for name, scopes in [
                ("reader", ["read"]),
                ("payments", ["transact"]),
                ("ops", ["admin"]),
                ("retired", ["read", "transact", "admin"]),
            ]
        }
        await auth.revoke_key(conn, "retired")
        return made

    keys = _run(url, make_keys)
    proc, base = start_server(url, WALLET_JWT_SECRET=SECRET, WALLET_AUTH_CACHE_SECONDS="0")
    bearer = {name: f"Bearer {secret}" for name, secret in keys.items()}
    credentials: dict[str, str | None] = {
        "none": None,
        "bad key": "Bearer wk_0123456789ab_" + "A" * 43,
        "revoked key": bearer["retired"],
        "read key": bearer["reader"],
        "transact key": bearer["payments"],
        "admin key": bearer["ops"],
        "alice token": f"Bearer {token(ALICE)}",
        "bob token": f"Bearer {token(BOB)}",
        "expired token": f"Bearer {token(ALICE, expires_in=-60)}",
        "foreign token": f"Bearer {token(ALICE, secret='another-secret-another-secret-xx')}",
        "alg-none token": f"Bearer {unsigned_token(ALICE)}",
    }
    try:
        yield Secured(base, url, credentials)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


@pytest.fixture
async def http(secured: Secured) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secured.base, timeout=30) as client:
        yield client


INVALID = ["none", "bad key", "revoked key", "expired token", "foreign token", "alg-none token"]
CALLERS = [*INVALID, "read key", "transact key", "admin key", "alice token", "bob token"]

WALLET_QUERY = f'{{ wallet(userId: "{ALICE}") {{ balances {{ amount }} }} }}'
ASSETS_QUERY = "{ assets { slug } }"


def transact_mutation(kind: str) -> str:
    return (
        "mutation { transact(input: {"
        f'userId: "{ALICE}", amount: 1, assetSlug: "gold_coins", type: {kind},'
        f' idempotencyKey: "{uuid.uuid4()}"'
        "}) { __typename ... on Error { code } } }"
    )


def transact_body(kind: str) -> dict[str, Any]:
    return {"userId": str(ALICE), "amount": 1, "assetSlug": "gold_coins", "type": kind}


# What each valid caller gets: an HTTP status for REST routes; for GraphQL, "data" (allowed),
# the union member's typename, or an error code.
ALLOWED: dict[str, dict[str, object]] = {
    "read key": {
        "balance": 200, "history": 200, "topup": 403, "bonus": 403, "spend": 403,
        "create user": 403, "list keys": 403, "audit": 403, "openapi": 200,
        "gql wallet": "data", "gql assets": "data", "gql spend": "Forbidden",
        "gql topup": "Forbidden", "subscribe": "allowed",
    },
    "transact key": {
        "balance": 403, "history": 403, "topup": 200, "bonus": 200, "spend": 200,
        "create user": 403, "list keys": 403, "audit": 403, "openapi": 200,
        "gql wallet": "FORBIDDEN", "gql assets": "FORBIDDEN", "gql spend": "TransactSuccess",
        "gql topup": "TransactSuccess", "subscribe": "FORBIDDEN",
    },
    "admin key": {
        "balance": 403, "history": 403, "topup": 403, "bonus": 403, "spend": 403,
        "create user": 201, "list keys": 200, "audit": 200, "openapi": 200,
        "gql wallet": "FORBIDDEN", "gql assets": "FORBIDDEN", "gql spend": "Forbidden",
        "gql topup": "Forbidden", "subscribe": "FORBIDDEN",
    },
    "alice token": {
        "balance": 200, "history": 200, "topup": 403, "bonus": 403, "spend": 403,
        "create user": 403, "list keys": 403, "audit": 403, "openapi": 200,
        "gql wallet": "data", "gql assets": "FORBIDDEN", "gql spend": "Forbidden",
        "gql topup": "Forbidden", "subscribe": "allowed",
    },
    "bob token": {
        "balance": 403, "history": 403, "topup": 403, "bonus": 403, "spend": 403,
        "create user": 403, "list keys": 403, "audit": 403, "openapi": 200,
        "gql wallet": "FORBIDDEN", "gql assets": "FORBIDDEN", "gql spend": "Forbidden",
        "gql topup": "Forbidden", "subscribe": "FORBIDDEN",
    },
}  # fmt: skip
OPERATIONS = list(ALLOWED["read key"])


async def call(client: httpx.AsyncClient, base: str, op: str, header: str | None) -> object:
    """Perform one operation as one caller; return what the matrix compares."""
    headers = {"Authorization": header} if header else {}
    rest: dict[str, tuple[str, str, dict[str, Any] | None]] = {
        "balance": ("GET", f"/api/wallet/balance/{ALICE}", None),
        "history": ("GET", f"/api/wallet/transactions/{ALICE}", None),
        "topup": ("POST", "/api/wallet/transact", transact_body("TOPUP")),
        "bonus": ("POST", "/api/wallet/transact", transact_body("BONUS")),
        "spend": ("POST", "/api/wallet/transact", transact_body("SPEND")),
        "create user": ("POST", "/api/users", {"username": f"u-{uuid.uuid4().hex[:10]}"}),
        "list keys": ("GET", "/api/admin/keys", None),
        "audit": ("GET", "/api/admin/audit", None),
        "openapi": ("GET", "/openapi.json", None),
    }
    if op in rest:
        method, path, body = rest[op]
        response = await client.request(
            method,
            path,
            json=body,
            headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.headers["content-type"].startswith("application/json")
        if response.status_code >= 400:
            expected_code = {401: "UNAUTHENTICATED", 403: "FORBIDDEN"}.get(response.status_code)
            if expected_code:
                assert response.json()["code"] == expected_code
        return response.status_code
    if op == "subscribe":
        return await subscribe_outcome(base, header)
    query = {
        "gql wallet": WALLET_QUERY,
        "gql assets": ASSETS_QUERY,
        "gql spend": transact_mutation("SPEND"),
        "gql topup": transact_mutation("TOPUP"),
    }[op]
    response = await client.post("/graphql", json={"query": query}, headers=headers)
    if response.status_code != 200:
        return response.status_code
    body = response.json()
    if body.get("errors"):
        code: object = body["errors"][0]["extensions"]["code"]
        return code
    if "transact" in body["data"]:
        typename: object = body["data"]["transact"]["__typename"]
        return typename
    return "data"


async def subscribe_outcome(base: str, header: str | None) -> object:
    url = base.replace("http://", "ws://") + "/graphql"
    extra = {"Authorization": header} if header else {}
    try:
        async with websockets.connect(
            url,
            subprotocols=PROTOCOLS,
            additional_headers=extra,
        ) as socket:
            await socket.send(json.dumps({"type": "connection_init"}))
            ack = json.loads(await asyncio.wait_for(socket.recv(), 5))
            if ack["type"] != "connection_ack":
                return "rejected"
            query = f'subscription {{ balanceChanged(userId: "{ALICE}") {{ amount }} }}'
            await socket.send(
                json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}})
            )
            try:
                message = json.loads(await asyncio.wait_for(socket.recv(), 1.0))
            except TimeoutError:
                return "allowed"  # subscribed, waiting for changes
            errors = (
                message["payload"]
                if message["type"] == "error"
                else (message["payload"].get("errors") or [])
            )
            if errors:
                code: object = errors[0]["extensions"]["code"]
                return code
            return message["type"]
    except websockets.exceptions.InvalidStatus as refused:
        return refused.response.status_code
    except websockets.exceptions.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else "closed"


@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize("caller", CALLERS)
async def test_authorization_matrix(
    secured: Secured, http: httpx.AsyncClient, caller: str, op: str
) -> None:
    outcome = await call(http, secured.base, op, secured.credentials[caller])
    if caller in INVALID:
        # A WebSocket upgrade with a bad header is refused as HTTP refuses it (401, before 101);
        # one without a header is accepted, and closed 4403 at its connection_init.
        if op == "subscribe" and caller == "none":
            assert outcome == 4403
        else:
            assert outcome == 401, outcome
    else:
        assert outcome == ALLOWED[caller][op]


@pytest.mark.parametrize("caller", ["bad key", "revoked key", "alg-none token"])
async def test_an_upgrade_with_a_bad_credential_is_refused_in_json(
    secured: Secured, caller: str
) -> None:
    """The refusal a client can read, as the browser guard's refused upgrades are: the JSON
    401 with its code and WWW-Authenticate header (it was an empty 403, uvicorn's answer to a
    close before the socket was accepted)."""
    url = secured.base.replace("http://", "ws://") + "/graphql"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(
            url,
            subprotocols=PROTOCOLS,
            additional_headers={"Authorization": secured.credentials[caller] or ""},
        ):
            pass
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(bytes(response.body or b""))["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("caller", CALLERS)
async def test_health_checks_stay_public(
    secured: Secured, http: httpx.AsyncClient, caller: str
) -> None:
    header = secured.credentials[caller]
    for path in ("/healthz", "/readyz"):
        response = await http.get(path, headers={"Authorization": header} if header else {})
        assert response.status_code == 200


async def test_browser_websocket_authenticates_in_connection_init(secured: Secured) -> None:
    url = secured.base.replace("http://", "ws://") + "/graphql"
    alice = secured.credentials["alice token"]
    async with websockets.connect(url, subprotocols=PROTOCOLS) as socket:
        await socket.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": alice}})
        )
        assert json.loads(await asyncio.wait_for(socket.recv(), 5))["type"] == "connection_ack"
    async with websockets.connect(url, subprotocols=PROTOCOLS) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": {}}))
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4403


async def test_transactions_record_their_principal_and_keys_are_scoped_per_principal(
    secured: Secured, http: httpx.AsyncClient, server_url: str
) -> None:
    shop = f"shop-{uuid.uuid4().hex[:6]}"
    secret = await on_database(
        secured.database_url, lambda conn: auth.create_key(conn, name=shop, scopes=["transact"])
    )
    key = f"same-key-{uuid.uuid4()}"
    body = transact_body("BONUS")
    first = await http.post(
        "/api/wallet/transact",
        json=body,
        headers={
            "Authorization": secured.credentials["transact key"] or "",
            "Idempotency-Key": key,
        },
    )
    second = await http.post(
        "/api/wallet/transact",
        json=body,
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": key},
    )
    assert first.status_code == second.status_code == 200
    assert first.json()["data"]["transactionId"] != second.json()["data"]["transactionId"]
    assert "idempotent-replayed" not in second.headers
    history = await http.get(
        f"/api/wallet/transactions/{ALICE}?limit=2",
        headers={"Authorization": secured.credentials["read key"] or ""},
    )
    principals = {item["principal"] for item in history.json()["data"]}
    assert principals == {"payments", shop}


def test_revoked_key_stops_working_once_the_command_returns(secured: Secured) -> None:
    name = f"temp-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DATABASE_URL": secured.database_url, "WALLET_AUTH_CACHE_SECONDS": "1"}
    created = subprocess.run(
        [sys.executable, "-m", "wallet.cli", "keys", "create", "--name", name, "--scopes", "read"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("wk_")
    listed = subprocess.run(
        [sys.executable, "-m", "wallet.cli", "keys", "list"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert name in listed.stdout
    assert secret not in listed.stdout
    proc, base = start_server(secured.database_url, WALLET_JWT_SECRET=SECRET)
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(f"{base}/api/wallet/balance/{ALICE}", headers=headers).status_code == 200
        subprocess.run(
            [sys.executable, "-m", "wallet.cli", "keys", "revoke", name],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        after = httpx.get(f"{base}/api/wallet/balance/{ALICE}", headers=headers)
        assert after.status_code == 401
        assert after.json()["code"] == "UNAUTHENTICATED"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_keys_over_http_and_stored_only_hashed(
    secured: Secured, http: httpx.AsyncClient
) -> None:
    admin = {"Authorization": secured.credentials["admin key"] or ""}
    name = f"api-{uuid.uuid4().hex[:6]}"
    made = await http.post(
        "/api/admin/keys", json={"name": name, "scopes": ["read"]}, headers=admin
    )
    assert made.status_code == 201
    secret = made.json()["data"]["key"]
    reader = {"Authorization": f"Bearer {secret}"}
    assert (await http.get(f"/api/wallet/balance/{ALICE}", headers=reader)).status_code == 200
    listed = await http.get("/api/admin/keys", headers=admin)
    assert secret not in listed.text

    async def all_keys(conn: AsyncConnection) -> str:
        return repr((await conn.execute(text("SELECT * FROM api_keys"))).all())

    dump = await on_database(secured.database_url, all_keys)
    assert secret not in dump
    assert secret.split("_", 2)[2] not in dump
    gone = await http.delete(f"/api/admin/keys/{name}", headers=admin)
    assert gone.status_code == 200
    assert (await http.get(f"/api/wallet/balance/{ALICE}", headers=reader)).status_code == 401
    bad = await http.post(
        "/api/admin/keys", json={"name": "x y", "scopes": ["read"]}, headers=admin
    )
    assert bad.status_code == 400
    worse = await http.post(
        "/api/admin/keys", json={"name": "ok", "scopes": ["root"]}, headers=admin
    )
    assert worse.status_code == 400


@pytest.fixture(scope="module")
def spending_server(secured: Secured) -> Iterator[str]:
    """A server on the same database where end users may SPEND their own coins."""
    proc, base = start_server(
        secured.database_url, WALLET_JWT_SECRET=SECRET, WALLET_USER_CAN_SPEND="true"
    )
    yield base
    proc.terminate()
    proc.wait(timeout=30)


async def test_user_spend_when_allowed(spending_server: str, secured: Secured) -> None:
    async with httpx.AsyncClient(base_url=spending_server, timeout=30) as client:
        alice = {"Authorization": f"Bearer {token(ALICE)}", "Idempotency-Key": str(uuid.uuid4())}
        spend = await client.post(
            "/api/wallet/transact", json=transact_body("SPEND"), headers=alice
        )
        assert spend.status_code == 200
        alice["Idempotency-Key"] = str(uuid.uuid4())
        topup = await client.post(
            "/api/wallet/transact", json=transact_body("TOPUP"), headers=alice
        )
        assert topup.status_code == 403
        bob = {"Authorization": f"Bearer {token(BOB)}", "Idempotency-Key": str(uuid.uuid4())}
        theft = await client.post("/api/wallet/transact", json=transact_body("SPEND"), headers=bob)
        assert theft.status_code == 403
        history = await client.get(
            f"/api/wallet/transactions/{ALICE}?limit=1",
            headers={"Authorization": f"Bearer {token(ALICE)}"},
        )
        assert history.json()["data"][0]["principal"] == f"user:{ALICE}"


async def test_token_claims_are_checked(secured: Secured, http: httpx.AsyncClient) -> None:
    path = f"/api/wallet/balance/{ALICE}"
    no_exp = jwt.encode({"sub": str(ALICE)}, SECRET, algorithm="HS256")
    not_a_user = token("admin")
    wrong_alg = jwt.encode(
        {"sub": str(ALICE), "exp": int(time.time()) + 60}, SECRET, algorithm="HS512"
    )
    for bad in (no_exp, not_a_user, wrong_alg, "a.b.c", "Bearer", "wk_short"):
        response = await http.get(path, headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401, bad
    basic = await http.get(path, headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert basic.status_code == 401
    assert basic.headers["www-authenticate"].startswith("Bearer")


def test_rsa_and_jwks_public_keys(tmp_path: Any) -> None:
    """RS256 with a PEM public key, and ES256 with a JWKS document picked by `kid`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from wallet.auth import _JWTVerifier
    from wallet.errors import Unauthenticated
    from wallet.settings import Settings

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "public.pem"
    pem.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verifier = _JWTVerifier(
        Settings(jwt_public_key_file=pem, jwt_audience="wallet", jwt_issuer="id")
    )
    claims = {"sub": str(ALICE), "exp": int(time.time()) + 60, "aud": "wallet", "iss": "id"}
    good = jwt.encode(claims, rsa_key, algorithm="RS256")
    assert verifier.verify(good).user_id == ALICE
    for bad_claims in ({**claims, "aud": "other"}, {**claims, "iss": "evil"}):
        with pytest.raises(Unauthenticated):
            verifier.verify(jwt.encode(bad_claims, rsa_key, algorithm="RS256"))
    with pytest.raises(Unauthenticated):  # an HS256 token "signed" with the public key
        verifier.verify(jwt.encode(claims, "x" * 32, algorithm="HS256"))

    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    by_kid = _JWTVerifier(Settings(jwt_public_key_file=jwks))
    es = jwt.encode(
        {"sub": str(BOB), "exp": int(time.time()) + 60},
        ec_key,
        algorithm="ES256",
        headers={"kid": "k1"},
    )
    assert by_kid.verify(es).user_id == BOB


@pytest.mark.parametrize("caller", ["none", "bad key", "revoked key", "expired token"])
async def test_refused_credentials_answer_in_the_shape_of_their_endpoint(
    secured: Secured, http: httpx.AsyncClient, caller: str
) -> None:
    """The gateway refuses before any route runs: REST callers get REST's envelope, GraphQL
    callers a GraphQL response whose error has `extensions.code`, as every other error there."""
    header = secured.credentials[caller]
    headers = {"Authorization": header} if header else {}
    rest = await http.get(f"/api/wallet/balance/{ALICE}", headers=headers)
    graphql = await http.post("/graphql", json={"query": "{ assets { slug } }"}, headers=headers)
    for answer in (rest, graphql):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.headers["content-type"].startswith("application/json")
    assert rest.json()["code"] == "UNAUTHENTICATED"
    assert graphql.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert set(graphql.json()) == {"errors"}


async def test_rate_limit_answers_429_with_retry_after(secured: Secured) -> None:
    proc, base = start_server(
        secured.database_url,
        WALLET_JWT_SECRET=SECRET,
        WALLET_RATE_LIMIT_PER_SECOND="5",
        WALLET_RATE_LIMIT_BURST="5",
    )
    try:
        headers = {"Authorization": secured.credentials["read key"] or ""}
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.get(f"/api/wallet/balance/{ALICE}", headers=headers) for _ in range(20))
            )
            other = await client.get(
                f"/api/wallet/balance/{ALICE}",
                headers={"Authorization": f"Bearer {token(ALICE)}"},
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    limited = [a for a in answers if a.status_code == 429]
    assert 10 <= len(limited) <= 15
    assert all(a.json()["code"] == "RATE_LIMITED" for a in limited)
    assert all(int(a.headers["retry-after"]) >= 1 for a in limited)
    assert other.status_code == 200  # another principal has its own bucket


def test_open_mode_refuses_to_leave_loopback(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("WALLET_JWT_SECRET", None)
    port = str(free_port())
    refused = subprocess.run(
        [sys.executable, "-m", "wallet.cli", "serve", "--host", "0.0.0.0", "--port", port],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--insecure-no-auth" in refused.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "wallet.cli", "serve", "--host", "0.0.0.0", "--port", port,
         "--insecure-no-auth"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("the server did not start with --insecure-no-auth")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "NO AUTHENTICATION" in output


# --------------------------------------------------------------------------------------------
# Fail closed: a route the gateway never authenticated has no principal, not every scope
# --------------------------------------------------------------------------------------------


def test_principal_of_a_bare_connection_is_an_error() -> None:
    bare = HTTPConnection({"type": "http", "path": "/api/wallet/transact", "headers": []})
    with pytest.raises(MissingPrincipal):
        principal(bare)
    pending = HTTPConnection(
        {"type": "websocket", "path": "/graphql", "headers": [], "state": {"principal": None}}
    )
    with pytest.raises(MissingPrincipal):
        principal(pending)


async def test_routes_mounted_without_the_auth_middleware_fail_closed(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=5)
    res = in_process_resources(Settings(), engine)
    routes = Starlette(routes=rest.routes)

    async def without_auth(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"resources": res}  # what the lifespan gives, and nothing else
        await routes(scope, receive, send)

    transport = httpx.ASGITransport(app=without_auth)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        with pytest.raises(MissingPrincipal):
            await client.post(
                "/api/wallet/transact",
                json={"userId": str(user), "amount": 7, "assetSlug": "gold_coins", "type": "TOPUP"},
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
        with pytest.raises(MissingPrincipal):
            await client.get(f"/api/wallet/balance/{user}")
    assert await factory.balance(user) == 5


# --------------------------------------------------------------------------------------------
# Retries only for what may run twice; concurrent key creation; bounded rate-limit memory
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("retry", [False, True])
async def test_a_dropped_connection_is_retried_only_when_asked(
    engine: AsyncEngine, retry: bool
) -> None:
    runs = 0

    async def work(conn: AsyncConnection) -> int:
        nonlocal runs
        runs += 1
        if runs == 1:  # the database drops this connection under our feet
            await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return 1

    if retry:
        assert await with_connection(engine, work, retry=True) == 1
        assert runs == 2
    else:
        with pytest.raises(DBAPIError) as dropped:
            await with_connection(engine, work)
        assert dropped.value.connection_invalidated
        assert runs == 1  # a create or revoke that did commit is not run again into a 409/404


async def test_concurrent_creates_of_one_key_name_give_one_key_and_clean_refusals(
    secured: Secured,
) -> None:
    admin = {"Authorization": secured.credentials["admin key"] or ""}
    name = f"race-{uuid.uuid4().hex[:8]}"
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=secured.base, timeout=30, limits=limits) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    "/api/admin/keys", json={"name": name, "scopes": ["read"]}, headers=admin
                )
                for _ in range(20)
            )
        )
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [201] + [400] * 19, codes
    for answer in answers:
        if answer.status_code == 400:
            body = answer.json()
            assert body["code"] == "VALIDATION_ERROR"
            assert body["message"] == f"A key named {name!r} exists already."


def test_rate_limiter_drops_buckets_that_are_full_again() -> None:
    limiter = RateLimiter(1000, 5)  # refills from empty in 5 ms
    for n in range(5000):
        limiter.check(f"user:{n}")
    assert len(limiter) <= 5000
    time.sleep(0.02)
    limiter.check("user:late")
    assert len(limiter) == 1  # every other bucket was full again, so gone


def test_rate_limiter_memory_is_capped_and_limits_still_hold() -> None:
    limiter = RateLimiter(0.001, 1, max_buckets=1000)  # nothing refills during the test
    for n in range(20_000):
        limiter.check(f"user:{n}")
        assert len(limiter) <= 1000
    limiter.check("hot")
    with pytest.raises(RateLimited):
        limiter.check("hot")  # the most recent principals keep their buckets
    with pytest.raises(RateLimited):
        limiter.check("user:19999")


@pytest.mark.parametrize(
    "value",
    [
        "Bearer wk_0123456789ab_" + "\xe9" * 43,  # latin-1 on the wire, not the key alphabet
        "Bearer wk_\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4_" + "A" * 43,
        "Bearer " + "A" * 5000,
        "Bearer wk_" + "0" * 5000,
        "Bearer \x01\x02.\x03.\x04",
        "\xff" * 100,
    ],
)
def test_hostile_authorization_headers_are_401(secured: Secured, value: str) -> None:
    request = request_bytes(
        "GET", f"/api/wallet/balance/{ALICE}", host="127.0.0.1", headers={"Authorization": value}
    )
    response = exchange(secured.base, request)
    # Control characters never get past the HTTP parser (a JSON 400); the rest are not keys.
    expected = 400 if any(ord(c) < 0x20 for c in value) else 401
    assert response.status == expected
    assert response.json()["code"] == {400: "VALIDATION_ERROR", 401: "UNAUTHENTICATED"}[expected]
