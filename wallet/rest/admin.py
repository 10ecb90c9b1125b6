"""Admin routes: users, API keys, the audit."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import auth, ledger
from wallet.audit import AuditReport, audit
from wallet.db.engine import with_connection
from wallet.errors import (
    RouteNotFound,
    ValidationError,
)
from wallet.http import iso, ok, read_json_object
from wallet.inputs import (
    parse_user_id,
    parse_username,
)
from wallet.resources import principal, read, resources


async def post_user(request: Request) -> Response:
    principal(request).require("admin")
    res = resources(request)
    body = await read_json_object(request)
    username = parse_username(body.get("username"))
    user_id = parse_user_id(body["id"], field="id") if body.get("id") is not None else None
    user = await with_connection(
        res.engine, lambda conn: ledger.create_user(conn, username=username, user_id=user_id)
    )
    return ok(
        {"id": str(user.id), "username": user.username, "createdAt": iso(user.created_at)},
        status=201 if user.created else 200,
    )


async def list_keys(request: Request) -> Response:
    principal(request).require("admin")
    keys = await read(resources(request), auth.list_keys)
    return ok(
        [
            {
                "name": k.name,
                "scopes": k.scopes,
                "createdAt": iso(k.created_at),
                "revokedAt": iso(k.revoked_at) if k.revoked_at else None,
            }
            for k in keys
        ]
    )


async def post_key(request: Request) -> Response:
    """Create a key; the answer is the only place its secret ever appears."""
    principal(request).require("admin")
    body = await read_json_object(request)
    name, scopes = body.get("name"), body.get("scopes")
    if not isinstance(name, str):
        raise ValidationError("name must be a string.", field="name")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ValidationError("scopes must be a list of strings.", field="scopes")
    granted = auth.parse_scopes(scopes)
    res = resources(request)
    async with res.auth.key_change() as notice:  # closes open mode in every process at once
        secret = await with_connection(
            res.engine,
            lambda conn: auth.create_key(conn, name=name, scopes=granted, notice=notice),
        )
    return ok({"name": name, "scopes": granted, "key": secret}, status=201)


async def delete_key(request: Request) -> Response:
    """Revoke a key; when this answers, no server process accepts it any more."""
    principal(request).require("admin")
    name = auth.parse_key_name(request.path_params["name"])
    res = resources(request)
    async with res.auth.key_change() as notice:
        revoked = await with_connection(
            res.engine, lambda conn: auth.revoke_key(conn, name, notice=notice)
        )
        if not revoked:
            raise RouteNotFound(f"No live key named {name!r}.")
    return ok({"name": name, "revoked": True})


async def get_audit(request: Request) -> Response:
    principal(request).require("admin")

    async def run(conn: AsyncConnection) -> AuditReport:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        return await audit(conn)

    report = await with_connection(resources(request).engine, run, retry=True)  # read-only
    return ok(
        {
            "ok": report.ok,
            "assets": [
                {
                    "slug": a.slug,
                    "transactions": a.transactions,
                    "circulating": str(a.circulating),
                    "treasury": str(a.treasury),
                }
                for a in report.assets
            ],
            "breaches": report.breaches,
        }
    )


routes = [
    Route("/api/users", post_user, methods=["POST"]),
    Route("/api/admin/keys", list_keys, methods=["GET"]),
    Route("/api/admin/keys", post_key, methods=["POST"]),
    Route("/api/admin/keys/{name}", delete_key, methods=["DELETE"]),
    Route("/api/admin/audit", get_audit, methods=["GET"]),
]
