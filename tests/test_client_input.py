"""A client's mistake is a 4xx in the envelope, never a 500 and never a traceback in the log.

Every route's path parameters, query parameters and headers (enumerated from the OpenAPI
document, which a test keeps in step with the routes) get NUL bytes, control characters,
encoded surrogates, bytes that are not UTF-8 and overlong values; every POST route gets bodies
that are not one unambiguous JSON object. The server runs on a database of its own: nothing here
may create a key, and the log is read at the end.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import create_database, drop_database, start_server
from tests.rawhttp import exchange, request_bytes
from wallet.cli import _run, migrate
from wallet.openapi import DOCUMENT
from wallet.seed import ALICE, seed

# Percent-encoded, as they travel in a URL.
HOSTILE = {
    "nul": "%00",
    "nul-inside": "gold%00coins",
    "controls": "%01%1B%7F",
    "encoded-surrogate": "%ED%A0%80",
    "not-utf8": "%FF%FE%C0%80",
    "overlong": "x" * 5000,
    "overlong-digits": "9" * 5000,
    "newline": "a%0D%0Ab",
}
# Raw header values (latin-1 on the wire). NUL and CR/LF are refused by the HTTP parser itself.
HOSTILE_HEADERS = {
    "nul": "a\x00b",
    "not-utf8": "\xff\xfe\xc0\x80",
    "controls": "\x01\x1b",
    "overlong": "k" * 5000,
    "empty": "",
}
VALID_PATH = {"userId": str(ALICE), "name": "some-key"}
# Codes a client's mistake may earn on these routes.
CLIENT_CODES = {
    "VALIDATION_ERROR",
    "NOT_FOUND",
    "USER_NOT_FOUND",
    "ASSET_NOT_FOUND",
    "IDEMPOTENCY_KEY_MISSING",
    "METHOD_NOT_ALLOWED",
}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
    ]


def cases() -> list[Any]:
    """(method, target, extra headers) for every parameter of every operation x each value."""
    found = []
    for method, path, operation in operations():
        params = operation.get("parameters", [])
        valid = path
        for name, value in VALID_PATH.items():
            valid = valid.replace("{" + name + "}", value)
        for param in params:
            for label, value in HOSTILE.items():
                case_id = f"{method} {path} {param['in']}:{param['name']}={label}"
                if param["in"] == "path":
                    target = path.replace("{" + param["name"] + "}", value)
                    for name, ok in VALID_PATH.items():
                        target = target.replace("{" + name + "}", ok)
                    found.append(pytest.param(method, target, {}, id=case_id))
                elif param["in"] == "query":
                    target = f"{valid}?{param['name']}={value}"
                    found.append(pytest.param(method, target, {}, id=case_id))
            if param["in"] == "header":
                for label, raw in HOSTILE_HEADERS.items():
                    case_id = f"{method} {path} header:{param['name']}={label}"
                    found.append(pytest.param(method, valid, {param["name"]: raw}, id=case_id))
    return found


@pytest.fixture(scope="module")
def served(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    url = create_database(server_url, "wallet_input")
    migrate(url)
    _run(url, seed)
    log = tmp_path_factory.mktemp("client-input") / "server.log"
    proc, base = start_server(url, log=log)
    try:
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


@pytest.fixture
async def http(served: tuple[str, Path]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served[0], timeout=30) as client:
        yield client


def assert_client_error(status: int, content_type: str, body: bytes) -> dict[str, Any]:
    assert 400 <= status < 500, (status, body[:300])
    assert content_type.startswith("application/json"), content_type
    parsed: dict[str, Any] = json.loads(body)
    assert parsed["success"] is False
    assert parsed["code"] in CLIENT_CODES, parsed
    assert b"Traceback" not in body
    return parsed


@pytest.mark.parametrize(("method", "target", "headers"), cases())
def test_hostile_parameters_are_client_errors(
    served: tuple[str, Path], method: str, target: str, headers: dict[str, str]
) -> None:
    base, _ = served
    body = b"{}" if method == "POST" else b""
    sent = {"Idempotency-Key": f"input-{uuid.uuid4()}", **headers}
    response = exchange(
        base, request_bytes(method, target, host="127.0.0.1", headers=sent, body=body)
    )
    assert_client_error(response.status, response.headers.get("content-type", ""), response.body)


NOT_TEXT = ("nul", "nul-inside", "controls", "not-utf8", "newline")


def query_cases() -> list[Any]:
    """Every query parameter of every operation (and a metadata filter) x values that are not
    UTF-8 text without control characters."""
    found = []
    for method, path, operation in operations():
        valid = path
        for name, value in VALID_PATH.items():
            valid = valid.replace("{" + name + "}", value)
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
        if path == "/api/wallet/transactions/{userId}":
            names.append("metadata.k")
        for name in names:
            # A metadata filter may name any character a stored string holds, NUL aside.
            labels = ("nul", "not-utf8") if name.startswith("metadata.") else NOT_TEXT
            for label in labels:
                case_id = f"{method} {path} {name}={label}"
                found.append(
                    pytest.param(method, f"{valid}?{name}={HOSTILE[label]}", name, id=case_id)
                )
    return found


@pytest.mark.parametrize(("method", "target", "name"), query_cases())
def test_a_query_value_that_is_not_text_is_400_naming_it(
    served: tuple[str, Path], method: str, target: str, name: str
) -> None:
    """Not a lookup of U+FFFD (an ASSET_NOT_FOUND, or a metadata filter matching a stored
    U+FFFD) and not a message about something else: a 400 naming the parameter."""
    body = b"{}" if method == "POST" else b""
    sent = {"Idempotency-Key": f"input-{uuid.uuid4()}"}
    response = exchange(
        served[0], request_bytes(method, target, host="127.0.0.1", headers=sent, body=body)
    )
    parsed = assert_client_error(
        response.status, response.headers.get("content-type", ""), response.body
    )
    assert (response.status, parsed["code"]) == (400, "VALIDATION_ERROR"), parsed
    assert parsed["details"]["field"] == name


def test_the_reported_case_deleting_a_key_named_nul(served: tuple[str, Path]) -> None:
    response = exchange(served[0], request_bytes("DELETE", "/api/admin/keys/%00", host="127.0.0.1"))
    parsed = assert_client_error(response.status, response.headers["content-type"], response.body)
    assert (response.status, parsed["code"]) == (400, "VALIDATION_ERROR")


# --------------------------------------------------------------------------------------------
# Bodies: every POST route reads them through one strict JSON reader
# --------------------------------------------------------------------------------------------

POST_ROUTES = sorted(path for method, path, _ in operations() if method == "POST")
BAD_BODIES = {
    "duplicate-key": b'{"name": "a", "name": "b", "username": "a", "username": "b"}',
    "invalid-utf8": b'{"username": "\xff\xfe", "name": "\xc0\x80"}',
    "lone-surrogate-escape": b'{"username": "\\ud800", "name": "\\udfff"}',
    "deep-33": b'{"a": ' * 33 + b"1" + b"}" * 33,
    "deep-30000": b"[" * 30_000 + b"]" * 30_000,  # under the body cap
    "array": b"[]",
    "string": b'"hello"',
    "number": b"1",
    "null": b"null",
    "true": b"true",
    "empty": b"",
    "truncated": b'{"username": ',
    "nan": b'{"amount": NaN}',
}


def test_every_post_route_is_covered() -> None:
    assert POST_ROUTES == [
        "/api/admin/assets",
        "/api/admin/keys",
        "/api/transactions/{transactionId}/reverse",
        "/api/users",
        "/api/wallet/batch",
        "/api/wallet/holds",
        "/api/wallet/holds/{holdId}/capture",
        "/api/wallet/holds/{holdId}/void",
        "/api/wallet/transact",
        "/api/wallet/transfer",
    ]


@pytest.mark.parametrize("label", list(BAD_BODIES))
@pytest.mark.parametrize("path", POST_ROUTES)
async def test_bodies_that_are_not_one_json_object_are_400(
    http: httpx.AsyncClient, path: str, label: str
) -> None:
    response = await http.post(
        path,
        content=BAD_BODIES[label],
        headers={"Idempotency-Key": f"body-{uuid.uuid4()}", "Content-Type": "application/json"},
    )
    parsed = assert_client_error(
        response.status_code, response.headers["content-type"], response.content
    )
    assert (response.status_code, parsed["code"]) == (400, "VALIDATION_ERROR")


async def balance_and_history(http: httpx.AsyncClient, user: str) -> tuple[Any, Any]:
    balance = (await http.get(f"/api/wallet/balance/{user}")).json()["data"]
    history = (await http.get(f"/api/wallet/transactions/{user}")).json()["data"]
    return balance, history


async def test_duplicate_amount_moves_nothing_and_stores_no_key(http: httpx.AsyncClient) -> None:
    made = await http.post("/api/users", json={"username": f"dup-{uuid.uuid4().hex[:12]}"})
    user = made.json()["data"]["id"]
    key = f"dup-{uuid.uuid4()}"
    body = (
        f'{{"userId": "{user}", "amount": 1, "amount": 3,'
        ' "assetSlug": "gold_coins", "type": "TOPUP"}'
    ).encode()
    refused = await http.post(
        "/api/wallet/transact", content=body, headers={"Idempotency-Key": key}
    )
    parsed = assert_client_error(
        refused.status_code, refused.headers["content-type"], refused.content
    )
    assert (refused.status_code, parsed["code"]) == (400, "VALIDATION_ERROR")
    assert "amount" in parsed["message"]
    assert await balance_and_history(http, user) == ([], [])
    # The key was not spent: the corrected request runs, it is not a replay or a conflict.
    fixed = await http.post(
        "/api/wallet/transact",
        json={"userId": user, "amount": 3, "assetSlug": "gold_coins", "type": "TOPUP"},
        headers={"Idempotency-Key": key},
    )
    assert fixed.status_code == 200, fixed.text
    assert "idempotent-replayed" not in fixed.headers
    assert fixed.json()["data"]["balanceAfter"] == "3"


async def test_duplicate_username_creates_nobody(http: httpx.AsyncClient) -> None:
    first, second = (f"dup-{uuid.uuid4().hex[:12]}" for _ in range(2))
    body = f'{{"username": "{first}", "username": "{second}"}}'.encode()
    refused = await http.post("/api/users", content=body)
    assert refused.status_code == 400
    for name in (first, second):  # both still free
        assert (await http.post("/api/users", json={"username": name})).status_code == 201


async def test_refused_key_bodies_create_no_key(http: httpx.AsyncClient) -> None:
    body = b'{"name": "dup-a", "name": "dup-b", "scopes": ["read"]}'
    assert (await http.post("/api/admin/keys", content=body)).status_code == 400
    listed = await http.get("/api/admin/keys")  # still open: no key was ever made
    assert listed.status_code == 200
    assert listed.json()["data"] == []


def test_the_log_has_no_traceback(served: tuple[str, Path]) -> None:
    """Runs last in this module: after everything above, nothing was an unexpected error."""
    text = served[1].read_text(errors="replace")
    assert "serving" in text  # the log is the server's
    for needle in ("Traceback", "unexpected_error", "Exception in ASGI application"):
        assert needle not in text, re.findall(rf".*{needle}.*", text)[:3]
