"""What every feature's schema shares: enums, assets, balances, page info."""

from __future__ import annotations

import enum
import uuid

import strawberry
from strawberry.types import Info

from wallet import ledger
from wallet.resolvers import wallet as resolve
from wallet.resolvers.context import Context
from wallet.schema.scalars import Amount

Ctx = Info[Context, None]


@strawberry.enum
class TransactionType(enum.Enum):
    TOPUP = "TOPUP"
    SPEND = "SPEND"
    BONUS = "BONUS"
    TRANSFER = "TRANSFER"
    REVERSAL = "REVERSAL"


@strawberry.enum
class Direction(enum.Enum):
    DEBIT = "DEBIT"
    CREDIT = "CREDIT"


@strawberry.enum
class AccountKind(enum.Enum):
    USER = "USER"
    TREASURY = "TREASURY"


@strawberry.enum
class HoldStatus(enum.Enum):
    HELD = "HELD"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    EXPIRED = "EXPIRED"


@strawberry.type
class Asset:
    slug: str
    name: str
    decimals: int
    id: strawberry.Private[int]

    @classmethod
    def of(cls, info: ledger.AssetInfo) -> Asset:
        return cls(slug=info.slug, name=info.name, decimals=info.decimals, id=info.id)


def formatted(amount: int, decimals: int) -> str:
    """An amount of minor units with the asset's decimals: 1250 with 2 decimals is "12.50"."""
    digits = str(abs(amount))
    if decimals:
        digits = digits.rjust(decimals + 1, "0")
        digits = f"{digits[:-decimals]}.{digits[-decimals:]}"
    return f"-{digits}" if amount < 0 else digits


@strawberry.type(
    description=(
        "A wallet's account in one asset. `amount` is the whole balance, held coins included;"
        " `available` is what SPEND, TRANSFER and new holds may use."
    )
)
class Balance:
    asset: Asset
    amount: Amount
    user_id: strawberry.Private[uuid.UUID | None]
    known_held: strawberry.Private[int | None]  # None: a write's answer, which does not say

    @classmethod
    def of(cls, balance: ledger.Balance, *, user_id: uuid.UUID | None = None) -> Balance:
        return cls(
            asset=Asset.of(balance.asset),
            amount=Amount(balance.amount),
            user_id=user_id,
            known_held=balance.held,
        )

    @classmethod
    def after(cls, asset: ledger.AssetInfo, amount: int, *, user_id: uuid.UUID) -> Balance:
        """A balance a posting answered: its amount then; what is held is read when asked."""
        return cls(asset=Asset.of(asset), amount=Amount(amount), user_id=user_id, known_held=None)

    @strawberry.field(description='The amount with the asset\'s decimals: 1250 with 2 is "12.50".')
    def formatted(self) -> str:
        return formatted(self.amount, self.asset.decimals)

    @strawberry.field(
        description=(
            "Coins reserved by holds: part of `amount`, not spendable. In a write's answer, read"
            " just after it."
        )
    )
    async def held(self, info: Ctx) -> Amount:
        return Amount(await self._held(info.context))

    @strawberry.field(description="`amount` minus `held`: what may be spent, sent or held.")
    async def available(self, info: Ctx) -> Amount:
        return Amount(self.amount - await self._held(info.context))

    async def _held(self, ctx: Context) -> int:
        if self.known_held is not None:
            return self.known_held
        if self.user_id is None:
            return 0
        now = await resolve.balance(ctx, self.user_id, self.asset.id)
        return now.held if now is not None else 0


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None
