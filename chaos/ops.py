"""What a client asks and what it is told: the workload's requests, their wire forms on REST and
GraphQL, and every answer read into an `Attempt` the judge can hold against the ledger.

Each kind of request is a frozen dataclass; an `Op` is one of them under one Idempotency-Key with
every attempt made for it. A definite answer records what the client learned: the transaction
it was told about, the balances after it, a hold's id and state, a batch's per-operation answers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from wallet.inputs import TxType

Surface = Literal["rest", "graphql"]
OpKind = Literal["transact", "transfer", "reverse", "hold", "capture", "void", "batch"]
OP_KINDS: tuple[OpKind, ...] = (
    "transact",
    "transfer",
    "reverse",
    "hold",
    "capture",
    "void",
    "batch",
)
PostingType = Literal["TOPUP", "BONUS", "SPEND", "TRANSFER"]

# What one HTTP attempt told the client. Only the first three are definite answers.
AttemptKind = Literal[
    "acked",  # it was done (now or, replayed, earlier)
    "refused",  # a refusal the ledger decided and stored (INSUFFICIENT_FUNDS, HOLD_EXPIRED, ...)
    "rejected",  # any other definite refusal (a validation or key error: a harness bug)
    "busy",  # 503 BUSY: a lock or a pool slot was not free in time; nothing ran
    "throttled",  # 429 RATE_LIMITED: refused before anything ran; retry after Retry-After
    "unavailable",  # 503 SERVICE_UNAVAILABLE: the database went away; the effect is unknown
    "internal",  # 500 / INTERNAL_ERROR: a bug in the service; the effect is unknown
    "http_error",  # any other status (e.g. a 502 from something in between)
    "timeout",  # no answer in time; the effect is unknown
    "dropped",  # the connection broke after the request went out; the effect is unknown
    "unsent",  # no connection (refused, or none free): the request never left the client
]
CLIENT_POOL = "client-pool"  # the code of an attempt the harness's own HTTP pool could not send
MALFORMED = "MALFORMED_ANSWER"  # a success whose body breaks the contract (reported as rejected)
DEFINITE: frozenset[AttemptKind] = frozenset({"acked", "refused", "rejected"})
# The service promises BUSY means the request did not run; every other non-answer may hide one.
AMBIGUOUS: frozenset[AttemptKind] = frozenset(
    {"unavailable", "internal", "http_error", "timeout", "dropped"}
)


@dataclass(frozen=True, slots=True)
class Posting:
    """An acknowledged posting a client may later reverse. `user_id` is the wallet of a TOPUP,
    BONUS or SPEND, or the sender of a TRANSFER; `to_user_id` is a TRANSFER's recipient."""

    transaction_id: uuid.UUID
    type: PostingType
    user_id: uuid.UUID
    to_user_id: uuid.UUID | None
    asset: str
    amount: int


@dataclass(frozen=True, slots=True)
class HeldHold:
    """A hold the client was told is HELD; `due` is when, by the client's clock, it has surely
    expired (its answer's arrival plus its expiry, plus a margin)."""

    hold_id: uuid.UUID
    user_id: uuid.UUID
    asset: str
    amount: int
    due: float


@dataclass(frozen=True, slots=True)
class Transact:
    user_id: uuid.UUID
    asset: str
    type: TxType
    amount: int


@dataclass(frozen=True, slots=True)
class Transfer:
    from_user_id: uuid.UUID
    to_user_id: uuid.UUID
    asset: str
    amount: int


@dataclass(frozen=True, slots=True)
class Reverse:
    original: Posting
    amount: int | None  # None: all that is still reversible


@dataclass(frozen=True, slots=True)
class CreateHold:
    user_id: uuid.UUID
    asset: str
    amount: int
    expires_in_s: int


@dataclass(frozen=True, slots=True)
class Capture:
    hold: HeldHold
    amount: int | None  # None: all of it
    to_user_id: uuid.UUID | None  # None: the Treasury (a purchase)


@dataclass(frozen=True, slots=True)
class Void:
    hold: HeldHold


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One operation of a batch: `user_id` is the wallet of a TOPUP, BONUS or SPEND, or the
    sender of a TRANSFER. `key` is its own Idempotency-Key (every operation of a non-atomic
    batch has one; atomic ones have none)."""

    op: PostingType
    user_id: uuid.UUID
    asset: str
    amount: int
    to_user_id: uuid.UUID | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    atomic: bool
    items: tuple[BatchItem, ...]


Request = Transact | Transfer | Reverse | CreateHold | Capture | Void | Batch
_KIND: dict[type[Any], OpKind] = {
    Transact: "transact",
    Transfer: "transfer",
    Reverse: "reverse",
    CreateHold: "hold",
    Capture: "capture",
    Void: "void",
    Batch: "batch",
}
# The refusals each request may meet that the ledger decides and stores (a 422 with these codes,
# or the GraphQL union member of that code). Any other refusal is the harness's or a bug.
REFUSALS: dict[OpKind, frozenset[str]] = {
    "transact": frozenset({"INSUFFICIENT_FUNDS"}),
    "transfer": frozenset({"INSUFFICIENT_FUNDS"}),
    "reverse": frozenset({"INSUFFICIENT_FUNDS", "REVERSAL_EXCEEDS_ORIGINAL"}),
    "hold": frozenset({"INSUFFICIENT_FUNDS"}),
    "capture": frozenset({"HOLD_EXPIRED", "HOLD_NOT_ACTIVE"}),
    "void": frozenset({"HOLD_NOT_ACTIVE"}),
    "batch": frozenset({"BATCH_FAILED"}),
}


def kind_of(request: Request) -> OpKind:
    return _KIND[type(request)]


@dataclass(slots=True)
class Attempt:
    """One HTTP attempt and what it told the client. A batch's answer carries one `Attempt` per
    operation in `results` (kind acked, refused or rejected; no latency of their own)."""

    kind: AttemptKind
    latency_s: float
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None
    replayed: bool = False
    transaction_id: uuid.UUID | None = None
    balance_after: int | None = None  # a TOPUP, SPEND or BONUS: its wallet's balance after
    balances: dict[uuid.UUID, int] | None = None  # any other posting: each wallet's, after
    amount: int | None = None  # what moved: a reversal's amount, a capture's, a hold's
    hold_id: uuid.UUID | None = None
    hold_status: str | None = None
    results: list[Attempt] | None = None  # a batch's answers, one per operation, in order
    failed_index: int | None = None  # BATCH_FAILED: the operation that failed, and its code
    failed_code: str | None = None
    started_at: float = 0.0  # time.monotonic() when it was sent


@dataclass(slots=True)
class Op:
    """One logical request and everything that happened to it."""

    key: str
    surface: Surface
    request: Request
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def kind(self) -> OpKind:
        return kind_of(self.request)

    @property
    def answer(self) -> Attempt | None:
        """The definite answer, if one came (it is always the last attempt)."""
        if self.attempts and self.attempts[-1].kind in DEFINITE:
            return self.attempts[-1]
        return None

    @property
    def elapsed_s(self) -> float:
        """From the first attempt's start to the last one's end, pauses included."""
        if not self.attempts:
            return 0.0
        first, last = self.attempts[0], self.attempts[-1]
        return last.started_at + last.latency_s - first.started_at

    @property
    def ambiguous(self) -> bool:
        return any(a.kind in AMBIGUOUS for a in self.attempts)


# ---- the wire: REST ---------------------------------------------------------------------------


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
    if "status" in raw and "data" not in raw:
        code = raw.get("code")
        kind: AttemptKind = "refused" if code == "INSUFFICIENT_FUNDS" else "rejected"
        return Attempt(kind, 0.0, status=raw["status"], code=code)
    data = raw["data"] if "status" in raw else raw
    answer = Attempt("acked", 0.0, status=raw.get("status", 200))
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


# ---- the wire: GraphQL ------------------------------------------------------------------------

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
    if status != 200:  # answered before GraphQL ran (say, by AuthMiddleware): REST's envelope
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
