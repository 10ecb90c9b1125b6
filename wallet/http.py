"""HTTP plumbing shared by every route: JSON envelope, bounded body reading, error mapping."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wallet.errors import (
    Busy,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    Unavailable,
    WalletError,
)
from wallet.jsonbody import parse_json_object

log = structlog.get_logger("wallet.http")

# SQLSTATEs that mean "try again shortly", not "you sent something wrong".
_BUSY_STATES = {
    "55P03",
    "57014",
    "40P01",
    "40001",
}  # lock/statement timeout, deadlock, serialization
_UNAVAILABLE_STATES = {"53300", "57P01", "57P02", "57P03", "08000", "08003", "08006"}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def iso(moment: datetime) -> str:
    """UTC, microseconds, `Z` suffix: sortable and unambiguous for every client."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def ok(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": True, "data": data}, status_code=status, headers=headers)


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "code": code, "message": message}
    if details:
        body["details"] = dict(details)
    return body


def error_response(error: WalletError, *, headers: Mapping[str, str] | None = None) -> JSONResponse:
    all_headers = dict(headers or {})
    if error.status == 503:
        all_headers.setdefault("Retry-After", "1")
    return JSONResponse(
        error_body(error.code, error.message, error.details),
        status_code=error.status,
        headers=all_headers,
    )


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type says (BodyLimitMiddleware caps it)."""
    return parse_json_object(await request.body())


def map_database_error(error: Exception) -> WalletError | None:
    """Transient database trouble becomes a retryable 503; anything else is a bug (None)."""
    if isinstance(error, PoolTimeout):
        return Busy("All database connections are busy; retry shortly.")
    if isinstance(error, DBAPIError):
        state = getattr(error.orig, "sqlstate", None)
        if state in _BUSY_STATES:
            return Busy("The wallet is busy with other requests; retry shortly.")
        if error.connection_invalidated or state in _UNAVAILABLE_STATES:
            return Unavailable("The database is unavailable; retry shortly.")
    if isinstance(error, OSError | ConnectionError):
        return Unavailable("The database is unavailable; retry shortly.")
    return None


async def handle_wallet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WalletError)
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(RouteNotFound("No such route."))
    if exc.status_code == 405:
        return error_response(
            MethodNotAllowed(f"{request.method} is not allowed here."), headers=exc.headers
        )
    return JSONResponse(
        error_body("HTTP_ERROR", str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def internal_error(request: Request) -> JSONResponse:
    """A masked 500: a request id to quote, never a trace or SQL (those go to the log)."""
    request_id = request.scope.get("state", {}).get("request_id", "-")
    log.exception("unexpected_error", request_id=request_id)
    return JSONResponse(
        error_body("INTERNAL_ERROR", f"Unexpected error (request id {request_id})."),
        status_code=500,
    )


async def handle_database_error(request: Request, exc: Exception) -> Response:
    mapped = map_database_error(exc)
    if mapped is None:
        return internal_error(request)
    log.warning("database_trouble", error=type(exc).__name__, detail=str(exc)[:300])
    return error_response(mapped)


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client left before sending its whole body: nobody to answer, nothing to log."""
    return Response(status_code=400)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    return internal_error(request)


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes on every route: early when Content-Length says so, and
    mid-stream (as PayloadTooLarge, answered by the error handler) when chunks add up past it."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = error_response(self._too_large())
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body is larger than {self.limit} bytes.")


class RequestIdMiddleware:
    """Tag each request with an id (the caller's X-Request-ID if sane) for logs and answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else None
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class JSONHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn answers requests it cannot parse (say, a control character in a header) itself,
    in plain text; this keeps even those answers in the JSON envelope."""

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps(
            error_body("VALIDATION_ERROR", "The request is not valid HTTP (a malformed header?).")
        )
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
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
