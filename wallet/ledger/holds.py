"""Holds: coins reserved on a wallet until captured (posted), voided, or expired.

A hold is a pending debit, as in TigerBeetle: it raises the account's `held` (so it counts
against `available` from the moment it exists) and moves nothing until it is captured, when a
SPEND (to the Treasury) or a TRANSFER (to a user) posts the captured amount and releases the rest.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import Asset, Hold, IdempotencyKey
from wallet.errors import (
    BalanceLimitExceeded,
    Declined,
    HoldExpired,
    HoldNotActive,
    InsufficientFunds,
    UserNotFound,
)
from wallet.ledger.common import (
    Metadata,
    Stored,
    call_keyed,
    declined,
    encode_cursor,
    fingerprint,
    metadata_json,
    optional_uuid,
    parse_time,
)
from wallet.ledger.users import user_exists

HoldStatus = Literal["HELD", "CAPTURED", "VOIDED", "EXPIRED"]
HOLD_STATUSES: Final = ("HELD", "CAPTURED", "VOIDED", "EXPIRED")
HOLD_ROUTE: Final = "POST /api/wallet/holds"
CAPTURE_ROUTE: Final = "POST /api/wallet/holds/{holdId}/capture"
VOID_ROUTE: Final = "POST /api/wallet/holds/{holdId}/void"
DEFAULT_EXPIRY_S: Final = 900
MAX_EXPIRY_S: Final = 604_800

_CREATE_SQL = text(
    "SELECT outcome, replayed, fingerprint_matches, result FROM wallet_hold_create(:scope, :key,"
    " :fingerprint, :hold, :user_id, :asset, :amount, :expires_in, :principal, :reference,"
    " CAST(:metadata AS jsonb))"
).bindparams(bindparam("fingerprint", type_=IdempotencyKey.fingerprint.type))
_CAPTURE_SQL = text(
    "SELECT outcome, replayed, fingerprint_matches, result FROM wallet_hold_capture(:scope, :key,"
    " :fingerprint, :hold, :amount, :to_user, :txn, :principal, :reference,"
    " CAST(:metadata AS jsonb))"
).bindparams(bindparam("fingerprint", type_=IdempotencyKey.fingerprint.type))
_VOID_SQL = text(
    "SELECT outcome, replayed, fingerprint_matches, result FROM wallet_hold_void(:scope, :key,"
    " :fingerprint, :hold, :principal)"
).bindparams(bindparam("fingerprint", type_=IdempotencyKey.fingerprint.type))
_EXPIRE_SQL = text("SELECT wallet_expire_holds(:limit)")


@dataclass(frozen=True, slots=True)
class HoldView:
    """A hold as every route shows it; `balance`/`available` are the user's after a change."""

    hold_id: uuid.UUID
    status: HoldStatus
    user_id: uuid.UUID
    asset_slug: str
    amount: int
    captured_amount: int
    expires_at: datetime
    transaction_id: uuid.UUID | None
    reference: str | None
    metadata: dict[str, Any]
    created_at: datetime
    balance: int | None = None
    available: int | None = None
    replayed: bool = False


def _view(result: dict[str, Any], *, replayed: bool = False) -> HoldView:
    return HoldView(
        hold_id=uuid.UUID(result["holdId"]),
        status=result["status"],
        user_id=uuid.UUID(result["userId"]),
        asset_slug=result["assetSlug"],
        amount=int(result["amount"]),
        captured_amount=int(result["capturedAmount"]),
        expires_at=parse_time(result["expiresAt"]),
        transaction_id=optional_uuid(result.get("transactionId")),
        reference=result["reference"],
        metadata=result["metadata"],
        created_at=parse_time(result["createdAt"]),
        balance=int(result["balance"]) if "balance" in result else None,
        available=int(result["available"]) if "available" in result else None,
        replayed=replayed,
    )


@dataclass(frozen=True, slots=True)
class HoldRequest:
    user_id: uuid.UUID
    asset_slug: str
    amount: int
    expires_in_seconds: int = DEFAULT_EXPIRY_S
    reference: str | None = None
    metadata: Metadata = field(default_factory=dict)

    def fingerprint(self) -> bytes:
        return fingerprint(
            HOLD_ROUTE,
            {
                "amount": self.amount,
                "assetSlug": self.asset_slug,
                "expiresInSeconds": self.expires_in_seconds,
                "userId": str(self.user_id),
            },
            reference=self.reference,
            metadata=self.metadata,
        )


@dataclass(frozen=True, slots=True)
class CaptureRequest:
    hold_id: uuid.UUID
    amount: int | None = None  # None: all of it
    to_user_id: uuid.UUID | None = None  # None: the Treasury (a purchase)
    reference: str | None = None
    metadata: Metadata = field(default_factory=dict)

    def fingerprint(self) -> bytes:
        fields: dict[str, Any] = {"holdId": str(self.hold_id)}
        if self.amount is not None:
            fields["amount"] = self.amount
        if self.to_user_id is not None:
            fields["toUserId"] = str(self.to_user_id)
        return fingerprint(CAPTURE_ROUTE, fields, reference=self.reference, metadata=self.metadata)


def _refusal(stored: Stored) -> Declined | None:
    if stored.outcome == "COMPLETED":
        return None
    result = stored.result
    if stored.outcome == "INSUFFICIENT_FUNDS":
        return declined(
            stored,
            InsufficientFunds(
                f"Insufficient funds: {result['available']} available, the hold needs"
                f" {result['requested']}.",
                available=result["available"],
            ),
        )
    if stored.outcome == "HOLD_EXPIRED":
        return declined(stored, HoldExpired(f"Hold {result['holdId']} expired."))
    if stored.outcome == "HOLD_NOT_ACTIVE":
        return declined(
            stored,
            HoldNotActive(
                f"Hold {result['holdId']} is {result['status']}, no longer HELD.",
                status=result["status"],
            ),
        )
    if stored.outcome == "BALANCE_LIMIT_EXCEEDED":
        return declined(
            stored,
            BalanceLimitExceeded(
                "A balance (the recipient's, or the asset's Treasury's) would pass the largest"
                " it can hold."
            ),
        )
    raise AssertionError(f"unexpected hold outcome {stored.outcome}")


async def create_hold(
    conn: AsyncConnection, request: HoldRequest, *, key: str, principal: str
) -> HoldView | Declined:
    stored = await call_keyed(
        conn,
        _CREATE_SQL,
        {
            "scope": principal,
            "key": key,
            "fingerprint": request.fingerprint(),
            "hold": uuid.uuid4(),
            "user_id": request.user_id,
            "asset": request.asset_slug,
            "amount": request.amount,
            "expires_in": request.expires_in_seconds,
            "principal": principal,
            "reference": request.reference,
            "metadata": metadata_json(request.metadata),
        },
        W0001=f"User {request.user_id} not found.",
        W0002=f"Asset {request.asset_slug!r} not found.",
    )
    return _refusal(stored) or _view(stored.result, replayed=stored.replayed)


async def capture_hold(
    conn: AsyncConnection, request: CaptureRequest, *, key: str, principal: str
) -> HoldView | Declined:
    stored = await call_keyed(
        conn,
        _CAPTURE_SQL,
        {
            "scope": principal,
            "key": key,
            "fingerprint": request.fingerprint(),
            "hold": request.hold_id,
            "amount": request.amount,
            "to_user": request.to_user_id,
            "txn": uuid.uuid4(),
            "principal": principal,
            "reference": request.reference,
            "metadata": metadata_json(request.metadata),
        },
        W0001=f"User {request.to_user_id} not found.",
        W0004=f"Hold {request.hold_id} not found.",
    )
    return _refusal(stored) or _view(stored.result, replayed=stored.replayed)


async def void_hold(
    conn: AsyncConnection, hold_id: uuid.UUID, *, key: str, principal: str
) -> HoldView | Declined:
    stored = await call_keyed(
        conn,
        _VOID_SQL,
        {
            "scope": principal,
            "key": key,
            "fingerprint": fingerprint(VOID_ROUTE, {"holdId": str(hold_id)}),
            "hold": hold_id,
            "principal": principal,
        },
        W0004=f"Hold {hold_id} not found.",
    )
    return _refusal(stored) or _view(stored.result, replayed=stored.replayed)


_HOLD_COLUMNS = (
    Hold.id,
    Hold.seq,
    Hold.status,
    Hold.expires_at,
    Hold.user_id,
    Asset.slug,
    Hold.amount,
    Hold.captured_amount,
    Hold.transaction_id,
    Hold.reference,
    Hold.metadata_.label("metadata"),
    Hold.created_at,
    text("clock_timestamp() AS now"),
)


def _row_view(r: Any) -> HoldView:
    status: HoldStatus = "EXPIRED" if r.status == "HELD" and r.expires_at <= r.now else r.status
    return HoldView(
        hold_id=r.id,
        status=status,
        user_id=r.user_id,
        asset_slug=r.slug,
        amount=r.amount,
        captured_amount=r.captured_amount,
        expires_at=r.expires_at,
        transaction_id=r.transaction_id,
        reference=r.reference,
        metadata=r.metadata,
        created_at=r.created_at,
    )


async def holds_by_id(conn: AsyncConnection, ids: list[uuid.UUID]) -> dict[uuid.UUID, HoldView]:
    rows = await conn.execute(
        select(*_HOLD_COLUMNS).join(Asset, Asset.id == Hold.asset_id).where(Hold.id.in_(ids))
    )
    return {r.id: _row_view(r) for r in rows}


@dataclass(frozen=True, slots=True)
class HoldPage:
    items: list[HoldView]
    next_cursor: str | None


async def holds_page(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID | None,
    status: HoldStatus | None,
    limit: int,
    before: int | None = None,
) -> HoldPage:
    """Holds, newest first, keyset-paginated. A HELD hold past its expiry counts as EXPIRED."""
    if user_id is not None and not await user_exists(conn, user_id):
        raise UserNotFound(f"User {user_id} not found.")
    query = (
        select(*_HOLD_COLUMNS)
        .join(Asset, Asset.id == Hold.asset_id)
        .order_by(Hold.seq.desc())
        .limit(limit + 1)
    )
    if user_id is not None:
        query = query.where(Hold.user_id == user_id)
    if status == "HELD":
        query = query.where(Hold.status == "HELD", Hold.expires_at > text("clock_timestamp()"))
    elif status == "EXPIRED":
        query = query.where(
            (Hold.status == "EXPIRED")
            | ((Hold.status == "HELD") & (Hold.expires_at <= text("clock_timestamp()")))
        )
    elif status is not None:
        query = query.where(Hold.status == status)
    if before is not None:
        query = query.where(Hold.seq < before)
    rows = (await conn.execute(query)).all()
    items = [_row_view(r) for r in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].seq, prefix="h") if len(rows) > limit else None
    return HoldPage(items=items, next_cursor=next_cursor)


async def expire_holds(conn: AsyncConnection, *, limit: int = 500) -> int:
    """Release holds past their expiry (safe from any number of processes); how many."""
    return int(await conn.scalar(_EXPIRE_SQL, {"limit": limit}) or 0)
