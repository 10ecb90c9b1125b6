"""Holds: reserve a user's coins (POST /holds), charge them (capture), release them (void).

Every write is keyed by its Idempotency-Key like transact, and needs a back end's `transact`
scope (end-user tokens never hold); reads need `read`. Expiry is the sweeper's (wallet.sweeper),
and the ledger's at capture time.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import ledger
from wallet.errors import Declined, HoldNotFound, ValidationError
from wallet.http import JSONResponse, iso, ok, read_json_object
from wallet.inputs import (
    parse_amount,
    parse_asset_slug,
    parse_int_range,
    parse_metadata,
    parse_optional_amount,
    parse_positive_int,
    parse_reference,
    parse_user_id,
    parse_uuid,
)
from wallet.jsonbody import parse_json_object
from wallet.resources import post, principal, read, resources
from wallet.rest.common import idempotency_key, query_param, replayed_header

DEFAULT_PAGE = 20
MAX_PAGE = 100


def hold_view(hold: ledger.HoldView) -> dict[str, Any]:
    """A hold as every route answers it. A write adds the user's `balance` and `available`
    after it; a captured hold names the posting that moved its coins (`transactionId`)."""
    data: dict[str, Any] = {
        "holdId": str(hold.hold_id),
        "status": hold.status,
        "userId": str(hold.user_id),
        "assetSlug": hold.asset_slug,
        "amount": hold.amount,
        "capturedAmount": hold.captured_amount,
        "expiresAt": iso(hold.expires_at),
    }
    if hold.status == "CAPTURED":
        data["transactionId"] = str(hold.transaction_id)
    if hold.balance is not None and hold.available is not None:
        data["balance"] = str(hold.balance)
        data["available"] = str(hold.available)
    data["reference"] = hold.reference
    data["metadata"] = hold.metadata
    data["createdAt"] = iso(hold.created_at)
    return data


def _answer(result: ledger.HoldView | Declined) -> Response:
    hold = ledger.settled(result)  # a stored refusal is raised, marked when replayed
    return ok(hold_view(hold), headers=replayed_header(hold.replayed))


async def _optional_body(request: Request) -> dict[str, Any]:
    """Capture and void may come without a body; one that is sent must be a JSON object."""
    raw = await request.body()
    return parse_json_object(raw) if raw.strip() else {}


def _hold_id(request: Request) -> uuid.UUID:
    return parse_uuid(request.path_params["holdId"], field="holdId")


async def post_hold(request: Request) -> Response:
    who = principal(request)
    who.require_hold()
    key = idempotency_key(request)
    body = await read_json_object(request)
    expires_in = body.get("expiresInSeconds")
    hold = ledger.HoldRequest(
        user_id=parse_user_id(body.get("userId")),
        amount=parse_amount(body.get("amount")),
        asset_slug=parse_asset_slug(body.get("assetSlug")),
        expires_in_seconds=ledger.DEFAULT_EXPIRY_S
        if expires_in is None
        else parse_int_range(expires_in, field="expiresInSeconds", low=1, high=ledger.MAX_EXPIRY_S),
        reference=parse_reference(body.get("reference")),
        metadata=parse_metadata(body.get("metadata")),
    )
    result = await post(
        resources(request),
        lambda conn: ledger.create_hold(conn, hold, key=key, principal=who.name),
        kind="HOLD",
    )
    return _answer(result)


async def post_capture(request: Request) -> Response:
    who = principal(request)
    who.require_hold()
    hold_id = _hold_id(request)
    key = idempotency_key(request)
    body = await _optional_body(request)
    to_user = body.get("toUserId")
    capture = ledger.CaptureRequest(
        hold_id=hold_id,
        amount=parse_optional_amount(body.get("amount")),
        to_user_id=None if to_user is None else parse_user_id(to_user, field="toUserId"),
        reference=parse_reference(body.get("reference")),
        metadata=parse_metadata(body.get("metadata")),
    )
    result = await post(
        resources(request),
        lambda conn: ledger.capture_hold(conn, capture, key=key, principal=who.name),
        kind="CAPTURE",
    )
    return _answer(result)


async def post_void(request: Request) -> Response:
    who = principal(request)
    who.require_hold()
    hold_id = _hold_id(request)
    key = idempotency_key(request)
    await _optional_body(request)  # nothing to read, but what is sent must be JSON
    result = await post(
        resources(request),
        lambda conn: ledger.void_hold(conn, hold_id, key=key, principal=who.name),
        kind="VOID",
    )
    return _answer(result)


async def get_hold(request: Request) -> Response:
    principal(request).require_hold_reader()
    hold_id = _hold_id(request)
    found = await read(resources(request), lambda conn: ledger.holds_by_id(conn, [hold_id]))
    if hold_id not in found:
        raise HoldNotFound(f"Hold {hold_id} not found.")
    return ok(hold_view(found[hold_id]))


async def list_holds(request: Request) -> Response:
    """Holds, newest first, of one user (`userId`) or all, optionally of one `status`."""
    principal(request).require_hold_reader()
    raw_user = query_param(request, "userId")
    user_id = None if raw_user is None else parse_user_id(raw_user)
    raw_status = query_param(request, "status")
    if raw_status is not None and raw_status not in ledger.HOLD_STATUSES:
        raise ValidationError(
            f"status must be one of {', '.join(ledger.HOLD_STATUSES)}.", field="status"
        )
    status = cast(ledger.HoldStatus | None, raw_status)
    raw_limit = query_param(request, "limit")
    limit = (
        DEFAULT_PAGE
        if raw_limit is None
        else parse_positive_int(raw_limit, field="limit", maximum=MAX_PAGE)
    )
    cursor = query_param(request, "cursor")
    before = ledger.decode_cursor(cursor, prefix="h") if cursor else None
    page = await read(
        resources(request),
        lambda conn: ledger.holds_page(
            conn, user_id=user_id, status=status, limit=limit, before=before
        ),
    )
    return JSONResponse(
        {
            "success": True,
            "data": [hold_view(h) for h in page.items],
            "nextCursor": page.next_cursor,
        }
    )


routes = [
    Route("/api/wallet/holds", post_hold, methods=["POST"]),
    Route("/api/wallet/holds", list_holds, methods=["GET"]),
    Route("/api/wallet/holds/{holdId}", get_hold, methods=["GET"]),
    Route("/api/wallet/holds/{holdId}/capture", post_capture, methods=["POST"]),
    Route("/api/wallet/holds/{holdId}/void", post_void, methods=["POST"]),
]
