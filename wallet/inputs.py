"""Parsers for what clients send; both surfaces use them, so both reject the same things."""

from __future__ import annotations

import re
import uuid
from typing import Literal, cast, get_args

from wallet.errors import ValidationError

TxType = Literal["TOPUP", "SPEND", "BONUS"]
TX_TYPES: tuple[str, ...] = get_args(TxType)

MAX_AMOUNT = 9_007_199_254_740_991  # 2**53 - 1: exact in every JSON parser clients use
_DIGITS = re.compile(r"[0-9]{1,64}")  # leading zeros allowed ("05" is five); length bounded
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def parse_amount(value: object, *, field: str = "amount") -> int:
    """A positive integer count of minor units: a JSON integer or a string of ASCII digits."""
    if isinstance(value, bool):
        raise ValidationError(f"{field} must be an integer, not a boolean.", field=field)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    else:
        raise ValidationError(
            f"{field} must be a positive integer or a string of digits.", field=field
        )
    if not 1 <= number <= MAX_AMOUNT:
        raise ValidationError(f"{field} must be between 1 and {MAX_AMOUNT}.", field=field)
    return number


def parse_user_id(value: object, *, field: str = "userId") -> uuid.UUID:
    """A UUID in its canonical 8-4-4-4-12 form (any case)."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise ValidationError(f"{field} must be a UUID.", field=field)
    return uuid.UUID(value)


def _is_storable(value: str) -> bool:
    """PostgreSQL text holds neither NUL nor lone surrogates (which are not UTF-8)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_asset_slug(value: object, *, field: str = "assetSlug") -> str:
    """An asset's slug; a well-formed slug that names no asset is a 404, not a 400."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not _is_storable(value):
        raise ValidationError(f"{field} must be a string of 1 to 64 characters.", field=field)
    return value


def parse_tx_type(value: object, *, field: str = "type") -> TxType:
    if not isinstance(value, str) or value not in TX_TYPES:
        raise ValidationError(f"{field} must be one of {', '.join(TX_TYPES)}.", field=field)
    return cast(TxType, value)


def parse_positive_int(raw: str, *, field: str, maximum: int) -> int:
    """A query-string integer from 1 to `maximum`."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6 or not 1 <= int(raw) <= maximum:
        raise ValidationError(f"{field} must be an integer from 1 to {maximum}.", field=field)
    return int(raw)


def parse_idempotency_key(value: str, *, field: str = "Idempotency-Key") -> str:
    if not _KEY.fullmatch(value):
        raise ValidationError(f"{field} must be 1 to 255 printable ASCII characters.", field=field)
    return value


def parse_username(value: object, *, field: str = "username") -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 64
        or value != value.strip()
        or not value.isprintable()
        or not _is_storable(value)
    ):
        raise ValidationError(
            f"{field} must be 1 to 64 printable characters without surrounding spaces.",
            field=field,
        )
    return value
