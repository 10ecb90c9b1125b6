"""Per-request GraphQL context: resources, a request id, and fresh DataLoaders."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection
from strawberry.dataloader import DataLoader

from wallet import ledger
from wallet.auth import Principal
from wallet.db.engine import driver
from wallet.errors import Unauthenticated
from wallet.resources import Resources, read, read_hot

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


def _hot_loader(
    resources: Resources,
    fetch: Callable[[asyncpg.Connection, Sequence[K]], Awaitable[dict[K, V]]],
    then: Callable[[dict[K, V]], None] = lambda _: None,
) -> DataLoader[K, V | None]:
    """A DataLoader of current state read with fixed SQL on the hot asyncpg pool; `then` sees
    each batch's findings (to prime another loader with what came along)."""

    async def on_engine(conn: AsyncConnection, keys: Sequence[K]) -> dict[K, V]:
        async with driver(conn) as pg:
            return await fetch(pg, keys)

    async def load(keys: list[K]) -> list[V | None]:
        found = await read_hot(
            resources, lambda pg: fetch(pg, keys), lambda conn: on_engine(conn, keys)
        )
        then(found)
        return [found.get(key) for key in keys]

    return DataLoader(load_fn=load)


# A ledger page read along with its wallet: (user, first, after), as the query asks for it.
PageKey = tuple[uuid.UUID, int, str | None]


class Loaders:
    """The request's DataLoaders, each made when a resolver first asks for it: most operations
    use one or two of them; and the ledger pages read along with their wallets."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.pages: dict[PageKey, ledger.PageRows] = {}

    @cached_property
    def wallets(self) -> DataLoader[uuid.UUID, ledger.WalletRecord | None]:
        """A wallet's owner and balances in one statement; the balances loader keeps them."""

        def keep_balances(found: dict[uuid.UUID, ledger.WalletRecord]) -> None:
            self.balances.prime_many({user_id: w.balances for user_id, w in found.items()})

        return _hot_loader(self.resources, ledger.wallets_by_id, keep_balances)

    @cached_property
    def balances(self) -> DataLoader[uuid.UUID, list[ledger.Balance] | None]:
        return _hot_loader(self.resources, ledger.balances_by_user)

    @cached_property
    def transactions(self) -> DataLoader[uuid.UUID, ledger.TransactionRecord | None]:
        return _loader(self.resources, ledger.transactions_by_id)

    @cached_property
    def entries(self) -> DataLoader[uuid.UUID, list[ledger.EntryRecord] | None]:
        return _loader(self.resources, ledger.entries_by_transaction, list)

    @cached_property
    def reversals(self) -> DataLoader[uuid.UUID, list[ledger.TransactionRecord] | None]:
        return _loader(self.resources, ledger.reversals_by_original, list)

    @cached_property
    def holds(self) -> DataLoader[uuid.UUID, ledger.HoldView | None]:
        return _loader(self.resources, lambda conn, ids: ledger.holds_by_id(conn, list(ids)))

    def forget(self) -> None:
        """Drop what this request has read: a write just changed it."""
        for made in vars(self).values():
            if isinstance(made, DataLoader):
                made.clear_all()
        self.pages.clear()


Guard = Callable[[Principal], None]  # raises Forbidden when the principal may not go on


@dataclass
class Context:
    resources: Resources
    loaders: Loaders
    principal: Principal | None  # None: not authenticated (a WebSocket before connection_init)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    connection_params: dict[str, object] | None = None  # graphql-transport-ws connection_init
    # A WebSocket's credential (its upgrade's Authorization header, or connection_init's),
    # authenticated again for every operation and periodically while the socket is open.
    credential: str | None = None
    guards: list[Guard] = field(default_factory=list)

    def who(self) -> Principal:
        if self.principal is None:
            raise Unauthenticated("Credentials are required.")
        return self.principal

    @contextmanager
    def guarded(self, guard: Guard) -> Iterator[None]:
        """Check `guard` now, and keep it while the block runs: a WebSocket checks it again
        whenever it re-authenticates, and closes (4403) when the principal may no longer go on."""
        guard(self.who())
        self.guards.append(guard)
        try:
            yield
        finally:
            self.guards.remove(guard)


def build_context(
    resources: Resources, *, principal: Principal | None, request_id: str | None = None
) -> Context:
    """A context for one request or socket. The principal is whatever authentication found;
    there is no default, and None (nobody authenticated) refuses every operation."""
    loaders = Loaders(resources)
    if request_id is None:
        return Context(resources=resources, loaders=loaders, principal=principal)
    return Context(resources=resources, loaders=loaders, principal=principal, request_id=request_id)
