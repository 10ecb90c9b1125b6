"""transact: a TOPUP, SPEND or BONUS between a wallet and the asset's Treasury."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON

from wallet import ledger
from wallet.errors import WalletError
from wallet.resolvers import wallet as resolve
from wallet.schema.errors import (
    BalanceLimitExceeded,
    Failure,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    failure,
    insufficient_funds,
)
from wallet.schema.scalars import Amount
from wallet.schema.transactions import Transaction
from wallet.schema.types import Balance, Ctx, TransactionType


@strawberry.type
class TransactSuccess:
    transaction: Transaction
    balance: Balance
    replayed: bool


TransactResult = Annotated[
    TransactSuccess
    | InsufficientFunds
    | NotFound
    | InvalidInput
    | IdempotencyKeyReused
    | Forbidden
    | BalanceLimitExceeded,
    strawberry.union("TransactResult"),
]
FAILURES: tuple[type[Failure], ...] = (
    NotFound,
    InvalidInput,
    IdempotencyKeyReused,
    Forbidden,
    BalanceLimitExceeded,
)


@strawberry.input
class TransactInput:
    user_id: uuid.UUID
    amount: Amount
    asset_slug: str
    type: TransactionType = strawberry.field(description="TOPUP, SPEND or BONUS.")
    idempotency_key: str
    reference: str | None = strawberry.field(
        default=None, description="Your own id for it (an order id): 1-128 printable ASCII."
    )
    metadata: JSON | None = strawberry.field(
        default=None,
        description=(
            "A flat object: at most 32 keys of [A-Za-z0-9_.-]{1,64}; values strings (at most"
            " 512 characters), integers within +-(2^53 - 1), booleans or null; 4 KiB at most."
        ),
    )


def success(
    outcome: ledger.TransactOutcome, *, asset: ledger.AssetInfo, principal: str
) -> TransactSuccess:
    """A posted (or replayed) TOPUP, SPEND or BONUS, as transact and transactBatch answer it."""
    request = outcome.request
    assert outcome.transaction_id is not None  # COMPLETED
    return TransactSuccess(
        transaction=Transaction.posted(
            id=outcome.transaction_id,
            type=TransactionType(request.type),
            amount=request.amount,
            created_at=outcome.created_at,
            asset_id=asset.id,
            principal=principal,
            user_id=request.user_id,
            reference=request.reference,
            metadata=request.metadata,
        ),
        balance=Balance.after(asset, outcome.balance_after, user_id=request.user_id),
        replayed=outcome.replayed,
    )


async def transact(info: Ctx, input: TransactInput) -> TransactResult:
    """Post a TOPUP, SPEND or BONUS exactly once per key."""
    ctx = info.context
    try:
        outcome = await resolve.transact(
            ctx,
            user_id=input.user_id,
            amount=input.amount,
            asset_slug=input.asset_slug,
            tx_type=input.type.value,
            idempotency_key=input.idempotency_key,
            reference=input.reference,
            metadata=input.metadata,
        )
    except WalletError as error:
        return cast(TransactResult, failure(error, *FAILURES))
    asset = await resolve.asset_by_slug(ctx, input.asset_slug)
    assert asset is not None  # the posting found it
    refused = ledger.refusal(outcome)
    if refused is not None and refused.code == "INSUFFICIENT_FUNDS":
        return await insufficient_funds(
            ctx, refused, user_id=input.user_id, asset=asset, requested=input.amount
        )
    if refused is not None:
        return cast(TransactResult, failure(refused, *FAILURES))
    return success(outcome, asset=asset, principal=ctx.who().name)
