"""POST /api/wallet/batch: up to 1,000 TOPUP, BONUS, SPEND and TRANSFER operations at once.

The whole batch is validated before anything runs (errors name `operations[i].<field>`), then
authorised (it needs what each of its operations needs), then run by the ledger in one round
trip: atomic (all or nothing, BATCH_FAILED naming the first failure) or not (each operation
under its own key and its own route's rules, each answered as that route answers it).
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import ledger
from wallet.auth import Principal
from wallet.errors import ValidationError, WalletError
from wallet.http import ok, read_json_object
from wallet.inputs import (
    TX_TYPES,
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
    parse_metadata,
    parse_reference,
    parse_tx_type,
    parse_user_id,
)
from wallet.resources import post, principal, resources
from wallet.rest.common import idempotency_key, replayed_header
from wallet.rest.transfers import transfer_view
from wallet.rest.wallet import transact_view
from wallet.settings import Settings

BATCH_PATH: Final = "/api/wallet/batch"
OPS: Final = (*TX_TYPES, "TRANSFER")
# Fields of the other kind of operation: given, they would be ignored, so they are refused.
_TRANSFER_ONLY: Final = ("fromUserId", "toUserId")
_TRANSACT_ONLY: Final = ("userId",)


def _field_error(field: str, message: str) -> ValidationError:
    return ValidationError(f"{field} {message}", field=field)


def parse_operation(index: int, raw: object, *, atomic: bool) -> ledger.BatchOperation:
    """One operation, by its own route's rules; every error names `operations[i].<field>`."""
    at = f"operations[{index}]"
    if not isinstance(raw, dict):
        raise _field_error(at, "must be a JSON object.")
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise _field_error(f"{at}.op", f"must be one of {', '.join(OPS)}.")
    given_type = raw.get("type")
    if given_type is not None and given_type != op:
        raise _field_error(f"{at}.type", "must be left out or equal op.")
    for name in _TRANSACT_ONLY if op == "TRANSFER" else _TRANSFER_ONLY:
        if raw.get(name) is not None:
            raise _field_error(f"{at}.{name}", f"is not a field of a {op}.")
    request: ledger.TransactRequest | ledger.TransferRequest
    if op == "TRANSFER":
        request = ledger.TransferRequest(
            from_user_id=parse_user_id(raw.get("fromUserId"), field=f"{at}.fromUserId"),
            to_user_id=parse_user_id(raw.get("toUserId"), field=f"{at}.toUserId"),
            amount=parse_amount(raw.get("amount"), field=f"{at}.amount"),
            asset_slug=parse_asset_slug(raw.get("assetSlug"), field=f"{at}.assetSlug"),
            reference=parse_reference(raw.get("reference"), field=f"{at}.reference"),
            metadata=parse_metadata(raw.get("metadata"), field=f"{at}.metadata"),
        )
        if request.to_user_id == request.from_user_id:
            raise _field_error(f"{at}.toUserId", "must be another user than fromUserId.")
    else:
        request = ledger.TransactRequest(
            user_id=parse_user_id(raw.get("userId"), field=f"{at}.userId"),
            amount=parse_amount(raw.get("amount"), field=f"{at}.amount"),
            asset_slug=parse_asset_slug(raw.get("assetSlug"), field=f"{at}.assetSlug"),
            type=parse_tx_type(op, field=f"{at}.op"),
            reference=parse_reference(raw.get("reference"), field=f"{at}.reference"),
            metadata=parse_metadata(raw.get("metadata"), field=f"{at}.metadata"),
        )
    key = raw.get("idempotencyKey")
    key_field = f"{at}.idempotencyKey"
    if key is None:
        if not atomic:
            raise _field_error(key_field, "is required when the batch is not atomic.")
        return ledger.BatchOperation(request)
    if not isinstance(key, str):
        raise _field_error(key_field, "must be 1 to 255 printable ASCII characters.")
    return ledger.BatchOperation(request, parse_idempotency_key(key, field=key_field))


def parse_batch(body: dict[str, Any]) -> tuple[bool, list[ledger.BatchOperation]]:
    atomic = body.get("atomic")
    if not isinstance(atomic, bool):
        raise _field_error("atomic", "must be true or false.")
    raw_ops = body.get("operations")
    if not isinstance(raw_ops, list) or not 1 <= len(raw_ops) <= ledger.MAX_OPERATIONS:
        raise _field_error(
            "operations", f"must be a list of 1 to {ledger.MAX_OPERATIONS} operations."
        )
    return atomic, [parse_operation(i, raw, atomic=atomic) for i, raw in enumerate(raw_ops)]


def authorise(who: Principal, operations: list[ledger.BatchOperation], settings: Settings) -> None:
    """The batch needs what each of its operations needs, checked as its own route checks it."""
    for operation in operations:
        request = operation.request
        if isinstance(request, ledger.TransferRequest):
            who.require_transfer(request.from_user_id, user_can_transfer=settings.user_can_transfer)
        else:
            who.require_transact(
                request.user_id, request.type, user_can_spend=settings.user_can_spend
            )


def operation_data(result: ledger.TransactOutcome | ledger.TransferDone) -> dict[str, Any]:
    """An operation's data, exactly as its own route answers it."""
    if isinstance(result, ledger.TransferDone):
        return transfer_view(result)
    return transact_view(result)


def operation_result(result: ledger.OperationResult) -> dict[str, Any]:
    """A non-atomic batch's answer for one operation: its status and data, or its error (with
    `details` when its route's error has them)."""
    if isinstance(result, WalletError):
        error = {"status": result.status, "code": result.code, "message": result.message}
        if result.details:
            error["details"] = dict(result.details)
        return error
    return {"status": 200, "data": operation_data(result)}


async def post_batch(request: Request) -> Response:
    res = resources(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    atomic, operations = parse_batch(body)
    who = principal(request)
    authorise(who, operations, res.settings)
    result = await post(
        res,
        lambda conn: ledger.batch(conn, operations, atomic=atomic, key=key, principal=who.name),
        kind="BATCH",
    )
    done = ledger.settled(result)  # BATCH_FAILED is raised, marked when replayed
    if atomic:
        results = [operation_data(_completed(r)) for r in done.results]
    else:
        results = [operation_result(r) for r in done.results]
    return ok({"results": results}, headers=replayed_header(done.replayed))


def _completed(
    result: ledger.OperationResult,
) -> ledger.TransactOutcome | ledger.TransferDone:
    """An atomic batch that completed completed every operation (else it was BATCH_FAILED)."""
    if isinstance(result, WalletError):
        raise AssertionError(f"an atomic batch completed with a failed operation: {result.code}")
    return result


routes = [Route(BATCH_PATH, post_batch, methods=["POST"])]
