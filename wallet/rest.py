"""The seed-compatible REST routes: parse, call the ledger, shape the legacy envelope."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import auth, ledger
from wallet.audit import AuditReport, audit
from wallet.errors import (
    IdempotencyKeyMissing,
    InsufficientFunds,
    RouteNotFound,
    Unavailable,
    ValidationError,
)
from wallet.http import JSONResponse, error_response, iso, ok, read_json_object
from wallet.inputs import (
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
    parse_positive_int,
    parse_tx_type,
    parse_user_id,
    parse_username,
)
from wallet.resources import principal, read, resources, with_connection


async def get_balance(request: Request) -> Response:
    user_id = parse_user_id(request.path_params["userId"])
    principal(request).require_wallet_reader(user_id)
    found = await read(resources(request), lambda conn: ledger.balances(conn, user_id))
    return ok(
        [
            {
                "id": b.account_id,
                "slug": b.asset.slug,
                "name": b.asset.name,
                "balance": str(b.amount),
            }
            for b in found
        ]
    )


def _outcome_response(outcome: ledger.TransactOutcome) -> Response:
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    req = outcome.request
    if outcome.outcome == "INSUFFICIENT_FUNDS":
        return error_response(
            InsufficientFunds(
                f"Insufficient funds: the balance is {outcome.balance_before},"
                f" the SPEND needs {req.amount}."
            ),
            headers=headers,
        )
    return ok(
        {
            "transactionId": str(outcome.transaction_id),
            "status": "COMPLETED",
            "type": req.type,
            "userId": str(req.user_id),
            "assetSlug": req.asset_slug,
            "amount": req.amount,
            "balanceBefore": str(outcome.balance_before),
            "balanceAfter": str(outcome.balance_after),
            "createdAt": iso(outcome.created_at),
        },
        headers=headers,
    )


async def post_transact(request: Request) -> Response:
    res = resources(request)
    raw_key = request.headers.get("idempotency-key")
    if raw_key is None:
        raise IdempotencyKeyMissing("The Idempotency-Key header is required.")
    key = parse_idempotency_key(raw_key)
    body = await read_json_object(request)
    tx = ledger.TransactRequest(
        user_id=parse_user_id(body.get("userId")),
        amount=parse_amount(body.get("amount")),
        asset_slug=parse_asset_slug(body.get("assetSlug")),
        type=parse_tx_type(body.get("type")),
    )
    who = principal(request)
    who.require_transact(tx.user_id, tx.type, user_can_spend=res.settings.user_can_spend)
    outcome = await with_connection(
        res.autocommit,
        lambda conn: ledger.transact(conn, tx, key=key, principal=who.name),
        begin=False,
        retry=True,  # keyed by Idempotency-Key: a retry of a committed posting replays it
    )
    return _outcome_response(outcome)


async def get_transactions(request: Request) -> Response:
    user_id = parse_user_id(request.path_params["userId"])
    principal(request).require_wallet_reader(user_id)
    raw_limit = request.query_params.get("limit")
    limit = 20 if raw_limit is None else parse_positive_int(raw_limit, field="limit", maximum=100)
    cursor = request.query_params.get("cursor")
    before = ledger.decode_cursor(cursor) if cursor else None
    slug = request.query_params.get("assetSlug")
    asset_slug = parse_asset_slug(slug) if slug is not None else None
    page = await read(
        resources(request),
        lambda conn: ledger.history(
            conn,
            user_id,
            limit=limit,
            before=before,
            filters=ledger.HistoryFilter(asset_slug=asset_slug),
        ),
    )
    data = [
        {
            "transactionId": str(item.transaction_id),
            "type": item.type,
            "assetSlug": item.asset.slug,
            "amount": item.amount,
            "direction": item.direction,
            "balanceAfter": str(item.balance_after),
            "principal": principal(request).shown_principal(item.principal),
            "createdAt": iso(item.created_at),
        }
        for item in page.items
    ]
    return JSONResponse({"success": True, "data": data, "nextCursor": page.next_cursor})


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


async def healthz(request: Request) -> Response:
    return ok({"status": "ok"})


async def readyz(request: Request) -> Response:
    async def ping(conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(read(resources(request), ping), timeout=3)
    except (TimeoutError, SQLAlchemyError, OSError):
        return error_response(Unavailable("The database is not reachable."))
    return ok({"status": "ready"})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/api/wallet/balance/{userId}", get_balance, methods=["GET"]),
    Route("/api/wallet/transact", post_transact, methods=["POST"]),
    Route("/api/wallet/transactions/{userId}", get_transactions, methods=["GET"]),
    Route("/api/users", post_user, methods=["POST"]),
    Route("/api/admin/keys", list_keys, methods=["GET"]),
    Route("/api/admin/keys", post_key, methods=["POST"]),
    Route("/api/admin/keys/{name}", delete_key, methods=["DELETE"]),
    Route("/api/admin/audit", get_audit, methods=["GET"]),
]
