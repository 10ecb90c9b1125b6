"""What several REST modules share: the Idempotency-Key header and strict query parameters."""

from __future__ import annotations

import uuid

from starlette.requests import Request

from wallet.errors import IdempotencyKeyMissing, ValidationError
from wallet.inputs import parse_idempotency_key


def idempotency_key(request: Request) -> str:
    """The required Idempotency-Key header of a write, given once: two would be ambiguous (a
    retry could name either), so they are refused, as a repeated query parameter is."""
    keys = request.headers.getlist("idempotency-key")
    if not keys:
        raise IdempotencyKeyMissing("The Idempotency-Key header is required.")
    if len(keys) > 1:
        raise ValidationError("Idempotency-Key is given more than once.", field="Idempotency-Key")
    return parse_idempotency_key(keys[0])


def query_param(request: Request, name: str) -> str | None:
    """A query parameter given at most once: a repeated one is ambiguous, so it is refused."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ValidationError(f"{name} is given more than once.", field=name)
    return values[0] if values else None


def optional_id(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def replayed_header(replayed: bool) -> dict[str, str] | None:
    """`Idempotent-Replayed: true` on a stored answer given again."""
    return {"Idempotent-Replayed": "true"} if replayed else None
