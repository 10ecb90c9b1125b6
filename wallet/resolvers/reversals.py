"""reverse: a refund, or coins taken back, along a transaction's legs; exactly once per key."""

from __future__ import annotations

import uuid

from wallet import ledger
from wallet.errors import Declined
from wallet.inputs import (
    parse_idempotency_key,
    parse_metadata,
    parse_optional_amount,
    parse_reason,
)
from wallet.resolvers.common import posting
from wallet.resolvers.context import Context


async def reverse(
    ctx: Context,
    *,
    transaction_id: uuid.UUID,
    idempotency_key: str,
    amount: int | None = None,
    reason: str | None = None,
    metadata: object = None,
) -> ledger.ReversalDone | Declined:
    """Needs the transact scope: an end-user token never reverses."""
    request = ledger.ReverseRequest(
        transaction_id=transaction_id,
        amount=parse_optional_amount(amount),
        reason=parse_reason(reason),
        metadata=parse_metadata(metadata),
    )
    key = parse_idempotency_key(idempotency_key, field="idempotencyKey")
    who = ctx.who()
    who.require_reverse()
    return await posting(
        ctx,
        lambda conn: ledger.reverse(conn, request, key=key, principal=who.name),
        kind="REVERSAL",
    )


async def remaining_reversible(ctx: Context, transaction_id: uuid.UUID) -> int:
    """What is left to reverse of a transaction now (batched)."""
    original = await ctx.loaders.transactions.load(transaction_id)
    if original is None:
        return 0
    reversals = await ctx.loaders.reversals.load(transaction_id) or []
    return original.amount - sum(r.amount for r in reversals)
