"""The service's own SQL, read off the service itself: one request of each kind goes through the
real application in-process (create_app, its lifespan, middleware and routes), and every statement
and driver round trip it makes is recorded. The pgbench ceilings are built from what this records,
so they stay the service's SQL whatever the code becomes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool
from starlette.types import Receive, Scope, Send

from bench.scenarios import RequestSpec
from wallet.app import create_app
from wallet.settings import Settings


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement as the driver sent it: SQL with $n placeholders and their values."""

    sql: str
    params: tuple[Any, ...]


@dataclass(slots=True)
class Capture:
    """What one request cost the database."""

    name: str
    status: int
    statements: list[Statement] = field(default_factory=list)
    # Every message exchange with PostgreSQL: statements, BEGIN/COMMIT/ROLLBACK, pool pings.
    round_trips: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "statements": len(self.statements),
            "round_trips": len(self.round_trips),
            "sequence": [_short(q) for q in self.round_trips],
        }


def _short(sql: str) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= 60 else flat[:57] + "..."


class _Recorder:
    def __init__(self) -> None:
        self.current: Capture | None = None

    def on_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if self.current is not None:
            params = tuple(parameters) if isinstance(parameters, list | tuple) else ()
            self.current.statements.append(Statement(statement, params))
            self.current.round_trips.append(statement)

    def on_driver_query(self, record: Any) -> None:
        """asyncpg's query logger: the statements run on the driver itself (the ledger's fixed
        SQL, with their arguments), BEGIN, COMMIT, ROLLBACK and pings; not SQLAlchemy's
        prepared executions, which on_execute sees."""
        if self.current is not None:
            query = str(record.query) or ";"
            self.current.round_trips.append(query)
            if record.args:
                self.current.statements.append(Statement(query, tuple(record.args)))

    def on_connect(self, dbapi_connection: Any, record: Any) -> None:
        driver = getattr(record, "driver_connection", None)
        if driver is not None and hasattr(driver, "add_query_logger"):
            driver.add_query_logger(self.on_driver_query)

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        hooks: list[tuple[Any, str, Callable[..., None]]] = [
            (Engine, "before_cursor_execute", self.on_execute),
            (Pool, "connect", self.on_connect),
        ]
        for target, name, fn in hooks:
            event.listen(target, name, fn)
        try:
            yield
        finally:
            for target, name, fn in hooks:
                event.remove(target, name, fn)

    @contextlib.contextmanager
    def recording(self, name: str) -> Iterator[Capture]:
        capture = Capture(name=name, status=0)
        self.current = capture
        try:
            yield capture
        finally:
            self.current = None


@contextlib.asynccontextmanager
async def _client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, lifespan and all, behind an in-process HTTP client."""
    app = create_app(Settings(DATABASE_URL=database_url, env="production"))
    async with app.router.lifespan_context(app) as state:
        # As in a served process: the auth cache is trusted once its listener is up.
        resources = (state or {})["resources"]
        await asyncio.wait_for(resources.auth.until_listening(), timeout=10)

        # Without the hot pool, the hot routes send the very same statements through the
        # engine, where the recorder sees them.
        lifespan_state = {**(state or {}), "resources": dataclasses.replace(resources, pool=None)}

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(lifespan_state)  # what uvicorn does with the lifespan's state
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


async def capture_requests(database_url: str, specs: list[RequestSpec]) -> dict[str, Capture]:
    """Each request twice (the first warms pools and caches), recording the second."""
    recorder = _Recorder()
    found: dict[str, Capture] = {}
    with recorder.listening():
        async with _client(database_url) as client:
            for spec in specs:
                await client.request(**spec.httpx_args(key=f"capture-warm-{uuid.uuid4()}"))
                with recorder.recording(spec.name) as capture:
                    response = await client.request(
                        **spec.httpx_args(key=f"capture-{uuid.uuid4()}")
                    )
                capture.status = response.status_code
                if response.status_code != 200:
                    raise RuntimeError(
                        f"capture of {spec.name} got {response.status_code}: {response.text[:300]}"
                    )
                found[spec.name] = capture
    return found
