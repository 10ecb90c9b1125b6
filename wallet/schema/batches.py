"""transactBatch: many TOPUP, BONUS, SPEND and TRANSFER operations in one round trip, with the
semantics of REST's `POST /api/wallet/batch`."""

from __future__ import annotations

import asyncio
import enum
import uuid
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON

from wallet import ledger
from wallet.errors import Declined, WalletError
from wallet.resolvers import batches as resolve
from wallet.resolvers import wallet as resolve_wallet
from wallet.resolvers.context import Context
from wallet.schema import transact, transfers
from wallet.schema.errors import (
    BalanceLimitExceeded,
    BatchFailed,
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
from wallet.schema.types import Ctx


@strawberry.enum
class BatchOperationType(enum.Enum):
    TOPUP = "TOPUP"
    BONUS = "BONUS"
    SPEND = "SPEND"
    TRANSFER = "TRANSFER"


@strawberry.input(
    description=(
        "One operation: `userId` for TOPUP, BONUS and SPEND; `fromUserId` and `toUserId` for a"
        " TRANSFER. `idempotencyKey` is the operation's own (required unless the batch is"
        " atomic): it follows exactly the rules of its own mutation, so a retried batch replays"
        " what was done and runs the rest."
    )
)
class BatchOperationInput:
    op: BatchOperationType
    amount: Amount
    asset_slug: str
    user_id: uuid.UUID | None = None
    from_user_id: uuid.UUID | None = None
    to_user_id: uuid.UUID | None = None
    reference: str | None = None
    metadata: JSON | None = None
    idempotency_key: str | None = None


@strawberry.input
class TransactBatchInput:
    atomic: bool = strawberry.field(
        description="true: all or nothing, in one database transaction; false: each on its own."
    )
    operations: list[BatchOperationInput] = strawberry.field(description="1 to 1,000.")
    idempotency_key: str = strawberry.field(description="The batch's own key.")


BatchOperationResult = Annotated[
    transact.TransactSuccess
    | transfers.TransferSuccess
    | InsufficientFunds
    | NotFound
    | IdempotencyKeyReused
    | BalanceLimitExceeded,
    strawberry.union("BatchOperationResult"),
]
_OPERATION_FAILURES: tuple[type[Failure], ...] = (
    NotFound,
    IdempotencyKeyReused,
    BalanceLimitExceeded,
)


@strawberry.type
class BatchSuccess:
    results: list[BatchOperationResult] = strawberry.field(
        description="Each operation's answer, in input order (all successes when atomic)."
    )
    replayed: bool = strawberry.field(description="The batch's key was used before.")


TransactBatchResult = Annotated[
    BatchSuccess
    | BatchFailed
    | InvalidInput
    | IdempotencyKeyReused
    | Forbidden
    | BalanceLimitExceeded,
    strawberry.union("TransactBatchResult"),
]
_FAILURES: tuple[type[Failure], ...] = (
    BatchFailed,
    InvalidInput,
    IdempotencyKeyReused,
    Forbidden,
    BalanceLimitExceeded,
)


async def _asset(ctx: Context, slug: str) -> ledger.AssetInfo:
    found = await resolve_wallet.asset_by_slug(ctx, slug)
    if found is None:  # only a posted operation is shaped here: it found its asset
        raise AssertionError(f"asset {slug!r} vanished")
    return found


async def _result(
    ctx: Context, operation: ledger.BatchOperation, result: ledger.OperationResult
) -> BatchOperationResult:
    principal = ctx.who().name
    request = operation.request
    if isinstance(result, ledger.TransactOutcome):
        return transact.success(
            result, asset=await _asset(ctx, request.asset_slug), principal=principal
        )
    if isinstance(result, ledger.TransferDone):
        return transfers.success(
            result, asset=await _asset(ctx, request.asset_slug), principal=principal
        )
    if result.code == "INSUFFICIENT_FUNDS":
        payer = (
            request.from_user_id if isinstance(request, ledger.TransferRequest) else request.user_id
        )
        return await insufficient_funds(
            ctx,
            result,
            user_id=payer,
            asset=await _asset(ctx, request.asset_slug),
            requested=request.amount,
        )
    return cast(BatchOperationResult, failure(result, *_OPERATION_FAILURES))


async def transact_batch(info: Ctx, input: TransactBatchInput) -> TransactBatchResult:
    """Run up to 1,000 operations exactly once per batch key (over HTTP, the request body cap
    bounds how many fit)."""
    ctx = info.context
    items = [
        resolve.BatchItem(
            op=o.op.value,
            amount=o.amount,
            asset_slug=o.asset_slug,
            user_id=o.user_id,
            from_user_id=o.from_user_id,
            to_user_id=o.to_user_id,
            reference=o.reference,
            metadata=o.metadata,
            idempotency_key=o.idempotency_key,
        )
        for o in input.operations
    ]
    try:
        operations, done = await resolve.batch(
            ctx, atomic=input.atomic, items=items, idempotency_key=input.idempotency_key
        )
    except WalletError as error:
        return cast(TransactBatchResult, failure(error, *_FAILURES))
    if isinstance(done, Declined):
        return cast(TransactBatchResult, failure(done, *_FAILURES))
    results = await asyncio.gather(
        *(_result(ctx, o, r) for o, r in zip(operations, done.results, strict=True))
    )
    return BatchSuccess(results=list(results), replayed=done.replayed)
