"""transactBatch: up to 1,000 TOPUP, BONUS, SPEND and TRANSFER operations in one round trip,
with the semantics of REST's `POST /api/wallet/batch` (the same core, keys and fingerprints)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from wallet import ledger
from wallet.errors import Declined, ValidationError
from wallet.inputs import (
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
    parse_metadata,
    parse_reference,
    parse_tx_type,
)
from wallet.resolvers.common import posting
from wallet.resolvers.context import Context
from wallet.resolvers.transfers import transfer_request


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One operation as a client sent it (not yet validated)."""

    op: str
    amount: int
    asset_slug: str
    user_id: uuid.UUID | None = None
    from_user_id: uuid.UUID | None = None
    to_user_id: uuid.UUID | None = None
    reference: str | None = None
    metadata: object = None
    idempotency_key: str | None = None


def _missing(field: str, op: str) -> ValidationError:
    return ValidationError(f"{field} is required for a {op}.", field=field)


def _foreign(field: str, op: str) -> ValidationError:
    return ValidationError(f"{field} is not a field of a {op}.", field=field)


def _operation(index: int, item: BatchItem, *, atomic: bool) -> ledger.BatchOperation:
    """The operation, validated by its own route's rules; errors name `operations[i].<field>`."""
    prefix = f"operations[{index}]."
    request: ledger.TransactRequest | ledger.TransferRequest
    if item.op == "TRANSFER":
        if item.user_id is not None:
            raise _foreign(f"{prefix}userId", item.op)
        if item.from_user_id is None:
            raise _missing(f"{prefix}fromUserId", item.op)
        if item.to_user_id is None:
            raise _missing(f"{prefix}toUserId", item.op)
        request = transfer_request(
            from_user_id=item.from_user_id,
            to_user_id=item.to_user_id,
            amount=item.amount,
            asset_slug=item.asset_slug,
            reference=item.reference,
            metadata=item.metadata,
            prefix=prefix,
        )
    else:
        tx_type = parse_tx_type(item.op, field=f"{prefix}op")
        for name, value in (("fromUserId", item.from_user_id), ("toUserId", item.to_user_id)):
            if value is not None:
                raise _foreign(f"{prefix}{name}", item.op)
        if item.user_id is None:
            raise _missing(f"{prefix}userId", item.op)
        request = ledger.TransactRequest(
            user_id=item.user_id,
            asset_slug=parse_asset_slug(item.asset_slug, field=f"{prefix}assetSlug"),
            amount=parse_amount(item.amount, field=f"{prefix}amount"),
            type=tx_type,
            reference=parse_reference(item.reference, field=f"{prefix}reference"),
            metadata=parse_metadata(item.metadata, field=f"{prefix}metadata"),
        )
    key_field = f"{prefix}idempotencyKey"
    if item.idempotency_key is None:
        if not atomic:
            raise ValidationError(
                f"{key_field} is required when the batch is not atomic.", field=key_field
            )
        return ledger.BatchOperation(request)
    return ledger.BatchOperation(
        request, parse_idempotency_key(item.idempotency_key, field=key_field)
    )


async def batch(
    ctx: Context, *, atomic: bool, items: list[BatchItem], idempotency_key: str
) -> tuple[list[ledger.BatchOperation], ledger.BatchDone | Declined]:
    """The operations as validated, and what the batch did. The whole batch is validated first
    (nothing runs if one operation is malformed), then authorised: it needs what each of its
    operations needs."""
    if not 1 <= len(items) <= ledger.MAX_OPERATIONS:
        raise ValidationError(
            f"operations must hold 1 to {ledger.MAX_OPERATIONS} operations.", field="operations"
        )
    operations = [_operation(i, item, atomic=atomic) for i, item in enumerate(items)]
    key = parse_idempotency_key(idempotency_key, field="idempotencyKey")
    who = ctx.who()
    settings = ctx.resources.settings
    for operation in operations:
        request = operation.request
        if isinstance(request, ledger.TransferRequest):
            who.require_transfer(request.from_user_id, user_can_transfer=settings.user_can_transfer)
        else:
            who.require_transact(
                request.user_id, request.type, user_can_spend=settings.user_can_spend
            )
    done = await posting(
        ctx,
        lambda conn: ledger.batch(conn, operations, atomic=atomic, key=key, principal=who.name),
        kind="BATCH",
    )
    return operations, done
