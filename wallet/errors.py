"""The error tree: every failure a client can cause has a stable code and an HTTP status."""

from __future__ import annotations

from typing import Any, ClassVar


class WalletError(Exception):
    """Base of every expected failure; `code` is the contract, `message` is for humans."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def extensions(self) -> dict[str, Any]:
        """What GraphQL reports beside the message (graphql-core reads this attribute)."""
        return {"code": self.code, **self.details}


class ValidationError(WalletError):
    code = "VALIDATION_ERROR"
    status = 400


class IdempotencyKeyMissing(WalletError):
    code = "IDEMPOTENCY_KEY_MISSING"
    status = 400


class Unauthenticated(WalletError):
    code = "UNAUTHENTICATED"
    status = 401


class Forbidden(WalletError):
    code = "FORBIDDEN"
    status = 403


class RouteNotFound(WalletError):
    code = "NOT_FOUND"
    status = 404


class UserNotFound(WalletError):
    code = "USER_NOT_FOUND"
    status = 404


class AssetNotFound(WalletError):
    code = "ASSET_NOT_FOUND"
    status = 404


class MethodNotAllowed(WalletError):
    code = "METHOD_NOT_ALLOWED"
    status = 405


class UserAlreadyExists(WalletError):
    code = "USER_ALREADY_EXISTS"
    status = 409


class PayloadTooLarge(WalletError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413


class InsufficientFunds(WalletError):
    code = "INSUFFICIENT_FUNDS"
    status = 422


class IdempotencyKeyReused(WalletError):
    code = "IDEMPOTENCY_KEY_REUSED"
    status = 422


class RateLimited(WalletError):
    code = "RATE_LIMITED"
    status = 429


class Busy(WalletError):
    """A lock or a pool slot was not free in time; the client should retry shortly."""

    code = "BUSY"
    status = 503


class Unavailable(WalletError):
    """The database cannot be reached right now."""

    code = "SERVICE_UNAVAILABLE"
    status = 503
