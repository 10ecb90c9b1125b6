"""The one ASGI layer in front of the routes: everything every request goes through, decided in
one place with one `send` wrapper, and everything that can be worked out once worked out once.

In order, for HTTP: a request id (the caller's X-Request-ID if sane, echoed on the answer);
metrics, the access line and a server span (`RequestObserver`, `Tracing`); the browser guard
(Host and Origin, `BrowserGuard`); CORS, when origins are configured (Starlette's middleware,
wrapping only what follows, so it answers preflights before anyone asks who); a REST query
string (UTF-8 text without control characters); the body limit; authentication. A WebSocket
meets the browser guard and authentication only; lifespan passes.

Refusals made here are answered here, in the JSON envelope: this layer runs outside the app's
exception handlers (a PayloadTooLarge found mid-stream is raised into the route, and its handler
answers it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wallet.auth import ANONYMOUS, Principal
from wallet.errors import InvalidHost, OriginNotAllowed, PayloadTooLarge, WalletError
from wallet.http import error_response, handle_database_error, is_graphql, map_database_error
from wallet.inputs import check_query_string
from wallet.observability import RequestObserver, RequestRecord, current_request
from wallet.tracing import Tracing

log = structlog.get_logger("wallet.gateway")

PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz"})  # no Host check, no credentials
LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_REQUEST_ID: Final = 64
HOST_CACHE_SIZE: Final = 256  # Host values seen (few in practice; bounded, as callers pick them)

_HOST: Final = b"host"
_ORIGIN: Final = b"origin"
_REQUEST_ID: Final = b"x-request-id"
_CONTENT_LENGTH: Final = b"content-length"
_AUTHORIZATION: Final = b"authorization"
_UNAUTHENTICATED_HEADERS: Final = {"WWW-Authenticate": 'Bearer realm="wallet"'}

HostPort = tuple[str, int | None]


def request_id(incoming: bytes | None) -> str:
    """The caller's X-Request-ID when it is 1 to 64 printable characters, else a fresh one."""
    if incoming:
        text = incoming.decode("latin-1")
        if len(text) <= MAX_REQUEST_ID and text.isprintable():
            return text
    return os.urandom(16).hex()  # 32 hex digits, as uuid4().hex, without building a UUID


def first_values(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by name, the first value of a repeated one (as Starlette reads)."""
    return dict(reversed(scope["headers"]))


def host_and_port(netloc: str) -> HostPort | None:
    """`example.com:3000` -> ("example.com", 3000); IPv6 without brackets; None if malformed."""
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    return parts.hostname, port


class BrowserGuard:
    """What keeps a web page the developer visits from using the service (HTTP and WebSocket).

    * Host: served only to the names in `allowed_hosts` and loopback (`localhost`, `127.0.0.1`,
      `[::1]`, any port). It applies whenever `WALLET_ALLOWED_HOSTS` is set, and always while
      the service is open: DNS rebinding gives a page an origin whose name points at 127.0.0.1,
      and its requests carry that name. Refused: `400 INVALID_HOST`. The health checks are
      exempt (probes use the pod's address, and they reveal nothing).
    * Origin: a write (any method but GET, HEAD and OPTIONS) or a WebSocket upgrade that carries
      an `Origin` must come from the request's own host, from loopback, or from
      `WALLET_CORS_ORIGINS`; otherwise `403 ORIGIN_NOT_ALLOWED`. This holds in every mode: a
      cross-site form or `text/plain` POST needs no preflight, so CORS alone would not stop it.
    """

    def __init__(self, *, allowed_hosts: Sequence[str], allowed_origins: Sequence[str]) -> None:
        names = {h.strip().lower().removeprefix("[").removesuffix("]") for h in allowed_hosts}
        self.any_host = "*" in names
        self.hosts = frozenset(n for n in names if not n.startswith("*")) | LOOPBACK_HOSTS
        self.domains = tuple(n[1:] for n in names if n.startswith("*."))  # ".example.com"
        self.hosts_configured = bool(names)
        self.any_origin = "*" in allowed_origins
        self.origins = frozenset(o.strip().lower().rstrip("/") for o in allowed_origins)
        # Host header -> (host and port, allowed): parsed once per value, not per request.
        self._seen_hosts: dict[bytes, tuple[HostPort | None, bool]] = {}

    def host_allowed(self, host: str) -> bool:
        return self.any_host or host in self.hosts or host.endswith(self.domains)

    def origin_allowed(self, origin: str, host: HostPort | None) -> bool:
        origin = origin.lower()
        if self.any_origin or origin in self.origins:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or parts.path or parts.query:
            return False
        found = host_and_port(parts.netloc)
        if found is None:
            return False
        # The page's own host (any scheme: TLS may end at a proxy), or a loopback page.
        return found == host or found[0] in LOOPBACK_HOSTS

    def _host(self, raw: bytes | None) -> tuple[HostPort | None, bool]:
        """The Host header parsed, and whether its name is one served to anybody."""
        if raw is None:
            return None, False
        seen = self._seen_hosts.get(raw)
        if seen is None:
            host = host_and_port(raw.decode("latin-1"))
            seen = (host, host is not None and self.host_allowed(host[0]))
            if len(self._seen_hosts) >= HOST_CACHE_SIZE:
                self._seen_hosts.clear()
            self._seen_hosts[raw] = seen
        return seen

    async def check(self, scope: Scope, headers: Mapping[bytes, bytes]) -> None:
        """Raise InvalidHost or OriginNotAllowed for a request a web page must not make."""
        host, allowed = self._host(headers.get(_HOST))
        if not allowed and scope["path"] not in PUBLIC_PATHS and await self._checks_hosts(scope):
            raise InvalidHost("This service does not answer to that Host name.")
        raw_origin = headers.get(_ORIGIN)
        if (
            raw_origin is not None
            and (scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS)
            and not self.origin_allowed(raw_origin.decode("latin-1"), host)
        ):
            raise OriginNotAllowed("Requests from that web origin are not allowed.")

    async def _checks_hosts(self, scope: Scope) -> bool:
        if self.hosts_configured:
            return True
        return not await scope["state"]["resources"].auth.required()  # open: loopback only


async def answer_database_trouble(
    scope: Scope, receive: Receive, send: Send, trouble: Exception
) -> None:
    """Answer as the app's handlers would, so a database restart or a full pool met while
    checking a request is a 503 with Retry-After, not a 500 (a WebSocket gets it as its
    handshake's answer)."""
    if scope["type"] == "http":
        request = Request(scope, receive)
        response = await handle_database_error(request, trouble)
        await response(scope, receive, send)
        return
    mapped = map_database_error(trouble)
    if mapped is None:
        raise trouble
    log.warning("database_trouble", error=type(trouble).__name__, detail=str(trouble)[:300])
    await error_response(mapped)(scope, receive, send)


async def refuse(
    scope: Scope, receive: Receive, send: Send, error: WalletError, headers: dict[str, str]
) -> None:
    """Answer a request the gateway refuses, in the shape its endpoint answers everything."""
    response = error_response(error, headers=headers, graphql=is_graphql(scope))
    await response(scope, receive, send)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.")


def limited(receive: Receive, limit: int) -> Receive:
    """`receive`, raising PayloadTooLarge once the body's chunks add up past `limit` bytes."""
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit)
        return message

    return limited_receive


def refusal_headers(error: WalletError) -> dict[str, str]:
    """What a refused HTTP request is told besides the error: how to authenticate, when to retry."""
    if error.status == 401:
        return dict(_UNAUTHENTICATED_HEADERS)
    if error.status == 429:
        return {"Retry-After": str(error.details["retryAfter"])}
    return {}


class GatewayMiddleware:
    """Request id, observation, browser guard, (CORS,) body limit and authentication, in that
    order, as one pure-ASGI layer. `cors` wraps what follows the browser guard (None: no CORS).

    Authentication covers every request but the health checks; the routes decide what is
    allowed. A WebSocket without an Authorization header may authenticate in its
    `connection_init` payload instead (browsers cannot set headers on WebSockets); GraphQL
    checks that.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        observer: RequestObserver,
        guard: BrowserGuard,
        body_limit: int,
        path_body_limits: Mapping[str, int] | None = None,
        tracing: Tracing | None = None,
        cors: Callable[[ASGIApp], ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.observer = observer
        self.guard = guard
        self.body_limit = body_limit
        self.path_body_limits = dict(path_body_limits or {})
        self.tracing = tracing
        self.cors = cors(self._past_cors) if cors is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = first_values(scope)
        rid = request_id(headers.get(_REQUEST_ID))
        scope.setdefault("state", {})["request_id"] = rid
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            if self.tracing is None:
                await self._observed(scope, receive, send, headers, rid)
                return
            with self.tracing.request_span(scope) as finish:
                status, route = await self._observed(scope, receive, send, headers, rid)
                finish(route, status)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _observed(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], rid: str
    ) -> tuple[int, str]:
        """Answer the request through the checks; its metrics and access line, whatever happens."""
        started = time.perf_counter()
        record = RequestRecord()
        token = current_request.set(record)
        status = 500  # unless a response starts: an exception escaping here becomes a 500
        id_header = (_REQUEST_ID, rid.encode("latin-1"))

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if not await self._guard_refused(scope, receive, observed_send, headers):
                if self.cors is None:
                    await self._limited_and_authenticated(scope, receive, observed_send, headers)
                else:  # CORS answers preflights itself, and marks what the rest answers
                    await self.cors(scope, receive, observed_send)
        finally:
            current_request.reset(token)
            route = self.observer.observed(
                scope, status=status, seconds=time.perf_counter() - started, record=record
            )
        return status, route

    async def _past_cors(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._limited_and_authenticated(scope, receive, send, first_values(scope))

    async def _limited_and_authenticated(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        """The body limit (early when Content-Length says so, else as it streams), then who."""
        # The REST routes' parameters; GraphQL reads none but the GraphiQL page's own `q` (a
        # document to show, newlines included).
        if scope["query_string"] and not is_graphql(scope):
            try:
                check_query_string(scope["query_string"])
            except WalletError as error:
                await refuse(scope, receive, send, error, {})
                return
        limit = self.path_body_limits.get(scope["path"], self.body_limit)
        declared = headers.get(_CONTENT_LENGTH, b"")
        if declared.isdigit() and int(declared) > limit:
            await refuse(scope, receive, send, too_large(limit), {})
            return
        await self._authenticated(scope, limited(receive, limit), send, headers.get(_AUTHORIZATION))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = first_values(scope)
        if await self._guard_refused(scope, receive, send, headers):
            return
        await self._authenticated(scope, receive, send, headers.get(_AUTHORIZATION))

    async def _authenticated(
        self, scope: Scope, receive: Receive, send: Send, authorization: bytes | None
    ) -> None:
        """The app, once the caller is known (health checks: always), else the refusal."""
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._principal(scope, authorization)
        except WalletError as error:  # an upgrade too: its JSON refusal (401, 429), never 101
            await refuse(scope, receive, send, error, refusal_headers(error))
            return
        except (DBAPIError, PoolTimeout, OSError) as trouble:
            await answer_database_trouble(scope, receive, send, trouble)
            return
        scope["state"]["principal"] = principal
        await self.app(scope, receive, send)

    async def _guard_refused(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> bool:
        """Answer the request if the browser guard refuses it (True), else let it go on."""
        try:
            await self.guard.check(scope, headers)
        except WalletError as error:
            await refuse(scope, receive, send, error, {})  # a WebSocket: a denial response
            return True
        except (DBAPIError, PoolTimeout, OSError) as trouble:
            await answer_database_trouble(scope, receive, send, trouble)
            return True
        return False

    @staticmethod
    async def _principal(scope: Scope, authorization: bytes | None) -> Principal | None:
        """Who is calling, within its rate limit; None: a WebSocket without an Authorization
        header, which may still authenticate in its `connection_init`."""
        resources = scope.setdefault("state", {})["resources"]
        if scope["type"] == "websocket" and authorization is None:
            return None if await resources.auth.required() else ANONYMOUS
        principal: Principal = await resources.auth.authenticate(
            authorization.decode("latin-1") if authorization else None
        )
        resources.rate_limiter.check(principal.name)
        return principal
