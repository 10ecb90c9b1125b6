"""What every part of the ledger shares: value types, fingerprints, cursors, SQLSTATE mapping."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, NoReturn, TypeVar, cast

import orjson
from sqlalchemy import Row, TextClause
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import Asset
from wallet.errors import (
    AssetNotFound,
    Declined,
    HoldNotFound,
    IdempotencyKeyReused,
    TransactionNotFound,
    UserNotFound,
    ValidationError,
    WalletError,
)

T = TypeVar("T")
Direction = Literal["DEBIT", "CREDIT"]
Metadata = Mapping[str, str | int | bool | None]
MAX_BIGINT: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class AssetInfo:
    id: int
    slug: str
    name: str
    decimals: int


@dataclass(frozen=True, slots=True)
class Balance:
    """A user's account in one asset. `amount` is the whole balance, held coins included;
    `version` counts its entries and orders its balance changes."""

    account_id: int
    asset: AssetInfo
    amount: int
    version: int
    held: int = 0

    @property
    def available(self) -> int:
        return self.amount - self.held


ASSET_COLUMNS: Final = (Asset.id.label("asset_id"), Asset.slug, Asset.name, Asset.decimals)


def asset_of(row: Row[Any, *tuple[Any, ...]]) -> AssetInfo:
    """An AssetInfo from a row selected with ASSET_COLUMNS (or the same labels)."""
    return AssetInfo(row.asset_id, row.slug, row.name, row.decimals)


def asset_in(record: Any) -> AssetInfo:
    """An AssetInfo from a record read by key (asyncpg's, or a row's mapping) that has the
    columns asset_id, slug, name and decimals."""
    return AssetInfo(record["asset_id"], record["slug"], record["name"], record["decimals"])


def fingerprint(
    route: str,
    fields: Mapping[str, Any],
    *,
    reference: str | None = None,
    metadata: Metadata | None = None,
) -> bytes:
    """What identifies a request for idempotency: its route and every field, canonically.

    `reference` and `metadata` count only when given, so a request without them keeps the
    fingerprint it had before they existed (keys stored then still replay)."""
    canonical = dict(fields)
    if reference is not None:
        canonical["reference"] = reference
    if metadata:
        canonical["metadata"] = dict(metadata)
    body = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(route.encode() + b"\n" + body).digest()


def metadata_json(metadata: Metadata) -> str:
    return orjson.dumps(dict(metadata)).decode()


def sqlstate(error: Exception) -> str | None:
    """The SQLSTATE of a database error, raised through SQLAlchemy or by asyncpg itself."""
    found = getattr(error, "sqlstate", None) or getattr(
        getattr(error, "orig", None), "sqlstate", None
    )
    return cast(str | None, found)


# What the posting functions raise (wallet/sql/ledger.sql's header lists them).
_RAISED: Final = {
    "W0001": (UserNotFound, "User not found."),
    "W0002": (AssetNotFound, "Asset not found."),
    "W0003": (TransactionNotFound, "Transaction not found."),
    "W0004": (HoldNotFound, "Hold not found."),
    "W0006": (ValidationError, "amount exceeds the hold's amount."),
    "W0007": (ValidationError, "toUserId must be another user than the hold's."),
    "W0008": (ValidationError, "toUserId must be another user than fromUserId."),
}
_FIELDS: Final = {"W0006": "amount", "W0007": "toUserId", "W0008": "toUserId"}
# Messages naming what was not found: the id or slug the function raised as its DETAIL.
_NAMED: Final = {"W0001": "User {} not found.", "W0002": "Asset {!r} not found."}


def raise_for_sqlstate(error: Exception, **names: str) -> NoReturn:
    """Turn a posting function's SQLSTATE into its WalletError (re-raise anything else).

    `names` may override a message by SQLSTATE, e.g. `W0001="User … not found."`."""
    state = sqlstate(error)
    if state not in _RAISED:
        raise error
    raise _raised(state, names, _detail(error)) from None


def _detail(error: Exception) -> str | None:
    """The DETAIL of a database error, raised by asyncpg itself or through SQLAlchemy (whose
    error's `orig` was raised from asyncpg's)."""
    orig = getattr(error, "orig", None)
    for candidate in (error, orig, getattr(orig, "__cause__", None)):
        found = getattr(candidate, "detail", None)
        if isinstance(found, str):
            return found
    return None


def _raised(state: str, names: Mapping[str, str], subject: str | None) -> WalletError:
    kind, message = _RAISED[state]
    if state in names:
        message = names[state]
    elif subject and state in _NAMED:
        message = _NAMED[state].format(subject)
    details = {"field": _FIELDS[state]} if state in _FIELDS else {}
    return kind(message, **details)


# ledger_error_code's names of the SQLSTATEs a batch's operation answers as its own ERROR.
_ERROR_STATES: Final = {
    "USER_NOT_FOUND": "W0001",
    "ASSET_NOT_FOUND": "W0002",
}


def operation_error(code: str, subject: str | None = None, **names: str) -> WalletError:
    """The WalletError of an operation that ledger_batch_each answered as ERROR with `code` (and
    the `subject` it could not find): what raise_for_sqlstate raises for that SQLSTATE when the
    operation runs alone."""
    return _raised(_ERROR_STATES[code], names, subject)


def parse_time(value: str) -> datetime:
    """A timestamp the database wrote into a JSON answer."""
    return datetime.fromisoformat(value)


def optional_uuid(value: object) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value is not None else None


def encode_cursor(entry_id: int, *, prefix: str = "e") -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, prefix: str = "e") -> int:
    """The cursor is opaque to clients; anything we did not issue is a validation error."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        found, _, number = raw.partition(":")
        if found != prefix or not number.isdigit() or len(number) > 19:
            raise ValueError(raw)
        if int(number) > MAX_BIGINT:
            raise ValueError(raw)
        # Exactly as issued: the decoder skips what is not base64 and takes padding, leading
        # zeros and other spellings of the same number.
        if encode_cursor(int(number), prefix=prefix) != cursor:
            raise ValueError(cursor)
        return int(number)
    except ValueError:
        raise ValidationError(
            "cursor is not a cursor this service issued.", field="cursor"
        ) from None


@dataclass(frozen=True, slots=True)
class Stored:
    """What a keyed posting function answered: its outcome and the answer stored with the key."""

    outcome: str
    replayed: bool
    result: Any


async def call_keyed(
    conn: AsyncConnection, sql: TextClause, params: Mapping[str, Any], **messages: str
) -> Stored:
    """Run one of the keyed posting functions (they answer outcome, replayed,
    fingerprint_matches, result); a key used for another request is IDEMPOTENCY_KEY_REUSED."""
    try:
        row = (await conn.execute(sql, params)).one()
    except DBAPIError as error:
        raise_for_sqlstate(error, **messages)
    if not row.fingerprint_matches:
        raise key_reused(stored_transaction(row.outcome, row.result))
    return Stored(row.outcome, row.replayed, row.result)


def stored_transaction(outcome: object, result: object) -> object:
    """The transaction a stored answer names (its `transactionId`) when its request completed
    and the answer is an object that names one. A batch's answer (a list) names none, nor does
    a refusal: a hold's capture or void refused HOLD_NOT_ACTIVE stores the hold, which names
    the capture another key made."""
    if outcome != "COMPLETED" or not isinstance(result, Mapping):
        return None
    return result.get("transactionId")


def key_reused(original: object) -> IdempotencyKeyReused:
    """A key used for another request, naming the transaction its first request made (None
    when that made none), whichever route used it first."""
    return IdempotencyKeyReused(
        "This Idempotency-Key was already used for a different request.",
        originalTransactionId=str(original) if original else None,
    )


def declined(stored: Stored, error: Declined) -> Declined:
    """A stored refusal, marked as replayed when it is one. Write functions return refusals
    rather than raise them: raising inside the caller's transaction would roll back the stored
    answer. The boundary raises them after its commit (`settled`)."""
    error.replayed = stored.replayed
    return error


def settled(result: T | Declined) -> T:
    """The result of a write, or its refusal raised (call it once the transaction is over)."""
    if isinstance(result, Declined):
        raise result
    return result
