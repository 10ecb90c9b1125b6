"""Custom scalars. GraphQL's Int is 32-bit, so amounts travel as strings of digits; UUIDs and
dates are read and written exactly as REST reads and writes them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

from wallet.errors import ValidationError
from wallet.http import iso
from wallet.inputs import MAX_AMOUNT, RFC3339, exists_in_utc, parse_user_id


def _parse_amount(value: object) -> int:
    """Syntax only (an integer, or a string of digits); the range is the resolver's to check,
    so that an out-of-range amount is an `InvalidInput` result rather than a request error."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 64:
        return int(value)
    raise ValueError(f"Amount must be an integer or a string of digits (at most {MAX_AMOUNT}).")


Amount = NewType("Amount", int)

AMOUNT_SCALAR = strawberry.scalar(
    name="Amount",
    description=(
        "An integer count of the asset's smallest unit, serialized as a string of digits;"
        " input accepts such a string or an Int."
    ),
    serialize=str,
    parse_value=_parse_amount,
)


def _parse_uuid(value: object) -> uuid.UUID:
    """REST's rule (`parse_user_id`): the canonical 8-4-4-4-12 form only, not the braced,
    `urn:uuid:` or unhyphenated spellings Python's UUID() also takes."""
    try:
        return parse_user_id(value, field="UUID")
    except ValidationError:
        raise ValueError(
            "A UUID is written in its canonical 8-4-4-4-12 hexadecimal form,"
            " e.g. a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11."
        ) from None


UUID_SCALAR = strawberry.scalar(
    name="UUID",
    description="A UUID in its canonical 8-4-4-4-12 hexadecimal form (either case on input).",
    serialize=str,
    parse_value=_parse_uuid,
)


def _parse_datetime(value: object) -> datetime:
    """What REST takes (`inputs.parse_instant`): RFC 3339 with `Z` or an offset, no more; the
    standard library's reader alone also takes week dates, basic format, NULs and the like."""
    try:
        parsed = (
            datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
            if isinstance(value, str) and RFC3339.fullmatch(value)
            else None
        )
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValueError("A DateTime is an ISO 8601 date and time with a UTC offset.")
    if not exists_in_utc(parsed):
        raise ValueError("A DateTime must fall in the years 1 to 9999 in UTC.")
    return parsed


DATETIME_SCALAR = strawberry.scalar(
    name="DateTime",
    description="UTC, microseconds, a Z suffix (as REST writes it): 2026-11-24T06:42:06.990610Z.",
    serialize=iso,
    parse_value=_parse_datetime,
)

SCALARS: dict[object, ScalarDefinition] = {
    Amount: AMOUNT_SCALAR,
    uuid.UUID: UUID_SCALAR,
    datetime: DATETIME_SCALAR,
}
