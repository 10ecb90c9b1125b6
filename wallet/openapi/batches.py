"""The batch route: up to MAX_OPERATIONS operations, atomic or each on its own."""

from __future__ import annotations

from typing import Any, Final

from wallet.inputs import TX_TYPES
from wallet.ledger import MAX_OPERATIONS
from wallet.openapi.common import (
    AMOUNT,
    ASSET_SLUG,
    IDEMPOTENCY_KEY,
    METADATA_IN,
    REFERENCE_IN,
    TRANSACTED,
    TRANSFERRED,
    USER_ID,
    json_body,
    object_of,
    ok_envelope,
    replayable,
    responses_of,
)

OPERATION: Final = {
    "type": "object",
    "description": "The body fields of the operation's own route: `userId` for TOPUP, BONUS and"
    " SPEND, `fromUserId` and `toUserId` for TRANSFER. `idempotencyKey` is the operation's own"
    " Idempotency-Key, required when the batch is not atomic.",
    "required": ["op", "amount", "assetSlug"],
    "properties": {
        "op": {"enum": [*TX_TYPES, "TRANSFER"]},
        "userId": USER_ID,
        "fromUserId": USER_ID,
        "toUserId": USER_ID,
        "amount": AMOUNT,
        "assetSlug": ASSET_SLUG,
        "reference": REFERENCE_IN,
        "metadata": METADATA_IN,
        "idempotencyKey": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
    },
}
OPERATION_DATA: Final = {"oneOf": [TRANSACTED, TRANSFERRED]}
BATCH_DONE: Final = object_of(
    results={
        "type": "array",
        "description": "In input order. Atomic: each operation's data, as its route answers it."
        " Not atomic: {status: 200, data} or {status: 4xx, code, message, details?} per"
        " operation (details when its route's error has them).",
        "items": {
            "oneOf": [
                TRANSACTED,
                TRANSFERRED,
                object_of(status={"const": 200}, data=OPERATION_DATA),
                {
                    "type": "object",
                    "required": ["status", "code", "message"],
                    "properties": {
                        "status": {"type": "integer", "minimum": 400, "maximum": 499},
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "object"},
                    },
                    "additionalProperties": False,
                },
            ]
        },
    }
)
BATCH_PATHS: Final[dict[str, Any]] = {
    "/api/wallet/batch": {
        "post": {
            "operationId": "batch",
            "description": f"1 to {MAX_OPERATIONS} operations, validated whole before any"
            " runs, in one round trip; bodies up to 1 MiB (WALLET_MAX_BATCH_BYTES). Atomic: all"
            " or nothing (BATCH_FAILED names the first failure). Not atomic: each operation"
            " under its own idempotencyKey and its own route's rules. The batch needs what each"
            " of its operations needs.",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": json_body(
                {
                    "type": "object",
                    "required": ["atomic", "operations"],
                    "properties": {
                        "atomic": {"type": "boolean"},
                        "operations": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_OPERATIONS,
                            "items": OPERATION,
                        },
                    },
                }
            ),
            "responses": replayable(
                responses_of("200", ok_envelope(BATCH_DONE), "400", "413", "422"), "200", "422"
            ),
        }
    },
}
