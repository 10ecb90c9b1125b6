"""TRANSFER: coins from one user's wallet to another's, exactly once per Idempotency-Key."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import ledger
from wallet.errors import ValidationError
from wallet.http import iso, ok, read_json_object
from wallet.inputs import (
    parse_amount,
    parse_asset_slug,
    parse_metadata,
    parse_reference,
    parse_user_id,
)
from wallet.resources import post, principal, resources
from wallet.rest.common import idempotency_key, replayed_header


def transfer_view(done: ledger.TransferDone) -> dict[str, Any]:
    return {
        "transactionId": str(done.transaction_id),
        "status": "COMPLETED",
        "type": "TRANSFER",
        "fromUserId": str(done.from_user_id),
        "toUserId": str(done.to_user_id),
        "assetSlug": done.asset_slug,
        "amount": done.amount,
        "fromBalanceAfter": str(done.from_balance_after),
        "toBalanceAfter": str(done.to_balance_after),
        "reference": done.reference,
        "metadata": done.metadata,
        "createdAt": iso(done.created_at),
    }


async def post_transfer(request: Request) -> Response:
    res = resources(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    transfer = ledger.TransferRequest(
        from_user_id=parse_user_id(body.get("fromUserId"), field="fromUserId"),
        to_user_id=parse_user_id(body.get("toUserId"), field="toUserId"),
        amount=parse_amount(body.get("amount")),
        asset_slug=parse_asset_slug(body.get("assetSlug")),
        reference=parse_reference(body.get("reference")),
        metadata=parse_metadata(body.get("metadata")),
    )
    if transfer.to_user_id == transfer.from_user_id:
        raise ValidationError("toUserId must be another user than fromUserId.", field="toUserId")
    who = principal(request)
    who.require_transfer(transfer.from_user_id, user_can_transfer=res.settings.user_can_transfer)
    result = await post(
        res,
        lambda conn: ledger.transfer(conn, transfer, key=key, principal=who.name),
        kind="TRANSFER",
    )
    done = ledger.settled(result)  # a stored refusal is raised (and marked when replayed)
    return ok(transfer_view(done), headers=replayed_header(done.replayed))


routes = [Route("/api/wallet/transfer", post_transfer, methods=["POST"])]
