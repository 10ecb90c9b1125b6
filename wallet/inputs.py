"""Parsers for what clients send; both surfaces use them, so both reject the same things."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Final, Literal, cast, get_args
from urllib.parse import unquote_to_bytes

import orjson

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


_STORABLE: Final = ", with no NUL character or lone surrogate"  # what _is_storable refuses


def _is_storable(value: str) -> bool:
    """PostgreSQL text holds neither NUL nor lone surrogates (which are not UTF-8)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
METADATA_FILTER_PREFIX: Final = "metadata."


def check_query_string(raw: bytes) -> None:
    """Every name and value of a query string is UTF-8 text without control characters: a
    ValidationError naming the first that is not. (Starlette reads bytes that are not UTF-8 as
    U+FFFD, which would then be looked up, or matched, as if the client had sent it.) A metadata
    filter's value may hold any character but NUL: a stored metadata string may, and its filter
    must be able to name it (PostgreSQL's jsonb holds no NUL). A name given twice is refused,
    whether or not the route reads it: which of its values counts would be a guess."""
    seen: set[str] = set()
    for part in raw.split(b"&"):
        if not part:  # `?a=1&`, `?&a=1`: nothing between two separators
            continue
        name, _, value = part.partition(b"=")
        name_bytes = unquote_to_bytes(name.replace(b"+", b" "))
        field = name_bytes.decode("utf-8", errors="replace")
        try:
            name_text = name_bytes.decode()
            value_text = unquote_to_bytes(value.replace(b"+", b" ")).decode()
        except UnicodeDecodeError:
            raise ValidationError(f"{field} must be UTF-8 text.", field=field) from None
        if _CONTROL.search(name_text):
            raise ValidationError(f"{field} must not hold control characters.", field=field)
        if name_text in seen:
            raise ValidationError(f"{field[:80]} is given more than once.", field=field[:80])
        seen.add(name_text)
        if name_text.startswith(METADATA_FILTER_PREFIX):
            if "\x00" in value_text:
                raise ValidationError(f"{field} must not hold a NUL character.", field=field)
        elif _CONTROL.search(value_text):
            raise ValidationError(f"{field} must not hold control characters.", field=field)


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


# --- Ledger v2: references, metadata, reasons, assets, instants

TransactionType = Literal["TOPUP", "SPEND", "BONUS", "TRANSFER", "REVERSAL"]
TRANSACTION_TYPES: tuple[str, ...] = get_args(TransactionType)
MAX_JSON_INT = 2**53 - 1
_REFERENCE = re.compile(r"[\x20-\x7e]{1,128}")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ASSET_SLUG = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_METADATA_BYTES = 4096
MAX_METADATA_KEYS = 32


def parse_reference(value: object, *, field: str = "reference") -> str | None:
    """The caller's own id for a transaction (an order id): 1-128 printable ASCII characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not _REFERENCE.fullmatch(value):
        raise ValidationError(f"{field} must be 1 to 128 printable ASCII characters.", field=field)
    return value


def parse_metadata(value: object, *, field: str = "metadata") -> dict[str, str | int | bool | None]:
    """A flat JSON object: at most 32 keys of [A-Za-z0-9_.-]{1,64}; values strings (at most 512
    characters), integers within +-(2^53 - 1), booleans or null; at most 4 KiB serialised."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a JSON object.", field=field)
    if len(value) > MAX_METADATA_KEYS:
        raise ValidationError(f"{field} may have at most {MAX_METADATA_KEYS} keys.", field=field)
    for key, item in value.items():
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            raise ValidationError(
                f"{field} keys must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' or '-'.",
                field=field,
            )
        if isinstance(item, str):
            if len(item) > 512 or not _is_storable(item):
                raise ValidationError(
                    f"{field}.{key} must be a string of at most 512 characters{_STORABLE}.",
                    field=field,
                )
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if abs(item) > MAX_JSON_INT:
                raise ValidationError(
                    f"{field}.{key} must be an integer within +-{MAX_JSON_INT}.", field=field
                )
        else:
            raise ValidationError(
                f"{field}.{key} must be a string, an integer, a boolean or null.", field=field
            )
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise ValidationError(f"{field} must be at most 4 KiB serialised.", field=field)
    return dict(value)


def parse_reason(value: object, *, field: str = "reason") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 256 or not _is_storable(value):
        raise ValidationError(
            f"{field} must be a string of 1 to 256 characters{_STORABLE}.", field=field
        )
    return value


def parse_uuid(value: object, *, field: str) -> uuid.UUID:
    """Any id the service issued (transactions, holds): a canonical UUID."""
    return parse_user_id(value, field=field)


def parse_optional_amount(value: object, *, field: str = "amount") -> int | None:
    return None if value is None else parse_amount(value, field=field)


def parse_int_range(value: object, *, field: str, low: int, high: int) -> int:
    """A JSON integer (not a boolean, not a string) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{field} must be an integer from {low} to {high}.", field=field)
    return value


def parse_new_asset_slug(value: object, *, field: str = "slug") -> str:
    if not isinstance(value, str) or not _ASSET_SLUG.fullmatch(value):
        raise ValidationError(
            f"{field} must match ^[a-z][a-z0-9_]{{0,63}}$ (a lowercase letter, then up to 63"
            " lowercase letters, digits or '_').",
            field=field,
        )
    return value


def parse_asset_name(value: object, *, field: str = "name") -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 100
        or value.strip() != value
        or not value.isprintable()
        or not _is_storable(value)
    ):
        raise ValidationError(
            f"{field} must be 1 to 100 printable characters without surrounding spaces.",
            field=field,
        )
    return value


def parse_transaction_type(value: object, *, field: str = "type") -> TransactionType:
    if not isinstance(value, str) or value not in TRANSACTION_TYPES:
        raise ValidationError(
            f"{field} must be one of {', '.join(TRANSACTION_TYPES)}.", field=field
        )
    return cast(TransactionType, value)


def exists_in_utc(moment: datetime) -> bool:
    """Whether the instant has a UTC time in years 1 to 9999: 0001-01-01T00:00:00+01:00 and
    9999-12-31T23:59:59-01:00 have none, and neither Python nor the database driver can compare
    or send them."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


def parse_instant(value: object, *, field: str, not_future: bool = False) -> datetime:
    """An RFC 3339 timestamp with a time zone (`Z` or an offset)."""
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        raise ValidationError(
            f"{field} must be an RFC 3339 timestamp, e.g. 2026-11-27T12:00:00Z.", field=field
        )
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise ValidationError(f"{field} is not a valid date and time.", field=field) from None
    if not exists_in_utc(moment):
        raise ValidationError(f"{field} is outside the years 1 to 9999 in UTC.", field=field)
    if not_future and moment > datetime.now(UTC):
        raise ValidationError(f"{field} must not be in the future.", field=field)
    return moment


RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def parse_metadata_filters(
    pairs: list[tuple[str, str]], *, prefix: str = METADATA_FILTER_PREFIX
) -> dict[str, str]:
    """`metadata.<key>=<value>` query parameters: each key once, values matched as text."""
    found: dict[str, str] = {}
    for name, value in pairs:
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :]
        field = f"{prefix}{key}"[:80]
        if not _METADATA_KEY.fullmatch(key):
            raise ValidationError(f"{field} names no valid metadata key.", field=field)
        if key in found:
            raise ValidationError(f"{field} is given twice.", field=field)
        if len(value) > 512 or not _is_storable(value):
            raise ValidationError(
                f"{field} must be at most 512 characters{_STORABLE}.", field=field
            )
        found[key] = value
    return found
