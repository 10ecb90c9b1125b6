"""Custom scalars. GraphQL's Int is 32-bit, so amounts travel as strings of digits."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

from wallet.inputs import MAX_AMOUNT


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

SCALARS: dict[object, ScalarDefinition] = {Amount: AMOUNT_SCALAR}
