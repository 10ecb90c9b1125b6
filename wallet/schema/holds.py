"""Holds: createHold, captureHold, voidHold, and the Hold type a wallet lists."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, cast

import strawberry
from strawberry.scalars import JSON

from wallet import ledger
from wallet.errors import Declined, WalletError
from wallet.resolvers import holds as resolve
from wallet.resolvers import transactions as resolve_transactions
from wallet.resolvers import wallet as resolve_wallet
from wallet.resolvers.context import Context
from wallet.schema.errors import (
    BalanceLimitExceeded,
    Failure,
    Forbidden,
    HoldExpired,
    HoldNotActive,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    failure,
    insufficient_funds,
)
from wallet.schema.scalars import Amount
from wallet.schema.transactions import Transaction
from wallet.schema.types import Asset, Balance, Ctx, HoldStatus, PageInfo

if TYPE_CHECKING:
    from wallet.schema.wallets import Wallet


async def _asset(ctx: Context, slug: str) -> ledger.AssetInfo:
    found = await resolve_wallet.asset_by_slug(ctx, slug)
    if found is None:  # a hold's asset always exists: the foreign key says so
        raise AssertionError(f"asset {slug!r} vanished")
    return found


@strawberry.type(description="Coins reserved on a wallet until captured, voided or expired.")
class Hold:
    id: uuid.UUID
    status: HoldStatus
    amount: Amount
    captured_amount: Amount
    expires_at: datetime
    user_id: uuid.UUID
    reference: str | None
    metadata: JSON
    created_at: datetime
    asset_slug: strawberry.Private[str]
    transaction_id: strawberry.Private[uuid.UUID | None]

    @classmethod
    def of(cls, view: ledger.HoldView) -> Hold:
        return cls(
            id=view.hold_id,
            status=HoldStatus(view.status),
            amount=Amount(view.amount),
            captured_amount=Amount(view.captured_amount),
            expires_at=view.expires_at,
            user_id=view.user_id,
            reference=view.reference,
            metadata=JSON(dict(view.metadata)),
            created_at=view.created_at,
            asset_slug=view.asset_slug,
            transaction_id=view.transaction_id,
        )

    @strawberry.field(description="The wallet, if these credentials may read it.")
    async def user(
        self, info: Ctx
    ) -> Annotated[Wallet, strawberry.lazy("wallet.schema.wallets")] | None:
        from wallet.schema.wallets import Wallet

        found = await resolve_transactions.readable_user(info.context, self.user_id)
        return Wallet.of(found) if found is not None else None

    @strawberry.field
    async def asset(self, info: Ctx) -> Asset:
        return Asset.of(await _asset(info.context, self.asset_slug))

    @strawberry.field(description="The posting a capture made (a SPEND, or a TRANSFER).")
    async def transaction(self, info: Ctx) -> Transaction | None:
        if self.transaction_id is None:
            return None
        found = await resolve_transactions.record(info.context, self.transaction_id)
        return Transaction.of(found) if found is not None else None


@strawberry.type
class HoldConnection:
    nodes: list[Hold]
    page_info: PageInfo = strawberry.field(
        description="endCursor: pass it as `after` for the next page; null on the last page."
    )

    @classmethod
    def of(cls, page: ledger.HoldPage) -> HoldConnection:
        return cls(
            nodes=[Hold.of(h) for h in page.items],
            page_info=PageInfo(
                has_next_page=page.next_cursor is not None, end_cursor=page.next_cursor
            ),
        )


@strawberry.type
class HoldSuccess:
    hold: Hold
    balance: Balance = strawberry.field(description="The hold's wallet, after the change.")
    replayed: bool


HoldResult = Annotated[
    HoldSuccess
    | InsufficientFunds
    | HoldExpired
    | HoldNotActive
    | NotFound
    | InvalidInput
    | IdempotencyKeyReused
    | Forbidden
    | BalanceLimitExceeded,
    strawberry.union("HoldResult"),
]
_FAILURES: tuple[type[Failure], ...] = (
    HoldExpired,
    HoldNotActive,
    NotFound,
    InvalidInput,
    IdempotencyKeyReused,
    Forbidden,
    BalanceLimitExceeded,
)


@strawberry.input
class CreateHoldInput:
    user_id: uuid.UUID
    amount: Amount
    asset_slug: str
    idempotency_key: str
    expires_in_seconds: int | None = strawberry.field(
        default=None, description="1 to 604800; 900 when not given."
    )
    reference: str | None = None
    metadata: JSON | None = None


@strawberry.input
class CaptureHoldInput:
    hold_id: uuid.UUID
    idempotency_key: str
    amount: Amount | None = strawberry.field(
        default=None, description="At most the hold's amount; all of it when not given."
    )
    to_user_id: uuid.UUID | None = strawberry.field(
        default=None, description="Who receives the coins; the Treasury (a purchase) if none."
    )
    reference: str | None = None
    metadata: JSON | None = None


@strawberry.input
class VoidHoldInput:
    hold_id: uuid.UUID
    idempotency_key: str


async def _answer(ctx: Context, done: ledger.HoldView | Declined) -> HoldResult:
    if isinstance(done, Declined):
        return cast(HoldResult, failure(done, *_FAILURES))
    asset = await _asset(ctx, done.asset_slug)
    assert done.balance is not None
    assert done.available is not None
    balance = Balance(
        asset=Asset.of(asset),
        amount=Amount(done.balance),
        user_id=done.user_id,
        known_held=done.balance - done.available,
    )
    return HoldSuccess(hold=Hold.of(done), balance=balance, replayed=done.replayed)


async def create_hold(info: Ctx, input: CreateHoldInput) -> HoldResult:
    """Reserve coins of the wallet's available balance; they count against it at once."""
    ctx = info.context
    try:
        done = await resolve.create_hold(
            ctx,
            user_id=input.user_id,
            amount=input.amount,
            asset_slug=input.asset_slug,
            idempotency_key=input.idempotency_key,
            expires_in_seconds=input.expires_in_seconds,
            reference=input.reference,
            metadata=input.metadata,
        )
    except WalletError as error:
        return cast(HoldResult, failure(error, *_FAILURES))
    if isinstance(done, Declined) and done.code == "INSUFFICIENT_FUNDS":
        asset = await _asset(ctx, input.asset_slug)
        return await insufficient_funds(
            ctx, done, user_id=input.user_id, asset=asset, requested=input.amount
        )
    return await _answer(ctx, done)


async def capture_hold(info: Ctx, input: CaptureHoldInput) -> HoldResult:
    """Charge a HELD hold (all of it, or `amount`, releasing the rest) exactly once."""
    try:
        done = await resolve.capture_hold(
            info.context,
            hold_id=input.hold_id,
            idempotency_key=input.idempotency_key,
            amount=input.amount,
            to_user_id=input.to_user_id,
            reference=input.reference,
            metadata=input.metadata,
        )
    except WalletError as error:
        return cast(HoldResult, failure(error, *_FAILURES))
    return await _answer(info.context, done)


async def void_hold(info: Ctx, input: VoidHoldInput) -> HoldResult:
    """Release all of a HELD hold exactly once."""
    try:
        done = await resolve.void_hold(
            info.context, hold_id=input.hold_id, idempotency_key=input.idempotency_key
        )
    except WalletError as error:
        return cast(HoldResult, failure(error, *_FAILURES))
    return await _answer(info.context, done)
