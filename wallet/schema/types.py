"""Object types, the transact result union, and the root types."""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Annotated

import strawberry
from strawberry.types import Info

from wallet import ledger
from wallet.errors import WalletError
from wallet.resolvers import wallet as resolve
from wallet.resolvers.context import Context
from wallet.schema.scalars import Amount

Ctx = Info[Context, None]


@strawberry.enum
class TransactionType(enum.Enum):
    TOPUP = "TOPUP"
    SPEND = "SPEND"
    BONUS = "BONUS"


@strawberry.enum
class Direction(enum.Enum):
    DEBIT = "DEBIT"
    CREDIT = "CREDIT"


@strawberry.type
class Asset:
    slug: str
    name: str
    decimals: int

    @classmethod
    def of(cls, info: ledger.AssetInfo) -> Asset:
        return cls(slug=info.slug, name=info.name, decimals=info.decimals)


@strawberry.type
class Balance:
    asset: Asset
    amount: Amount

    @classmethod
    def of(cls, balance: ledger.Balance) -> Balance:
        return cls(asset=Asset.of(balance.asset), amount=Amount(balance.amount))


@strawberry.type
class Transaction:
    id: uuid.UUID
    type: TransactionType
    amount: Amount
    created_at: datetime
    asset_id: strawberry.Private[int]
    recorded_principal: strawberry.Private[str]

    @strawberry.field(
        description=(
            "Who made it: an API key's name, or user:<id> for an end-user token. An end user"
            " sees its own user:<id>, and `service` for anyone else."
        )
    )
    def principal(self, info: Ctx) -> str:
        return info.context.who().shown_principal(self.recorded_principal)

    @strawberry.field
    async def asset(self, info: Ctx) -> Asset:
        return Asset.of(await resolve.asset(info.context, self.asset_id))

    @classmethod
    def of(cls, record: ledger.TransactionRecord) -> Transaction:
        return cls(
            id=record.id,
            type=TransactionType(record.type),
            amount=Amount(record.amount),
            created_at=record.created_at,
            asset_id=record.asset_id,
            recorded_principal=record.principal,
        )


@strawberry.type
class LedgerEntry:
    id: strawberry.ID
    transaction: Transaction
    asset: Asset
    direction: Direction
    amount: Amount
    balance_after: Amount
    created_at: datetime


@strawberry.type
class LedgerEdge:
    cursor: str
    node: LedgerEntry


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class LedgerConnection:
    edges: list[LedgerEdge]
    page_info: PageInfo

    @classmethod
    def of(cls, page: ledger.HistoryPage) -> LedgerConnection:
        edges = [
            LedgerEdge(
                cursor=ledger.encode_cursor(item.entry_id),
                node=LedgerEntry(
                    id=strawberry.ID(str(item.entry_id)),
                    transaction=Transaction(
                        id=item.transaction_id,
                        type=TransactionType(item.type),
                        amount=Amount(item.amount),
                        created_at=item.created_at,
                        asset_id=item.asset.id,
                        recorded_principal=item.principal,
                    ),
                    asset=Asset.of(item.asset),
                    direction=Direction(item.direction),
                    amount=Amount(item.amount),
                    balance_after=Amount(item.balance_after),
                    created_at=item.created_at,
                ),
            )
            for item in page.items
        ]
        return cls(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.next_cursor is not None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )


@strawberry.type
class Wallet:
    user_id: uuid.UUID
    username: str

    @strawberry.field(description="One per asset held.")
    async def balances(self, info: Ctx) -> list[Balance]:
        return [Balance.of(b) for b in await resolve.balances(info.context, self.user_id)]

    @strawberry.field
    async def balance(self, info: Ctx, asset_slug: str) -> Balance | None:
        for b in await resolve.balances(info.context, self.user_id):
            if b.asset.slug == asset_slug:
                return Balance.of(b)
        return None

    @strawberry.field(description="Entries on this wallet, newest first (first: 1 to 100).")
    async def ledger(
        self,
        info: Ctx,
        first: int | None = 20,
        after: str | None = None,
        asset_slug: str | None = None,
        type: TransactionType | None = None,
    ) -> LedgerConnection:
        page = await resolve.ledger_page(
            info.context,
            self.user_id,
            first=20 if first is None else first,
            after=after,
            asset_slug=asset_slug,
            tx_type=type.value if type is not None else None,
        )
        return LedgerConnection.of(page)


@strawberry.interface(description="Every expected failure: `code` is the same as REST's.")
class Error:
    code: str
    message: str


@strawberry.type
class TransactSuccess:
    transaction: Transaction
    balance: Balance
    replayed: bool


@strawberry.type
class InsufficientFunds(Error):
    balance: Balance = strawberry.field(description="The balance the SPEND found.")
    requested: Amount


@strawberry.type
class NotFound(Error):
    pass


@strawberry.type
class InvalidInput(Error):
    field: str | None


@strawberry.type
class IdempotencyKeyReused(Error):
    original_transaction_id: uuid.UUID | None


@strawberry.type
class Forbidden(Error):
    pass


TransactResult = Annotated[
    TransactSuccess
    | InsufficientFunds
    | NotFound
    | InvalidInput
    | IdempotencyKeyReused
    | Forbidden,
    strawberry.union("TransactResult"),
]


@strawberry.input
class TransactInput:
    user_id: uuid.UUID
    amount: Amount
    asset_slug: str
    type: TransactionType
    idempotency_key: str


def _failure(error: WalletError) -> TransactResult:
    """Expected failures become union members; anything else propagates (and is masked)."""
    if error.code in ("USER_NOT_FOUND", "ASSET_NOT_FOUND"):
        return NotFound(code=error.code, message=error.message)
    if error.code == "VALIDATION_ERROR":
        return InvalidInput(
            code=error.code, message=error.message, field=error.details.get("field")
        )
    if error.code == "FORBIDDEN":
        return Forbidden(code=error.code, message=error.message)
    if error.code == "IDEMPOTENCY_KEY_REUSED":
        original = error.details.get("originalTransactionId")
        return IdempotencyKeyReused(
            code=error.code,
            message=error.message,
            original_transaction_id=uuid.UUID(original) if original else None,
        )
    raise error


@strawberry.type
class Query:
    @strawberry.field(description="Null for an unknown user.")
    async def wallet(self, info: Ctx, user_id: uuid.UUID) -> Wallet | None:
        found = await resolve.user(info.context, user_id)
        return Wallet(user_id=found.id, username=found.username) if found else None

    @strawberry.field
    async def assets(self, info: Ctx) -> list[Asset]:
        return [Asset.of(a) for a in await resolve.assets(info.context)]

    @strawberry.field(
        description="Null for an unknown transaction, and for one an end user may not read."
    )
    async def transaction(self, info: Ctx, id: uuid.UUID) -> Transaction | None:
        found = await resolve.transaction(info.context, id)
        return Transaction.of(found) if found else None


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Post a TOPUP, SPEND or BONUS exactly once per key.")
    async def transact(self, info: Ctx, input: TransactInput) -> TransactResult:
        try:
            outcome = await resolve.transact(
                info.context,
                user_id=input.user_id,
                amount=input.amount,
                asset_slug=input.asset_slug,
                tx_type=input.type.value,
                idempotency_key=input.idempotency_key,
            )
        except WalletError as error:
            return _failure(error)
        asset = await resolve.asset_by_slug(info.context, input.asset_slug)
        assert asset is not None  # the posting found it
        if outcome.outcome == "INSUFFICIENT_FUNDS":
            return InsufficientFunds(
                code="INSUFFICIENT_FUNDS",
                message=(
                    f"Insufficient funds: the balance is {outcome.balance_before},"
                    f" the SPEND needs {input.amount}."
                ),
                balance=Balance(asset=Asset.of(asset), amount=Amount(outcome.balance_before)),
                requested=input.amount,
            )
        assert outcome.transaction_id is not None
        return TransactSuccess(
            transaction=Transaction(
                id=outcome.transaction_id,
                type=input.type,
                amount=Amount(outcome.request.amount),
                created_at=outcome.created_at,
                asset_id=asset.id,
                recorded_principal=info.context.who().name,
            ),
            balance=Balance(asset=Asset.of(asset), amount=Amount(outcome.balance_after)),
            replayed=outcome.replayed,
        )


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Every committed change of the wallet's balances.")
    async def balance_changed(
        self, info: Ctx, user_id: uuid.UUID, asset_slug: str | None = None
    ) -> AsyncGenerator[Balance, None]:
        async for balance in resolve.balance_changes(info.context, user_id, asset_slug):
            yield Balance.of(balance)
