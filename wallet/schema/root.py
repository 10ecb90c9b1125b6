"""The root types: each feature module brings its own fields."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

import strawberry

from wallet.resolvers import wallet as resolve
from wallet.schema import assets, batches, holds, reversals, transfers
from wallet.schema import transact as transact_schema
from wallet.schema.transactions import Transaction
from wallet.schema.types import Asset, Balance, Ctx
from wallet.schema.wallets import Wallet, ledger_page_asked


@strawberry.type
class Query:
    @strawberry.field(description="Null for an unknown user.")
    async def wallet(self, info: Ctx, user_id: uuid.UUID) -> Wallet | None:
        found = await resolve.user(info.context, user_id, with_page=ledger_page_asked(info))
        return Wallet.of(found) if found else None

    @strawberry.field
    async def assets(self, info: Ctx) -> list[Asset]:
        return [Asset.of(a) for a in await resolve.assets(info.context)]

    @strawberry.field(
        description=(
            "Null for an unknown transaction, and for one an end user may not read (none of"
            " its entries is the user's own wallet)."
        )
    )
    async def transaction(self, info: Ctx, id: uuid.UUID) -> Transaction | None:
        found = await resolve.transaction(info.context, id)
        return Transaction.of(found) if found else None


@strawberry.type
class Mutation:
    transact = strawberry.mutation(resolver=transact_schema.transact)
    transfer = strawberry.mutation(resolver=transfers.transfer)
    reverse = strawberry.mutation(resolver=reversals.reverse)
    create_asset = strawberry.mutation(resolver=assets.create_asset)
    create_hold = strawberry.mutation(resolver=holds.create_hold)
    capture_hold = strawberry.mutation(resolver=holds.capture_hold)
    void_hold = strawberry.mutation(resolver=holds.void_hold)
    transact_batch = strawberry.mutation(resolver=batches.transact_batch)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description=(
            "Every committed change of the wallet's balances: its entries (TOPUP, SPEND, BONUS,"
            " either side of a TRANSFER or a REVERSAL), and its holds (what is held and"
            " available changes; the amount does not)."
        )
    )
    async def balance_changed(
        self, info: Ctx, user_id: uuid.UUID, asset_slug: str | None = None
    ) -> AsyncGenerator[Balance, None]:
        async for balance in resolve.balance_changes(info.context, user_id, asset_slug):
            yield Balance.of(balance, user_id=user_id)
