"""TOPUP, BONUS and SPEND: coins between a user and the asset's Treasury (`wallet_transact`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import asyncpg
from sqlalchemy import bindparam, delete, func, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import IdempotencyKey
from wallet.errors import (
    BalanceLimitExceeded,
    Declined,
    InsufficientFunds,
)
from wallet.inputs import TxType
from wallet.ledger.common import (
    MAX_BIGINT,
    Metadata,
    fingerprint,
    key_reused,
    metadata_json,
    operation_error,
    optional_uuid,
    parse_time,
    raise_for_sqlstate,
)

Outcome = Literal["COMPLETED", "INSUFFICIENT_FUNDS", "BALANCE_LIMIT_EXCEEDED"]

TRANSACT_ROUTE: Final = "POST /api/wallet/transact"

_TRANSACT_SQL = text(
    "SELECT outcome, replayed, fingerprint_matches, transaction_id, balance_before,"
    " balance_after, created_at FROM wallet_transact(:scope, :key, :fingerprint, :user_id,"
    " :asset, :type, :amount, :txn, :principal, :reference, CAST(:metadata AS jsonb))"
).bindparams(bindparam("fingerprint", type_=IdempotencyKey.fingerprint.type))
# The same call for the hot path's asyncpg connections (prepared once per connection).
_TRANSACT_PG = (
    "SELECT outcome, replayed, fingerprint_matches, transaction_id, balance_before,"
    " balance_after, created_at"
    " FROM wallet_transact($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)"
)
_PARAMS = (
    "scope", "key", "fingerprint", "user_id", "asset", "type", "amount", "txn", "principal",
    "reference", "metadata",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TransactRequest:
    """What a client asks for; its fingerprint identifies it for idempotency."""

    user_id: uuid.UUID
    asset_slug: str
    amount: int
    type: TxType
    reference: str | None = None
    metadata: Metadata = field(default_factory=dict)

    def fingerprint(self) -> bytes:
        return fingerprint(
            TRANSACT_ROUTE,
            {
                "amount": self.amount,
                "assetSlug": self.asset_slug,
                "type": self.type,
                "userId": str(self.user_id),
            },
            reference=self.reference,
            metadata=self.metadata,
        )


@dataclass(frozen=True, slots=True)
class TransactOutcome:
    """What the ledger decided; the same whether it just happened or is being replayed."""

    request: TransactRequest
    outcome: Outcome
    replayed: bool
    transaction_id: uuid.UUID | None
    balance_before: int
    balance_after: int
    created_at: datetime


def _params(request: TransactRequest, *, key: str, principal: str) -> dict[str, Any]:
    return {
        "scope": principal,
        "key": key,
        "fingerprint": request.fingerprint(),
        "user_id": request.user_id,
        "asset": request.asset_slug,
        "type": request.type,
        "amount": request.amount,
        "txn": uuid.uuid4(),
        "principal": principal,
        "reference": request.reference,
        "metadata": metadata_json(request.metadata),
    }


def transact_answer(raw: Mapping[str, Any], request: TransactRequest) -> TransactOutcome:
    """A posting's answer as `ledger_batch_op` writes it in JSON, raised or returned exactly as
    `transact_pg` raises or returns the same answer."""
    if raw["outcome"] == "ERROR":
        raise operation_error(raw["code"], raw.get("subject"))
    if not raw["fingerprintMatches"]:  # before the balances: another route's key stores none
        raise key_reused(optional_uuid(raw["transactionId"]))
    row = {
        "outcome": raw["outcome"],
        "replayed": raw["replayed"],
        "fingerprint_matches": raw["fingerprintMatches"],
        "transaction_id": optional_uuid(raw["transactionId"]),
        "balance_before": int(raw["balanceBefore"]),
        "balance_after": int(raw["balanceAfter"]),
        "created_at": parse_time(raw["createdAt"]),
    }
    return _outcome(row, request)


def _outcome(row: Any, request: TransactRequest) -> TransactOutcome:
    if not row["fingerprint_matches"]:
        raise key_reused(row["transaction_id"])
    return TransactOutcome(
        request=request,
        outcome=row["outcome"],
        replayed=row["replayed"],
        transaction_id=row["transaction_id"],
        balance_before=row["balance_before"],
        balance_after=row["balance_after"],
        created_at=row["created_at"],
    )


async def transact(
    conn: AsyncConnection, request: TransactRequest, *, key: str, principal: str
) -> TransactOutcome:
    """Post one transaction exactly once per (principal, key); replay the stored outcome after.

    Keys are scoped per principal: two callers cannot collide on, or replay, each other's keys.
    The principal is recorded on the transaction.
    """
    try:
        result = await conn.execute(_TRANSACT_SQL, _params(request, key=key, principal=principal))
    except DBAPIError as error:
        raise_for_sqlstate(error)
    return _outcome(result.one()._mapping, request)


async def transact_pg(
    conn: asyncpg.Connection, request: TransactRequest, *, key: str, principal: str
) -> TransactOutcome:
    """`transact` on an asyncpg connection: the hot path's (one prepared statement)."""
    params = _params(request, key=key, principal=principal)
    try:
        row = await conn.fetchrow(_TRANSACT_PG, *(params[name] for name in _PARAMS))
    except asyncpg.PostgresError as error:
        raise_for_sqlstate(error)
    return _outcome(row, request)


async def purge_idempotency(conn: AsyncConnection, *, older_than: timedelta) -> int:
    """Delete idempotency keys older than the retention; returns how many went."""
    result = await conn.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < func.now() - older_than)
    )
    return result.rowcount


def refusal(outcome: TransactOutcome) -> Declined | None:
    """The error a declined TOPUP, BONUS or SPEND answers (marked replayed), or None."""
    error: Declined
    if outcome.outcome == "INSUFFICIENT_FUNDS" and outcome.balance_before >= outcome.request.amount:
        error = InsufficientFunds(  # the balance covers it: holds keep part of it unavailable
            f"Insufficient funds: the balance is {outcome.balance_before}, but holds keep part"
            f" of it unavailable; the SPEND needs {outcome.request.amount} available.",
        )
    elif outcome.outcome == "INSUFFICIENT_FUNDS":
        error = InsufficientFunds(
            f"Insufficient funds: the balance is {outcome.balance_before}, the SPEND needs"
            f" {outcome.request.amount}.",
        )
    elif outcome.outcome == "BALANCE_LIMIT_EXCEEDED" and (
        outcome.request.type != "SPEND"
        and outcome.balance_before + outcome.request.amount > MAX_BIGINT
    ):
        error = BalanceLimitExceeded(
            f"The balance {outcome.balance_before} cannot take {outcome.request.amount} more:"
            " it would pass the largest balance a wallet can hold."
        )
    elif outcome.outcome == "BALANCE_LIMIT_EXCEEDED":  # the wallet had room; the Treasury not
        error = BalanceLimitExceeded("The asset's Treasury has no room left for this amount.")
    else:
        return None
    error.replayed = outcome.replayed
    return error
