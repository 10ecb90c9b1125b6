"""graphql-transport-ws under the rules HTTP keeps: what a socket may do is decided per message.

* Every frame is capped at `WALLET_MAX_BODY_BYTES` (a bigger one is never parsed) and read by
  the strict JSON reader (`jsonbody.parse_json`); one that is not a graphql-transport-ws
  message of the right shape closes the socket with 4400, and nothing reaches the log.
* Every operation (`subscribe` message) authenticates the socket's credential again, the
  upgrade's Authorization header or connection_init's, through `Authenticator.authenticate`:
  a revoked key stops working within `WALLET_AUTH_CACHE_SECONDS`, a JWT at its `exp`. Then it
  pays the per-principal rate limit, like an HTTP request.
* While the socket is open, the credential is checked again every `WALLET_AUTH_CACHE_SECONDS`
  (at least every `MIN_RECHECK_S`), so a subscription that only streams ends with it too; every
  running subscription's guard (`Context.guarded`) is checked against the fresh principal.

A text frame that is not UTF-8 never reaches the app: `WalletWebSocketProtocol`, the server's
WebSocket protocol, closes it with 4400 too.

Close codes, besides the protocol's own (4401 before connection_ack, 4403 for connection_init
without valid credentials, 4408, 4409, 4429):

| code | when |
|---|---|
| 4400 | a frame that is not text or JSON we can read exactly, or not a message of the protocol |
| 4413 | a frame over `WALLET_MAX_BODY_BYTES` (it is not parsed) |
| 4401 | the credential is no longer valid: a revoked key, an expired token, none when needed |
| 4403 | the credential is valid but may no longer do what a running subscription needs |
| 1013 | the credential could not be verified for `UNVERIFIED_LIMIT_S` (database trouble) |

An operation refused by the rate limit, or while the database cannot verify the credential,
gets an `error` message with the HTTP surface's code (`RATE_LIMITED`, `BUSY`,
`SERVICE_UNAVAILABLE`) and the socket stays open; so does one over Strawberry's limit of
operations running at once on a socket (`RATE_LIMITED` too: it may run once another ended).
A document that does not parse gets an `error` message (`VALIDATION_ERROR`, or
`QUERY_TOO_COMPLEX` over the token limit), as one that does not validate: the socket stays
open. An operationName the document lacks closes it with 4400 (Strawberry's rule), its reason
made valid UTF-8 whatever the name holds. Only graphql-transport-ws is spoken: the
legacy `graphql-ws` protocol would bypass all of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

import structlog
from graphql import GraphQLError, GraphQLSyntaxError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.async_base_view import AsyncBaseHTTPView
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    Message,
    SubscribeMessage,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from wallet.auth import Principal
from wallet.errors import Forbidden, RateLimited, ValidationError, WalletError
from wallet.http import map_database_error
from wallet.jsonbody import parse_json
from wallet.resolvers.context import Context
from wallet.resources import resources
from wallet.schema.build import shape_error

if TYPE_CHECKING:
    from strawberry.schema.schema import StreamResult

log = structlog.get_logger("wallet.graphql_ws")

MIN_RECHECK_S: Final = 0.5  # the floor when WALLET_AUTH_CACHE_SECONDS is 0 (no cache)
UNVERIFIED_LIMIT_S: Final = 10.0  # how long database trouble may keep a credential unchecked
DATABASE_TROUBLE: Final = (DBAPIError, PoolTimeout, OSError)
_MAX_REASON_BYTES: Final = 123  # what a WebSocket close frame can carry


class CloseSocket(Exception):
    """End the socket with this close code; raised where the handler is not at hand."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def close_reason(text: str) -> str:
    """`text` cut to what a close frame carries, on a UTF-8 character boundary. What UTF-8
    cannot carry (a lone surrogate, say from a client's operationName) becomes "?"."""
    return text.encode(errors="replace")[:_MAX_REASON_BYTES].decode(errors="ignore")


def _shape_problem(message: object) -> str | None:
    """Why `message` is not a graphql-transport-ws message we accept, or None."""
    if not isinstance(message, dict):
        return "A message must be a JSON object."
    kind = message.get("type")
    payload = message.get("payload")
    if kind in ("connection_init", "ping", "pong"):
        if payload is not None and not isinstance(payload, dict):
            return f"The {kind} payload must be an object."
        return None
    if kind not in ("subscribe", "complete"):
        return "Unknown message type."
    if not isinstance(message.get("id"), str) or not message["id"]:
        return f"A {kind} message needs a non-empty string id."
    if kind == "complete":
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return "A subscribe payload must be an object with a string query."
    for name, kinds in (("variables", dict), ("extensions", dict), ("operationName", str)):
        if payload.get(name) is not None and not isinstance(payload[name], kinds):
            return f"The subscribe payload's {name} has the wrong type."
    return None


_NO_HANDSHAKE: Final = "ASGI callable returned without completing handshake."


class _QuietRefusals:
    """uvicorn's error logger for one connection, without the ERROR line uvicorn writes when
    the app refused the handshake with an HTTP response (the gateway's JSON 403 or 400): that
    is an answer, which uvicorn logs already ("connection rejected"), not a failure; a client
    could fill the error log with them. Everything else goes to the logger as it is."""

    def __init__(self, protocol: WalletWebSocketProtocol) -> None:
        self._protocol = protocol
        self._logger = protocol.logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        if msg == _NO_HANDSHAKE and self._protocol.initial_response is not None:
            return
        self._logger.error(msg, *args, **kwargs)


class WalletWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (`wallet serve` uses it), closing a text frame that is not
    UTF-8 with 4400 like any other malformed frame: uvicorn's own logs a traceback for it. A
    handshake refused with an HTTP response is not logged as an error (`_QuietRefusals`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = cast("logging.Logger", _QuietRefusals(self))

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.conn.send_close(4400, "A text message must be valid UTF-8.")
                self.handle_parser_exception()  # tells the app, sends the close, hangs up
                return
        super().send_receive_event_to_app()


class WalletWebSocketAdapter(ASGIWebSocketAdapter):
    """Reads frames under the body cap with the strict JSON reader; never sends after a close."""

    def __init__(
        self,
        view: AsyncBaseHTTPView[Any, Any, Any, Any, Any, Any, Any],
        request: WebSocket,
        response: WebSocket,
    ) -> None:
        super().__init__(view, request, response)
        self.max_bytes = resources(request).settings.max_body_bytes

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        while self.ws.application_state == WebSocketState.CONNECTED:
            frame = await self.ws.receive()
            if frame["type"] == "websocket.disconnect":
                return
            yield self._read(frame)

    def _read(self, frame: Mapping[str, Any]) -> object:
        raw: str | bytes | None = frame.get("text")
        if raw is None:
            raw = frame.get("bytes") or b""
        if len(raw) > self.max_bytes or (
            isinstance(raw, str) and len(raw.encode()) > self.max_bytes
        ):
            raise CloseSocket(4413, f"A message may be at most {self.max_bytes} bytes.")
        try:
            return parse_json(raw, what="The message")
        except ValidationError as error:
            raise CloseSocket(4400, error.message) from None

    async def send_json(self, message: Mapping[str, object]) -> None:
        if self.ws.application_state != WebSocketState.CONNECTED:
            return  # closed: what an operation still had to say goes nowhere
        try:
            await super().send_json(message)
        except WebSocketDisconnected:
            return  # the client left; the receive loop sees it and shuts the socket down

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(WebSocketDisconnect):
            await self.ws.close(code=code, reason=close_reason(reason))


async def authenticate_connection_init(context: Context) -> None:
    """The view's on_ws_connect: take connection_init's credential when the upgrade had none."""
    if context.credential is None:
        params = context.connection_params or {}
        found = params.get("Authorization", params.get("authorization"))
        context.credential = found if isinstance(found, str) else None
    try:
        context.principal = await context.resources.auth.authenticate(context.credential)
    except WalletError:
        raise ConnectionRejectionError({"code": "UNAUTHENTICATED"}) from None
    except DATABASE_TROUBLE as trouble:
        if map_database_error(trouble) is None:
            raise
        raise CloseSocket(1013, "The credentials cannot be checked now; retry shortly.") from None


class WalletTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """Strawberry's graphql-transport-ws, checking every message and every operation."""

    context: Context
    _watcher: asyncio.Task[None] | None = None
    _verified_at: float = 0.0

    async def handle(self) -> None:
        self.on_request_accepted()
        try:
            async for message in self.websocket.iter_json():
                await self.handle_message(cast(Message, message))
        except CloseSocket as close:
            await self.close(close.code, close.reason)
        except WebSocketDisconnected:
            pass
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await super().shutdown()

    async def close(self, code: int, reason: str) -> None:
        """Stop every operation first, so nothing is sent after the close frame."""
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)
        if code not in (4400, 4413):  # a client's malformed frame is not worth a log line
            log.info("ws_closed", code=code, reason=reason, request_id=self.context.request_id)
        await self.websocket.close(code, reason)

    async def handle_invalid_message(self, error_message: str) -> None:
        await self.close(4400, error_message)

    async def handle_message(self, message: Message) -> None:
        problem = _shape_problem(message)
        if problem is not None:
            await self.close(4400, problem)
            return
        if message["type"] == "connection_init" and message.get("payload") is None:
            message.pop("payload", None)  # the protocol allows null: no parameters
        try:
            await super().handle_message(message)
        except CloseSocket as close:
            await self.close(close.code, close.reason)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._watcher is None:
            self._verified_at = time.monotonic()
            self._watcher = asyncio.create_task(self._watch_credential())
            self._watcher.add_done_callback(self._task_done)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if self.connection_acknowledged and message["id"] not in self.operations:
            principal = await self._recheck(message["id"])
            if principal is None:
                return
            try:
                self.context.resources.rate_limiter.check(principal.name)
            except RateLimited as limited:
                await self._refuse(message["id"], limited)
                return
            limit = self.max_subscriptions_per_connection
            if limit is not None and len(self.operations) >= limit:  # Strawberry's, coded
                await self._refuse(message["id"], RateLimited("Subscription limit reached"))
                return
        await super().handle_subscribe(message)  # the protocol's own checks, then the operation

    async def _send_result_stream(
        self, operation: Operation[Context, None], result_source: StreamResult
    ) -> None:
        """A document that does not parse gets an `error` message, shaped as the schema shapes
        every error: ParserCache parses in `on_parse`, which Strawberry runs outside its own
        `except GraphQLError`, so the syntax error escapes the stream before its first result
        (and would be logged as the worker task's crash, the client told only `complete`)."""
        try:
            await super()._send_result_stream(operation, result_source)
        except GraphQLSyntaxError as error:
            hide = bool(getattr(self.schema, "hide_suggestions", False))
            shaped = shape_error(error, request_id=self.context.request_id, hide_suggestions=hide)
            await operation.send_initial_errors([shaped])

    @staticmethod
    def _get_pre_execution_close_reason(error: GraphQLError) -> str | None:
        """Strawberry closes the socket (4400) for a syntax error its own parser reports; the
        wallet answers it as any invalid document, whichever extension parsed it."""
        if isinstance(error, GraphQLSyntaxError):
            return None
        return BaseGraphQLTransportWSHandler._get_pre_execution_close_reason(error)

    async def _recheck(self, operation_id: str | None = None) -> Principal | None:
        """Authenticate the socket's credential again; None when that closed the socket or
        (for an operation, whose id is given) refused it. Database trouble refuses the
        operation; between operations, it is tolerated for up to UNVERIFIED_LIMIT_S."""
        try:
            principal = await self.context.resources.auth.authenticate(self.context.credential)
        except WalletError as error:
            await self.close(4401, error.message)
            return None
        except DATABASE_TROUBLE as trouble:
            mapped = map_database_error(trouble)
            if mapped is None:
                raise
            if operation_id is not None:
                await self._refuse(operation_id, mapped)
            elif time.monotonic() - self._verified_at > UNVERIFIED_LIMIT_S:
                await self.close(1013, "The credentials cannot be checked now; retry shortly.")
            else:
                log.warning("ws_recheck_failed", error=mapped.message)
            return None
        self._verified_at = time.monotonic()
        self.context.principal = principal
        for guard in list(self.context.guards):
            try:
                guard(principal)
            except Forbidden as forbidden:
                await self.close(4403, forbidden.message)
                return None
        return principal

    async def _watch_credential(self) -> None:
        interval = max(self.context.resources.settings.auth_cache_seconds, MIN_RECHECK_S)
        while True:
            await asyncio.sleep(interval)
            if await self._recheck() is None and self.websocket_closed:
                return

    @property
    def websocket_closed(self) -> bool:
        adapter = cast(WalletWebSocketAdapter, self.websocket)
        return adapter.ws.application_state != WebSocketState.CONNECTED

    async def _refuse(self, operation_id: str, error: WalletError) -> None:
        """An `error` message for one operation: it does not run, the socket stays open."""
        payload = [{"message": error.message, "extensions": error.extensions}]
        await self.send_message(
            cast(Message, {"id": operation_id, "type": "error", "payload": payload})
        )
