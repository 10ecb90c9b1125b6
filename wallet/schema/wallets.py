"""A user's wallet: its balances (now or at an instant), its ledger, its holds."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Any, Final

import strawberry
from graphql import GraphQLError, GraphQLObjectType, get_nullable_type
from graphql.execution.collect_fields import FieldDetails, FragmentDetails, collect_subfields
from graphql.execution.values import VariableValues, get_argument_values
from strawberry.scalars import JSON

from wallet import ledger
from wallet.inputs import parse_asset_slug
from wallet.resolvers import holds as resolve_holds
from wallet.resolvers import wallet as resolve
from wallet.schema.holds import HoldConnection
from wallet.schema.transactions import LedgerConnection
from wallet.schema.types import Balance, Ctx, HoldStatus, TransactionType

LEDGER_FIRST: Final = 20  # a ledger page's size when `first` is not given (or null)
_LEDGER_FILTERS: Final = ("assetSlug", "type", "reference", "metadata", "from", "to")


def ledger_page_asked(info: Ctx) -> resolve.PageAsked | None:
    """The one unfiltered ledger page (`first`, `after`) that the selection of the wallet being
    resolved asks for, or None: no ledger, only filtered ones, or pages of several sizes or
    cursors. The wallet's read fetches that page along with it (see `resolve.user`).

    The selection is collected as graphql-core's executor collects it (fragments, aliases,
    `@skip` and `@include` with this execution's variables) and each ledger's arguments are
    coerced as the executor coerces them, so what is asked here is what the ledger's resolver
    will be given. Anything unexpected (a fragment with variables, an argument graphql-core
    refuses) asks for nothing: the ledger's resolver reads its page, and reports any error."""
    raw = info._raw_info
    wallet = get_nullable_type(raw.return_type)
    if not isinstance(wallet, GraphQLObjectType) or any(
        d.variable_definitions for d in raw.fragments.values()
    ):
        return None
    fragments = {name: FragmentDetails(d) for name, d in raw.fragments.items()}
    # Strawberry hands resolvers the coerced values only. The sources graphql-core keeps beside
    # them are read only for a variable inside a list or object literal, which makes that
    # argument non-null whatever it holds: a filter, so no page is asked either way.
    given: Any = info.variable_values
    variables = given if isinstance(given, VariableValues) else VariableValues({}, given)
    ledger_field = wallet.fields["ledger"]
    asked: set[resolve.PageAsked] = set()
    try:
        collected = collect_subfields(
            raw.schema,
            fragments,
            variables,
            raw.operation,
            wallet,
            [FieldDetails(node, None) for node in raw.field_nodes],
        )
        for details in collected.grouped_field_set.values():
            for detail in details:
                if detail.node.name.value != "ledger":
                    continue
                args = get_argument_values(
                    ledger_field, detail.node, variables, detail.fragment_variable_values
                )
                if any(args.get(name) is not None for name in _LEDGER_FILTERS):
                    continue
                first, after = args.get("first"), args.get("after")
                asked.add((LEDGER_FIRST if first is None else first, after))
    except GraphQLError:
        return None
    return asked.pop() if len(asked) == 1 else None


@strawberry.type
class Wallet:
    user_id: uuid.UUID
    username: str

    @classmethod
    def of(cls, user: ledger.UserRecord) -> Wallet:
        return cls(user_id=user.id, username=user.username)

    @strawberry.field(
        graphql_type=list[Balance],
        description=(
            "One per asset held; with `at` (not in the future), as they stood then, leaving"
            " out assets with no entry by then."
        ),
    )
    def balances(
        self, info: Ctx, at: datetime | None = None
    ) -> list[Balance] | Awaitable[list[Balance]]:
        """Balances the request has read (with the wallet) at once, else read: a resolver that
        answers at once spares graphql-core a task and its gathering (see `ledger`)."""
        known = resolve.known_balances(info.context, self.user_id) if at is None else None
        if known is not None:
            return [Balance.of(b, user_id=self.user_id) for b in known]
        return self._balances(info, at)

    async def _balances(self, info: Ctx, at: datetime | None) -> list[Balance]:
        found = await resolve.balances(info.context, self.user_id, at)
        return [Balance.of(b, user_id=self.user_id) for b in found]

    @strawberry.field(description="The balance in one asset (now, or at `at`); null if none.")
    async def balance(
        self, info: Ctx, asset_slug: str, at: datetime | None = None
    ) -> Balance | None:
        parse_asset_slug(asset_slug)  # a slug no asset could have is refused, as `ledger`'s
        for b in await resolve.balances(info.context, self.user_id, at):
            if b.asset.slug == asset_slug:
                return Balance.of(b, user_id=self.user_id)
        return None

    @strawberry.field(
        graphql_type=LedgerConnection,
        description=(
            "Entries on this wallet, newest first (first: 1 to 100). Filters are ANDed:"
            " `metadata` matches when every key given holds that value (compared as text);"
            " `from` <= createdAt < `to`."
        ),
    )
    def ledger(
        self,
        info: Ctx,
        first: int | None = LEDGER_FIRST,
        after: str | None = None,
        asset_slug: str | None = None,
        type: TransactionType | None = None,
        reference: str | None = None,
        metadata: JSON | None = None,
        since: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        until: Annotated[datetime | None, strawberry.argument(name="to")] = None,
    ) -> LedgerConnection | Awaitable[LedgerConnection]:
        """The page read with the wallet (`ledger_page_asked`) at once, else read: answering
        at once spares graphql-core a task and its gathering (with `balances`, about 4 % of a
        wallet query's service CPU, measured in process)."""
        first = LEDGER_FIRST if first is None else first
        if all(arg is None for arg in (asset_slug, type, reference, metadata, since, until)):
            page = resolve.known_page(info.context, self.user_id, first=first, after=after)
            if page is not None:
                return LedgerConnection.of(page, user_id=self.user_id)
        return self._ledger(
            info,
            first=first,
            after=after,
            asset_slug=asset_slug,
            type=type,
            reference=reference,
            metadata=metadata,
            since=since,
            until=until,
        )

    async def _ledger(
        self,
        info: Ctx,
        *,
        first: int,
        after: str | None,
        asset_slug: str | None,
        type: TransactionType | None,
        reference: str | None,
        metadata: JSON | None,
        since: datetime | None,
        until: datetime | None,
    ) -> LedgerConnection:
        page = await resolve.ledger_page(
            info.context,
            self.user_id,
            first=first,
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
