"""Wallet routes (seed-compatible): balances, TOPUP/SPEND/BONUS, history."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import ledger
from wallet.errors import (
    IdempotencyKeyMissing,
    InsufficientFunds,
)
from wallet.http import JSONResponse, error_response, iso, ok, read_json_object
from wallet.inputs import (
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
    parse_positive_int,
    parse_tx_type,
    parse_user_id,
)
from wallet.resources import post, principal, read, resources


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
    outcome = await post(
        res, lambda conn: ledger.transact(conn, tx, key=key, principal=who.name), kind=tx.type
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


routes = [
    Route("/api/wallet/balance/{userId}", get_balance, methods=["GET"]),
    Route("/api/wallet/transact", post_transact, methods=["POST"]),
    Route("/api/wallet/transactions/{userId}", get_transactions, methods=["GET"]),
]
