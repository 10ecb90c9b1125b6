"""The GraphQL endpoint: Strawberry over ASGI, POST only, plus an offline GraphiQL page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from cross_web import AsyncHTTPRequestAdapter
from cross_web import HTTPException as StrawberryHTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLRequestData, process_result
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET, UnsetType

from wallet.errors import RouteNotFound, ValidationError, WalletError
from wallet.graphql_ws import (
    WalletTransportWSHandler,
    WalletWebSocketAdapter,
    authenticate_connection_init,
)
from wallet.http import JSONResponse, error_response, json_bytes
from wallet.jsonbody import parse_json_object
from wallet.resolvers.context import Context, build_context
from wallet.resources import resources
from wallet.schema.build import WalletSchema, build_schema
from wallet.settings import Settings

ROOT = Path(__file__).resolve().parent
GRAPHIQL_PAGE: Final = (ROOT / "static" / "graphiql.html").read_text(encoding="utf-8")
# The page's assets, inside the package: the wheel's build puts them there, and so does
# `make install` in a checkout (scripts/graphiql_assets.py, from web/package-lock.json).
ASSETS_DIR: Final = ROOT / "static" / "graphiql"
Endpoint = Callable[[Request], Awaitable[Response]]
_HTTP_CODES: Final = {400: "VALIDATION_ERROR", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


class WalletGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI view with our context, our GraphiQL page and JSON-only errors; its
    WebSockets check every frame and operation as HTTP checks a request (see graphql_ws)."""

    schema: WalletSchema

    websocket_adapter_class = WalletWebSocketAdapter
    graphql_transport_ws_handler_class = WalletTransportWSHandler

    async def get_context(self, request: Request | WebSocket, response: object) -> Context:
        state = request.scope.get("state", {})
        context = build_context(
            resources(request),
            principal=state.get("principal"),  # None (refused) if nobody authenticated
            request_id=state.get("request_id"),
        )
        if isinstance(request, WebSocket):
            context.credential = request.headers.get("authorization")
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """A browser's WebSocket carries its credentials in connection_init, not in headers."""
        await authenticate_connection_init(context)
        unset: UnsetType = UNSET
        return unset

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(GRAPHIQL_PAGE)

    def encode_json(self, data: object) -> str:
        """Responses and WebSocket messages (text frames: a str), written as REST's are."""
        return json_bytes(data).decode()

    def decode_json(self, data: str | bytes) -> object:
        """The HTTP body (and GET's JSON parameters), read by the strict reader: invalid UTF-8,
        duplicate keys, deep nesting and anything but an object are a ValidationError (400)."""
        return parse_json_object(data, what="The GraphQL request")

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        parsed = await super().parse_http_body(request)
        for item in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(item.operation_name, str | None):
                raise ValidationError(
                    "operationName must be a string or null.", field="operationName"
                )
        return parsed

    async def known(self, request: Request) -> Response | None:
        """A JSON POST of a document the schema accepted before, answered past Strawberry's
        view and pipeline (`WalletSchema.execute_known`): the same response, less work per
        operation. None (Strawberry's view answers) for anything else, and before any effect:
        the body read here stays on `request` for the view."""
        if request.method != "POST":
            return None
        # Exactly application/json: Strawberry refuses what its own check does not take (it
        # is case-sensitive), so anything else must meet that check, on the full path.
        if request.headers.get("content-type", "").partition(";")[0].strip() != "application/json":
            return None
        data = self.decode_json(await request.body())
        assert isinstance(data, dict)  # the strict reader takes only an object
        query, variables = data.get("query"), data.get("variables")
        operation_name = data.get("operationName")
        if (
            not isinstance(query, str)
            or not isinstance(variables, dict | None)
            or not isinstance(operation_name, str | None)
            or data.get("extensions") is not None
        ):
            return None
        context = await self.get_context(request, None)
        result = await self.schema.execute_known(query, variables, context, operation_name)
        if result is None:
            return None
        return Response(self.encode_json(process_result(result)), media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            request = Request(scope, receive)
            response = await self.known(request) or await self.run(request)
        except StrawberryHTTPException as error:
            code = _HTTP_CODES.get(error.status_code, "VALIDATION_ERROR")
            response = JSONResponse(
                {"errors": [{"message": error.reason, "extensions": {"code": code}}]},
                status_code=error.status_code,
            )
        except WalletError as error:  # a body the strict reader refused, a mistyped field
            response = JSONResponse(
                {"errors": [{"message": error.message, "extensions": error.extensions}]},
                status_code=error.status,
            )
        await response(scope, receive, send)


def graphiql_assets(directory: Path = ASSETS_DIR) -> Endpoint:
    """The route serving the assets found in `directory` when the app is built (none: 404s)."""
    found = {p.name: p for p in directory.glob("*.*")} if directory.is_dir() else {}

    async def graphiql_asset(request: Request) -> Response:
        path = found.get(request.path_params["name"])
        if path is None:
            return error_response(RouteNotFound("No such asset (`make install` builds them)."))
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

    return graphiql_asset


def graphql_routes(settings: Settings) -> list[Route | WebSocketRoute]:
    view = WalletGraphQL(
        build_schema(settings),
        graphql_ide="graphiql" if settings.graphiql_enabled else None,
        allow_queries_via_get=False,  # a GET cannot carry a mutation past CSRF defences
        # graphql-transport-ws only: the legacy graphql-ws handler would skip graphql_ws's checks
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        allowed_origins=settings.cors_origin_list,
    )
    routes: list[Route | WebSocketRoute] = [
        Route("/graphql", view, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
    ]
    if settings.graphiql_enabled:
        routes.append(Route("/graphql/assets/{name}", graphiql_assets(), methods=["GET"]))
    return routes
