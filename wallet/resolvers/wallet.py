"""Resolver functions: validate GraphQL arguments the way REST does, then call the ledger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from wallet import ledger
from wallet.errors import AssetNotFound, ValidationError
from wallet.feed import BalanceEvent
from wallet.inputs import (
    TxType,
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
)
from wallet.resolvers.context import Context
from wallet.resources import read, with_connection

MAX_PAGE = 100
PAGE = 500  # missed balance changes read at a time


async def user(ctx: Context, user_id: uuid.UUID) -> ledger.UserRecord | None:
    ctx.who().require_wallet_reader(user_id)
    return await ctx.loaders.users.load(user_id)


async def balances(ctx: Context, user_id: uuid.UUID) -> list[ledger.Balance]:
    return await ctx.loaders.balances.load(user_id) or []


async def asset(ctx: Context, asset_id: int) -> ledger.AssetInfo:
    found = await ctx.resources.assets.by_id(ctx.resources.autocommit, asset_id)
    if found is None:  # an entry's asset always exists: the foreign key says so
        raise AssertionError(f"asset {asset_id} vanished")
    return found


async def asset_by_slug(ctx: Context, slug: str) -> ledger.AssetInfo | None:
    return await ctx.resources.assets.by_slug(ctx.resources.autocommit, slug)


async def assets(ctx: Context) -> list[ledger.AssetInfo]:
    ctx.who().require("read")
    found = await read(ctx.resources, ledger.assets)
    ctx.resources.assets.remember(found)
    return found


async def transaction(ctx: Context, transaction_id: uuid.UUID) -> ledger.TransactionRecord | None:
    """A key needs the read scope; an end user reads the transactions of its own wallet, and
    gets None for anyone else's, as for an unknown id: it cannot tell the two apart."""
    who = ctx.who()
    if who.user_id is None:
        who.require("read")
    found = await ctx.loaders.transactions.load(transaction_id)
    return found if found is not None and who.may_read_wallet(found.user_id) else None


async def ledger_page(
    ctx: Context,
    user_id: uuid.UUID,
    *,
    first: int,
    after: str | None,
    asset_slug: str | None,
    tx_type: TxType | None,
) -> ledger.HistoryPage:
    if not 1 <= first <= MAX_PAGE:
        raise ValidationError(f"first must be from 1 to {MAX_PAGE}.", field="first")
    before = ledger.decode_cursor(after) if after else None
    slug = parse_asset_slug(asset_slug) if asset_slug is not None else None
    return await read(
        ctx.resources,
        lambda conn: ledger.history(
            conn, user_id, limit=first, before=before, asset_slug=slug, tx_type=tx_type
        ),
    )


async def transact(
    ctx: Context,
    *,
    user_id: uuid.UUID,
    amount: int,
    asset_slug: str,
    tx_type: TxType,
    idempotency_key: str,
) -> ledger.TransactOutcome:
    """The same posting as REST's, field errors and all; raises the same WalletErrors."""
    request = ledger.TransactRequest(
        user_id=user_id,
        amount=parse_amount(amount),
        asset_slug=parse_asset_slug(asset_slug),
        type=tx_type,
    )
    key = parse_idempotency_key(idempotency_key, field="idempotencyKey")
    who = ctx.who()
    who.require_transact(user_id, tx_type, user_can_spend=ctx.resources.settings.user_can_spend)
    return await with_connection(
        ctx.resources.autocommit,
        lambda conn: ledger.transact(conn, request, key=key, principal=who.name),
        begin=False,
        retry=True,  # keyed by idempotencyKey: a retry of a committed posting replays it
    )


async def balance_changes(
    ctx: Context, user_id: uuid.UUID, asset_slug: str | None
) -> AsyncIterator[ledger.Balance]:
    """Every change of the user's balances (optionally one asset) committed after the feed
    listens for this subscriber, each pushed once, in version order.

    The versions read once the feed listens are the start. A notification one version past
    what was pushed is pushed as it is; a resync (the listener restarted) or a notification
    that skips versions reads the missed changes from the entries and pushes each of them;
    anything older is a duplicate and dropped. The principal must stay allowed to read the
    wallet for as long as the subscription runs (see `Context.guarded`).
    """
    with ctx.guarded(lambda who: who.require_wallet_reader(user_id)):
        if asset_slug is not None and await asset_by_slug(ctx, asset_slug) is None:
            raise AssetNotFound(f"Asset {asset_slug!r} not found.")
        async with ctx.resources.feed.subscribe(user_id) as queue:
            pushed = {b.account_id: b.version for b in await _fresh_balances(ctx, user_id)}
            while True:
                item = await queue.get()
                if isinstance(item, BalanceEvent):
                    if asset_slug not in (None, item.asset_slug):
                        continue
                    last = pushed.get(item.account_id, 0)
                    if item.version <= last:
                        continue
                    info = await asset_by_slug(ctx, item.asset_slug)
                    if item.version == last + 1 and info is not None:
                        pushed[item.account_id] = item.version
                        yield ledger.Balance(item.account_id, info, item.amount, item.version)
                        continue
                while True:  # a resync or a gap: every change since what was pushed
                    missed = await read(
                        ctx.resources,
                        lambda conn: ledger.balance_changes_after(
                            conn, user_id, after=dict(pushed), asset_slug=asset_slug, limit=PAGE
                        ),
                    )
                    for change in missed:
                        pushed[change.account_id] = change.version
                        yield change
                    if len(missed) < PAGE:
                        break


async def _fresh_balances(ctx: Context, user_id: uuid.UUID) -> list[ledger.Balance]:
    """Read now, past the per-request loader cache: a subscription outlives its request."""
    return await read(ctx.resources, lambda conn: ledger.balances(conn, user_id))
