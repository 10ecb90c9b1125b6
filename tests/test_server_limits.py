"""The HTTP server's own limits, over raw sockets against a real `wallet serve`: a cap on the
request line and headers, and timeouts for clients that send their headers or body slowly.

The server runs with short timeouts (1 s for headers, 2 s for a body) so the tests are quick.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.conftest import start_server
from tests.graphql_client import PROTOCOLS
from tests.rawhttp import (
    RawResponse,
    closed_by_peer,
    connect,
    exchange,
    read_response,
    request_bytes,
)

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
MAX_HEADERS = 16 * 1024


@pytest.fixture(scope="module")
def served(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("limits") / "server.log"
    proc, base = start_server(
        database_url,
        log=log,
        WALLET_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT),
        WALLET_BODY_TIMEOUT_S=str(BODY_TIMEOUT),
        WALLET_MAX_HEADER_BYTES=str(MAX_HEADERS),
    )
    try:
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def assert_json_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["success"], body["code"]) == (False, code)


# --------------------------------------------------------------------------------------------
# Header size
# --------------------------------------------------------------------------------------------


def test_headers_within_the_cap_are_served(served: tuple[str, Path]) -> None:
    headers = {f"X-Pad-{n}": "p" * 100 for n in range(100)}  # about 11 KiB
    response = exchange(
        served[0], request_bytes("GET", "/healthz", host="localhost", headers=headers)
    )
    assert response.status == 200


def test_one_huge_header_is_431_and_the_connection_closes(served: tuple[str, Path]) -> None:
    with connect(served[0]) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Huge: " + b"a" * (MAX_HEADERS + 4096)
        )
        response = read_response(sock)  # no end of headers sent: the cap alone answers
        assert_json_error(response, 431, "HEADERS_TOO_LARGE")
        assert closed_by_peer(sock, within=2)


def test_many_headers_adding_up_past_the_cap_are_431(served: tuple[str, Path]) -> None:
    headers = {f"X-Pad-{n}": "p" * 100 for n in range(200)}  # about 22 KiB, each one small
    response = exchange(
        served[0], request_bytes("GET", "/healthz", host="localhost", headers=headers)
    )
    assert_json_error(response, 431, "HEADERS_TOO_LARGE")


def test_an_8_mb_header_is_not_read_to_the_end(served: tuple[str, Path]) -> None:
    """The reviewer's case: the server refuses long before 8 MB arrive (it used to answer 200)."""
    answer: list[bytes] = []
    finished = False
    with connect(served[0]) as sock:

        def reader() -> None:
            try:
                answer.append(sock.recv(65536))
            except OSError:
                answer.append(b"")

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Huge: ")
            for _ in range(128):
                sock.sendall(b"a" * 65536)
            sock.sendall(b"\r\n\r\n")
            finished = True
        except OSError:
            pass  # the server closed on us
        thread.join(timeout=10)
    got = answer[0] if answer else b""
    assert not got.startswith(b"HTTP/1.1 200"), got[:200]
    assert got.startswith(b"HTTP/1.1 431") or not finished, got[:200]


def test_the_cap_is_per_request_on_a_keep_alive_connection(served: tuple[str, Path]) -> None:
    headers = {f"X-Pad-{n}": "p" * 100 for n in range(100)}  # about 11 KiB, twice is 22
    with connect(served[0]) as sock:
        for _ in range(3):
            sock.sendall(request_bytes("GET", "/healthz", host="localhost", headers=headers))
            assert read_response(sock).status == 200


# --------------------------------------------------------------------------------------------
# Slow clients
# --------------------------------------------------------------------------------------------


def test_headers_sent_slowly_get_408_and_a_closed_connection(served: tuple[str, Path]) -> None:
    with connect(served[0]) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        sock.settimeout(0.3)
        got = b""
        for n in range(40):  # a header byte every 0.3 s: never complete, for 12 s
            try:
                sock.sendall(b"X-Slow-%d: a\r\n" % n)
            except OSError:
                break
            try:
                got = sock.recv(65536)
                break
            except TimeoutError:
                continue
        elapsed = time.monotonic() - started
        assert got.startswith(b"HTTP/1.1 408"), got
        assert b'"code":"REQUEST_TIMEOUT"' in got
        assert elapsed < HEADER_TIMEOUT + 2
        assert closed_by_peer(sock, within=2)


def test_an_idle_connection_is_closed(served: tuple[str, Path]) -> None:
    with connect(served[0]) as sock:
        started = time.monotonic()
        assert closed_by_peer(sock, within=HEADER_TIMEOUT + 3)
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9


def test_a_body_sent_slowly_gets_408_and_creates_nothing(served: tuple[str, Path]) -> None:
    name = f"slow-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"username": name}).encode()
    with connect(served[0]) as sock:
        started = time.monotonic()
        head = request_bytes("POST", "/api/users", host="localhost", body=body)
        sock.sendall(head[: len(head) - len(body) + 5])  # the headers and 5 bytes of the body
        response = read_response(sock)
        assert_json_error(response, 408, "REQUEST_TIMEOUT")
        assert BODY_TIMEOUT * 0.9 <= time.monotonic() - started < BODY_TIMEOUT + 2
        assert closed_by_peer(sock, within=2)
    created = exchange(served[0], request_bytes("POST", "/api/users", host="localhost", body=body))
    assert created.status == 201  # the slow request created nobody


def test_a_slow_but_steady_request_within_the_limits_is_served(served: tuple[str, Path]) -> None:
    body = json.dumps({"username": f"steady-{uuid.uuid4().hex[:12]}"}).encode()
    request = request_bytes("POST", "/api/users", host="localhost", body=body)
    with connect(served[0]) as sock:
        for part in (request[:20], request[20:-10], request[-10:]):
            sock.sendall(part)
            time.sleep(0.3)
        assert read_response(sock).status == 201


async def test_a_websocket_outlives_the_header_timeout(served: tuple[str, Path]) -> None:
    """The timers belong to the HTTP request; an upgraded connection is not cut by them."""
    url = served[0].replace("http://", "ws://") + "/graphql"
    async with websockets.connect(url, subprotocols=PROTOCOLS) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
        await asyncio.sleep(BODY_TIMEOUT + HEADER_TIMEOUT + 0.5)
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"


def test_the_log_has_no_traceback(served: tuple[str, Path]) -> None:
    text = served[1].read_text(errors="replace")
    assert "Traceback" not in text
    assert "unexpected_error" not in text
