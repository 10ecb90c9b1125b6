"""The REST API's OpenAPI 3.1 document, served at /openapi.json (a test keeps it in step)."""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from wallet.http import JSONResponse
from wallet.inputs import (
    MAX_AMOUNT,
    MAX_JSON_INT,
    MAX_METADATA_KEYS,
    TRANSACTION_TYPES,
    TX_TYPES,
)
from wallet.ledger import DEFAULT_EXPIRY_S, HOLD_STATUSES, MAX_EXPIRY_S, MAX_OPERATIONS
from wallet.seed import ALICE, BOB

_UUID: Final = {"type": "string", "format": "uuid"}
_DIGITS: Final = {"type": "string", "pattern": "^[0-9]+$"}
_INSTANT: Final = {"type": "string", "format": "date-time"}
_NULLABLE_UUID: Final = {"type": ["string", "null"], "format": "uuid"}

_ERROR: Final = {
    "type": "object",
    "required": ["success", "code", "message"],
    "properties": {
        "success": {"const": False},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}

_ERROR_STATUSES: Final = {
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


def _ok(data: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"const": True}, "data": data, **(extra or {})},
    }


def _object(**properties: Any) -> dict[str, Any]:
    """An object with exactly these properties, every one always present."""
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def _responses(success: str, schema: dict[str, Any], *errors: str) -> dict[str, Any]:
    answers: dict[str, Any] = {
        success: {"description": "OK", "content": {"application/json": {"schema": schema}}}
    }
    for status in ("401", "403", "429", "503", *errors):
        answers[status] = {
            "description": _ERROR_STATUSES[status],
            "content": {"application/json": {"schema": _ERROR}},
        }
    return answers


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


# The seeded users as examples, so that fuzzing reaches the success answers too.
_USER_ID: Final = {**_UUID, "examples": [str(ALICE), str(BOB)]}
_USER_PATH: Final = {"name": "userId", "in": "path", "required": True, "schema": _USER_ID}
_TRANSACTION_PATH: Final = {
    "name": "transactionId",
    "in": "path",
    "required": True,
    "schema": _UUID,
}
_IDEMPOTENCY_KEY: Final = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "1-255 printable ASCII characters. The same key with the same request"
    " replays the stored answer (Idempotent-Replayed: true); with another request it is"
    " IDEMPOTENCY_KEY_REUSED.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_REPLAYED: Final = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer of an earlier request with this key",
        "schema": {"const": "true"},
    }
}
_AMOUNT: Final = {
    "description": "A count of the asset's smallest unit, 1 to 2^53 - 1: a JSON integer or a"
    " string of digits.",
    "oneOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
        {"type": "string", "pattern": "^[0-9]+$"},
    ],
}
_ASSET_SLUG: Final = {"type": "string", "minLength": 1, "maxLength": 64}
_REFERENCE_IN: Final = {
    "description": "The caller's own id for the transaction (an order id); not unique.",
    "type": ["string", "null"],
    "pattern": "^[ -~]{1,128}$",
}
_METADATA_VALUE: Final = {
    "anyOf": [
        {"type": "string", "maxLength": 512},
        {"type": "integer", "minimum": -MAX_JSON_INT, "maximum": MAX_JSON_INT},
        {"type": "boolean"},
        {"type": "null"},
    ]
}
_METADATA_IN: Final = {
    "description": "A flat object: at most 32 keys of 1-64 characters of [A-Za-z0-9_.-],"
    " values strings (at most 512 characters), integers within +-(2^53 - 1), booleans or"
    " null; at most 4 KiB serialised (compact UTF-8 JSON).",
    "type": ["object", "null"],
    "maxProperties": MAX_METADATA_KEYS,
    "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,64}$"},
    "additionalProperties": _METADATA_VALUE,
}
_REFERENCE_OUT: Final = {"type": ["string", "null"]}
_METADATA_OUT: Final = {"type": "object", "additionalProperties": _METADATA_VALUE}
_BALANCE: Final = _object(
    id={"type": "integer", "description": "The account's id"},
    slug={"type": "string"},
    name={"type": "string"},
    decimals={"type": "integer", "minimum": 0, "maximum": 18},
    balance={**_DIGITS, "description": "The whole balance, held coins included"},
    available={**_DIGITS, "description": "balance - held: what may be spent now"},
    held=_DIGITS,
)
_TRANSACT_BODY: Final = {
    "type": "object",
    "required": ["userId", "amount", "assetSlug", "type"],
    "properties": {
        "userId": _USER_ID,
        "amount": _AMOUNT,
        "assetSlug": _ASSET_SLUG,
        "type": {"enum": list(TX_TYPES)},
        "reference": _REFERENCE_IN,
        "metadata": _METADATA_IN,
    },
}
_TRANSACTED: Final = _object(
    transactionId=_UUID,
    status={"const": "COMPLETED"},
    type={"enum": list(TX_TYPES)},
    userId=_UUID,
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    balanceBefore=_DIGITS,
    balanceAfter=_DIGITS,
    reference=_REFERENCE_OUT,
    metadata=_METADATA_OUT,
    createdAt=_INSTANT,
)
_HISTORY_ITEM: Final = _object(
    transactionId=_UUID,
    type={"enum": list(TRANSACTION_TYPES)},
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    direction={"enum": ["DEBIT", "CREDIT"]},
    balanceAfter=_DIGITS,
    principal={"type": "string"},
    reference=_REFERENCE_OUT,
    metadata=_METADATA_OUT,
    counterpartyUserId={
        **_NULLABLE_UUID,
        "description": "The other user of a TRANSFER or of its reversal; otherwise null",
    },
    reversesTransactionId=_NULLABLE_UUID,
    createdAt=_INSTANT,
)
_TRANSFER_BODY: Final = {
    "type": "object",
    "required": ["fromUserId", "toUserId", "amount", "assetSlug"],
    "properties": {
        "fromUserId": _USER_ID,
        "toUserId": _USER_ID,
        "amount": _AMOUNT,
        "assetSlug": _ASSET_SLUG,
        "reference": _REFERENCE_IN,
        "metadata": _METADATA_IN,
    },
}
_TRANSFERRED: Final = _object(
    transactionId=_UUID,
    status={"const": "COMPLETED"},
    type={"const": "TRANSFER"},
    fromUserId=_UUID,
    toUserId=_UUID,
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    fromBalanceAfter=_DIGITS,
    toBalanceAfter=_DIGITS,
    reference=_REFERENCE_OUT,
    metadata=_METADATA_OUT,
    createdAt=_INSTANT,
)
_REVERSE_BODY: Final = {
    "type": "object",
    "properties": {
        "amount": {
            **_AMOUNT,
            "description": "How much to move back (default: all that is still reversible)",
        },
        "reason": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
        "metadata": _METADATA_IN,
    },
}
_REVERSED: Final = _object(
    transactionId={**_UUID, "description": "The REVERSAL's own id"},
    status={"const": "COMPLETED"},
    type={"const": "REVERSAL"},
    reversesTransactionId=_UUID,
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    remainingReversible={"type": "integer", "minimum": 0},
    balances={
        "description": "Every user wallet the reversal touched",
        "type": "array",
        "items": _object(userId=_UUID, balanceAfter=_DIGITS),
    },
    reason={"type": ["string", "null"]},
    metadata=_METADATA_OUT,
    createdAt=_INSTANT,
)
_TRANSACTION: Final = _object(
    transactionId=_UUID,
    type={"enum": list(TRANSACTION_TYPES)},
    assetSlug={"type": "string"},
    amount={"type": "integer"},
    reference=_REFERENCE_OUT,
    metadata=_METADATA_OUT,
    principal={"type": "string"},
    reversesTransactionId=_NULLABLE_UUID,
    reversedAmount={"type": "integer", "minimum": 0},
    entries={
        "type": "array",
        "items": _object(
            userId={**_NULLABLE_UUID, "description": "null for system accounts (the Treasury)"},
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
    createdAt=_INSTANT,
)
_ASSET: Final = _object(
    slug={"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
    name={"type": "string", "minLength": 1, "maxLength": 100},
    decimals={"type": "integer", "minimum": 0, "maximum": 18},
)
_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _replayable(responses: dict[str, Any], *statuses: str) -> dict[str, Any]:
    """Mark the answers that may be a stored one given again."""
    for status in statuses:
        responses[status] = {**responses[status], "headers": _REPLAYED}
    return responses


# --- Holds and batches

_HOLD_FIELDS: Final[dict[str, Any]] = {
    "holdId": _UUID,
    "status": {
        "enum": list(HOLD_STATUSES),
        "description": "A HELD hold past its expiresAt reads EXPIRED, swept or not",
    },
    "userId": _UUID,
    "assetSlug": {"type": "string"},
    "amount": {"type": "integer", "minimum": 1},
    "capturedAmount": {"type": "integer", "minimum": 0},
    "expiresAt": _INSTANT,
    "reference": _REFERENCE_OUT,
    "metadata": _METADATA_OUT,
    "createdAt": _INSTANT,
}
_HOLD_POSTING: Final = {
    **_UUID,
    "description": "A CAPTURED hold's posting: a SPEND to the Treasury, or a TRANSFER to toUserId",
}
_AFTER: Final[dict[str, Any]] = {
    "balance": {**_DIGITS, "description": "The user's whole balance after this write"},
    "available": {**_DIGITS, "description": "The user's available balance after this write"},
}
_HOLD: Final = {
    "type": "object",
    "required": list(_HOLD_FIELDS),
    "properties": {**_HOLD_FIELDS, "transactionId": _HOLD_POSTING},
    "additionalProperties": False,
}
_HOLD_CREATED: Final = _object(**_HOLD_FIELDS, **_AFTER)
_HOLD_CAPTURED: Final = _object(**_HOLD_FIELDS, transactionId=_HOLD_POSTING, **_AFTER)
_HOLD_VOIDED: Final = _object(**_HOLD_FIELDS, **_AFTER)
_HOLD_BODY: Final = {
    "type": "object",
    "required": ["userId", "amount", "assetSlug"],
    "properties": {
        "userId": _USER_ID,
        "amount": _AMOUNT,
        "assetSlug": _ASSET_SLUG,
        "expiresInSeconds": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_EXPIRY_S,
            "default": DEFAULT_EXPIRY_S,
        },
        "reference": _REFERENCE_IN,
        "metadata": _METADATA_IN,
    },
}
_CAPTURE_BODY: Final = {
    "type": "object",
    "properties": {
        "amount": {**_AMOUNT, "description": "At most the hold's amount (default: all of it)"},
        "toUserId": {**_USER_ID, "description": "Who is paid (default: the Treasury, a purchase)"},
        "reference": _REFERENCE_IN,
        "metadata": _METADATA_IN,
    },
}
_HOLD_PATH: Final = {"name": "holdId", "in": "path", "required": True, "schema": _UUID}
_OPERATION: Final = {
    "type": "object",
    "description": "The body fields of the operation's own route: `userId` for TOPUP, BONUS and"
    " SPEND, `fromUserId` and `toUserId` for TRANSFER. `idempotencyKey` is the operation's own"
    " Idempotency-Key, required when the batch is not atomic.",
    "required": ["op", "amount", "assetSlug"],
    "properties": {
        "op": {"enum": [*TX_TYPES, "TRANSFER"]},
        "userId": _USER_ID,
        "fromUserId": _USER_ID,
        "toUserId": _USER_ID,
        "amount": _AMOUNT,
        "assetSlug": _ASSET_SLUG,
        "reference": _REFERENCE_IN,
        "metadata": _METADATA_IN,
        "idempotencyKey": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
    },
}
_OPERATION_DATA: Final = {"oneOf": [_TRANSACTED, _TRANSFERRED]}
_BATCH_DONE: Final = _object(
    results={
        "type": "array",
        "description": "In input order. Atomic: each operation's data, as its route answers it."
        " Not atomic: {status: 200, data} or {status: 4xx, code, message} per operation.",
        "items": {
            "oneOf": [
                _TRANSACTED,
                _TRANSFERRED,
                _object(status={"const": 200}, data=_OPERATION_DATA),
                _object(
                    status={"type": "integer", "minimum": 400, "maximum": 499},
                    code={"type": "string"},
                    message={"type": "string"},
                ),
            ]
        },
    }
)
HOLD_AND_BATCH_PATHS: Final[dict[str, Any]] = {
    "/api/wallet/holds": {
        "post": {
            "operationId": "createHold",
            "description": "Reserve coins of the user's available balance until the hold is"
            " captured, voided or expires (released within 5 s of expiresAt), exactly once per"
            " Idempotency-Key. Keys with `transact` only; never an end-user token.",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": _json_body(_HOLD_BODY),
            "responses": _replayable(
                _responses("200", _ok(_HOLD_CREATED), "400", "404", "413", "422"), "200", "422"
            ),
        },
        "get": {
            "operationId": "listHolds",
            "description": "Holds, newest first, keyset-paginated. Keys with `read` only.",
            "parameters": [
                _query("userId", _USER_ID, "Only this user's holds"),
                _query("status", {"enum": list(HOLD_STATUSES)}, "Only holds in this status"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Default 20"),
                _query("cursor", {"type": "string"}, "nextCursor of the previous page"),
            ],
            "responses": _responses(
                "200",
                _ok(
                    {"type": "array", "items": _HOLD},
                    {"nextCursor": {"type": ["string", "null"]}},
                ),
                "400",
                "404",
            ),
        },
    },
    "/api/wallet/holds/{holdId}": {
        "get": {
            "operationId": "getHold",
            "parameters": [_HOLD_PATH],
            "responses": _responses("200", _ok(_HOLD), "400", "404"),
        }
    },
    "/api/wallet/holds/{holdId}/capture": {
        "post": {
            "operationId": "captureHold",
            "description": "Post (part of) a HELD hold, releasing the rest at once. A hold is"
            " captured at most once; past its expiry it is HOLD_EXPIRED.",
            "parameters": [_HOLD_PATH, _IDEMPOTENCY_KEY],
            "requestBody": _json_body(_CAPTURE_BODY, required=False),
            "responses": _replayable(
                _responses("200", _ok(_HOLD_CAPTURED), "400", "404", "413", "422"), "200", "422"
            ),
        }
    },
    "/api/wallet/holds/{holdId}/void": {
        "post": {
            "operationId": "voidHold",
            "description": "Release all of a HELD hold.",
            "parameters": [_HOLD_PATH, _IDEMPOTENCY_KEY],
            "responses": _replayable(
                _responses("200", _ok(_HOLD_VOIDED), "400", "404", "413", "422"), "200", "422"
            ),
        }
    },
    "/api/wallet/batch": {
        "post": {
            "operationId": "batch",
            "description": f"1 to {MAX_OPERATIONS} operations, validated whole before any"
            " runs, in one round trip; bodies up to 1 MiB (WALLET_MAX_BATCH_BYTES). Atomic: all"
            " or nothing (BATCH_FAILED names the first failure). Not atomic: each operation"
            " under its own idempotencyKey and its own route's rules. The batch needs what each"
            " of its operations needs.",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": _json_body(
                {
                    "type": "object",
                    "required": ["atomic", "operations"],
                    "properties": {
                        "atomic": {"type": "boolean"},
                        "operations": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_OPERATIONS,
                            "items": _OPERATION,
                        },
                    },
                }
            ),
            "responses": _replayable(
                _responses("200", _ok(_BATCH_DONE), "400", "413", "422"), "200", "422"
            ),
        }
    },
}


DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Wallet",
        "version": "1",
        "description": "Virtual-credit wallets on a double-entry ledger. Every error is JSON with"
        " a stable `code`.",
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A service API key (wk_…) or an end-user JWT.",
            }
        }
    },
    "security": _SECURITY,
    "paths": {
        "/api/wallet/balance/{userId}": {
            "get": {
                "operationId": "getBalance",
                "description": "One row per asset the user holds an account for, by slug. With"
                " `at`, each balance as it stood at that instant (assets with no entry by then"
                " are left out).",
                "parameters": [
                    _USER_PATH,
                    _query("at", _INSTANT, "An RFC 3339 instant, not in the future"),
                ],
                "responses": _responses(
                    "200", _ok({"type": "array", "items": _BALANCE}), "400", "404"
                ),
            }
        },
        "/api/wallet/transact": {
            "post": {
                "operationId": "transact",
                "description": "TOPUP or BONUS (the asset's Treasury pays the user) or SPEND (the"
                " user pays the Treasury), exactly once per Idempotency-Key.",
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": _json_body(_TRANSACT_BODY),
                "responses": _replayable(
                    _responses("200", _ok(_TRANSACTED), "400", "404", "413", "422"), "200", "422"
                ),
            }
        },
        "/api/wallet/transfer": {
            "post": {
                "operationId": "transfer",
                "description": "Coins from one user's wallet to another's (a recipient without"
                " an account in the asset gets one), exactly once per Idempotency-Key.",
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": _json_body(_TRANSFER_BODY),
                "responses": _replayable(
                    _responses("200", _ok(_TRANSFERRED), "400", "404", "413", "422"), "200", "422"
                ),
            }
        },
        "/api/wallet/transactions/{userId}": {
            "get": {
                "operationId": "getTransactions",
                "description": "The user's entries, newest first, keyset-paginated. Filters are"
                " ANDed; besides those listed, `metadata.<key>=<value>` matches a metadata"
                " value's text (`metadata.orderId=A-17`, `metadata.level=3`,"
                " `metadata.vip=true`), once per key.",
                "parameters": [
                    _USER_PATH,
                    _query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Default 20"
                    ),
                    _query("cursor", {"type": "string"}, "nextCursor of the previous page"),
                    _query("assetSlug", _ASSET_SLUG, "Only this asset"),
                    _query("type", {"enum": list(TRANSACTION_TYPES)}, "Only this type"),
                    _query(
                        "reference",
                        {"type": "string", "pattern": "^[ -~]{1,128}$"},
                        "Only transactions with this reference",
                    ),
                    _query("from", _INSTANT, "createdAt at or after this instant (RFC 3339)"),
                    _query("to", _INSTANT, "createdAt before this instant (RFC 3339)"),
                ],
                "responses": _responses(
                    "200",
                    _ok(
                        {"type": "array", "items": _HISTORY_ITEM},
                        {"nextCursor": {"type": ["string", "null"]}},
                    ),
                    "400",
                    "404",
                ),
            }
        },
        "/api/transactions/{transactionId}": {
            "get": {
                "operationId": "getTransaction",
                "description": "A transaction with its entries. An end-user token reads only"
                " transactions with an entry on its own wallet; for any other id, known or"
                " not, it is answered 403 FORBIDDEN.",
                "parameters": [_TRANSACTION_PATH],
                "responses": _responses("200", _ok(_TRANSACTION), "400", "404"),
            }
        },
        "/api/transactions/{transactionId}/reverse": {
            "post": {
                "operationId": "reverseTransaction",
                "description": "Move `amount` (default: all still reversible) back along the"
                " transaction's legs, the other way, exactly once per Idempotency-Key. The"
                " reversals of a transaction add up to at most its amount.",
                "parameters": [_TRANSACTION_PATH, _IDEMPOTENCY_KEY],
                "requestBody": _json_body(_REVERSE_BODY, required=False),
                "responses": _replayable(
                    _responses("200", _ok(_REVERSED), "400", "404", "413", "422"), "200", "422"
                ),
            }
        },
        "/api/assets": {
            "get": {
                "operationId": "listAssets",
                "responses": _responses("200", _ok({"type": "array", "items": _ASSET})),
            }
        },
        "/api/admin/assets": {
            "post": {
                "operationId": "createAsset",
                "description": "A new asset and its Treasury (201); the same fields again are"
                " answered 200; other fields for an existing slug are ASSET_ALREADY_EXISTS.",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["slug", "name", "decimals"],
                        "properties": {
                            "slug": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                            "name": {"type": "string", "minLength": 1, "maxLength": 100},
                            "decimals": {"type": "integer", "minimum": 0, "maximum": 18},
                        },
                    }
                ),
                "responses": {
                    **_responses("201", _ok(_ASSET), "400", "409", "413"),
                    "200": {
                        "description": "The asset existed already, with the same fields",
                        "content": {"application/json": {"schema": _ok(_ASSET)}},
                    },
                },
            }
        },
        **HOLD_AND_BATCH_PATHS,
        "/api/users": {
            "post": {
                "operationId": "createUser",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["username"],
                        "properties": {
                            "id": _UUID,
                            "username": {"type": "string", "minLength": 1, "maxLength": 64},
                        },
                    }
                ),
                "responses": {
                    **_responses("201", _ok({"type": "object"}), "400", "409", "413"),
                    "200": {"description": "The user existed already (same id and username)"},
                },
            }
        },
        "/api/admin/keys": {
            "get": {
                "operationId": "listKeys",
                "responses": _responses("200", _ok({"type": "array"})),
            },
            "post": {
                "operationId": "createKey",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["name", "scopes"],
                        "properties": {
                            "name": {"type": "string"},
                            "scopes": {
                                "type": "array",
                                "items": {"enum": ["read", "transact", "admin"]},
                            },
                        },
                    }
                ),
                "responses": _responses("201", _ok({"type": "object"}), "400", "413"),
            },
        },
        "/api/admin/keys/{name}": {
            "delete": {
                "operationId": "revokeKey",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses("200", _ok({"type": "object"}), "404"),
            }
        },
        "/api/admin/audit": {
            "get": {
                "operationId": "audit",
                "responses": _responses("200", _ok({"type": "object"})),
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "security": [],
                "responses": {"200": {"description": "The process is up"}},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": {"description": "The database answers"},
                    "503": {"description": "The database does not answer"},
                },
            }
        },
    },
}


async def openapi_json(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
