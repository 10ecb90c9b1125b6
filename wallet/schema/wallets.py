"""A user's wallet: its balances (now or at an instant), its ledger, its holds."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import strawberry
from strawberry.scalars import JSON

from wallet import ledger
from wallet.resolvers import holds as resolve_holds
from wallet.resolvers import wallet as resolve
from wallet.schema.holds import HoldConnection
from wallet.schema.transactions import LedgerConnection
from wallet.schema.types import Balance, Ctx, HoldStatus, TransactionType


@strawberry.type
class Wallet:
    user_id: uuid.UUID
    username: str

    @classmethod
    def of(cls, user: ledger.UserRecord) -> Wallet:
        return cls(user_id=user.id, username=user.username)

    @strawberry.field(
        description=(
            "One per asset held; with `at` (not in the future), as they stood then, leaving"
            " out assets with no entry by then."
        )
    )
    async def balances(self, info: Ctx, at: datetime | None = None) -> list[Balance]:
        found = await resolve.balances(info.context, self.user_id, at)
        return [Balance.of(b, user_id=self.user_id) for b in found]

    @strawberry.field(description="The balance in one asset (now, or at `at`); null if none.")
    async def balance(
        self, info: Ctx, asset_slug: str, at: datetime | None = None
    ) -> Balance | None:
        for b in await resolve.balances(info.context, self.user_id, at):
            if b.asset.slug == asset_slug:
                return Balance.of(b, user_id=self.user_id)
        return None

    @strawberry.field(
        description=(
            "Entries on this wallet, newest first (first: 1 to 100). Filters are ANDed:"
            " `metadata` matches when every key given holds that value (compared as text);"
            " `from` <= createdAt < `to`."
        )
    )
    async def ledger(
        self,
        info: Ctx,
        first: int | None = 20,
        after: str | None = None,
        asset_slug: str | None = None,
        type: TransactionType | None = None,
        reference: str | None = None,
        metadata: JSON | None = None,
        since: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        until: Annotated[datetime | None, strawberry.argument(name="to")] = None,
    ) -> LedgerConnection:
        page = await resolve.ledger_page(
            info.context,
            self.user_id,
            first=20 if first is None else first,
            after=after,
            asset_slug=asset_slug,
            tx_type=type.value if type is not None else None,
            reference=reference,
            metadata=metadata,
            since=since,
            until=until,
        )
        return LedgerConnection.of(page, user_id=self.user_id)

    @strawberry.field(
        description=(
            "Holds on this wallet, newest first (first: 1 to 100); a HELD hold past its expiry"
            " is EXPIRED. Needs the read scope."
        )
    )
    async def holds(
        self,
        info: Ctx,
        status: HoldStatus | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> HoldConnection:
        page = await resolve_holds.holds_page(
            info.context,
            self.user_id,
            status=status.value if status is not None else None,
            first=20 if first is None else first,
            after=after,
        )
        return HoldConnection.of(page)
