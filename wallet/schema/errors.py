"""Expected failures as data: the `Error` interface and its members, one per REST code family.

Mutations return result unions; each failure member implements `Error { code message }` with
REST's codes. Anything that is not a WalletError propagates and is masked (build.py).
"""

from __future__ import annotations

import uuid
from typing import TypeAlias

import strawberry

from wallet import ledger
from wallet.errors import WalletError
from wallet.resolvers import wallet as resolve
from wallet.resolvers.context import Context
from wallet.schema.scalars import Amount
from wallet.schema.types import Asset, Balance, HoldStatus


@strawberry.interface(description="Every expected failure: `code` is the same as REST's.")
class Error:
    code: str
    message: str


@strawberry.type(description="INSUFFICIENT_FUNDS: nothing moved (stored with the key, replayed).")
class InsufficientFunds(Error):
    balance: Balance = strawberry.field(
        description="The paying wallet's balance in the asset, read after the refusal."
    )
    requested: Amount
    available: Amount | None = strawberry.field(
        description="What the posting found available, when the ledger recorded it."
    )


@strawberry.type(
    description="USER_NOT_FOUND, ASSET_NOT_FOUND, TRANSACTION_NOT_FOUND or HOLD_NOT_FOUND."
)
class NotFound(Error):
    pass


@strawberry.type(description="VALIDATION_ERROR; `field` names the input field at fault.")
class InvalidInput(Error):
    field: str | None


@strawberry.type(description="IDEMPOTENCY_KEY_REUSED: the key was used for another request.")
class IdempotencyKeyReused(Error):
    original_transaction_id: uuid.UUID | None


@strawberry.type(description="FORBIDDEN: these credentials may not do this.")
class Forbidden(Error):
    pass


@strawberry.type(
    description="BALANCE_LIMIT_EXCEEDED: a balance would pass the largest it can hold."
)
class BalanceLimitExceeded(Error):
    pass


@strawberry.type(description="NOT_REVERSIBLE: a REVERSAL cannot be reversed.")
class NotReversible(Error):
    pass


@strawberry.type(
    description="REVERSAL_EXCEEDS_ORIGINAL: the reversals would add up to more than the original."
)
class ReversalExceedsOriginal(Error):
    remaining_reversible: Amount


@strawberry.type(description="HOLD_EXPIRED: the hold passed its expiry; its coins are released.")
class HoldExpired(Error):
    pass


@strawberry.type(description="HOLD_NOT_ACTIVE: the hold is no longer HELD.")
class HoldNotActive(Error):
    status: HoldStatus | None


@strawberry.type(description="ASSET_ALREADY_EXISTS: the slug is taken, with other fields.")
class AssetAlreadyExists(Error):
    pass


@strawberry.type(
    description=(
        "BATCH_FAILED: an operation of an atomic batch failed, so nothing in it was done."
        " `index` is that operation's (from 0), `operationCode` its own code."
    )
)
class BatchFailed(Error):
    index: int
    operation_code: str


Failure: TypeAlias = (
    NotFound
    | InvalidInput
    | IdempotencyKeyReused
    | Forbidden
    | BalanceLimitExceeded
    | NotReversible
    | ReversalExceedsOriginal
    | HoldExpired
    | HoldNotActive
    | AssetAlreadyExists
    | BatchFailed
)
_NOT_FOUND = ("USER_NOT_FOUND", "ASSET_NOT_FOUND", "TRANSACTION_NOT_FOUND", "HOLD_NOT_FOUND")
_PLAIN: dict[str, type[Failure]] = {
    "FORBIDDEN": Forbidden,
    "BALANCE_LIMIT_EXCEEDED": BalanceLimitExceeded,
    "NOT_REVERSIBLE": NotReversible,
    "HOLD_EXPIRED": HoldExpired,
    "ASSET_ALREADY_EXISTS": AssetAlreadyExists,
    **dict.fromkeys(_NOT_FOUND, NotFound),
}


def _amount(value: object) -> Amount | None:
    return Amount(int(str(value))) if value is not None else None


def failure(error: WalletError, *members: type[Failure]) -> Failure:
    """The union member for an expected failure, if `members` (the result union's) has it;
    anything else is raised again (and masked, if it is not a WalletError's business)."""
    member: Failure
    code, message, details = error.code, error.message, error.details
    if code in _PLAIN:
        member = _PLAIN[code](code=code, message=message)  # type: ignore[call-arg]
    elif code == "VALIDATION_ERROR":
        member = InvalidInput(code=code, message=message, field=details.get("field"))
    elif code == "IDEMPOTENCY_KEY_REUSED":
        original = details.get("originalTransactionId")
        member = IdempotencyKeyReused(
            code=code,
            message=message,
            original_transaction_id=uuid.UUID(original) if original else None,
        )
    elif code == "REVERSAL_EXCEEDS_ORIGINAL":
        member = ReversalExceedsOriginal(
            code=code,
            message=message,
            remaining_reversible=_amount(details.get("remainingReversible")) or Amount(0),
        )
    elif code == "HOLD_NOT_ACTIVE":
        status = details.get("status")
        member = HoldNotActive(
            code=code, message=message, status=HoldStatus(status) if status else None
        )
    elif code == "BATCH_FAILED":
        member = BatchFailed(
            code=code,
            message=message,
            index=int(details["index"]),
            operation_code=str(details["code"]),
        )
    else:
        raise error
    if not isinstance(member, members):
        raise error
    return member


async def insufficient_funds(
    ctx: Context,
    error: WalletError,
    *,
    user_id: uuid.UUID,
    asset: ledger.AssetInfo,
    requested: int,
) -> InsufficientFunds:
    """INSUFFICIENT_FUNDS with the paying wallet's balance as it is now (batched)."""
    now = await resolve.balance(ctx, user_id, asset.id)
    balance = (
        Balance.of(now, user_id=user_id)
        if now is not None
        else Balance(asset=Asset.of(asset), amount=Amount(0), user_id=user_id, known_held=0)
    )
    return InsufficientFunds(
        code=error.code,
        message=error.message,
        balance=balance,
        requested=Amount(requested),
        available=_amount(error.details.get("available")),
    )
