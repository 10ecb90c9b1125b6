"""The holds' routes: create, capture, void, read and list."""

from __future__ import annotations

from typing import Any, Final

from wallet.ledger import DEFAULT_EXPIRY_S, HOLD_STATUSES, MAX_EXPIRY_S
from wallet.openapi.common import (
    AMOUNT,
    ASSET_SLUG,
    DIGITS,
    IDEMPOTENCY_KEY,
    INSTANT,
    METADATA_IN,
    METADATA_OUT,
    REFERENCE_IN,
    REFERENCE_OUT,
    USER_ID,
    UUID,
    json_body,
    object_of,
    ok_envelope,
    query_param,
    replayable,
    responses_of,
)

HOLD_FIELDS: Final[dict[str, Any]] = {
    "holdId": UUID,
    "status": {
        "enum": list(HOLD_STATUSES),
        "description": "A HELD hold past its expiresAt reads EXPIRED, swept or not",
    },
    "userId": UUID,
    "assetSlug": {"type": "string"},
    "amount": {"type": "integer", "minimum": 1},
    "capturedAmount": {"type": "integer", "minimum": 0},
    "expiresAt": INSTANT,
    "reference": REFERENCE_OUT,
    "metadata": METADATA_OUT,
    "createdAt": INSTANT,
}
HOLD_POSTING: Final = {
    **UUID,
    "description": "A CAPTURED hold's posting: a SPEND to the Treasury, or a TRANSFER to toUserId",
}
AFTER: Final[dict[str, Any]] = {
    "balance": {**DIGITS, "description": "The user's whole balance after this write"},
    "available": {**DIGITS, "description": "The user's available balance after this write"},
}
HOLD: Final = {
    "type": "object",
    "required": list(HOLD_FIELDS),
    "properties": {**HOLD_FIELDS, "transactionId": HOLD_POSTING},
    "additionalProperties": False,
}
HOLD_CREATED: Final = object_of(**HOLD_FIELDS, **AFTER)
HOLD_CAPTURED: Final = object_of(**HOLD_FIELDS, transactionId=HOLD_POSTING, **AFTER)
HOLD_VOIDED: Final = object_of(**HOLD_FIELDS, **AFTER)
HOLD_BODY: Final = {
    "type": "object",
    "required": ["userId", "amount", "assetSlug"],
    "properties": {
        "userId": USER_ID,
        "amount": AMOUNT,
        "assetSlug": ASSET_SLUG,
        "expiresInSeconds": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_EXPIRY_S,
            "default": DEFAULT_EXPIRY_S,
        },
        "reference": REFERENCE_IN,
        "metadata": METADATA_IN,
    },
}
CAPTURE_BODY: Final = {
    "type": "object",
    "properties": {
        "amount": {**AMOUNT, "description": "At most the hold's amount (default: all of it)"},
        "toUserId": {**USER_ID, "description": "Who is paid (default: the Treasury, a purchase)"},
        "reference": REFERENCE_IN,
        "metadata": METADATA_IN,
    },
}
HOLD_PATH: Final = {"name": "holdId", "in": "path", "required": True, "schema": UUID}
HOLD_PATHS: Final[dict[str, Any]] = {
    "/api/wallet/holds": {
        "post": {
            "operationId": "createHold",
            "description": "Reserve coins of the user's available balance until the hold is"
            " captured, voided or expires (released within 5 s of expiresAt), exactly once per"
            " Idempotency-Key. Keys with `transact` only; never an end-user token.",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": json_body(HOLD_BODY),
            "responses": replayable(
                responses_of("200", ok_envelope(HOLD_CREATED), "400", "404", "413", "422"),
                "200",
                "422",
            ),
        },
        "get": {
            "operationId": "listHolds",
            "description": "Holds, newest first, keyset-paginated. Keys with `read` only.",
            "parameters": [
                query_param("userId", USER_ID, "Only this user's holds"),
                query_param("status", {"enum": list(HOLD_STATUSES)}, "Only holds in this status"),
                query_param(
                    "limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Default 20"
                ),
                query_param("cursor", {"type": "string"}, "nextCursor of the previous page"),
            ],
            "responses": responses_of(
                "200",
                ok_envelope(
                    {"type": "array", "items": HOLD},
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
            "parameters": [HOLD_PATH],
            "responses": responses_of("200", ok_envelope(HOLD), "400", "404"),
        }
    },
    "/api/wallet/holds/{holdId}/capture": {
        "post": {
            "operationId": "captureHold",
            "description": "Post (part of) a HELD hold, releasing the rest at once. A hold is"
            " captured at most once; past its expiry it is HOLD_EXPIRED.",
            "parameters": [HOLD_PATH, IDEMPOTENCY_KEY],
            "requestBody": json_body(CAPTURE_BODY, required=False),
            "responses": replayable(
                responses_of("200", ok_envelope(HOLD_CAPTURED), "400", "404", "413", "422"),
                "200",
                "422",
            ),
        }
    },
    "/api/wallet/holds/{holdId}/void": {
        "post": {
            "operationId": "voidHold",
            "description": "Release all of a HELD hold.",
            "parameters": [HOLD_PATH, IDEMPOTENCY_KEY],
            "responses": replayable(
                responses_of("200", ok_envelope(HOLD_VOIDED), "400", "404", "413", "422"),
                "200",
                "422",
            ),
        }
    },
}
