"""TRANSFER: coins from one user's wallet to another's (`wallet_transfer`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import IdempotencyKey
from wallet.errors import BalanceLimitExceeded, Declined, InsufficientFunds
from wallet.ledger.common import (
    Metadata,
    Stored,
    call_keyed,
    declined,
    fingerprint,
    metadata_json,
    parse_time,
)

TRANSFER_ROUTE: Final = "POST /api/wallet/transfer"

_TRANSFER_SQL = text(
    "SELECT outcome, replayed, fingerprint_matches, result FROM wallet_transfer(:scope, :key,"
    " :fingerprint, :from_user, :to_user, :asset, :amount, :txn, :principal, :reference,"
    " CAST(:metadata AS jsonb))"
).bindparams(bindparam("fingerprint", type_=IdempotencyKey.fingerprint.type))


@dataclass(frozen=True, slots=True)
class TransferRequest:
    from_user_id: uuid.UUID
    to_user_id: uuid.UUID
    asset_slug: str
    amount: int
    reference: str | None = None
    metadata: Metadata = field(default_factory=dict)

    def fingerprint(self) -> bytes:
        return fingerprint(
            TRANSFER_ROUTE,
            {
                "amount": self.amount,
                "assetSlug": self.asset_slug,
                "fromUserId": str(self.from_user_id),
                "toUserId": str(self.to_user_id),
            },
            reference=self.reference,
            metadata=self.metadata,
        )


@dataclass(frozen=True, slots=True)
class TransferDone:
    transaction_id: uuid.UUID
    from_user_id: uuid.UUID
    to_user_id: uuid.UUID
    asset_slug: str
    amount: int
    from_balance_after: int
    to_balance_after: int
    reference: str | None
    metadata: dict[str, Any]
    created_at: datetime
    replayed: bool


def transfer_done(result: dict[str, Any], *, replayed: bool) -> TransferDone:
    """A transfer's stored answer (as wallet_transfer and batches store it)."""
    return TransferDone(
        transaction_id=uuid.UUID(result["transactionId"]),
        from_user_id=uuid.UUID(result["fromUserId"]),
        to_user_id=uuid.UUID(result["toUserId"]),
        asset_slug=result["assetSlug"],
        amount=int(result["amount"]),
        from_balance_after=int(result["fromBalanceAfter"]),
        to_balance_after=int(result["toBalanceAfter"]),
        reference=result["reference"],
        metadata=result["metadata"],
        created_at=parse_time(result["createdAt"]),
        replayed=replayed,
    )


def transfer_outcome(stored: Stored, amount: int) -> TransferDone | Declined:
    """The transfer, or the refusal the ledger stored for it."""
    if stored.outcome == "INSUFFICIENT_FUNDS":
        return declined(
            stored,
            InsufficientFunds(
                f"Insufficient funds: {stored.result['available']} available,"
                f" the TRANSFER needs {amount}.",
                available=stored.result["available"],
            ),
        )
    if stored.outcome == "BALANCE_LIMIT_EXCEEDED":
        return declined(
            stored,
            BalanceLimitExceeded("The recipient's balance would pass the largest it can hold."),
        )
    return transfer_done(stored.result, replayed=stored.replayed)


async def transfer(
    conn: AsyncConnection, request: TransferRequest, *, key: str, principal: str
) -> TransferDone | Declined:
    """Move coins between two users exactly once per (principal, key)."""
    stored = await call_keyed(
        conn,
        _TRANSFER_SQL,
        {
            "scope": principal,
            "key": key,
            "fingerprint": request.fingerprint(),
            "from_user": request.from_user_id,
            "to_user": request.to_user_id,
            "asset": request.asset_slug,
            "amount": request.amount,
            "txn": uuid.uuid4(),
            "principal": principal,
            "reference": request.reference,
            "metadata": metadata_json(request.metadata),
        },
        W0002=f"Asset {request.asset_slug!r} not found.",
    )
    return transfer_outcome(stored, request.amount)
