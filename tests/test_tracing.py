"""Traces, in process with an in-memory exporter: a SERVER span per request (continuing the
caller's trace), the ledger call inside it, its SQL inside that; the trace id on the log line.
Off (and OpenTelemetry never imported) unless an OTLP endpoint is configured."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import structlog
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import ROOT, create_database, drop_database, free_port
from wallet.app import create_app
from wallet.cli import _run, migrate
from wallet.logging import configure_logging
from wallet.seed import seed
from wallet.settings import Settings
from wallet.tracing import Tracing

ALICE = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def trace_db(server_url: str) -> Iterator[str]:
    """A database of its own: open mode (no key anywhere), whatever other tests do."""
    url = create_database(server_url, "wallet_trace")
    migrate(url)
    _run(url, seed)
    yield url
    drop_database(server_url, url)


@pytest.fixture
async def traced(trace_db: str) -> AsyncIterator[tuple[str, InMemorySpanExporter]]:
    """The app under uvicorn in this process, exporting spans to memory, logging JSON lines."""
    database_url = trace_db
    exporter = InMemorySpanExporter()
    settings = Settings(database_url=database_url, env="production")
    configure_logging(settings, trace_ids=True)
    app = create_app(settings, tracing=Tracing(exporter))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn.Server offers a flag, no event)
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", exporter
    finally:
        server.should_exit = True
        await task
        structlog.reset_defaults()


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_a_posting_is_one_trace_with_its_ledger_call_and_sql(
    traced: tuple[str, InMemorySpanExporter], capfd: pytest.CaptureFixture[str]
) -> None:
    base, exporter = traced
    async with httpx.AsyncClient(base_url=base) as client:
        answer = await client.post(
            "/api/wallet/transact",
            headers={
                "idempotency-key": f"trace-{uuid.uuid4()}",
                "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                "x-request-id": "traced-request",
            },
            json={"userId": ALICE, "amount": 1, "assetSlug": "gold_coins", "type": "TOPUP"},
        )
    assert answer.status_code == 200
    spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == TRACE_ID]
    server = one(spans, "POST /api/wallet/transact")
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == PARENT_ID  # the caller's trace continues
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/api/wallet/transact"
    assert server.attributes["http.response.status_code"] == 200
    ledger_call = one(spans, "ledger.post")
    assert ledger_call.parent is not None
    assert ledger_call.parent.span_id == server.context.span_id
    assert ledger_call.attributes is not None
    assert ledger_call.attributes["kind"] == "TOPUP"
    sql = [
        s for s in spans if s.parent is not None and s.parent.span_id == ledger_call.context.span_id
    ]
    statements = [str((s.attributes or {}).get("db.statement", "")) for s in sql]
    assert any("wallet_transact" in statement for statement in statements), statements
    # The access line carries the trace id, and no SQL parameter was recorded.
    assert all("a0eebc99" not in str(s.attributes) for s in sql)
    lines = [
        json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")
    ]
    access = [line for line in lines if line.get("request_id") == "traced-request"]
    assert len(access) == 1, lines
    assert access[0]["trace_id"] == TRACE_ID
    assert access[0]["route"] == "/api/wallet/transact"


async def test_a_read_is_traced_under_its_request(traced: tuple[str, InMemorySpanExporter]) -> None:
    base, exporter = traced
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get(f"/api/wallet/balance/{ALICE}")).status_code == 200
    spans = exporter.get_finished_spans()
    server = one(list(spans), "GET /api/wallet/balance/{userId}")
    inside = [s for s in spans if s.context.trace_id == server.context.trace_id]
    assert any(s.name == "ledger.read" for s in inside)
    assert any("db.statement" in (s.attributes or {}) for s in inside)


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:4318"])
def test_opentelemetry_is_imported_only_when_an_endpoint_is_set(endpoint: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    probe = (
        "import sys; from wallet.app import create_app; from wallet.settings import Settings;"
        " create_app(Settings(database_url='postgresql://unused'));"
        " print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('opentelemetry.')}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    loaded = done.stdout.strip()
    if endpoint is None:
        assert loaded == "[]", loaded
    else:
        assert "sdk" in loaded
        assert "instrumentation" in loaded
