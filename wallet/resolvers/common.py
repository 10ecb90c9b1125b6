"""What the resolvers share: how a posting runs, and how input becomes a ledger filter."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from wallet import ledger
from wallet.errors import ValidationError
from wallet.inputs import parse_metadata
from wallet.resolvers.context import Context
from wallet.resources import post, transact_hot

T = TypeVar("T")


async def posting(ctx: Context, work: Callable[[AsyncConnection], Awaitable[T]], *, kind: str) -> T:
    """Run one keyed posting function (`kind` labels its metrics: TOPUP, TRANSFER, HOLD...) as
    REST does (`resources.post`): one statement on an autocommit connection, so it is its own
    database transaction and its stored answer (a refusal too: the ledger returns those rather
    than raise them) commits with it. Safe to retry once: a retry of a posting that did commit
    replays it. What this request read before is forgotten: the posting changed it."""
    try:
        return await post(ctx.resources, work, kind=kind)
    finally:
        ctx.loaders.forget()


async def hot_transact(
    ctx: Context, request: ledger.TransactRequest, *, key: str, principal: str
) -> ledger.TransactOutcome:
    """`posting` for TOPUP, BONUS and SPEND: on the hot asyncpg pool and its group commit, as
    REST's transact (`resources.transact_hot`)."""
    try:
        return await transact_hot(ctx.resources, request, key=key, principal=principal)
    finally:
        ctx.loaders.forget()


def metadata_filter(value: object, *, field: str = "metadata") -> dict[str, str]:
    """History filters by metadata: a flat object like a transaction's, each value matched by its
    text (`{"level": 3}` and `{"level": "3"}` both find 3 and "3"), as REST's `metadata.<key>`."""
    parsed = parse_metadata(value, field=field)
    return {key: _text(item) for key, item in parsed.items()}


def _text(value: str | int | bool | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def distinct_users(from_user_id: uuid.UUID, to_user_id: uuid.UUID, *, field: str) -> None:
    if from_user_id == to_user_id:
        raise ValidationError(f"{field} must be another user than fromUserId.", field=field)
