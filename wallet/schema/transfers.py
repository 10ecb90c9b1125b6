"""transfer: coins from one wallet to another."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON

from wallet import ledger
from wallet.errors import Declined, WalletError
from wallet.resolvers import transfers as resolve
from wallet.resolvers import wallet as resolve_wallet
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
class TransferSuccess:
    transaction: Transaction
    from_: Balance = strawberry.field(name="from", description="The sender's, after it.")
    to: Balance = strawberry.field(description="The recipient's, after it.")
    replayed: bool


TransferResult = Annotated[
    TransferSuccess
    | InsufficientFunds
    | NotFound
    | InvalidInput
    | IdempotencyKeyReused
    | Forbidden
    | BalanceLimitExceeded,
    strawberry.union("TransferResult"),
]
FAILURES: tuple[type[Failure], ...] = (
    NotFound,
    InvalidInput,
    IdempotencyKeyReused,
    Forbidden,
    BalanceLimitExceeded,
)


@strawberry.input
class TransferInput:
    from_user_id: uuid.UUID
    to_user_id: uuid.UUID = strawberry.field(
        description="Another user; gets an account in the asset if it has none."
    )
    amount: Amount
    asset_slug: str
    idempotency_key: str
    reference: str | None = None
    metadata: JSON | None = None


def success(
    done: ledger.TransferDone, *, asset: ledger.AssetInfo, principal: str
) -> TransferSuccess:
    """A posted (or replayed) TRANSFER, as transfer and transactBatch answer it."""
    return TransferSuccess(
        transaction=Transaction.posted(
            id=done.transaction_id,
            type=TransactionType.TRANSFER,
            amount=done.amount,
            created_at=done.created_at,
            asset_id=asset.id,
            principal=principal,
            user_id=done.from_user_id,
            reference=done.reference,
            metadata=done.metadata,
        ),
        from_=Balance.after(asset, done.from_balance_after, user_id=done.from_user_id),
        to=Balance.after(asset, done.to_balance_after, user_id=done.to_user_id),
        replayed=done.replayed,
    )


async def transfer(info: Ctx, input: TransferInput) -> TransferResult:
    """Move coins between two wallets exactly once per key."""
    ctx = info.context
    try:
        done = await resolve.transfer(
            ctx,
            from_user_id=input.from_user_id,
            to_user_id=input.to_user_id,
            amount=input.amount,
            asset_slug=input.asset_slug,
            idempotency_key=input.idempotency_key,
            reference=input.reference,
            metadata=input.metadata,
        )
    except WalletError as error:
        return cast(TransferResult, failure(error, *FAILURES))
    asset = await resolve_wallet.asset_by_slug(ctx, input.asset_slug)
    assert asset is not None  # the posting found it
    if isinstance(done, Declined) and done.code == "INSUFFICIENT_FUNDS":
        return await insufficient_funds(
            ctx, done, user_id=input.from_user_id, asset=asset, requested=input.amount
        )
    if isinstance(done, Declined):
        return cast(TransferResult, failure(done, *FAILURES))
    return success(done, asset=asset, principal=ctx.who().name)
