"""A transaction's relations, batched per request: its entries, its reversals, its counterparty."""

from __future__ import annotations

import uuid

from wallet import ledger
from wallet.resolvers.context import Context


async def record(ctx: Context, transaction_id: uuid.UUID) -> ledger.TransactionRecord | None:
    return await ctx.loaders.transactions.load(transaction_id)


async def entries(ctx: Context, transaction_id: uuid.UUID) -> list[ledger.EntryRecord]:
    return await ctx.loaders.entries.load(transaction_id) or []


async def reversals(ctx: Context, transaction_id: uuid.UUID) -> list[ledger.TransactionRecord]:
    """Its reversals, oldest first. They run along its own legs, so whoever may read a
    transaction may read its reversals (and a reversal's original)."""
    return await ctx.loaders.reversals.load(transaction_id) or []


async def counterparty(
    ctx: Context, transaction_id: uuid.UUID, *, kind: str, viewpoint: uuid.UUID
) -> uuid.UUID | None:
    """The other user of a TRANSFER (or of its reversal), seen from `viewpoint`'s side."""
    if kind not in ("TRANSFER", "REVERSAL"):
        return None
    users = [e.user_id for e in await entries(ctx, transaction_id) if e.user_id is not None]
    if len(users) != 2 or viewpoint not in users:
        return None
    return users[0] if users[1] == viewpoint else users[1]


async def readable_user(ctx: Context, user_id: uuid.UUID) -> ledger.UserRecord | None:
    """The user, if the caller may read that wallet (otherwise None, as for nobody)."""
    if not ctx.who().may_read_wallet(user_id):
        return None
    found = await ctx.loaders.wallets.load(user_id)
    return None if found is None else found.user
