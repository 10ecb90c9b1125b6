"""One transaction: its view (entries, reversals so far) and its reversal (a refund, or coins
taken back along its legs). `/api/wallet/transactions/{userId}` stays a user's history."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import ledger
from wallet.auth import Principal
from wallet.errors import TransactionNotFound
from wallet.http import iso, ok, read_json_object
from wallet.inputs import parse_metadata, parse_optional_amount, parse_reason, parse_uuid
from wallet.resources import post, principal, read_replica, resources
from wallet.rest.common import idempotency_key, optional_id, replayed_header


def _transaction_id(request: Request) -> uuid.UUID:
    return parse_uuid(request.path_params["transactionId"], field="transactionId")


async def _body(request: Request) -> dict[str, Any]:
    """Every field of a reversal is optional: an empty body reverses all that is left."""
    raw = await request.body()
    if not raw.strip():
        return {}
    return await read_json_object(request)


def reversal_view(done: ledger.ReversalDone) -> dict[str, Any]:
    return {
        "transactionId": str(done.transaction_id),
        "status": "COMPLETED",
        "type": "REVERSAL",
        "reversesTransactionId": str(done.reverses_transaction_id),
        "assetSlug": done.asset_slug,
        "amount": done.amount,
        "remainingReversible": done.remaining_reversible,
        "balances": [
            {"userId": str(user_id), "balanceAfter": str(after)} for user_id, after in done.balances
        ],
        "reason": done.reason,
        "metadata": done.metadata,
        "createdAt": iso(done.created_at),
    }


async def post_reverse(request: Request) -> Response:
    res = resources(request)
    who = principal(request)
    who.require_reverse()
    transaction_id = _transaction_id(request)
    key = idempotency_key(request)
    body = await _body(request)
    reversal = ledger.ReverseRequest(
        transaction_id=transaction_id,
        amount=parse_optional_amount(body.get("amount")),
        reason=parse_reason(body.get("reason")),
        metadata=parse_metadata(body.get("metadata")),
    )
    result = await post(
        res,
        lambda conn: ledger.reverse(conn, reversal, key=key, principal=who.name),
        kind="REVERSAL",
    )
    done = ledger.settled(result)  # a stored refusal is raised (and marked when replayed)
    return ok(reversal_view(done), headers=replayed_header(done.replayed))


def transaction_view(view: ledger.TransactionView, who: Principal) -> dict[str, Any]:
    record = view.record
    return {
        "transactionId": str(record.id),
        "type": record.type,
        "assetSlug": view.asset.slug,
        "amount": record.amount,
        "reference": record.reference,
        "metadata": record.metadata,
        "principal": who.shown_principal(record.principal),
        "reversesTransactionId": optional_id(record.reverses_id),
        "reason": record.reason,
        "reversedAmount": view.reversed_amount,
        "entries": [
            {
                "userId": optional_id(e.user_id),
                "accountKind": e.account_kind,
                "direction": e.direction,
                "amount": e.amount,
                # A Treasury entry's balance is one shard's, which says nothing to a client; a
                # wallet's is shown to whoever may read that wallet (GraphQL does the same).
                "balanceAfter": str(e.balance_after)
                if e.user_id is not None and who.may_read_wallet(e.user_id)
                else None,
            }
            for e in view.entries
        ],
        "createdAt": iso(record.created_at),
    }


async def get_transaction(request: Request) -> Response:
    transaction_id = _transaction_id(request)
    who = principal(request)
    if not who.can("read") and who.user_id is None:
        who.require_transaction_reader(None)  # a key without `read`: no need to look
    view = await read_replica(
        resources(request), lambda conn: ledger.transaction_view(conn, transaction_id)
    )
    who.require_transaction_reader(None if view is None else [e.user_id for e in view.entries])
    if view is None:
        raise TransactionNotFound(f"Transaction {transaction_id} not found.")
    return ok(transaction_view(view, who))


routes = [
    Route("/api/transactions/{transactionId}", get_transaction, methods=["GET"]),
    Route("/api/transactions/{transactionId}/reverse", post_reverse, methods=["POST"]),
]
