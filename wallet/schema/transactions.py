"""Transactions, their entries, and a wallet's ledger (its entries, newest first)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Final

import orjson
import strawberry
from strawberry.scalars import JSON

from wallet import ledger
from wallet.resolvers import transactions as resolve
from wallet.resolvers import wallet as resolve_wallet
from wallet.schema.scalars import Amount
from wallet.schema.types import AccountKind, Asset, Ctx, Direction, PageInfo, TransactionType

if TYPE_CHECKING:
    from wallet.schema.wallets import Wallet

WalletRef = Annotated["Wallet", strawberry.lazy("wallet.schema.wallets")]


async def _wallet(info: Ctx, user_id: uuid.UUID | None) -> Wallet | None:
    from wallet.schema.wallets import Wallet

    found = await resolve.readable_user(info.context, user_id) if user_id else None
    return Wallet.of(found) if found is not None else None


@strawberry.type(description="One leg of a transaction: a debit or a credit of one account.")
class Entry:
    user_id: uuid.UUID | None = strawberry.field(description="Null for a system account.")
    account_kind: AccountKind
    direction: Direction
    amount: Amount
    balance_after: Amount | None = strawberry.field(
        description=(
            "The wallet's balance after this entry; null for the Treasury (its entries land on"
            " one of its shards) and for wallets these credentials may not read."
        )
    )

    @strawberry.field(description="The wallet, if these credentials may read it.")
    async def user(self, info: Ctx) -> WalletRef | None:
        return await _wallet(info, self.user_id)


@strawberry.type
class Transaction:
    id: uuid.UUID
    type: TransactionType
    amount: Amount
    created_at: datetime
    reference: str | None = strawberry.field(description="The caller's own id for it.")
    metadata: JSON = strawberry.field(description="A flat object; {} when none was given.")
    asset_id: strawberry.Private[int]
    recorded_principal: strawberry.Private[str]
    user_id: strawberry.Private[uuid.UUID]  # the first user: a TRANSFER's sender
    reverses_id: strawberry.Private[uuid.UUID | None]
    # The wallet whose side `counterparty` is seen from (None: the caller's, else the first
    # user's), and the counterparty when it is known already (a ledger page reads it).
    viewpoint: strawberry.Private[uuid.UUID | None] = None
    counterparty_id: strawberry.Private[uuid.UUID | None] = None
    counterparty_known: strawberry.Private[bool] = False
    known_reason: strawberry.Private[str | None] = None
    reason_known: strawberry.Private[bool] = True  # a ledger page does not read reasons

    @classmethod
    def of(
        cls, record: ledger.TransactionRecord, *, viewpoint: uuid.UUID | None = None
    ) -> Transaction:
        return cls(
            id=record.id,
            type=TransactionType(record.type),
            amount=Amount(record.amount),
            created_at=record.created_at,
            reference=record.reference,
            metadata=JSON(dict(record.metadata)),
            known_reason=record.reason,
            asset_id=record.asset_id,
            recorded_principal=record.principal,
            user_id=record.user_id,
            reverses_id=record.reverses_id,
            viewpoint=viewpoint,
        )

    @classmethod
    def posted(
        cls,
        *,
        id: uuid.UUID,
        type: TransactionType,
        amount: int,
        created_at: datetime,
        asset_id: int,
        principal: str,
        user_id: uuid.UUID,
        reference: str | None = None,
        metadata: ledger.Metadata | None = None,
        reason: str | None = None,
        reverses_id: uuid.UUID | None = None,
    ) -> Transaction:
        """A transaction as a write's answer describes it."""
        return cls(
            id=id,
            type=type,
            amount=Amount(amount),
            created_at=created_at,
            reference=reference,
            metadata=JSON(dict(metadata or {})),
            known_reason=reason,
            asset_id=asset_id,
            recorded_principal=principal,
            user_id=user_id,
            reverses_id=reverses_id,
        )

    @strawberry.field(
        description=(
            "Who made it: an API key's name, or user:<id> for an end-user token. An end user"
            " sees its own user:<id>, and `service` for anyone else."
        )
    )
    def principal(self, info: Ctx) -> str:
        return info.context.who().shown_principal(self.recorded_principal)

    @strawberry.field(description="Why a REVERSAL was made (its caller's words).")
    async def reason(self, info: Ctx) -> str | None:
        if self.reason_known or self.type is not TransactionType.REVERSAL:
            return self.known_reason
        found = await resolve.record(info.context, self.id)
        return found.reason if found is not None else None

    @strawberry.field
    async def asset(self, info: Ctx) -> Asset:
        return Asset.of(await resolve_wallet.asset(info.context, self.asset_id))

    @strawberry.field(description="The transaction a REVERSAL reverses.")
    async def reverses(self, info: Ctx) -> Transaction | None:
        if self.reverses_id is None:
            return None
        found = await resolve.record(info.context, self.reverses_id)
        return Transaction.of(found, viewpoint=self.viewpoint) if found is not None else None

    @strawberry.field(description="Its reversals, oldest first.")
    async def reversals(self, info: Ctx) -> list[Transaction]:
        found = await resolve.reversals(info.context, self.id)
        return [Transaction.of(r, viewpoint=self.viewpoint) for r in found]

    @strawberry.field(description="How much of it its reversals moved back.")
    async def reversed_amount(self, info: Ctx) -> Amount:
        return Amount(sum(r.amount for r in await resolve.reversals(info.context, self.id)))

    @strawberry.field(description="Its debits and credits; they add up to `amount` each.")
    async def entries(self, info: Ctx) -> list[Entry]:
        who = info.context.who()
        return [
            Entry(
                user_id=e.user_id,
                account_kind=AccountKind(e.account_kind),
                direction=Direction(e.direction),
                amount=Amount(e.amount),
                balance_after=Amount(e.balance_after)
                if e.user_id is not None and who.may_read_wallet(e.user_id)
                else None,
            )
            for e in await resolve.entries(info.context, self.id)
        ]

    @strawberry.field(
        description=(
            "The other wallet of a TRANSFER (or of its reversal), seen from the wallet whose"
            " ledger lists it (else the caller's own, else the sender's); null otherwise, and"
            " for wallets these credentials may not read."
        )
    )
    async def counterparty(self, info: Ctx) -> WalletRef | None:
        other = self.counterparty_id
        if not self.counterparty_known:
            viewpoint = self.viewpoint or info.context.who().user_id or self.user_id
            other = await resolve.counterparty(
                info.context, self.id, kind=self.type.value, viewpoint=viewpoint
            )
        return await _wallet(info, other)


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
class LedgerConnection:
    edges: list[LedgerEdge]
    page_info: PageInfo

    @classmethod
    def of(cls, page: ledger.PageRows, *, user_id: uuid.UUID) -> LedgerConnection:
        """The page of `user_id`'s ledger, built straight from its rows: a page is most of a
        wallet query's objects, and a layer between (`HistoryItem`) cost as much as these."""
        assets: dict[int, Asset] = {}  # a page's entries share their few assets
        edges = []
        for r in page.rows:
            asset = assets.get(r["asset_id"])
            if asset is None:
                asset = assets[r["asset_id"]] = Asset(
                    slug=r["slug"], name=r["name"], decimals=r["decimals"], id=r["asset_id"]
                )
            edges.append(
                LedgerEdge(cursor=ledger.encode_cursor(r["id"]), node=_node(r, asset, user_id))
            )
        return cls(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.next_cursor is not None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )


_TYPES: Final = {t.value: t for t in TransactionType}
_DIRECTIONS: Final = {d.value: d for d in Direction}


def _node(r: Any, asset: Asset, user_id: uuid.UUID) -> LedgerEntry:
    """An entry of `user_id`'s ledger from its page row (`ledger.PAGE_COLUMNS`); its
    transaction carries what the page read with it."""
    amount = Amount(r["amount"])
    transaction = Transaction(
        id=r["transaction_id"],
        type=_TYPES[r["type"]],
        amount=amount,
        created_at=r["created_at"],
        reference=r["reference"],
        metadata=JSON(orjson.loads(r["metadata"])),
        reason_known=False,
        asset_id=asset.id,
        recorded_principal=r["principal"],
        user_id=user_id,
        reverses_id=r["reverses_id"],
        viewpoint=user_id,
        counterparty_id=r["counterparty"],
        counterparty_known=True,
    )
    return LedgerEntry(
        id=strawberry.ID(str(r["id"])),
        transaction=transaction,
        asset=asset,
        direction=_DIRECTIONS[r["direction"]],
        amount=amount,
        balance_after=Amount(r["balance_after"]),
        created_at=r["created_at"],
    )
