"""Metrics and access logs: what an operator watches, recorded by the gateway (wallet.gateway).

Metrics are Prometheus's. `wallet serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory
before its workers start, so every worker writes its samples to memory-mapped files there and
whichever worker answers GET /metrics adds them all up (prometheus-client's multiprocess mode).
An app built in-process without that variable (tests, benchmarks) keeps a private registry.
prometheus-client is imported when a `Metrics` is made, never at import time: it picks its mode
on first import, which must come after `wallet serve` has set the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from wallet.errors import Declined

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("wallet.access")

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED: Final = "<unmatched>"  # no route: never the raw path (unbounded label values)
# Seconds; request latencies here run from ~1 ms (a read) to the 2 s lock timeout and beyond.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(slots=True)
class RequestRecord:
    """What the layers below tell the access log about the request being answered."""

    replayed: bool = False


# The request being answered (None outside one). Mutated, never re-set, below the gateway:
# GraphQL runs resolvers in tasks of their own, which see the same record.
current_request: ContextVar[RequestRecord | None] = ContextVar("current_request", default=None)


class Metrics:
    """Every metric the service exports; one per app (the lifespan and the gateway share it)."""

    def __init__(self) -> None:
        import prometheus_client as prom
        from prometheus_client import values

        self.multiprocess = MULTIPROC_ENV in os.environ
        if self.multiprocess != bool(getattr(values.ValueClass, "_multiprocess", False)):
            raise RuntimeError(
                f"prometheus_client was imported before {MULTIPROC_ENV} was set (or unset):"
                " its mode is fixed at first import"
            )
        self._registry = None if self.multiprocess else prom.CollectorRegistry()
        registry = self._registry
        self.requests: Counter = prom.Counter(
            "wallet_http_requests_total",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds: Histogram = prom.Histogram(
            "wallet_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.postings: Counter = prom.Counter(
            "wallet_postings_total",
            "Ledger writes decided (never counting a replay), by type and outcome.",
            ["type", "outcome"],
            registry=registry,
        )
        self.replays: Counter = prom.Counter(
            "wallet_idempotent_replays_total",
            "Keyed writes answered with the stored outcome of an earlier request.",
            registry=registry,
        )
        self.conflicts: Counter = prom.Counter(
            "wallet_idempotency_conflicts_total",
            "Keyed writes refused: the key was used for a different request.",
            registry=registry,
        )
        self.busy: Counter = prom.Counter(
            "wallet_busy_total",
            "Ledger reads and writes answered 503 BUSY (lock, statement or pool timeout).",
            registry=registry,
        )
        self.lock_wait: Histogram = prom.Histogram(
            "wallet_lock_wait_seconds",
            "Time in the posting call (one round trip: waiting for the row locks dominates it).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.group_commits: Counter = prom.Counter(
            "wallet_group_commits_total",
            "Groups of TOPUP, BONUS and SPEND postings posted in one call (group commit), by how:"
            " set (set-based), each (each alone, in that call: one did not complete), failed"
            " (the call failed; each then posted alone).",
            ["posted"],
            registry=registry,
        )
        self.grouped_postings: Counter = prom.Counter(
            "wallet_grouped_postings_total",
            "Postings posted with others in one transaction (group commit).",
            registry=registry,
        )
        self.pool: Gauge = prom.Gauge(
            "wallet_db_pool_connections",
            "Database connections of the service's pools (hot: asyncpg's for balances and"
            " postings; primary: the engine's; replica), by pool and state.",
            ["pool", "state"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.feed_subscribers: Gauge = prom.Gauge(
            "wallet_feed_subscribers",
            "GraphQL balance subscriptions open.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.replica_reads: Counter = prom.Counter(
            "wallet_replica_reads_total",
            "Reads that may use the replica, by where they ran and why.",
            ["target", "reason"],
            registry=registry,
        )
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._duration_children: dict[tuple[str, str], Any] = {}
        self._posting_children: dict[tuple[str, str], Any] = {}
        # name -> () -> (in use, idle), read when sampling
        self._pools: list[tuple[str, Callable[[], tuple[int, int]]]] = []

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()
        timed = self._duration_children.get(key[:2])
        if timed is None:
            timed = self._duration_children[key[:2]] = self.request_seconds.labels(*key[:2])
        timed.observe(seconds)

    def posted(self, kind: str, result: object) -> None:
        """Count a keyed write's result once: its outcome, or a replay (never both)."""
        replayed = bool(getattr(result, "replayed", False))
        if replayed:
            self.replays.inc()
            record = current_request.get()
            if record is not None:
                record.replayed = True
            return
        if isinstance(result, Declined):
            outcome = result.code
        else:
            outcome = str(getattr(result, "outcome", "COMPLETED"))
        key = (kind, outcome)
        child = self._posting_children.get(key)
        if child is None:
            child = self._posting_children[key] = self.postings.labels(*key)
        child.inc()

    def watch_pool(self, name: str, engine: AsyncEngine) -> None:
        """Sampled (see `sample`), not counted per checkout: no work on the request path."""
        pool: Any = engine.sync_engine.pool
        self._pools.append((name, lambda: (pool.checkedout(), pool.checkedin())))

    def watch_asyncpg_pool(self, name: str, pool: Any) -> None:
        """An asyncpg pool (the hot routes'), sampled the same way."""
        self._pools.append(
            (name, lambda: (pool.get_size() - pool.get_idle_size(), pool.get_idle_size()))
        )

    def sample(self, *, feed_subscribers: int) -> None:
        """Refresh this process's gauges; the lifespan calls it every second and before a scrape."""
        for name, counts in self._pools:
            in_use, idle = counts()
            self.pool.labels(name, "in_use").set(in_use)
            self.pool.labels(name, "idle").set(idle)
        self.feed_subscribers.set(feed_subscribers)

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every worker's metrics (this process's, in-process)."""
        import prometheus_client as prom

        registry = self._registry
        if registry is None:
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST

    def process_exited(self) -> None:
        """Drop this worker's live gauges from the shared directory (it stops answering)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class RequestObserver:
    """Per HTTP request: its metrics and, when `access_log`, one access line. Settings, label
    children and the templates of paths no route answered are resolved once, not per request."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        routes: Sequence[BaseRoute],
        access_log: bool,
        max_unrouted: int = 1024,
    ) -> None:
        self.metrics = metrics
        self.routes = tuple(routes)
        self.access_log = access_log
        self.max_unrouted = max_unrouted  # bounded: callers pick the paths
        self._unrouted: dict[tuple[str, str], str] = {}

    def route(self, scope: Scope) -> str:
        """The template of the route that answered (or would have, for a request refused
        before routing, such as a 401): Starlette leaves the matched route in the scope."""
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", UNMATCHED))
        key = (scope.get("root_path", ""), scope["path"])  # all an HTTP route matches on
        template = self._unrouted.get(key)
        if template is None:
            template = self._match(scope)
            if len(self._unrouted) >= self.max_unrouted:
                self._unrouted.clear()
            self._unrouted[key] = template
        return template

    def _match(self, scope: Scope) -> str:
        for candidate in self.routes:
            match, _ = candidate.matches(scope)
            if match != Match.NONE:
                return str(getattr(candidate, "path", UNMATCHED))
        return UNMATCHED

    def observed(self, scope: Scope, *, status: int, seconds: float, record: RequestRecord) -> str:
        """Count the request answered and write its access line; returns its route template."""
        route = self.route(scope)
        method = scope["method"]
        self.metrics.request(method, route, status, seconds)
        if self.access_log:
            state = scope.get("state", {})
            who = state.get("principal")
            log.info(
                "request",
                request_id=state.get("request_id"),
                principal=(who.name or who.kind) if who is not None else None,
                method=method,
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 3),
                replayed=record.replayed,
            )
        return route
