"""What a client asks and what it is told: the workload's requests, and the `Attempt` each answer
is read into (by `chaos.wire`) for the judge to hold against the ledger.

Each kind of request is a frozen dataclass; an `Op` is one of them under one Idempotency-Key with
every attempt made for it. A definite answer records what the client learned: the transaction
it was told about, the balances after it, a hold's id and state, a batch's per-operation answers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

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
    """A hold the client was told is HELD; `due` is when (time.monotonic()) a client that left it
    to expire tries to capture or void it anyway."""

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
