"""Holds: reserve coins (createHold), charge them (captureHold), release them (voidHold).

Holds are a back end's tool (rules on Principal, shared with REST): placing, capturing and voiding
need a key with the transact scope, listing one with read; end-user tokens never do either.
"""

from __future__ import annotations

import uuid

from wallet import ledger
from wallet.errors import Declined, ValidationError
from wallet.inputs import (
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
    parse_int_range,
    parse_metadata,
    parse_optional_amount,
    parse_reference,
)
from wallet.resolvers.common import posting
from wallet.resolvers.context import Context
from wallet.resources import read

MAX_PAGE = 100


async def create_hold(
    ctx: Context,
    *,
    user_id: uuid.UUID,
    amount: int,
    asset_slug: str,
    idempotency_key: str,
    expires_in_seconds: int | None = None,
    reference: str | None = None,
    metadata: object = None,
) -> ledger.HoldView | Declined:
    request = ledger.HoldRequest(
        user_id=user_id,
        asset_slug=parse_asset_slug(asset_slug),
        amount=parse_amount(amount),
        expires_in_seconds=ledger.DEFAULT_EXPIRY_S
        if expires_in_seconds is None
        else parse_int_range(
            expires_in_seconds, field="expiresInSeconds", low=1, high=ledger.MAX_EXPIRY_S
        ),
        reference=parse_reference(reference),
        metadata=parse_metadata(metadata),
    )
    key = parse_idempotency_key(idempotency_key, field="idempotencyKey")
    who = ctx.who()
    who.require_hold()
    return await posting(
        ctx,
        lambda conn: ledger.create_hold(conn, request, key=key, principal=who.name),
        kind="HOLD",
    )


async def capture_hold(
    ctx: Context,
    *,
    hold_id: uuid.UUID,
    idempotency_key: str,
    amount: int | None = None,
    to_user_id: uuid.UUID | None = None,
    reference: str | None = None,
    metadata: object = None,
) -> ledger.HoldView | Declined:
    """Charge (part of) a HELD hold to the Treasury, or to `to_user_id`; the rest is released."""
    request = ledger.CaptureRequest(
        hold_id=hold_id,
        amount=parse_optional_amount(amount),
        to_user_id=to_user_id,
        reference=parse_reference(reference),
        metadata=parse_metadata(metadata),
    )
    key = parse_idempotency_key(idempotency_key, field="idempotencyKey")
    who = ctx.who()
    who.require_hold()
    return await posting(
        ctx,
        lambda conn: ledger.capture_hold(conn, request, key=key, principal=who.name),
        kind="CAPTURE",
    )


async def void_hold(
    ctx: Context, *, hold_id: uuid.UUID, idempotency_key: str
) -> ledger.HoldView | Declined:
    key = parse_idempotency_key(idempotency_key, field="idempotencyKey")
    who = ctx.who()
    who.require_hold()
    return await posting(
        ctx,
        lambda conn: ledger.void_hold(conn, hold_id, key=key, principal=who.name),
        kind="VOID",
    )


async def holds_page(
    ctx: Context,
    user_id: uuid.UUID,
    *,
    status: ledger.HoldStatus | None,
    first: int,
    after: str | None,
) -> ledger.HoldPage:
    """The wallet's holds, newest first; a HELD hold past its expiry counts as EXPIRED."""
    ctx.who().require_hold_reader()
    if not 1 <= first <= MAX_PAGE:
        raise ValidationError(f"first must be from 1 to {MAX_PAGE}.", field="first")
    before = ledger.decode_cursor(after, prefix="h") if after else None
    return await read(
        ctx.resources,
        lambda conn: ledger.holds_page(
            conn, user_id=user_id, status=status, limit=first, before=before
        ),
    )
