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
        self.replayed = False  # a stored answer given again for the same Idempotency-Key

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


class InvalidHost(WalletError):
    """A Host header the service does not answer to (DNS rebinding defence)."""

    code = "INVALID_HOST"
    status = 400


class Unauthenticated(WalletError):
    code = "UNAUTHENTICATED"
    status = 401


class Forbidden(WalletError):
    code = "FORBIDDEN"
    status = 403


class OriginNotAllowed(WalletError):
    """A write (or WebSocket) from a web page whose origin is not one of ours."""

    code = "ORIGIN_NOT_ALLOWED"
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


class TransactionNotFound(WalletError):
    code = "TRANSACTION_NOT_FOUND"
    status = 404


class HoldNotFound(WalletError):
    code = "HOLD_NOT_FOUND"
    status = 404


class MethodNotAllowed(WalletError):
    code = "METHOD_NOT_ALLOWED"
    status = 405


class RequestTimeout(WalletError):
    """The client sent its headers or body too slowly."""

    code = "REQUEST_TIMEOUT"
    status = 408


class UserAlreadyExists(WalletError):
    code = "USER_ALREADY_EXISTS"
    status = 409


class AssetAlreadyExists(WalletError):
    code = "ASSET_ALREADY_EXISTS"
    status = 409


class PayloadTooLarge(WalletError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413


class Declined(WalletError):
    """A decision of the ledger (stored with the key and replayed), not a malformed request."""

    status = 422


class InsufficientFunds(Declined):
    code = "INSUFFICIENT_FUNDS"


class BalanceLimitExceeded(Declined):
    code = "BALANCE_LIMIT_EXCEEDED"


class ReversalExceedsOriginal(Declined):
    code = "REVERSAL_EXCEEDS_ORIGINAL"


class NotReversible(Declined):
    code = "NOT_REVERSIBLE"


class HoldNotActive(Declined):
    code = "HOLD_NOT_ACTIVE"


class HoldExpired(Declined):
    code = "HOLD_EXPIRED"


class BatchFailed(Declined):
    code = "BATCH_FAILED"


class IdempotencyKeyReused(WalletError):
    code = "IDEMPOTENCY_KEY_REUSED"
    status = 422


class RateLimited(WalletError):
    code = "RATE_LIMITED"
    status = 429


class HeadersTooLarge(WalletError):
    code = "HEADERS_TOO_LARGE"
    status = 431


class Busy(WalletError):
    """A lock or a pool slot was not free in time; the client should retry shortly."""

    code = "BUSY"
    status = 503


class Unavailable(WalletError):
    """The database cannot be reached right now."""

    code = "SERVICE_UNAVAILABLE"
    status = 503
