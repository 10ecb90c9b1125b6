"""The workload: concurrent clients posting TOPUP, SPEND and BONUS over REST and GraphQL.

Each logical request (an `Op`) has its own Idempotency-Key. A client behaves like a careful real
one: on a timeout, a dropped connection or a 5xx it retries with the same key (with backoff,
honouring Retry-After, and a longer timeout each time) until it gets a definite answer. Every
attempt and every definite answer is recorded; the judge compares the record with the database.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from wallet.inputs import TxType

Surface = Literal["rest", "graphql"]
# What one HTTP attempt told the client. Only the first three are definite answers.
AttemptKind = Literal[
    "acked",  # the posting happened (now or, replayed, earlier)
    "refused",  # INSUFFICIENT_FUNDS: the ledger decided, nothing moved
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
# The service promises BUSY means the posting did not run; every other non-answer may hide one.
AMBIGUOUS: frozenset[AttemptKind] = frozenset(
    {"unavailable", "internal", "http_error", "timeout", "dropped"}
)

TRANSACT_MUTATION = """
mutation ChaosTransact($input: TransactInput!) {
  transact(input: $input) {
    __typename
    ... on TransactSuccess { replayed transaction { id } balance { amount } }
    ... on InsufficientFunds { balance { amount } }
    ... on Error { code }
  }
}
"""


@dataclass(slots=True)
class Attempt:
    kind: AttemptKind
    latency_s: float
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None
    replayed: bool = False
    transaction_id: uuid.UUID | None = None
    balance_after: int | None = None
    started_at: float = 0.0  # time.monotonic() when it was sent


@dataclass(slots=True)
class Op:
    """One logical request and everything that happened to it."""

    key: str
    surface: Surface
    user_id: uuid.UUID
    asset: str
    type: TxType
    amount: int
    attempts: list[Attempt] = field(default_factory=list)

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

    @property
    def signed_amount(self) -> int:
        """What an acknowledged posting did to the user's balance."""
        return -self.amount if self.type == "SPEND" else self.amount


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with the same key; each attempt may wait longer than the last."""

    max_attempts: int = 60
    deadline_s: float = 90.0
    base_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    timeout_s: tuple[float, float] = (10.0, 10.0)  # the first attempt's, drawn uniformly
    timeout_growth: float = 2.0
    max_timeout_s: float = 10.0
    short_timeout_share: float = 1.0  # share of ops that use `timeout_s` (others: max_timeout_s)

    def first_timeout(self, rng: random.Random) -> float:
        if rng.random() >= self.short_timeout_share:
            return self.max_timeout_s
        return rng.uniform(*self.timeout_s)

    def backoff(self, attempt: int, rng: random.Random, retry_after: float | None) -> float:
        delay: float = min(self.max_backoff_s, self.base_backoff_s * 2.0 ** (attempt - 1))
        delay *= rng.uniform(0.5, 1.5)  # jitter, so retries do not arrive in lockstep
        return max(delay, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class Wallets:
    """The users the workload posts to: a few hot ones most traffic hits, many cold ones."""

    hot: Sequence[uuid.UUID]
    cold: Sequence[uuid.UUID]
    assets: Sequence[str] = ("gold_coins", "diamonds")

    @property
    def all(self) -> list[uuid.UUID]:
        return [*self.hot, *self.cold]


@dataclass(frozen=True, slots=True)
class Mix:
    hot_share: float = 0.5
    types: Sequence[tuple[TxType, float]] = (("TOPUP", 0.35), ("SPEND", 0.5), ("BONUS", 0.15))
    asset_weights: Sequence[float] = (0.8, 0.2)
    max_amount: int = 100
    graphql_share: float = 0.5

    def next_op(self, rng: random.Random, wallets: Wallets) -> Op:
        hot = rng.random() < self.hot_share
        user = rng.choice(wallets.hot if hot else wallets.cold)
        kinds = [k for k, _ in self.types]
        tx_type = rng.choices(kinds, weights=[w for _, w in self.types])[0]
        return Op(
            key=f"chaos-{uuid.uuid4()}",
            surface="graphql" if rng.random() < self.graphql_share else "rest",
            user_id=user,
            asset=rng.choices(list(wallets.assets), weights=list(self.asset_weights))[0],
            type=tx_type,
            amount=rng.randint(1, self.max_amount),
        )


def _retry_after(headers: httpx.Headers) -> float | None:
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _rest_attempt(response: httpx.Response, latency: float) -> Attempt:
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    if status == 200 and isinstance(body, dict) and body.get("success") is True:
        data = body["data"]
        return Attempt(
            "acked",
            latency,
            status=status,
            replayed=response.headers.get("idempotent-replayed") == "true",
            transaction_id=uuid.UUID(data["transactionId"]),
            balance_after=int(data["balanceAfter"]),
        )
    if status == 422 and code == "INSUFFICIENT_FUNDS":
        replayed = response.headers.get("idempotent-replayed") == "true"
        return Attempt("refused", latency, status=status, code=code, replayed=replayed)
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


def _graphql_attempt(response: httpx.Response, latency: float) -> Attempt:
    status = response.status_code
    if status != 200:  # answered before GraphQL ran (say, by AuthMiddleware): REST's envelope
        return _rest_attempt(response, latency)
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
    result = body["data"]["transact"]
    typename = result["__typename"]
    if typename == "TransactSuccess":
        return Attempt(
            "acked",
            latency,
            status=status,
            replayed=bool(result["replayed"]),
            transaction_id=uuid.UUID(result["transaction"]["id"]),
            balance_after=int(result["balance"]["amount"]),
        )
    if typename == "InsufficientFunds":
        return Attempt("refused", latency, status=status, code="INSUFFICIENT_FUNDS")
    return Attempt("rejected", latency, status=status, code=result.get("code"))


class Client:
    """Sends one attempt of an op over its surface; never raises for network trouble.

    With several servers, attempts take turns among them, as behind a load balancer: a retry
    after a dropped connection goes to the next one.
    """

    def __init__(self, http: httpx.AsyncClient, base_urls: Sequence[str]) -> None:
        self.http = http
        self.base_urls = list(base_urls)
        self._turn = itertools.count()

    def _base(self) -> str:
        return self.base_urls[next(self._turn) % len(self.base_urls)]

    async def attempt(self, op: Op, timeout_s: float) -> Attempt:
        # httpx's own timeouts, never a cancellation: cancelling a request while its pool is
        # busy can leak the pool's connection slots for good (encode/httpcore#1093), and the
        # harness would then stall on a healthy service.
        started = time.monotonic()
        try:
            response = await self._send(op, timeouts=httpx.Timeout(timeout_s))
        except httpx.PoolTimeout:
            elapsed = time.monotonic() - started
            return Attempt("unsent", elapsed, code=CLIENT_POOL, started_at=started)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return Attempt("unsent", time.monotonic() - started, started_at=started)
        except httpx.TimeoutException:
            return Attempt("timeout", time.monotonic() - started, started_at=started)
        except httpx.TransportError:
            return Attempt("dropped", time.monotonic() - started, started_at=started)
        latency = time.monotonic() - started
        if op.surface == "rest":
            answered = _rest_attempt(response, latency)
        else:
            answered = _graphql_attempt(response, latency)
        answered.started_at = started
        return answered

    async def _send(self, op: Op, *, timeouts: httpx.Timeout) -> httpx.Response:
        if op.surface == "rest":
            return await self.http.post(
                f"{self._base()}/api/wallet/transact",
                json={
                    "userId": str(op.user_id),
                    "amount": op.amount,
                    "assetSlug": op.asset,
                    "type": op.type,
                },
                headers={"Idempotency-Key": op.key},
                timeout=timeouts,
            )
        return await self.http.post(
            f"{self._base()}/graphql",
            json={
                "query": TRANSACT_MUTATION,
                "variables": {
                    "input": {
                        "userId": str(op.user_id),
                        "amount": str(op.amount),
                        "assetSlug": op.asset,
                        "type": op.type,
                        "idempotencyKey": op.key,
                    }
                },
            },
            timeout=timeouts,
        )


async def run_op(
    client: Client, op: Op, policy: RetryPolicy, rng: random.Random, *, first_timeout: float
) -> Op:
    """Attempt until a definite answer, the attempt budget or the deadline, whichever first."""
    deadline = time.monotonic() + policy.deadline_s
    timeout = first_timeout
    for made in range(1, policy.max_attempts + 1):
        attempt = await client.attempt(op, timeout)
        op.attempts.append(attempt)
        if attempt.kind in DEFINITE:
            return op
        pause = policy.backoff(made, rng, attempt.retry_after)
        if made == policy.max_attempts or time.monotonic() + pause >= deadline:
            return op
        await asyncio.sleep(pause)
        timeout = min(policy.max_timeout_s, timeout * policy.timeout_growth)
    return op


@dataclass(slots=True)
class Load:
    """Drives `clients` concurrent clients until told to stop or `max_requests` ops are sent."""

    client: Client
    wallets: Wallets
    policy: RetryPolicy
    mix: Mix
    clients: int
    max_requests: int
    seed: int
    ops: list[Op] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def _one_client(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:{index}")
        while not self.stopping.is_set() and len(self.ops) < self.max_requests:
            op = self.mix.next_op(rng, self.wallets)
            self.ops.append(op)
            await run_op(
                self.client, op, self.policy, rng, first_timeout=self.policy.first_timeout(rng)
            )

    async def run(self) -> None:
        """Run until `stopping` is set (or the request budget is spent), then drain: every
        client finishes its current op, retries included."""
        await asyncio.gather(*(self._one_client(i) for i in range(self.clients)))

    def stop(self) -> None:
        self.stopping.set()


# What a client does with requests it gave up on once the dust settles: ask again, same key.
PATIENT = RetryPolicy(max_attempts=10, deadline_s=120.0, max_backoff_s=1.0)


async def resolve(client: Client, ops: Sequence[Op], *, policy: RetryPolicy = PATIENT) -> int:
    """Retry every op still without a definite answer; returns how many there were."""
    rng = random.Random(0)
    pending = [op for op in ops if op.answer is None]
    semaphore = asyncio.Semaphore(16)

    async def one(op: Op) -> None:
        async with semaphore:
            await run_op(client, op, policy, rng, first_timeout=policy.max_timeout_s)

    await asyncio.gather(*(one(op) for op in pending))
    return len(pending)


def auth_headers(api_key: str | None) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
