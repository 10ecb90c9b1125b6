"""The REST API's OpenAPI 3.1 document, served at /openapi.json (a test keeps it in step).

One module per feature where it grew (holds, batches), over a shared kit (`common`)."""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from wallet.http import JSONResponse
from wallet.inputs import TRANSACTION_TYPES
from wallet.openapi.batches import BATCH_PATHS
from wallet.openapi.common import (
    ASSET,
    ASSET_SLUG,
    BALANCE,
    HISTORY_ITEM,
    IDEMPOTENCY_KEY,
    INSTANT,
    REVERSE_BODY,
    REVERSED,
    SECURITY,
    TRANSACT_BODY,
    TRANSACTED,
    TRANSACTION,
    TRANSACTION_PATH,
    TRANSFER_BODY,
    TRANSFERRED,
    USER_PATH,
    UUID,
    json_body,
    ok_envelope,
    query_param,
    replayable,
    responses_of,
)
from wallet.openapi.holds import HOLD_PATHS

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
    "security": SECURITY,
    "paths": {
        "/api/wallet/balance/{userId}": {
            "get": {
                "operationId": "getBalance",
                "description": "One row per asset the user holds an account for, by slug. With"
                " `at`, each balance as it stood at that instant (assets with no entry by then"
                " are left out).",
                "parameters": [
                    USER_PATH,
                    query_param("at", INSTANT, "An RFC 3339 instant, not in the future"),
                ],
                "responses": responses_of(
                    "200", ok_envelope({"type": "array", "items": BALANCE}), "400", "404"
                ),
            }
        },
        "/api/wallet/transact": {
            "post": {
                "operationId": "transact",
                "description": "TOPUP or BONUS (the asset's Treasury pays the user) or SPEND (the"
                " user pays the Treasury), exactly once per Idempotency-Key.",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": json_body(TRANSACT_BODY),
                "responses": replayable(
                    responses_of("200", ok_envelope(TRANSACTED), "400", "404", "413", "422"),
                    "200",
                    "422",
                ),
            }
        },
        "/api/wallet/transfer": {
            "post": {
                "operationId": "transfer",
                "description": "Coins from one user's wallet to another's (a recipient without"
                " an account in the asset gets one), exactly once per Idempotency-Key.",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": json_body(TRANSFER_BODY),
                "responses": replayable(
                    responses_of("200", ok_envelope(TRANSFERRED), "400", "404", "413", "422"),
                    "200",
                    "422",
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
                    USER_PATH,
                    query_param(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Default 20"
                    ),
                    query_param("cursor", {"type": "string"}, "nextCursor of the previous page"),
                    query_param("assetSlug", ASSET_SLUG, "Only this asset"),
                    query_param("type", {"enum": list(TRANSACTION_TYPES)}, "Only this type"),
                    query_param(
                        "reference",
                        {"type": "string", "pattern": "^[ -~]{1,128}$"},
                        "Only transactions with this reference",
                    ),
                    query_param("from", INSTANT, "createdAt at or after this instant (RFC 3339)"),
                    query_param("to", INSTANT, "createdAt before this instant (RFC 3339)"),
                ],
                "responses": responses_of(
                    "200",
                    ok_envelope(
                        {"type": "array", "items": HISTORY_ITEM},
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
                "parameters": [TRANSACTION_PATH],
                "responses": responses_of("200", ok_envelope(TRANSACTION), "400", "404"),
            }
        },
        "/api/transactions/{transactionId}/reverse": {
            "post": {
                "operationId": "reverseTransaction",
                "description": "Move `amount` (default: all still reversible) back along the"
                " transaction's legs, the other way, exactly once per Idempotency-Key. The"
                " reversals of a transaction add up to at most its amount.",
                "parameters": [TRANSACTION_PATH, IDEMPOTENCY_KEY],
                "requestBody": json_body(REVERSE_BODY, required=False),
                "responses": replayable(
                    responses_of("200", ok_envelope(REVERSED), "400", "404", "413", "422"),
                    "200",
                    "422",
                ),
            }
        },
        "/api/assets": {
            "get": {
                "operationId": "listAssets",
                "responses": responses_of("200", ok_envelope({"type": "array", "items": ASSET})),
            }
        },
        "/api/admin/assets": {
            "post": {
                "operationId": "createAsset",
                "description": "A new asset and its Treasury (201); the same fields again are"
                " answered 200; other fields for an existing slug are ASSET_ALREADY_EXISTS.",
                "requestBody": json_body(
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
                    **responses_of("201", ok_envelope(ASSET), "400", "409", "413"),
                    "200": {
                        "description": "The asset existed already, with the same fields",
                        "content": {"application/json": {"schema": ok_envelope(ASSET)}},
                    },
                },
            }
        },
        **HOLD_PATHS,
        **BATCH_PATHS,
        "/api/users": {
            "post": {
                "operationId": "createUser",
                "requestBody": json_body(
                    {
                        "type": "object",
                        "required": ["username"],
                        "properties": {
                            "id": UUID,
                            "username": {"type": "string", "minLength": 1, "maxLength": 64},
                        },
                    }
                ),
                "responses": {
                    **responses_of("201", ok_envelope({"type": "object"}), "400", "409", "413"),
                    "200": {"description": "The user existed already (same id and username)"},
                },
            }
        },
        "/api/admin/keys": {
            "get": {
                "operationId": "listKeys",
                "responses": responses_of("200", ok_envelope({"type": "array"})),
            },
            "post": {
                "operationId": "createKey",
                "requestBody": json_body(
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
                "responses": responses_of("201", ok_envelope({"type": "object"}), "400", "413"),
            },
        },
        "/api/admin/keys/{name}": {
            "delete": {
                "operationId": "revokeKey",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": responses_of("200", ok_envelope({"type": "object"}), "404"),
            }
        },
        "/api/admin/audit": {
            "get": {
                "operationId": "audit",
                "responses": responses_of("200", ok_envelope({"type": "object"})),
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
