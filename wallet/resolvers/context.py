"""Per-request GraphQL context: resources, a request id, and fresh DataLoaders."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection
from strawberry.dataloader import DataLoader

from wallet import ledger
from wallet.auth import ANONYMOUS, Principal
from wallet.errors import Unauthenticated
from wallet.resources import Resources, read

K = TypeVar("K")
V = TypeVar("V")


def _loader(
    resources: Resources,
    fetch: Callable[[AsyncConnection, Sequence[K]], Awaitable[dict[K, V]]],
    default: Callable[[], V | None] = lambda: None,
) -> DataLoader[K, V | None]:
    """A DataLoader whose every batch runs on its own pooled connection (one session per task)."""

    async def load(keys: list[K]) -> list[V | None]:
        found = await read(resources, lambda conn: fetch(conn, keys))
        return [found.get(key, default()) for key in keys]

    return DataLoader(load_fn=load)


@dataclass
class Loaders:
    users: DataLoader[uuid.UUID, ledger.UserRecord | None]
    balances: DataLoader[uuid.UUID, list[ledger.Balance] | None]
    transactions: DataLoader[uuid.UUID, ledger.TransactionRecord | None]


@dataclass
class Context:
    resources: Resources
    loaders: Loaders
    principal: Principal | None  # None: a WebSocket that has not sent connection_init yet
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    connection_params: dict[str, object] | None = None  # graphql-transport-ws connection_init

    def who(self) -> Principal:
        if self.principal is None:
            raise Unauthenticated("Credentials are required.")
        return self.principal


def build_context(
    resources: Resources, principal: Principal | None = ANONYMOUS, request_id: str | None = None
) -> Context:
    loaders = Loaders(
        users=_loader(resources, ledger.users_by_id),
        balances=_loader(resources, ledger.balances_by_user),
        transactions=_loader(resources, ledger.transactions_by_id),
    )
    if request_id is None:
        return Context(resources=resources, loaders=loaders, principal=principal)
    return Context(resources=resources, loaders=loaders, principal=principal, request_id=request_id)
