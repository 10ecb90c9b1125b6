"""The workload's requests on the wire: each one's REST route and body or GraphQL mutation, and
every answer (REST's envelope, GraphQL's result unions) read into an `Attempt`."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from chaos.ops import (
    REFUSALS,
    Attempt,
    AttemptKind,
    Batch,
    BatchItem,
    Capture,
    CreateHold,
    OpKind,
    Request,
    Reverse,
    Transact,
    Transfer,
    Void,
    kind_of,
)

MALFORMED = "MALFORMED_ANSWER"  # a success whose body breaks the contract (reported as rejected)

# ---- REST -------------------------------------------------------------------------------------


def _item_body(item: BatchItem) -> dict[str, Any]:
    body: dict[str, Any] = {"op": item.op, "amount": item.amount, "assetSlug": item.asset}
    if item.op == "TRANSFER":
        body |= {"fromUserId": str(item.user_id), "toUserId": str(item.to_user_id)}
    else:
        body["userId"] = str(item.user_id)
    if item.key is not None:
        body["idempotencyKey"] = item.key
    return body


def rest_call(request: Request) -> tuple[str, dict[str, Any]]:
    """The route and JSON body of a request (the key goes in the Idempotency-Key header)."""
    match request:
        case Transact(user_id, asset, tx_type, amount):
            body = {"userId": str(user_id), "amount": amount, "assetSlug": asset, "type": tx_type}
            return "/api/wallet/transact", body
        case Transfer(from_user, to_user, asset, amount):
            return "/api/wallet/transfer", {
                "fromUserId": str(from_user),
                "toUserId": str(to_user),
                "amount": amount,
                "assetSlug": asset,
            }
        case Reverse(original, amount):
            path = f"/api/transactions/{original.transaction_id}/reverse"
            return path, {} if amount is None else {"amount": amount}
        case CreateHold(user_id, asset, amount, expires_in_s):
            return "/api/wallet/holds", {
                "userId": str(user_id),
                "amount": amount,
                "assetSlug": asset,
                "expiresInSeconds": expires_in_s,
            }
        case Capture(hold, amount, to_user):
            body = {}
            if amount is not None:
                body["amount"] = amount
            if to_user is not None:
                body["toUserId"] = str(to_user)
            return f"/api/wallet/holds/{hold.hold_id}/capture", body
        case Void(hold):
            return f"/api/wallet/holds/{hold.hold_id}/void", {}
        case Batch(atomic, items):
            return "/api/wallet/batch", {
                "atomic": atomic,
                "operations": [_item_body(i) for i in items],
            }
    raise AssertionError(request)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"not an amount: {value!r}")
    return int(value)


def _rest_success(request: Request, data: dict[str, Any], answer: Attempt) -> None:
    """Read a success body into `answer` (KeyError, ValueError: the body breaks the contract)."""
    match request:
        case Transact():
            answer.transaction_id = uuid.UUID(data["transactionId"])
            answer.balance_after = _int(data["balanceAfter"])
        case Transfer(from_user, to_user):
            answer.transaction_id = uuid.UUID(data["transactionId"])
            answer.balances = {
                from_user: _int(data["fromBalanceAfter"]),
                to_user: _int(data["toBalanceAfter"]),
            }
        case Reverse():
            answer.transaction_id = uuid.UUID(data["transactionId"])
            answer.amount = _int(data["amount"])
            answer.balances = {
                uuid.UUID(b["userId"]): _int(b["balanceAfter"]) for b in data["balances"]
            }
        case CreateHold() | Capture() | Void():
            answer.hold_id = uuid.UUID(data["holdId"])
            answer.hold_status = str(data["status"])
            if isinstance(request, CreateHold):
                answer.amount = _int(data["amount"])
            if isinstance(request, Capture):
                answer.amount = _int(data["capturedAmount"])
                answer.transaction_id = uuid.UUID(data["transactionId"])
                answer.balances = {request.hold.user_id: _int(data["balance"])}
        case Batch(_, items):
            results = data["results"]
            if not isinstance(results, list) or len(results) != len(items):
                raise ValueError("a batch answers one result per operation")
            answer.results = [_rest_item(i, r) for i, r in zip(items, results, strict=True)]


def _as_request(item: BatchItem) -> Transact | Transfer:
    if item.op == "TRANSFER":
        assert item.to_user_id is not None
        return Transfer(item.user_id, item.to_user_id, item.asset, item.amount)
    return Transact(item.user_id, item.asset, item.op, item.amount)


def _rest_item(item: BatchItem, raw: dict[str, Any]) -> Attempt:
    """One operation's answer in a batch: its data as its own route answers it, wrapped in
    `{"status", "data"}` or `{"status", "code", "message"}` when the batch is not atomic."""
    wrapped = isinstance(raw.get("status"), int)  # a transaction's own status is a string
    if wrapped and "data" not in raw:
        code = raw.get("code")
        kind: AttemptKind = "refused" if code == "INSUFFICIENT_FUNDS" else "rejected"
        return Attempt(kind, 0.0, status=raw["status"], code=code)
    data = raw["data"] if wrapped else raw
    answer = Attempt("acked", 0.0, status=raw["status"] if wrapped else 200)
    _rest_success(_as_request(item), data, answer)
    return answer


def _retry_after(headers: httpx.Headers) -> float | None:
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def rest_attempt(request: Request, response: httpx.Response, latency: float) -> Attempt:
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    replayed = response.headers.get("idempotent-replayed") == "true"
    if status == 200 and isinstance(body, dict) and body.get("success") is True:
        answer = Attempt("acked", latency, status=status, replayed=replayed)
        try:
            _rest_success(request, body["data"], answer)
        except (KeyError, TypeError, ValueError):
            return Attempt("rejected", latency, status=status, code=MALFORMED)
        return answer
    if status == 422 and code in REFUSALS[kind_of(request)]:
        answer = Attempt("refused", latency, status=status, code=code, replayed=replayed)
        details = body.get("details") if isinstance(body, dict) else None
        if isinstance(details, dict):
            if code == "BATCH_FAILED":
                answer.failed_index = details.get("index")
                answer.failed_code = details.get("code")
            elif code == "HOLD_NOT_ACTIVE":
                answer.hold_status = details.get("status")
        return answer
    if status == 503:
        kind: AttemptKind = "busy" if code == "BUSY" else "unavailable"
        return Attempt(
            kind, latency, status=status, code=code, retry_after=_retry_after(response.headers)
        )
    if status >= 500:
        kind = "internal" if code == "INTERNAL_ERROR" or status == 500 else "http_error"
        return Attempt(kind, latency, status=status, code=code)
    if status == 429:
        retry_after = _retry_after(response.headers)
        return Attempt("throttled", latency, status=status, code=code, retry_after=retry_after)
    if 400 <= status < 500:
        return Attempt("rejected", latency, status=status, code=code)
    return Attempt("http_error", latency, status=status, code=code)


# ---- GraphQL ----------------------------------------------------------------------------------

_TRANSACT_FIELDS = "replayed transaction { id } balance { amount }"
_TRANSFER_FIELDS = "replayed transaction { id } from { amount } to { amount }"
_HOLD_FIELDS = (
    "replayed hold { id status amount capturedAmount transaction { id } } balance { amount }"
)
_HOLD_MEMBERS = f"... on HoldSuccess {{ {_HOLD_FIELDS} }} ... on HoldNotActive {{ status }}"
_MUTATIONS: dict[OpKind, tuple[str, str, str]] = {  # field, input type, selection
    "transact": ("transact", "TransactInput", f"... on TransactSuccess {{ {_TRANSACT_FIELDS} }}"),
    "transfer": ("transfer", "TransferInput", f"... on TransferSuccess {{ {_TRANSFER_FIELDS} }}"),
    "reverse": (
        "reverse",
        "ReverseInput",
        "... on ReverseSuccess { replayed remainingReversible"
        " transaction { id amount entries { userId balanceAfter } } }",
    ),
    "hold": ("createHold", "CreateHoldInput", _HOLD_MEMBERS),
    "capture": ("captureHold", "CaptureHoldInput", _HOLD_MEMBERS),
    "void": ("voidHold", "VoidHoldInput", _HOLD_MEMBERS),
    "batch": (
        "transactBatch",
        "TransactBatchInput",
        "... on BatchSuccess { replayed results { __typename"
        f" ... on TransactSuccess {{ {_TRANSACT_FIELDS} }}"
        f" ... on TransferSuccess {{ {_TRANSFER_FIELDS} }}"
        " ... on Error { code } } }"
        " ... on BatchFailed { index operationCode }",
    ),
}
MUTATIONS: dict[OpKind, str] = {
    kind: f"mutation Chaos($input: {input_type}!) {{ {name}(input: $input) {{ __typename"
    f" {selection} ... on Error {{ code }} }} }}"
    for kind, (name, input_type, selection) in _MUTATIONS.items()
}


def _graphql_item(item: BatchItem) -> dict[str, Any]:
    body = _item_body(item)
    body["amount"] = str(item.amount)
    return body


def graphql_call(request: Request, key: str) -> dict[str, Any]:
    """The GraphQL request body of a request under `key`."""
    kind = kind_of(request)
    variables: dict[str, Any] = {"idempotencyKey": key}
    match request:
        case Transact(user_id, asset, tx_type, amount):
            variables |= {
                "userId": str(user_id),
                "amount": str(amount),
                "assetSlug": asset,
                "type": tx_type,
            }
        case Transfer(from_user, to_user, asset, amount):
            variables |= {
                "fromUserId": str(from_user),
                "toUserId": str(to_user),
                "amount": str(amount),
                "assetSlug": asset,
            }
        case Reverse(original, amount):
            variables["transactionId"] = str(original.transaction_id)
            if amount is not None:
                variables["amount"] = str(amount)
        case CreateHold(user_id, asset, amount, expires_in_s):
            variables |= {
                "userId": str(user_id),
                "amount": str(amount),
                "assetSlug": asset,
                "expiresInSeconds": expires_in_s,
            }
        case Capture(hold, amount, to_user):
            variables["holdId"] = str(hold.hold_id)
            if amount is not None:
                variables["amount"] = str(amount)
            if to_user is not None:
                variables["toUserId"] = str(to_user)
        case Void(hold):
            variables["holdId"] = str(hold.hold_id)
        case Batch(atomic, items):
            variables |= {"atomic": atomic, "operations": [_graphql_item(i) for i in items]}
    return {"query": MUTATIONS[kind], "variables": {"input": variables}}


def _graphql_success(request: Request, result: dict[str, Any], answer: Attempt) -> None:
    """Read a success member into `answer` (KeyError, ValueError: it breaks the schema)."""
    match request:
        case Transact():
            answer.transaction_id = uuid.UUID(result["transaction"]["id"])
            answer.balance_after = _int(result["balance"]["amount"])
        case Transfer(from_user, to_user):
            answer.transaction_id = uuid.UUID(result["transaction"]["id"])
            answer.balances = {
                from_user: _int(result["from"]["amount"]),
                to_user: _int(result["to"]["amount"]),
            }
        case Reverse():
            txn = result["transaction"]
            answer.transaction_id = uuid.UUID(txn["id"])
            answer.amount = _int(txn["amount"])
            answer.balances = {
                uuid.UUID(e["userId"]): _int(e["balanceAfter"])
                for e in txn["entries"]
                if e["userId"] is not None
            }
        case CreateHold() | Capture() | Void():
            hold = result["hold"]
            answer.hold_id = uuid.UUID(hold["id"])
            answer.hold_status = str(hold["status"])
            if isinstance(request, CreateHold):
                answer.amount = _int(hold["amount"])
            if isinstance(request, Capture):
                answer.amount = _int(hold["capturedAmount"])
                answer.transaction_id = uuid.UUID(hold["transaction"]["id"])
                answer.balances = {request.hold.user_id: _int(result["balance"]["amount"])}
        case Batch(_, items):
            results = result["results"]
            if not isinstance(results, list) or len(results) != len(items):
                raise ValueError("a batch answers one result per operation")
            answer.results = [
                _graphql_item_answer(i, r) for i, r in zip(items, results, strict=True)
            ]


_SUCCESS = frozenset(
    {"TransactSuccess", "TransferSuccess", "ReverseSuccess", "HoldSuccess", "BatchSuccess"}
)


def _graphql_item_answer(item: BatchItem, raw: dict[str, Any]) -> Attempt:
    if raw["__typename"] in _SUCCESS:
        answer = Attempt("acked", 0.0, replayed=bool(raw["replayed"]))
        _graphql_success(_as_request(item), raw, answer)
        return answer
    code = raw.get("code")
    return Attempt("refused" if code == "INSUFFICIENT_FUNDS" else "rejected", 0.0, code=code)


def graphql_attempt(request: Request, response: httpx.Response, latency: float) -> Attempt:
    status = response.status_code
    if status != 200:  # answered before GraphQL ran (say, by the gateway): REST's envelope
        return rest_attempt(request, response, latency)
    try:
        body: Any = response.json()
    except ValueError:
        return Attempt("http_error", latency, status=status)
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        code = (errors[0].get("extensions") or {}).get("code")
        if code == "BUSY":
            return Attempt("busy", latency, status=status, code=code, retry_after=1.0)
        if code == "SERVICE_UNAVAILABLE":
            return Attempt("unavailable", latency, status=status, code=code, retry_after=1.0)
        if code == "INTERNAL_ERROR":
            return Attempt("internal", latency, status=status, code=code)
        return Attempt("rejected", latency, status=status, code=code)
    kind = kind_of(request)
    try:
        result = body["data"][_MUTATIONS[kind][0]]
        typename = result["__typename"]
        if typename in _SUCCESS:
            answer = Attempt("acked", latency, status=status, replayed=bool(result["replayed"]))
            _graphql_success(request, result, answer)
            return answer
    except (KeyError, TypeError, ValueError):
        return Attempt("rejected", latency, status=status, code=MALFORMED)
    code = result.get("code")
    if code not in REFUSALS[kind]:
        return Attempt("rejected", latency, status=status, code=code)
    answer = Attempt("refused", latency, status=status, code=code)
    if typename == "BatchFailed":
        answer.failed_index = result.get("index")
        answer.failed_code = result.get("operationCode")
    if typename == "HoldNotActive":
        answer.hold_status = result.get("status")
    return answer
