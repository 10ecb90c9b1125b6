"""HTTP plumbing shared by every route: JSON envelope, bounded body reading, error mapping."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final

import asyncpg
import orjson
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wallet.errors import (
    Busy,
    HeadersTooLarge,
    MethodNotAllowed,
    RequestTimeout,
    RouteNotFound,
    Unavailable,
    ValidationError,
    WalletError,
)
from wallet.jsonbody import parse_json_object
from wallet.settings import Settings

log = structlog.get_logger("wallet.http")

# SQLSTATEs that mean "try again shortly", not "you sent something wrong".
_BUSY_STATES = {
    "55P03",
    "57014",
    "40P01",
    "40001",
}  # lock/statement timeout, deadlock, serialization
_UNAVAILABLE_STATES = {"53300", "57P01", "57P02", "57P03", "08000", "08003", "08006"}


GRAPHQL_PATH: Final = "/graphql"  # errors there are GraphQL responses


def is_graphql(scope: Scope) -> bool:
    """An HTTP request to the GraphQL endpoint, whose clients read `errors[].extensions.code`."""
    return bool(scope["type"] == "http" and scope["path"] == GRAPHQL_PATH)


def json_bytes(content: object) -> bytes:
    """An answer's JSON (REST's and GraphQL's) by orjson. A client's text echoed in an error can
    hold what is not UTF-8 (a lone surrogate, which JSON spells as an escape), and a value can
    be an integer past 64 bits: orjson refuses both, the standard library writes them (and what
    orjson writes natively, as orjson writes it)."""
    try:
        return orjson.dumps(content)
    except orjson.JSONEncodeError:
        return json.dumps(content, separators=(",", ":"), default=_as_orjson).encode()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def _as_orjson(value: object) -> object:
    """A value the standard library's JSON lacks, written as orjson writes it (UUIDs and dates,
    in the bodies the service builds)."""
    return orjson.loads(orjson.dumps(value))


def iso(moment: datetime) -> str:
    """UTC, microseconds, `Z` suffix: sortable and unambiguous for every client."""
    if moment.tzinfo is not UTC:  # what the database gives is UTC already
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # UTC's "+00:00" ends it


def ok(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": True, "data": data}, status_code=status, headers=headers)


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "code": code, "message": message}
    if details:
        body["details"] = dict(details)
    return body


def graphql_error_body(error: WalletError) -> dict[str, Any]:
    """A refusal as a GraphQL response, the shape every answer on /graphql has."""
    return {"errors": [{"message": error.message, "extensions": error.extensions}]}


def error_response(
    error: WalletError, *, headers: Mapping[str, str] | None = None, graphql: bool = False
) -> JSONResponse:
    """The error's status and JSON: REST's envelope, or with `graphql` a GraphQL response (the
    gateway answers requests to /graphql it refuses before the GraphQL view sees them)."""
    all_headers = dict(headers or {})
    if error.status == 503:
        all_headers.setdefault("Retry-After", "1")
    return JSONResponse(
        graphql_error_body(error)
        if graphql
        else error_body(error.code, error.message, error.details),
        status_code=error.status,
        headers=all_headers,
    )


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type says (the gateway caps its size)."""
    return parse_json_object(await request.body())


def map_database_error(error: Exception) -> WalletError | None:
    """Transient database trouble becomes a retryable 503; anything else is a bug (None)."""
    if isinstance(error, PoolTimeout):
        return Busy("All database connections are busy; retry shortly.")
    if isinstance(error, DBAPIError | asyncpg.PostgresError):  # through SQLAlchemy, or the hot path
        orig = error.orig if isinstance(error, DBAPIError) else error
        state = getattr(orig, "sqlstate", None)
        if state in _BUSY_STATES:
            return Busy("The wallet is busy with other requests; retry shortly.")
        lost = isinstance(error, DBAPIError) and error.connection_invalidated
        if lost or state in _UNAVAILABLE_STATES:
            return Unavailable("The database is unavailable; retry shortly.")
    if isinstance(
        error,
        OSError | ConnectionError | asyncpg.InterfaceError | asyncpg.InternalClientError,
    ):  # a connection lost, through SQLAlchemy or on the hot path
        return Unavailable("The database is unavailable; retry shortly.")
    return None


async def handle_wallet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WalletError)
    # A refusal the ledger stored for this Idempotency-Key, given again.
    return error_response(
        exc,
        headers={"Idempotent-Replayed": "true"} if exc.replayed else None,
        graphql=is_graphql(request.scope),
    )


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    graphql = is_graphql(request.scope)
    if exc.status_code == 404:
        return error_response(RouteNotFound("No such route."), graphql=graphql)
    if exc.status_code == 405:
        return error_response(
            MethodNotAllowed(f"{request.method} is not allowed here."),
            headers=exc.headers,
            graphql=graphql,
        )
    return JSONResponse(
        error_body("HTTP_ERROR", str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def internal_error(request: Request, *, graphql: bool = False) -> JSONResponse:
    """A masked 500: a request id to quote, never a trace or SQL (those go to the log)."""
    request_id = request.scope.get("state", {}).get("request_id", "-")
    log.exception("unexpected_error", request_id=request_id)
    masked = WalletError(f"Unexpected error (request id {request_id}).")  # INTERNAL_ERROR, 500
    return error_response(masked, graphql=graphql)


async def handle_database_error(request: Request, exc: Exception) -> Response:
    graphql = is_graphql(request.scope)
    mapped = map_database_error(exc)
    if mapped is None:
        return internal_error(request, graphql=graphql)
    log.warning("database_trouble", error=type(exc).__name__, detail=str(exc)[:300])
    return error_response(mapped, graphql=graphql)


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client left before sending its whole body: nobody to answer, nothing to log."""
    return Response(status_code=400)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    return internal_error(request, graphql=is_graphql(request.scope))


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float


@functools.cache
def server_limits() -> ServerLimits:
    """Read once per worker process, from the environment the app's settings come from too."""
    settings = Settings()
    return ServerLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
    )


class JSONHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the limits it lacks and every answer it writes itself
    in the JSON envelope.

    * The request line and headers are capped (`WALLET_MAX_HEADER_BYTES`, 431): the parser is
      fed at most that many bytes of a request's head, so an endless header never grows memory.
      (Bytes that follow a complete request in the same read count toward the next one only
      from that read on: a head can reach the cap plus one read, never more.)
    * Headers must be complete within `WALLET_HEADER_TIMEOUT_S` of the connection or of the
      request's first byte, and the body within `WALLET_BODY_TIMEOUT_S` of the headers: a
      client that trickles them gets 408 and the connection is closed.
    * A request uvicorn cannot parse (say, a control character in a header) is a JSON 400.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = server_limits()
        self._in_head = True  # reading a request line and headers (or waiting for the next)
        self._head_bytes = 0
        self._upgraded = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and not self._upgraded and not self.transport.is_closing():
            if not self._in_head:
                super().data_received(data)
                return
            cap = self.limits.max_header_bytes
            room = cap - self._head_bytes
            if room <= 0:
                self._refuse(HeadersTooLarge(f"The request line and headers exceed {cap} bytes."))
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._head_too_slow
            )

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        upgrading = bool(self.parser.should_upgrade()) and self._should_upgrade()
        if not upgrading:
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def handle_websocket_upgrade(self) -> None:
        self._upgraded = True  # the WebSocket protocol owns the transport from here on
        self._cancel_timers()
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(
            ValidationError("The request is not valid HTTP (a malformed header?).")
        )

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _answering(self) -> bool:
        """Is the application still answering an earlier (pipelined) request?"""
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, error: WalletError) -> None:
        """Answer a request whose head broke a limit; never in the middle of another answer."""
        if self._answering():
            self.transport.close()
        else:
            self._answer_and_close(error)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._upgraded:
            return
        if self._head_bytes == 0:  # an idle connection that never sent a byte: just close it
            self.transport.close()
            return
        self._refuse(RequestTimeout(f"Headers not sent within {self.limits.header_timeout_s} s."))

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_started:  # answered already: just stop waiting
            self.transport.close()
            return
        # The application now reads a disconnect, and anything it still sends is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self._answer_and_close(
            RequestTimeout(f"The body was not sent within {self.limits.body_timeout_s} s.")
        )

    def _answer_and_close(self, error: WalletError) -> None:
        body = orjson.dumps(error_body(error.code, error.message, error.details))
        phrase = HTTPStatus(error.status).phrase.encode("ascii")
        head = [b"HTTP/1.1 %d %s\r\n" % (error.status, phrase)]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
