"""Batches: up to 1,000 TOPUP, BONUS, SPEND and TRANSFER operations in one round trip.

Atomic batches are all or nothing; the others run each operation on its own, under its own key
and exactly the rules of its route (a retried batch replays what was done and runs the rest).
Either way every account the batch touches is locked first, in ascending id order.

Group commit uses the same machinery: `transact_group_pg` posts TOPUPs, BONUSes and SPENDs that
waited together, each under its own key, as one set (see `resources.GroupCommit`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import asyncpg
import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import IdempotencyKey
from wallet.errors import (
    BatchFailed,
    Declined,
    WalletError,
)
from wallet.ledger.common import (
    Stored,
    call_keyed,
    declined,
    fingerprint,
    key_reused,
    operation_error,
    parse_time,
    stored_transaction,
)
from wallet.ledger.postings import TransactOutcome, TransactRequest, refusal, transact_answer
from wallet.ledger.transfers import TransferDone, TransferRequest, transfer_outcome

BATCH_ROUTE: Final = "POST /api/wallet/batch"
MAX_OPERATIONS: Final = 1000
OpName = Literal["TOPUP", "BONUS", "SPEND", "TRANSFER"]

_GROUP_PG: Final = "SELECT wallet_transact_group($1, $2::jsonb, $3)"
_BATCH_SQL = text(
    "SELECT outcome, replayed, fingerprint_matches, result FROM wallet_batch(:scope, :key,"
    " :fingerprint, :atomic, CAST(:operations AS jsonb), :principal)"
).bindparams(bindparam("fingerprint", type_=IdempotencyKey.fingerprint.type))


@dataclass(frozen=True, slots=True)
class BatchOperation:
    request: TransactRequest | TransferRequest
    key: str | None = None  # the operation's own Idempotency-Key (required unless atomic)

    @property
    def op(self) -> OpName:
        return "TRANSFER" if isinstance(self.request, TransferRequest) else self.request.type

    def payload(self) -> dict[str, Any]:
        """What wallet_batch reads for this operation."""
        r = self.request
        common: dict[str, Any] = {
            "op": self.op,
            "assetSlug": r.asset_slug,
            "amount": r.amount,
            "reference": r.reference,
            "metadata": dict(r.metadata),
            "txn": str(uuid.uuid4()),
            "key": self.key,
            "fingerprint": r.fingerprint().hex(),
        }
        if isinstance(r, TransferRequest):
            return {**common, "fromUserId": str(r.from_user_id), "toUserId": str(r.to_user_id)}
        return {**common, "userId": str(r.user_id)}


OperationResult = TransactOutcome | TransferDone | WalletError


@dataclass(frozen=True, slots=True)
class BatchDone:
    results: list[OperationResult]
    replayed: bool


def batch_fingerprint(operations: list[BatchOperation], *, atomic: bool) -> bytes:
    return fingerprint(
        BATCH_ROUTE,
        {
            "atomic": atomic,
            "operations": [
                {"fingerprint": o.request.fingerprint().hex(), "key": o.key} for o in operations
            ],
        },
    )


def _result(operation: BatchOperation, raw: dict[str, Any]) -> OperationResult:
    if raw["outcome"] == "ERROR":
        return operation_error(raw["code"], raw.get("subject"))
    if not raw["fingerprintMatches"]:  # a posting's transaction, or a TRANSFER's answer
        return key_reused(
            raw.get("transactionId") or stored_transaction(raw["outcome"], raw.get("result"))
        )
    request = operation.request
    if isinstance(request, TransferRequest):
        return transfer_outcome(
            Stored(raw["outcome"], raw["replayed"], raw["result"]), request.amount
        )
    outcome = TransactOutcome(
        request=request,
        outcome=raw["outcome"],
        replayed=raw["replayed"],
        transaction_id=uuid.UUID(raw["transactionId"]) if raw["transactionId"] else None,
        balance_before=int(raw["balanceBefore"]),
        balance_after=int(raw["balanceAfter"]),
        created_at=parse_time(raw["createdAt"]),
    )
    return refusal(outcome) or outcome


async def batch(
    conn: AsyncConnection,
    operations: list[BatchOperation],
    *,
    atomic: bool,
    key: str,
    principal: str,
) -> BatchDone | Declined:
    """Run the batch exactly once per (principal, key); an atomic failure is BatchFailed,
    naming the first operation that failed and its code."""
    stored = await call_keyed(
        conn,
        _BATCH_SQL,
        {
            "scope": principal,
            "key": key,
            "fingerprint": batch_fingerprint(operations, atomic=atomic),
            "atomic": atomic,
            "operations": orjson.dumps([o.payload() for o in operations]).decode(),
            "principal": principal,
        },
    )
    if stored.outcome == "BATCH_FAILED":
        index, code = stored.result["index"], stored.result["code"]
        return declined(
            stored,
            BatchFailed(
                f"Operation {index} failed with {code}; nothing in the batch was done.",
                index=index,
                code=code,
            ),
        )
    return BatchDone(
        results=[_result(o, raw) for o, raw in zip(operations, stored.result, strict=True)],
        replayed=stored.replayed,
    )


@dataclass(frozen=True, slots=True)
class GroupPosted:
    """A group's answers, in order: each as `transact_pg` would return it, or the error it
    would raise; `together` when the group was posted set-based (every posting completed). An
    answer that cannot be read is that posting's error alone: the group has committed."""

    answers: list[TransactOutcome | Exception]
    together: bool


async def transact_group_pg(
    conn: asyncpg.Connection, group: Sequence[BatchOperation], *, principal: str
) -> GroupPosted:
    """Post keyed TOPUP, BONUS and SPEND operations of one principal (each key once) in one
    transaction: set-based when every key is new and every posting completes, else each alone
    in order, as its own route would; either way one call and one commit."""
    requests = [o.request for o in group if isinstance(o.request, TransactRequest)]
    if len(requests) != len(group):  # checked before anything is posted
        raise TypeError("a group holds TOPUP, BONUS and SPEND only")
    raw = await conn.fetchval(
        _GROUP_PG, principal, orjson.dumps([o.payload() for o in group]).decode(), principal
    )
    posted = orjson.loads(raw)
    answers: list[TransactOutcome | Exception] = []
    for request, result in zip(requests, posted["results"], strict=True):
        try:
            answers.append(transact_answer(result, request))
        except Exception as error:  # a WalletError, or a fault of this answer's alone
            answers.append(error)
    return GroupPosted(answers=answers, together=posted["set"])
