"""reverse: a refund, or coins taken back, along a transaction's legs."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON

from wallet import ledger
from wallet.errors import Declined, WalletError
from wallet.resolvers import reversals as resolve
from wallet.resolvers import transactions as resolve_transactions
from wallet.resolvers import wallet as resolve_wallet
from wallet.resolvers.context import Context
from wallet.schema.errors import (
    BalanceLimitExceeded,
    Failure,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    NotReversible,
    ReversalExceedsOriginal,
    failure,
    insufficient_funds,
)
from wallet.schema.scalars import Amount
from wallet.schema.transactions import Transaction
from wallet.schema.types import Ctx, TransactionType


@strawberry.type
class ReverseSuccess:
    transaction: Transaction = strawberry.field(description="The REVERSAL.")
    reverses: Transaction = strawberry.field(description="The transaction it reverses.")
    remaining_reversible: Amount
    replayed: bool


ReverseResult = Annotated[
    ReverseSuccess
    | InsufficientFunds
    | NotFound
    | InvalidInput
    | IdempotencyKeyReused
    | Forbidden
    | NotReversible
    | ReversalExceedsOriginal
    | BalanceLimitExceeded,
    strawberry.union("ReverseResult"),
]
_FAILURES: tuple[type[Failure], ...] = (
    NotFound,
    InvalidInput,
    IdempotencyKeyReused,
    Forbidden,
    NotReversible,
    ReversalExceedsOriginal,
    BalanceLimitExceeded,
)


@strawberry.input
class ReverseInput:
    transaction_id: uuid.UUID
    idempotency_key: str
    amount: Amount | None = strawberry.field(
        default=None, description="All that is still reversible when not given."
    )
    reason: str | None = strawberry.field(default=None, description="At most 256 characters.")
    metadata: JSON | None = None


async def _paying_user(ctx: Context, original: ledger.TransactionRecord) -> uuid.UUID:
    """Who gives coins back: a SPEND's refund is paid by the Treasury, so its user's wallet is
    shown; a TOPUP's or BONUS's user pays; a TRANSFER's recipient pays."""
    if original.type == "TRANSFER":
        for entry in await resolve_transactions.entries(ctx, original.id):
            if entry.direction == "CREDIT" and entry.user_id is not None:
                return entry.user_id
    return original.user_id


async def reverse(info: Ctx, input: ReverseInput) -> ReverseResult:
    """Reverse (part of) a transaction exactly once per key: a SPEND's user is refunded by the
    Treasury, a TOPUP's or BONUS's user returns it, a TRANSFER's recipient returns it."""
    ctx = info.context
    try:
        done = await resolve.reverse(
            ctx,
            transaction_id=input.transaction_id,
            idempotency_key=input.idempotency_key,
            amount=input.amount,
            reason=input.reason,
            metadata=input.metadata,
        )
    except WalletError as error:
        return cast(ReverseResult, failure(error, *_FAILURES))
    original = await resolve_transactions.record(ctx, input.transaction_id)
    assert original is not None  # the reversal found it
    if isinstance(done, Declined) and done.code == "INSUFFICIENT_FUNDS":
        asset = await resolve_wallet.asset(ctx, original.asset_id)
        requested = input.amount or await resolve.remaining_reversible(ctx, original.id)
        return await insufficient_funds(
            ctx, done, user_id=await _paying_user(ctx, original), asset=asset, requested=requested
        )
    if isinstance(done, Declined):
        return cast(ReverseResult, failure(done, *_FAILURES))
    return ReverseSuccess(
        transaction=Transaction.posted(
            id=done.transaction_id,
            type=TransactionType.REVERSAL,
            amount=done.amount,
            created_at=done.created_at,
            asset_id=original.asset_id,
            principal=ctx.who().name,
            user_id=done.balances[-1][0],  # the user side; a TRANSFER's recipient
            metadata=done.metadata,
            reason=done.reason,
            reverses_id=original.id,
        ),
        reverses=Transaction.of(original),
        remaining_reversible=Amount(done.remaining_reversible),
        replayed=done.replayed,
    )
