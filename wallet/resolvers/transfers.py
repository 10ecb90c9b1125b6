"""transfer: coins from one wallet to another, exactly once per key."""

from __future__ import annotations

import uuid

from wallet import ledger
from wallet.errors import Declined
from wallet.inputs import (
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
    parse_metadata,
    parse_reference,
)
from wallet.resolvers.common import distinct_users, posting
from wallet.resolvers.context import Context


def transfer_request(
    *,
    from_user_id: uuid.UUID,
    to_user_id: uuid.UUID,
    amount: int,
    asset_slug: str,
    reference: str | None,
    metadata: object,
    prefix: str = "",
) -> ledger.TransferRequest:
    """REST's rules, field names (under `prefix`, e.g. `operations[3].`) and all."""
    distinct_users(from_user_id, to_user_id, field=f"{prefix}toUserId")
    return ledger.TransferRequest(
        from_user_id=from_user_id,
        to_user_id=to_user_id,
        asset_slug=parse_asset_slug(asset_slug, field=f"{prefix}assetSlug"),
        amount=parse_amount(amount, field=f"{prefix}amount"),
        reference=parse_reference(reference, field=f"{prefix}reference"),
        metadata=parse_metadata(metadata, field=f"{prefix}metadata"),
    )


async def transfer(
    ctx: Context,
    *,
    from_user_id: uuid.UUID,
    to_user_id: uuid.UUID,
    amount: int,
    asset_slug: str,
    idempotency_key: str,
    reference: str | None = None,
    metadata: object = None,
) -> ledger.TransferDone | Declined:
    request = transfer_request(
        from_user_id=from_user_id,
        to_user_id=to_user_id,
        amount=amount,
        asset_slug=asset_slug,
        reference=reference,
        metadata=metadata,
    )
    key = parse_idempotency_key(idempotency_key, field="idempotencyKey")
    who = ctx.who()
    who.require_transfer(from_user_id, user_can_transfer=ctx.resources.settings.user_can_transfer)
    return await posting(
        ctx,
        lambda conn: ledger.transfer(conn, request, key=key, principal=who.name),
        kind="TRANSFER",
    )
