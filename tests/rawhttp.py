"""HTTP over a raw socket, for what httpx will not send: malformed, oversized or slow requests,
and Host headers of our choosing."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = field(default=False)  # did the server close the connection after it?

    def json(self) -> Any:
        return json.loads(self.body)


def connect(base: str, *, timeout: float = 10) -> socket.socket:
    parts = urlsplit(base)
    assert parts.hostname is not None
    assert parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_response(sock: socket.socket) -> RawResponse:
    """One response (Content-Length framed, as all of ours are); raises if none comes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response; got {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return RawResponse(int(status_line.split()[1]), headers, rest[:length])


def closed_by_peer(sock: socket.socket, *, within: float) -> bool:
    """Does the server close the connection within `within` seconds (reading what it sends)?"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def exchange(
    base: str, request: bytes, *, timeout: float = 10, await_close: float = 0
) -> RawResponse:
    """Send `request` on a fresh connection and read one response; with `await_close`, also
    note whether the server closes the connection within that many seconds."""
    with connect(base, timeout=timeout) as sock:
        sock.sendall(request)
        response = read_response(sock)
        if await_close:
            response.closed = closed_by_peer(sock, within=await_close)
        return response


def request_bytes(
    method: str,
    target: str,
    *,
    host: str | None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    """A well-formed HTTP/1.1 request; `host=None` leaves the Host header out."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
