"""What the OpenAPI document's parts share: primitives, envelopes, the seeded users as
examples, and the schemas more than one feature answers with."""

from __future__ import annotations

from typing import Any, Final

from wallet.inputs import (
    MAX_AMOUNT,
    MAX_JSON_INT,
    MAX_METADATA_KEYS,
    TRANSACTION_TYPES,
    TX_TYPES,
)
from wallet.seed import ALICE, BOB

UUID: Final = {"type": "string", "format": "uuid"}
DIGITS: Final = {"type": "string", "pattern": "^[0-9]+$"}
INSTANT: Final = {"type": "string", "format": "date-time"}
NULLABLE_UUID: Final = {"type": ["string", "null"], "format": "uuid"}

ERROR: Final = {
    "type": "object",
    "required": ["success", "code", "message"],
    "properties": {
        "success": {"const": False},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}

ERROR_STATUSES: Final = {
    "400": "Malformed input (VALIDATION_ERROR, IDEMPOTENCY_KEY_MISSING)",
    "401": "No or invalid credentials (UNAUTHENTICATED)",
    "403": "Credentials not allowed to do this (FORBIDDEN)",
    "404": "Unknown user, asset, transaction, hold, key or route (USER_NOT_FOUND,"
    " ASSET_NOT_FOUND, TRANSACTION_NOT_FOUND, HOLD_NOT_FOUND, NOT_FOUND)",
    "405": "Wrong method (METHOD_NOT_ALLOWED)",
    "409": "Conflict (USER_ALREADY_EXISTS, ASSET_ALREADY_EXISTS)",
    "413": "Body over the limit (PAYLOAD_TOO_LARGE)",
    "422": "Refused by the ledger, stored with the key and replayed (INSUFFICIENT_FUNDS,"
    " BALANCE_LIMIT_EXCEEDED, NOT_REVERSIBLE, REVERSAL_EXCEEDS_ORIGINAL, HOLD_NOT_ACTIVE,"
    " HOLD_EXPIRED, BATCH_FAILED), or IDEMPOTENCY_KEY_REUSED",
    "429": "Rate limited (RATE_LIMITED), see Retry-After",
    "503": "Busy or database unavailable (BUSY, SERVICE_UNAVAILABLE), see Retry-After",
}


def ok_envelope(data: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"const": True}, "data": data, **(extra or {})},
    }


def object_of(**properties: Any) -> dict[str, Any]:
    """An object with exactly these properties, every one always present."""
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def responses_of(success: str, schema: dict[str, Any], *errors: str) -> dict[str, Any]:
    answers: dict[str, Any] = {
        success: {"description": "OK", "content": {"application/json": {"schema": schema}}}
    }
    for status in ("401", "403", "429", "503", *errors):
        answers[status] = {
            "description": ERROR_STATUSES[status],
            "content": {"application/json": {"schema": ERROR}},
        }
    return answers


def json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


# The seeded users as examples, so that fuzzing reaches the success answers too.
USER_ID: Final = {**UUID, "examples": [str(ALICE), str(BOB)]}
USER_PATH: Final = {"name": "userId", "in": "path", "required": True, "schema": USER_ID}
TRANSACTION_PATH: Final = {
    "name": "transactionId",
    "in": "path",
    "required": True,
    "schema": UUID,
}
IDEMPOTENCY_KEY: Final = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "1-255 printable ASCII characters. The same key with the same request"
    " replays the stored answer (Idempotent-Replayed: true); with another request it is"
    " IDEMPOTENCY_KEY_REUSED.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
REPLAYED: Final = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer of an earlier request with this key",
        "schema": {"const": "true"},
    }
}
AMOUNT: Final = {
    "description": "A count of the asset's smallest unit, 1 to 2^53 - 1: a JSON integer or a"
    " string of digits.",
    "oneOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
        {"type": "string", "pattern": "^[0-9]+$"},
    ],
}
ASSET_SLUG: Final = {"type": "string", "minLength": 1, "maxLength": 64}
REFERENCE_IN: Final = {
    "description": "The caller's own id for the transaction (an order id); not unique.",
    "type": ["string", "null"],
    "pattern": "^[ -~]{1,128}$",
}
METADATA_VALUE: Final = {
    "anyOf": [
        {"type": "string", "maxLength": 512},
        {"type": "integer", "minimum": -MAX_JSON_INT, "maximum": MAX_JSON_INT},
        {"type": "boolean"},
        {"type": "null"},
    ]
}
METADATA_IN: Final = {
    "description": "A flat object: at most 32 keys of 1-64 characters of [A-Za-z0-9_.-],"
    " values strings (at most 512 characters), integers within +-(2^53 - 1), booleans or"
    " null; at most 4 KiB serialised (compact UTF-8 JSON).",
    "type": ["object", "null"],
    "maxProperties": MAX_METADATA_KEYS,
    "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,64}$"},
    "additionalProperties": METADATA_VALUE,
}
REFERENCE_OUT: Final = {"type": ["string", "null"]}
METADATA_OUT: Final = {"type": "object", "additionalProperties": METADATA_VALUE}
BALANCE: Final = object_of(
    id={"type": "integer", "description": "The account's id"},
    slug={"type": "string"},
    name={"type": "string"},
    decimals={"type": "integer", "minimum": 0, "maximum": 18},
    balance={**DIGITS, "description": "The whole balance, held coins included"},
    available={**DIGITS, "description": "balance - held: what may be spent now"},
    held=DIGITS,
)
TRANSACT_BODY: Final = {
    "type": "object",
    "required": ["userId", "amount", "assetSlug", "type"],
    "properties": {
        "userId": USER_ID,
        "amount": AMOUNT,
        "assetSlug": ASSET_SLUG,
        "type": {"enum": list(TX_TYPES)},
        "reference": REFERENCE_IN,
        "metadata": METADATA_IN,
    },
}
TRANSACTED: Final = object_of(
    transactionId=UUID,
    status={"const": "COMPLETED"},
    type={"enum": list(TX_TYPES)},
    userId=UUID,
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    balanceBefore=DIGITS,
    balanceAfter=DIGITS,
    reference=REFERENCE_OUT,
    metadata=METADATA_OUT,
    createdAt=INSTANT,
)
HISTORY_ITEM: Final = object_of(
    transactionId=UUID,
    type={"enum": list(TRANSACTION_TYPES)},
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    direction={"enum": ["DEBIT", "CREDIT"]},
    balanceAfter=DIGITS,
    principal={"type": "string"},
    reference=REFERENCE_OUT,
    metadata=METADATA_OUT,
    counterpartyUserId={
        **NULLABLE_UUID,
        "description": "The other user of a TRANSFER or of its reversal; otherwise null",
    },
    reversesTransactionId=NULLABLE_UUID,
    createdAt=INSTANT,
)
TRANSFER_BODY: Final = {
    "type": "object",
    "required": ["fromUserId", "toUserId", "amount", "assetSlug"],
    "properties": {
        "fromUserId": USER_ID,
        "toUserId": USER_ID,
        "amount": AMOUNT,
        "assetSlug": ASSET_SLUG,
        "reference": REFERENCE_IN,
        "metadata": METADATA_IN,
    },
}
TRANSFERRED: Final = object_of(
    transactionId=UUID,
    status={"const": "COMPLETED"},
    type={"const": "TRANSFER"},
    fromUserId=UUID,
    toUserId=UUID,
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    fromBalanceAfter=DIGITS,
    toBalanceAfter=DIGITS,
    reference=REFERENCE_OUT,
    metadata=METADATA_OUT,
    createdAt=INSTANT,
)
REVERSE_BODY: Final = {
    "type": "object",
    "properties": {
        "amount": {
            **AMOUNT,
            "description": "How much to move back (default: all that is still reversible)",
        },
        "reason": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
        "metadata": METADATA_IN,
    },
}
REVERSED: Final = object_of(
    transactionId={**UUID, "description": "The REVERSAL's own id"},
    status={"const": "COMPLETED"},
    type={"const": "REVERSAL"},
    reversesTransactionId=UUID,
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    remainingReversible={"type": "integer", "minimum": 0},
    balances={
        "description": "Every user wallet the reversal touched",
        "type": "array",
        "items": object_of(userId=UUID, balanceAfter=DIGITS),
    },
    reason={"type": ["string", "null"]},
    metadata=METADATA_OUT,
    createdAt=INSTANT,
)
TRANSACTION: Final = object_of(
    transactionId=UUID,
    type={"enum": list(TRANSACTION_TYPES)},
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    reference=REFERENCE_OUT,
    metadata=METADATA_OUT,
    principal={"type": "string"},
    reversesTransactionId=NULLABLE_UUID,
    reason={"type": ["string", "null"], "description": "a REVERSAL's reason"},
    reversedAmount={"type": "integer", "minimum": 0},
    entries={
        "type": "array",
        "items": object_of(
            userId={**NULLABLE_UUID, "description": "null for system accounts (the Treasury)"},
            accountKind={"enum": ["USER", "TREASURY"]},
            direction={"enum": ["DEBIT", "CREDIT"]},
            amount={"type": "integer"},
            balanceAfter={
                "type": ["string", "null"],
                "pattern": "^[0-9]+$",
                "description": "The wallet's balance after the entry; null for a Treasury entry"
                " (its shard's balance means nothing to a client) and for a wallet these"
                " credentials may not read",
            },
        ),
    },
    createdAt=INSTANT,
)
ASSET: Final = object_of(
    slug={"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
    name={"type": "string", "minLength": 1, "maxLength": 100},
    decimals={"type": "integer", "minimum": 0, "maximum": 18},
)
SECURITY: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def replayable(responses: dict[str, Any], *statuses: str) -> dict[str, Any]:
    """Mark the answers that may be a stored one given again."""
    for status in statuses:
        responses[status] = {**responses[status], "headers": REPLAYED}
    return responses
