"""The REST API's OpenAPI 3.1 document, served at /openapi.json (a test keeps it in step)."""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from wallet.http import JSONResponse
from wallet.inputs import MAX_AMOUNT, TX_TYPES
from wallet.seed import ALICE, BOB

_UUID: Final = {"type": "string", "format": "uuid"}
_DIGITS: Final = {"type": "string", "pattern": "^[0-9]+$"}

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
    "404": "Unknown user, asset, key or route",
    "405": "Wrong method (METHOD_NOT_ALLOWED)",
    "409": "Conflict (USER_ALREADY_EXISTS)",
    "413": "Body over the limit (PAYLOAD_TOO_LARGE)",
    "422": "Refused by the ledger (INSUFFICIENT_FUNDS, IDEMPOTENCY_KEY_REUSED)",
    "429": "Rate limited (RATE_LIMITED), see Retry-After",
    "503": "Busy or database unavailable (BUSY, SERVICE_UNAVAILABLE), see Retry-After",
}


def _ok(data: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"const": True}, "data": data, **(extra or {})},
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


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


# The seeded users as examples, so that fuzzing reaches the success answers too.
_USER_ID: Final = {**_UUID, "examples": [str(ALICE), str(BOB)]}
_USER_PATH: Final = {"name": "userId", "in": "path", "required": True, "schema": _USER_ID}
_BALANCE: Final = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "slug": {"type": "string"},
        "name": {"type": "string"},
        "balance": _DIGITS,
    },
}
_TRANSACT_BODY: Final = {
    "type": "object",
    "required": ["userId", "amount", "assetSlug", "type"],
    "properties": {
        "userId": _USER_ID,
        "amount": {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
                {"type": "string", "pattern": "^[0-9]+$"},
            ]
        },
        "assetSlug": {"type": "string", "minLength": 1, "maxLength": 64},
        "type": {"enum": list(TX_TYPES)},
    },
}
_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearer": []}]

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
                "parameters": [_USER_PATH],
                "responses": _responses(
                    "200", _ok({"type": "array", "items": _BALANCE}), "400", "404"
                ),
            }
        },
        "/api/wallet/transact": {
            "post": {
                "operationId": "transact",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
                "requestBody": _json_body(_TRANSACT_BODY),
                "responses": _responses("200", _ok({"type": "object"}), "400", "404", "413", "422"),
            }
        },
        "/api/wallet/transactions/{userId}": {
            "get": {
                "operationId": "getTransactions",
                "parameters": [
                    _USER_PATH,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "assetSlug", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": _responses(
                    "200",
                    _ok(
                        {"type": "array", "items": {"type": "object"}},
                        {"nextCursor": {"type": ["string", "null"]}},
                    ),
                    "400",
                    "404",
                ),
            }
        },
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
