"""Optional OpenTelemetry traces: a server span per request, a span per ledger call, a span per
SQL statement (asyncpg's instrumentation), exported over OTLP/HTTP.

Off unless the standard OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is set, and then
OpenTelemetry is never imported: no cost at all. The exporter reads the other standard
variables itself (OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, ...). Only SQL text is
recorded, never its parameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

# The request headers a trace context arrives in (W3C Trace Context).
_PROPAGATED = (b"traceparent", b"tracestate")


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Is an OTLP endpoint set (and the SDK not disabled)?"""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracing:
    """One process's tracer provider; `exporter` replaces OTLP (tests use an in-memory one)."""

    def __init__(self, exporter: SpanExporter | None = None) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        self._trace = trace
        self._propagate = propagate
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "wallet")})
        self.provider = TracerProvider(resource=resource)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("wallet")
        self._instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        self._instrumentor.instrument(tracer_provider=self.provider)

    @classmethod
    def from_environment(cls) -> Tracing | None:
        return cls() if configured() else None

    @contextmanager
    def request_span(self, scope: Scope) -> Iterator[Callable[[str, int], None]]:
        """A SERVER span for an HTTP request, continuing the caller's trace if it sent one;
        yields `finish(route, status)` to name it once routing is known."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _PROPAGATED
        }
        parent = self._propagate.extract(carrier) if carrier else None
        method = scope["method"]
        with self.tracer.start_as_current_span(
            method, context=parent, kind=self._trace.SpanKind.SERVER
        ) as span:

            def finish(route: str, status: int) -> None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))

            yield finish

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """An INTERNAL span (a ledger call); its SQL statements nest under it."""
        with self.tracer.start_as_current_span(name, attributes=attributes):
            yield

    def shutdown(self) -> None:
        """Flush what is buffered and stop instrumenting asyncpg."""
        self._instrumentor.uninstrument()
        self.provider.shutdown()


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), for log lines; None outside a span."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None
