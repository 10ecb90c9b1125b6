"""REVERSAL: a refund, or coins taken back, along the original transaction's legs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import IdempotencyKey
from wallet.errors import (
    BalanceLimitExceeded,
    Declined,
    InsufficientFunds,
    NotReversible,
    ReversalExceedsOriginal,
)
from wallet.ledger.common import Metadata, call_keyed, declined, fingerprint, metadata_json

REVERSE_ROUTE: Final = "POST /api/transactions/{transactionId}/reverse"

_REVERSE_SQL = text(
    "SELECT outcome, replayed, fingerprint_matches, result FROM wallet_reverse(:scope, :key,"
    " :fingerprint, :original, :amount, :reason, CAST(:metadata AS jsonb), :txn, :principal)"
).bindparams(bindparam("fingerprint", type_=IdempotencyKey.fingerprint.type))


@dataclass(frozen=True, slots=True)
class ReverseRequest:
    transaction_id: uuid.UUID
    amount: int | None = None  # None: all that is still reversible
    reason: str | None = None
    metadata: Metadata = field(default_factory=dict)

    def fingerprint(self) -> bytes:
        fields: dict[str, Any] = {"transactionId": str(self.transaction_id)}
        if self.amount is not None:
            fields["amount"] = self.amount
        if self.reason is not None:
            fields["reason"] = self.reason
        return fingerprint(REVERSE_ROUTE, fields, metadata=self.metadata)


@dataclass(frozen=True, slots=True)
class ReversalDone:
    transaction_id: uuid.UUID
    reverses_transaction_id: uuid.UUID
    asset_slug: str
    amount: int
    remaining_reversible: int
    balances: list[tuple[uuid.UUID, int]]  # (user id, balance after) of every wallet touched
    reason: str | None
    metadata: dict[str, Any]
    created_at: datetime
    replayed: bool


async def reverse(
    conn: AsyncConnection, request: ReverseRequest, *, key: str, principal: str
) -> ReversalDone | Declined:
    """Reverse (part of) a transaction exactly once per (principal, key)."""
    stored = await call_keyed(
        conn,
        _REVERSE_SQL,
        {
            "scope": principal,
            "key": key,
            "fingerprint": request.fingerprint(),
            "original": request.transaction_id,
            "amount": request.amount,
            "reason": request.reason,
            "metadata": metadata_json(request.metadata),
            "txn": uuid.uuid4(),
            "principal": principal,
        },
        W0003=f"Transaction {request.transaction_id} not found.",
    )
    result = stored.result
    if stored.outcome == "NOT_REVERSIBLE":
        return declined(stored, NotReversible("A REVERSAL cannot be reversed."))
    if stored.outcome == "REVERSAL_EXCEEDS_ORIGINAL":
        return declined(
            stored,
            ReversalExceedsOriginal(
                f"Only {result['remainingReversible']} of the transaction is still reversible.",
                remainingReversible=result["remainingReversible"],
            ),
        )
    if stored.outcome == "INSUFFICIENT_FUNDS":
        return declined(
            stored,
            InsufficientFunds(
                f"Insufficient funds: {result['available']} available, the reversal needs"
                f" {result['requested']}.",
                available=result["available"],
            ),
        )
    if stored.outcome == "BALANCE_LIMIT_EXCEEDED":
        return declined(
            stored,
            BalanceLimitExceeded(
                "A balance (a wallet's, or the asset's Treasury's) would pass the largest it"
                " can hold."
            ),
        )
    return ReversalDone(
        transaction_id=uuid.UUID(result["transactionId"]),
        reverses_transaction_id=uuid.UUID(result["reversesTransactionId"]),
        asset_slug=result["assetSlug"],
        amount=int(result["amount"]),
        remaining_reversible=int(result["remainingReversible"]),
        balances=[(uuid.UUID(b["userId"]), int(b["balanceAfter"])) for b in result["balances"]],
        reason=result["reason"],
        metadata=result["metadata"],
        created_at=datetime.fromisoformat(result["createdAt"]),
        replayed=stored.replayed,
    )
