"""Resolver functions: validate GraphQL arguments the way REST does, then call the ledger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

from wallet import ledger
from wallet.errors import AssetNotFound, ValidationError
from wallet.feed import BalanceEvent
from wallet.inputs import (
    TransactionType,
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
    parse_metadata,
    parse_reference,
    parse_tx_type,
)
from wallet.resolvers.common import hot_transact, metadata_filter
from wallet.resolvers.context import Context
from wallet.resources import read, read_hot, read_replica

MAX_PAGE = 100
PAGE = 500  # missed balance changes read at a time
PageAsked = tuple[int, str | None]  # a ledger page's `first` and `after`, as the query gives them


async def user(
    ctx: Context, user_id: uuid.UUID, *, with_page: PageAsked | None = None
) -> ledger.UserRecord | None:
    """The wallet's owner; its balances come along (batched with other wallets').

    `with_page`: the one unfiltered ledger page the query selects under this wallet (`first`,
    `after`). When its arguments are valid and no replica is configured, the wallet, its
    balances and that page are one statement (`ledger.wallet_overview`), and the ledger's
    resolver finds the page read (`known_page`). With a replica, pages stay there and current
    balances on the primary (`read_replica`); invalid arguments are the ledger's own errors."""
    ctx.who().require_wallet_reader(user_id)
    bounds = _page_bounds(with_page) if ctx.resources.replica is None else None
    if with_page is None or bounds is None:
        found = await ctx.loaders.wallets.load(user_id)
        return None if found is None else found.user
    first, before = bounds
    overview = await read_hot(
        ctx.resources,
        lambda pg: ledger.wallet_overview_on(pg, user_id, limit=first, before=before),
        lambda conn: ledger.wallet_overview(conn, user_id, limit=first, before=before),
    )
    if overview is None:
        return None
    ctx.loaders.wallets.prime(user_id, overview.wallet)
    ctx.loaders.balances.prime(user_id, overview.wallet.balances)
    ctx.loaders.pages[(user_id, *with_page)] = overview.page
    return overview.wallet.user


def _page_bounds(asked: PageAsked | None) -> tuple[int, int | None] | None:
    """The page's size and the entry id it starts before, or None when there is no page to read
    along: none asked, or arguments `ledger_page` refuses (it says why, at the ledger's path)."""
    if asked is None:
        return None
    first, after = asked
    if not 1 <= first <= MAX_PAGE:
        return None
    try:
        return first, ledger.decode_cursor(after) if after else None
    except ValidationError:
        return None


async def balances(
    ctx: Context, user_id: uuid.UUID, at: datetime | None = None
) -> list[ledger.Balance]:
    """The wallet's balances now (batched), or as they stood at `at` (not in the future)."""
    if at is None:
        return await ctx.loaders.balances.load(user_id) or []
    if at > datetime.now(UTC):
        raise ValidationError("at must not be in the future.", field="at")
    return await read_replica(ctx.resources, lambda conn: ledger.balances_at(conn, user_id, at))


def known_balances(ctx: Context, user_id: uuid.UUID) -> list[ledger.Balance] | None:
    """The wallet's balances now if this request has read them already (with its wallet),
    else None: a resolver answers them at once, leaving graphql-core nothing to await."""
    found = ctx.loaders.balances.cache_map.get(user_id)
    if found is None or not found.done() or found.cancelled() or found.exception() is not None:
        return None
    return found.result()


def known_page(
    ctx: Context, user_id: uuid.UUID, *, first: int, after: str | None
) -> ledger.PageRows | None:
    """The unfiltered page read with its wallet (`user`), or None: not read so (arguments that
    `ledger_page` refuses never are: it says why)."""
    return ctx.loaders.pages.get((user_id, first, after))


async def balance(ctx: Context, user_id: uuid.UUID, asset_id: int) -> ledger.Balance | None:
    """The wallet's account in one asset now (batched with every other wallet's)."""
    for found in await balances(ctx, user_id):
        if found.asset.id == asset_id:
            return found
    return None


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
    """A key needs the read scope; an end user reads a transaction one of whose entries is its
    own wallet (a TRANSFER's recipient too), and gets None for anyone else's, as for an unknown
    id: it cannot tell the two apart."""
    who = ctx.who()
    if who.user_id is None:
        who.require("read")
    found = await ctx.loaders.transactions.load(transaction_id)
    if found is None or who.can("read"):
        return found
    entries = await ctx.loaders.entries.load(found.id) or []
    return found if who.may_read_transaction(e.user_id for e in entries) else None


async def ledger_page(
    ctx: Context,
    user_id: uuid.UUID,
    *,
    first: int,
    after: str | None,
    asset_slug: str | None,
    tx_type: TransactionType | None,
    reference: str | None = None,
    metadata: object = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> ledger.PageRows:
    """A page of the wallet's entries; the filters are ANDed, every metadata key must match."""
    if not 1 <= first <= MAX_PAGE:
        raise ValidationError(f"first must be from 1 to {MAX_PAGE}.", field="first")
    before = ledger.decode_cursor(after) if after else None
    filters = ledger.HistoryFilter(
        asset_slug=parse_asset_slug(asset_slug) if asset_slug is not None else None,
        type=tx_type,
        reference=parse_reference(reference),
        metadata=metadata_filter(metadata),
        since=since,
        until=until,
    )
    return await read_replica(  # may come from the replica, never missing our writes
        ctx.resources,
        lambda conn: ledger.history_rows(
            conn, user_id, limit=first, before=before, filters=filters
        ),
        on_pool=(
            (
                lambda pg: ledger.history_rows_on(
                    pg, user_id, limit=first, before=before, filters=filters
                )
            )
            if filters.bounded
            else None
        ),
    )


async def transact(
    ctx: Context,
    *,
    user_id: uuid.UUID,
    amount: int,
    asset_slug: str,
    tx_type: str,
    idempotency_key: str,
    reference: str | None = None,
    metadata: object = None,
) -> ledger.TransactOutcome:
    """The same posting as REST's, field errors and all; raises the same WalletErrors. A
    refusal is an outcome (see `ledger.refusal`): it was stored with the key."""
    request = ledger.TransactRequest(
        user_id=user_id,
        amount=parse_amount(amount),
        asset_slug=parse_asset_slug(asset_slug),
        type=parse_tx_type(tx_type),
        reference=parse_reference(reference),
        metadata=parse_metadata(metadata),
    )
    key = parse_idempotency_key(idempotency_key, field="idempotencyKey")
    who = ctx.who()
    who.require_transact(
        user_id, request.type, user_can_spend=ctx.resources.settings.user_can_spend
    )
    return await hot_transact(ctx, request, key=key, principal=who.name)


async def balance_changes(
    ctx: Context, user_id: uuid.UUID, asset_slug: str | None
) -> AsyncIterator[ledger.Balance]:
    """Every change of the user's balances (optionally one asset) committed after the feed
    listens for this subscriber, each pushed once, in version order.

    The balances read once the feed listens are the start. A notification one version past
    what was pushed is pushed as it is; so is one of the same version that holds another amount
    (a hold was made, captured, voided or expired: `held` and `available` changed, the entries
    did not). A resync (the listener restarted) or a notification that skips versions reads the
    missed changes from the entries and pushes each of them; anything else is a duplicate and
    dropped. The principal must stay allowed to read the wallet for as long as the subscription
    runs (see `Context.guarded`).
    """
    with ctx.guarded(lambda who: who.require_wallet_reader(user_id)):
        if asset_slug is not None and await asset_by_slug(ctx, asset_slug) is None:
            raise AssetNotFound(f"Asset {asset_slug!r} not found.")
        async with ctx.resources.feed.subscribe(user_id) as queue:
            pushed = {b.account_id: b for b in await _fresh_balances(ctx, user_id)}
            while True:
                item = await queue.get()
                if isinstance(item, BalanceEvent):
                    if asset_slug not in (None, item.asset_slug):
                        continue
                    last = pushed.get(item.account_id)
                    version, held = (last.version, last.held) if last else (0, 0)
                    if item.version < version or (item.version, item.held) == (version, held):
                        continue
                    info = await asset_by_slug(ctx, item.asset_slug)
                    if item.version in (version, version + 1) and info is not None:
                        change = ledger.Balance(
                            item.account_id, info, item.amount, item.version, item.held
                        )
                        pushed[item.account_id] = change
                        yield change
                        continue
                async for change in _resync(ctx, user_id, asset_slug, pushed):
                    yield change


async def _resync(
    ctx: Context, user_id: uuid.UUID, asset_slug: str | None, pushed: dict[int, ledger.Balance]
) -> AsyncIterator[ledger.Balance]:
    """Every change since what was pushed, read from the entries. Entries do not record what
    was held, so each carries what its account holds now (read first); then an account whose
    holds alone changed is pushed once more, as it is now."""
    now = {b.account_id: b for b in await _fresh_balances(ctx, user_id)}
    while True:
        missed = await read(
            ctx.resources,
            lambda conn: ledger.balance_changes_after(
                conn,
                user_id,
                after={account: b.version for account, b in pushed.items()},
                asset_slug=asset_slug,
                limit=PAGE,
            ),
        )
        for change in missed:
            current = now.get(change.account_id)
            change = replace(change, held=current.held if current else 0)
            pushed[change.account_id] = change
            yield change
        if len(missed) < PAGE:
            break
    for current in now.values():
        last = pushed.get(current.account_id)
        if asset_slug not in (None, current.asset.slug) or last is None:
            continue
        if last.version == current.version and last.held != current.held:
            pushed[current.account_id] = current
            yield current


async def _fresh_balances(ctx: Context, user_id: uuid.UUID) -> list[ledger.Balance]:
    """Read now, past the per-request loader cache: a subscription outlives its request."""
    return await read(ctx.resources, lambda conn: ledger.balances(conn, user_id))
