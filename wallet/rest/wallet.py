"""Wallet routes (seed-compatible, plus v2's fields): balances (now or at an instant),
TOPUP/SPEND/BONUS, history with filters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import ledger
from wallet.http import JSONResponse, iso, ok, read_json_object
from wallet.inputs import (
    parse_amount,
    parse_asset_slug,
    parse_instant,
    parse_metadata,
    parse_metadata_filters,
    parse_positive_int,
    parse_reference,
    parse_transaction_type,
    parse_tx_type,
    parse_user_id,
)
from wallet.resources import principal, read_hot, read_replica, resources, transact_hot
from wallet.rest.common import idempotency_key, optional_id, query_param, replayed_header


def in_stored_order(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata keys in the order PostgreSQL's jsonb keeps them (shorter first, then bytewise),
    so an answer built from a request reads like one built from the stored row."""
    return dict(sorted(metadata.items(), key=lambda item: (len(item[0]), item[0])))


def balance_row(b: ledger.Balance) -> dict[str, Any]:
    """The legacy row's fields first, in the legacy order; the new ones after them."""
    return {
        "id": b.account_id,
        "slug": b.asset.slug,
        "name": b.asset.name,
        "balance": str(b.amount),
        "decimals": b.asset.decimals,
        "available": str(b.available),
        "held": str(b.held),
    }


async def get_balance(request: Request) -> Response:
    user_id = parse_user_id(request.path_params["userId"])
    principal(request).require_wallet_reader(user_id)
    raw_at = query_param(request, "at")
    at = parse_instant(raw_at, field="at", not_future=True) if raw_at is not None else None
    if at is None:
        found = await read_hot(
            resources(request),
            lambda pg: ledger.balances_pg(pg, user_id),
            lambda conn: ledger.balances(conn, user_id),
        )
    else:
        found = await read_replica(
            resources(request), lambda conn: ledger.balances_at(conn, user_id, at)
        )
    return ok([balance_row(b) for b in found])


def transact_view(outcome: ledger.TransactOutcome) -> dict[str, Any]:
    """A completed TOPUP, BONUS or SPEND as transact answers it (batches answer it so too)."""
    req = outcome.request
    return {
        "transactionId": str(outcome.transaction_id),
        "status": "COMPLETED",
        "type": req.type,
        "userId": str(req.user_id),
        "assetSlug": req.asset_slug,
        "amount": req.amount,
        "balanceBefore": str(outcome.balance_before),
        "balanceAfter": str(outcome.balance_after),
        "reference": req.reference,
        "metadata": in_stored_order(req.metadata),
        "createdAt": iso(outcome.created_at),
    }


def _outcome_response(outcome: ledger.TransactOutcome) -> Response:
    refused = ledger.refusal(outcome)
    if refused is not None:
        raise refused  # stored with the key: the error handler marks a replayed refusal
    return ok(transact_view(outcome), headers=replayed_header(outcome.replayed))


async def post_transact(request: Request) -> Response:
    res = resources(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    tx = ledger.TransactRequest(
        user_id=parse_user_id(body.get("userId")),
        amount=parse_amount(body.get("amount")),
        asset_slug=parse_asset_slug(body.get("assetSlug")),
        type=parse_tx_type(body.get("type")),
        reference=parse_reference(body.get("reference")),
        metadata=parse_metadata(body.get("metadata")),
    )
    who = principal(request)
    who.require_transact(tx.user_id, tx.type, user_can_spend=res.settings.user_can_spend)
    outcome = await transact_hot(res, tx, key=key, principal=who.name)
    return _outcome_response(outcome)


def history_filter(request: Request) -> ledger.HistoryFilter:
    """The history's filters, ANDed: assetSlug, type, reference, metadata.<key>, from, to."""
    slug = query_param(request, "assetSlug")
    kind = query_param(request, "type")
    reference = query_param(request, "reference")
    since = query_param(request, "from")
    until = query_param(request, "to")
    return ledger.HistoryFilter(
        asset_slug=parse_asset_slug(slug) if slug is not None else None,
        type=parse_transaction_type(kind) if kind is not None else None,
        reference=parse_reference(reference) if reference is not None else None,
        metadata=parse_metadata_filters(request.query_params.multi_items()),
        since=parse_instant(since, field="from") if since is not None else None,
        until=parse_instant(until, field="to") if until is not None else None,
    )


async def get_transactions(request: Request) -> Response:
    user_id = parse_user_id(request.path_params["userId"])
    who = principal(request)
    who.require_wallet_reader(user_id)
    raw_limit = query_param(request, "limit")
    limit = 20 if raw_limit is None else parse_positive_int(raw_limit, field="limit", maximum=100)
    cursor = query_param(request, "cursor")
    before = ledger.decode_cursor(cursor) if cursor else None
    filters = history_filter(request)
    page = await read_replica(  # a page may come from the replica, never missing our writes
        resources(request),
        lambda conn: ledger.history(conn, user_id, limit=limit, before=before, filters=filters),
        on_pool=(
            (lambda pg: ledger.history_on(pg, user_id, limit=limit, before=before, filters=filters))
            if filters.bounded
            else None
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
            "principal": who.shown_principal(item.principal),
            "reference": item.reference,
            "metadata": item.metadata,
            "counterpartyUserId": optional_id(item.counterparty_user_id),
            "reversesTransactionId": optional_id(item.reverses_transaction_id),
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
