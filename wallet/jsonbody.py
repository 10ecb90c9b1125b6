"""One strict JSON reader for everything a client sends: REST bodies, GraphQL requests over HTTP
and WebSocket messages. Whatever it cannot read unambiguously is a `ValidationError`, never a
500: invalid UTF-8, duplicate keys (a proxy reading the first value would see another request
than ours, reading the last), nesting past `MAX_DEPTH`, and numbers no client can mean exactly."""

from __future__ import annotations

import json
import math
from typing import Any, Final

from wallet.errors import ValidationError

MAX_DEPTH: Final = 32  # our deepest document (a batch of operations with metadata) needs 5
MAX_INT_DIGITS: Final = 40  # past any amount; longer integers become NotANumber


class NotANumber:
    """Stands in for what JSON cannot carry exactly (NaN, Infinity, huge integers), so that the
    field holding it is refused by name instead of the whole body."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"NotANumber({self.text[:20]!r})"

    def __inspect__(self) -> str:
        """How graphql-core names it in an error message (else `<NotANumber instance>`)."""
        shown = (
            self.text
            if len(self.text) <= 20
            else f"{self.text[:20]}... ({len(self.text)} characters)"
        )
        return f"a number JSON cannot carry exactly: {shown}"


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _parse_int(text: str) -> int | NotANumber:
    return int(text) if len(text) <= MAX_INT_DIGITS else NotANumber(text)


def _parse_float(text: str) -> float | NotANumber:
    """`1e400` is no number a client can mean exactly (it would read as infinity)."""
    value = float(text)
    return value if math.isfinite(value) else NotANumber(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return found


def _too_deep(value: Any) -> bool:
    """Walk the parsed document without recursion: deeper than MAX_DEPTH?"""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json(raw: bytes | str, *, what: str = "The request body") -> Any:
    """Parse `raw` strictly; `what` names the document in the error message."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise ValidationError(f"{what} is not valid UTF-8.", field="body") from None
    try:
        value = json.loads(
            text,
            parse_constant=NotANumber,
            parse_int=_parse_int,
            parse_float=_parse_float,
            object_pairs_hook=_no_duplicates,
        )
    except DuplicateKey as duplicate:
        raise ValidationError(
            f"{what} repeats the key {duplicate.key[:64]!r}; each key may appear once.",
            field="body",
        ) from None
    except (ValueError, RecursionError):
        raise ValidationError(f"{what} is not valid JSON.", field="body") from None
    if _too_deep(value):
        raise ValidationError(f"{what} is nested deeper than {MAX_DEPTH} levels.", field="body")
    return value


def parse_json_object(raw: bytes | str, *, what: str = "The request body") -> dict[str, Any]:
    value = parse_json(raw, what=what)
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object.", field="body")
    return value
