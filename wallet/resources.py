"""What the lifespan opens once per process and every request uses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import HTTPConnection

from wallet import ledger
from wallet.auth import Authenticator, Principal, RateLimiter
from wallet.db.engine import DROPPED, create_engine, with_connection
from wallet.errors import Busy, IdempotencyKeyReused
from wallet.feed import BalanceFeed
from wallet.http import map_database_error
from wallet.observability import Metrics
from wallet.replica import OnReplica, Replica
from wallet.settings import Settings
from wallet.tracing import Tracing

T = TypeVar("T")


class AssetCatalog:
    """Assets are few and never change once made, so each process keeps them all in memory.

    A lookup that misses reloads the whole (small) table once, however many resolvers missed at
    the same moment; an asset that is still missing after that does not exist.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, ledger.AssetInfo] = {}
        self._by_slug: dict[str, ledger.AssetInfo] = {}
        self._reload: asyncio.Task[None] | None = None

    def remember(self, found: Iterable[ledger.AssetInfo]) -> None:
        for asset in found:
            self._by_id[asset.id] = asset
            self._by_slug[asset.slug] = asset

    async def by_id(self, engine: AsyncEngine, asset_id: int) -> ledger.AssetInfo | None:
        if asset_id not in self._by_id:
            await self._reload_all(engine)
        return self._by_id.get(asset_id)

    async def by_slug(self, engine: AsyncEngine, slug: str) -> ledger.AssetInfo | None:
        if slug not in self._by_slug:
            await self._reload_all(engine)
        return self._by_slug.get(slug)

    async def _reload_all(self, engine: AsyncEngine) -> None:
        if self._reload is None or self._reload.done():
            self._reload = asyncio.create_task(self._load(engine))
        await asyncio.shield(self._reload)

    async def _load(self, engine: AsyncEngine) -> None:
        self.remember(await with_connection(engine, ledger.assets, begin=False, retry=True))


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    autocommit: AsyncEngine  # same pool; a single-statement posting is its own transaction
    feed: BalanceFeed
    auth: Authenticator
    rate_limiter: RateLimiter
    pool: asyncpg.Pool | None = None  # the hot routes' asyncpg pool (None: use the engine's)
    assets: AssetCatalog = field(default_factory=AssetCatalog)
    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing | None = None  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    replica: Replica | None = None  # on when DATABASE_READ_URL is set
    groups: GroupCommit | None = None  # the hot pool's group commit (with `pool`)


def resources(connection: HTTPConnection) -> Resources:
    """The lifespan's resources, from a request's or a websocket's state."""
    found: Resources = connection.state.resources
    return found


class MissingPrincipal(RuntimeError):
    """A route ran for a connection the gateway never saw: a wiring bug, never anonymous."""


def principal(connection: HTTPConnection) -> Principal:
    """Who the gateway found (ANONYMOUS only when it decided the service is open).

    Fails closed: a connection that never passed the gateway, or a WebSocket that has not
    authenticated yet, raises instead of acting with anyone's scopes.
    """
    found: Principal | None = connection.scope.get("state", {}).get("principal")
    if found is None:
        raise MissingPrincipal(
            f"no authenticated principal for {connection.scope.get('path')!r}:"
            " the route is not behind the gateway, or the WebSocket has not authenticated"
        )
    return found


# A hot connection to discard and, for work that may run twice, retry once on a fresh one: one
# PostgreSQL dropped, or one asyncpg found closed (InterfaceError).
_LOST: Final = (*DROPPED, asyncpg.InterfaceError)


async def with_pg(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    timeout_s: float,
    retry: bool = False,
) -> T:
    """`with_connection` for the hot pool: one pooled asyncpg connection, no transaction of its
    own (each statement is one). `retry` as there: only for reads and keyed postings."""
    for attempt in (1, 2) if retry else (2,):
        try:
            conn = await pool.acquire(timeout=timeout_s)
        except TimeoutError:
            raise Busy("All database connections are busy; retry shortly.") from None
        try:
            return await work(conn)
        except _LOST:
            conn.terminate()  # never handed out again: the pool opens a fresh one
            if attempt == 2:
                raise
        finally:
            with contextlib.suppress(*_LOST):
                await pool.release(conn)
    raise AssertionError("unreachable")


async def read_hot(
    res: Resources,
    pg_work: Callable[[asyncpg.Connection], Awaitable[T]],
    work: Callable[[AsyncConnection], Awaitable[T]],
) -> T:
    """A hot read (current balances) on the asyncpg pool; `work`, the same read through the
    engine, where no pool was opened (in-process harnesses)."""
    if res.pool is None:
        return await read(res, work)
    with _observed(res, "ledger.read"):
        return await with_pg(res.pool, pg_work, timeout_s=res.settings.pool_timeout_s, retry=True)


async def transact_hot(
    res: Resources, request: ledger.TransactRequest, *, key: str, principal: str
) -> ledger.TransactOutcome:
    """`post` for TOPUP, BONUS and SPEND (the hot path): on the asyncpg pool, grouped with the
    postings that wait for a connection at the same moment (`GroupCommit`); through the engine
    where no pool was opened (in-process harnesses)."""
    groups = res.groups if res.pool is not None else None
    if groups is None:
        return await post(
            res,
            lambda conn: ledger.transact(conn, request, key=key, principal=principal),
            kind=request.type,
        )
    return await _posting(
        res, lambda: groups.transact(request, key=key, principal=principal), kind=request.type
    )


@dataclass(slots=True)
class _Waiting:
    request: ledger.TransactRequest  # a TOPUP, BONUS or SPEND
    key: str
    principal: str
    answer: asyncio.Future[ledger.TransactOutcome]


class GroupCommit:
    """Group commit for TOPUP, BONUS and SPEND on the hot pool.

    At most `in_flight` postings' database calls run at once per process: a plain posting or a
    group each count one. A posting that finds a call free and nobody waiting runs alone
    (`wallet_transact`), as ever: at low load nothing changes, latency included. Otherwise it
    joins a queue, and each call that ends lets the head of the queue and up to `max_size - 1`
    more postings of the same principal go as one transaction and one commit
    (`ledger.transact_group_pg`). Fewer calls than connections is the point: postings that
    would each have run alone on a connection of their own wait a moment and share one call,
    so PostgreSQL does a set's work once, not a statement's and a commit's per posting.

    The group's call posts it set-based when every posting completes; otherwise each posting of
    it runs alone, in order, in that same call (a replay, a reused key, a refusal, an unknown
    user or asset are each decided as alone). A call that fails (a lock timeout, any database
    error: it rolled back whole) is followed by each posting alone, in its own call. So every
    posting gets exactly the answer it would have had alone, and a group's commit is all or
    nothing: no posting is ever half done.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_size: int,
        in_flight: int,
        timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self._pool = pool
        self._max_size = max_size
        self._limit = in_flight
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._waiting: deque[_Waiting] = deque()
        self._in_flight = 0  # database calls under way: plain postings and groups
        self._call_ended = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._groups: set[asyncio.Task[None]] = set()

    async def transact(
        self, request: ledger.TransactRequest, *, key: str, principal: str
    ) -> ledger.TransactOutcome:
        if self._max_size < 2 or (not self._waiting and self._in_flight < self._limit):
            self._in_flight += 1
            try:
                return await self._alone(request, key, principal, retry=True)
            finally:
                self._ended()
        answer: asyncio.Future[ledger.TransactOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(request, key, principal, answer))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="wallet-group-commit")
        return await answer  # cancelled (the client left) before its group: never posted

    async def close(self) -> None:
        """Let the groups under way finish (the lifespan's end, before the pool closes)."""
        tasks = [*self._groups, *([self._drainer] if self._drainer else [])]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ended(self) -> None:
        self._in_flight -= 1
        self._call_ended.set()

    async def _alone(
        self, request: ledger.TransactRequest, key: str, principal: str, *, retry: bool
    ) -> ledger.TransactOutcome:
        return await with_pg(
            self._pool,
            lambda pg: ledger.transact_pg(pg, request, key=key, principal=principal),
            timeout_s=self._timeout_s,
            retry=retry,
        )

    async def _drain(self) -> None:
        """While postings wait, send the next group each time a call is free."""
        while self._waiting:
            if self._in_flight >= self._limit:
                self._call_ended.clear()
                await self._call_ended.wait()
                continue
            self._in_flight += 1
            try:
                conn = await self._pool.acquire(timeout=self._timeout_s)
            except BaseException as error:
                self._ended()
                failure = (
                    Busy("All database connections are busy; retry shortly.")
                    if isinstance(error, TimeoutError)
                    else error
                )
                while self._waiting:
                    _settle(self._waiting.popleft().answer, error=failure)
                if not isinstance(error, Exception):
                    raise
                return
            group = self._take()
            if not group:
                self._ended()
                await self._pool.release(conn)
                continue
            task = asyncio.create_task(self._post(conn, group), name="wallet-group")
            self._groups.add(task)
            task.add_done_callback(self._groups.discard)

    def _take(self) -> list[_Waiting]:
        """The queue's head and the next postings of its principal, each key once (a second
        posting under a key waits for a later group, where it replays the first)."""
        group: list[_Waiting] = []
        keys: set[str] = set()
        skipped: list[_Waiting] = []
        while self._waiting and len(group) < self._max_size:
            waiting = self._waiting.popleft()
            if waiting.answer.done():
                continue  # cancelled while it waited
            if group and (waiting.principal != group[0].principal or waiting.key in keys):
                skipped.append(waiting)
                continue
            group.append(waiting)
            keys.add(waiting.key)
        self._waiting.extendleft(reversed(skipped))
        return group

    async def _post(self, conn: asyncpg.Connection, group: list[_Waiting]) -> None:
        """Post the group on `conn`, then release it; every posting of the group is settled,
        whatever happens (an answer, an error, or cancelled with the task)."""
        try:
            lost = False
            try:
                await self._post_on(conn, group)
            except _LOST:
                lost = True
                conn.terminate()  # never handed out again: the pool opens a fresh one
            finally:
                with contextlib.suppress(*_LOST):
                    await self._pool.release(conn)
            if lost:  # the group's attempt was each one's first: one retry left, as alone
                await asyncio.gather(*(self._post_alone(w) for w in group))
        except BaseException as error:
            for waiting in group:
                _settle(waiting.answer, error=error)
            raise
        finally:
            self._ended()

    async def _post_on(self, conn: asyncpg.Connection, group: list[_Waiting]) -> None:
        """The group in one call; each alone in order if that call fails (a lock timeout, say:
        it rolled back whole). A lost connection propagates."""
        if len(group) > 1:
            operations = [ledger.BatchOperation(w.request, w.key) for w in group]
            try:
                posted = await ledger.transact_group_pg(
                    conn, operations, principal=group[0].principal
                )
            except asyncpg.PostgresError:
                posted = None
            if posted is not None:
                self._metrics.group_commits.labels("set" if posted.together else "each").inc()
                self._metrics.grouped_postings.inc(len(group))
                for waiting, answer in zip(group, posted.answers, strict=True):
                    if isinstance(answer, ledger.TransactOutcome):
                        _settle(waiting.answer, answer)
                    else:
                        _settle(waiting.answer, error=answer)
                return
            self._metrics.group_commits.labels("failed").inc()
        for waiting in group:
            await self._post_alone(waiting, conn=conn)

    async def _post_alone(
        self, waiting: _Waiting, *, conn: asyncpg.Connection | None = None
    ) -> None:
        """One posting as the plain path posts it, and its answer or error settles it: on
        `conn` (a lost connection propagates, unsettled), else on a pooled one, no retry left."""
        if waiting.answer.done():
            return  # settled, or cancelled while its group ran: never posted
        request, key, principal = waiting.request, waiting.key, waiting.principal
        try:
            if conn is not None:
                outcome = await ledger.transact_pg(conn, request, key=key, principal=principal)
            else:
                outcome = await self._alone(request, key, principal, retry=False)
        except Exception as error:
            if conn is not None and isinstance(error, _LOST):
                raise
            _settle(waiting.answer, error=error)
        else:
            _settle(waiting.answer, outcome)


def _settle(
    answer: asyncio.Future[ledger.TransactOutcome],
    outcome: ledger.TransactOutcome | None = None,
    *,
    error: BaseException | None = None,
) -> None:
    """Answer a waiting posting once; one whose request was cancelled is left alone."""
    if answer.done():
        return
    if isinstance(error, asyncio.CancelledError):
        answer.cancel()
    elif error is not None:
        answer.set_exception(error)
    elif outcome is not None:
        answer.set_result(outcome)


async def read(res: Resources, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Reads run without BEGIN/COMMIT: each statement is its own snapshot (read committed),
    which saves two round trips a request."""
    with _observed(res, "ledger.read"):
        return await with_connection(res.autocommit, work, begin=False, retry=True)


async def read_replica(
    res: Resources,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    on_pool: Callable[[asyncpg.Connection], Awaitable[T]] | None = None,
) -> T:
    """A read that may run on the read replica (DATABASE_READ_URL): history, a transaction,
    balances at an instant, ledger pages. Never current balances, nor anything a write answers.

    It runs there only once the replica has replayed every write acknowledged before this call
    (by any instance: see wallet/replica.py), so no caller sees its own write disappear; else,
    and when the replica is down or unset, on the primary as `read` does. Never a 5xx for it.

    `on_pool` is the same read as fixed SQL on asyncpg, given only for a read whose cost does
    not grow with the data (an unfiltered ledger page): with no replica configured it runs on
    the hot pool (`read_hot`). A read that may be slow never runs there, where TOPUP, BONUS and
    SPEND wait for connections.
    """
    if res.replica is None:
        if on_pool is not None:
            return await read_hot(res, on_pool, work)
        return await read(res, work)
    with _observed(res, "ledger.read_replica"):
        routed = await res.replica.run(work)
    if isinstance(routed, OnReplica):
        res.metrics.replica_reads.labels("replica", "caught_up").inc()
        return routed.value
    res.metrics.replica_reads.labels("primary", routed.reason).inc()
    return await read(res, work)


def open_replica(settings: Settings, primary: AsyncEngine) -> Replica | None:
    """The replica's pool (lazy: nothing connects until a read asks), or None without one."""
    if settings.database_read_url is None:
        return None
    engine = create_engine(
        settings.database_read_url,
        pool_size=settings.pool_size,
        pool_timeout_s=settings.pool_timeout_s,
        statement_timeout_ms=settings.statement_timeout_ms,
        application_name="wallet-replica",
    )
    return Replica(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        primary,
        max_wait_s=settings.replica_max_wait_ms / 1000,
        retry_s=settings.replica_retry_s,
    )


async def post(res: Resources, work: Callable[[AsyncConnection], Awaitable[T]], *, kind: str) -> T:
    """Run one keyed ledger write (`kind`: TOPUP, TRANSFER, HOLD, ...) on its own connection, as
    its own transaction, and count what the ledger decided: once per posting, never a replay.

    A dropped connection is retried once: the write is keyed, so a retry of one that committed
    replays it. `wallet_lock_wait_seconds` times the call, which is one round trip whose time
    is mostly the wait for the account rows' locks.
    """
    return await _posting(
        res,
        lambda: with_connection(res.autocommit, work, begin=False, retry=True),
        kind=kind,
    )


async def _posting(res: Resources, run: Callable[[], Awaitable[T]], *, kind: str) -> T:
    """Time, trace and count one keyed write, whichever pool runs it."""
    started = time.perf_counter()
    try:
        with _observed(res, "ledger.post", kind=kind):
            result = await run()
    except IdempotencyKeyReused:
        res.metrics.conflicts.inc()
        raise
    finally:
        res.metrics.lock_wait.observe(time.perf_counter() - started)
    res.metrics.posted(kind, result)
    return result


@contextlib.contextmanager
def _observed(res: Resources, name: str, **attributes: str) -> Iterator[None]:
    """A span around a ledger call (when tracing), and BUSY answers counted."""
    try:
        if res.tracing is None:
            yield
        else:
            with res.tracing.span(name, **attributes):
                yield
    except (DBAPIError, PoolTimeout, asyncpg.PostgresError, Busy) as error:
        if isinstance(error, Busy) or isinstance(map_database_error(error), Busy):
            res.metrics.busy.inc()
        raise
