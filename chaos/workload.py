"""The workload: concurrent clients moving coins over REST and GraphQL, the careful way.

A client posts TOPUP, SPEND and BONUS; transfers between wallets; reverses (all or part of)
postings it was itself told had happened; creates holds and captures them (to the Treasury or to
another user, all or part), voids them, or leaves them to expire; and sends batches, atomic or
not (each operation of a non-atomic batch under its own key). See `chaos.ops` for the requests
and `chaos.wire` for their form on REST and GraphQL.

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

import httpx

from chaos.ops import (
    CLIENT_POOL,
    DEFINITE,
    Attempt,
    Batch,
    BatchItem,
    Capture,
    CreateHold,
    HeldHold,
    Op,
    OpKind,
    Posting,
    PostingType,
    Request,
    Reverse,
    Transact,
    Transfer,
    Void,
)
from chaos.wire import graphql_attempt, graphql_call, rest_attempt, rest_call
from wallet.inputs import TxType


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


@dataclass(slots=True)
class Memory:
    """What one client remembers of its own acknowledged work: postings it may reverse (with
    what it knows is left to reverse of each), holds it was told are HELD, and holds it left to
    expire that it will try to capture or void around or after their expiry."""

    postings: list[Posting] = field(default_factory=list)
    remaining: dict[uuid.UUID, int] = field(default_factory=dict)
    holds: list[HeldHold] = field(default_factory=list)
    expiring: list[HeldHold] = field(default_factory=list)
    limit: int = 200  # postings remembered (the oldest are forgotten)

    def _remember(self, posting: Posting) -> None:
        self.postings.append(posting)
        self.remaining[posting.transaction_id] = posting.amount
        if len(self.postings) > self.limit:
            self._forget(self.postings[0])

    def _forget(self, posting: Posting) -> None:
        if self.remaining.pop(posting.transaction_id, None) is not None:
            self.postings.remove(posting)

    def learn(self, op: Op, *, late_share: float, rng: random.Random) -> None:
        """Update from an op's definite answer (or its lack: then the op's target is dropped,
        since what is left of it is no longer known)."""
        answer, request = op.answer, op.request
        if answer is None:
            if isinstance(request, Reverse):
                self._forget(request.original)
            return
        match request:
            case Transact(user_id, asset, tx_type, amount) if answer.kind == "acked":
                assert answer.transaction_id is not None
                self._remember(
                    Posting(answer.transaction_id, tx_type, user_id, None, asset, amount)
                )
            case Transfer(from_user, to_user, asset, amount) if answer.kind == "acked":
                assert answer.transaction_id is not None
                self._remember(
                    Posting(answer.transaction_id, "TRANSFER", from_user, to_user, asset, amount)
                )
            case Reverse(original, asked):
                left = self.remaining.get(original.transaction_id)
                if left is None:
                    return
                if answer.kind == "acked" and answer.amount is not None:
                    left -= answer.amount
                elif answer.code == "REVERSAL_EXCEEDS_ORIGINAL" and asked is None:
                    left = 0  # "all" found nothing left
                self.remaining[original.transaction_id] = left
                if left <= 0:
                    self._forget(original)
            case CreateHold(user_id, asset, amount, expires_in_s) if answer.kind == "acked":
                assert answer.hold_id is not None
                last = op.attempts[-1]
                # Around its expiry (by the client's clock; the hold began before the answer
                # arrived): a late capture or void races the sweeper, or comes surely after it.
                due = last.started_at + last.latency_s + expires_in_s + rng.uniform(-0.5, 1.0)
                held = HeldHold(answer.hold_id, user_id, asset, amount, due)
                if expires_in_s > SHORT_EXPIRY_S[1]:
                    self.holds.append(held)
                elif rng.random() < late_share:
                    self.expiring.append(held)
            case Capture(hold, _, to_user) if answer.kind == "acked":
                assert answer.transaction_id is not None
                assert answer.amount is not None
                kind: PostingType = "SPEND" if to_user is None else "TRANSFER"
                self._remember(
                    Posting(
                        answer.transaction_id,
                        kind,
                        hold.user_id,
                        to_user,
                        hold.asset,
                        answer.amount,
                    )
                )
            case Batch(_, items) if answer.kind == "acked" and answer.results is not None:
                for item, result in zip(items, answer.results, strict=True):
                    if result.kind == "acked" and result.transaction_id is not None:
                        posting = Posting(
                            result.transaction_id,
                            item.op,
                            item.user_id,
                            item.to_user_id,
                            item.asset,
                            item.amount,
                        )
                        self._remember(posting)

    def take_hold(self, rng: random.Random, *, late_share: float) -> HeldHold | None:
        """A hold to capture or void (it is never offered again): now and then one left to
        expire whose time has come, else a HELD one."""
        now = time.monotonic()
        due = [h for h in self.expiring if h.due <= now]
        if due and rng.random() < late_share:
            chosen = rng.choice(due)
            self.expiring.remove(chosen)
            return chosen
        if not self.holds:
            return None
        return self.holds.pop(rng.randrange(len(self.holds)))


# Holds left to expire live 1 to 3 s; the others 30 to 300 s (captured or voided before then,
# unless the client never gets to them).
SHORT_EXPIRY_S = (1, 3)
LONG_EXPIRY_S = (30, 300)

CLASSIC: tuple[tuple[OpKind, float], ...] = (("transact", 1.0),)
EVERY_KIND: tuple[tuple[OpKind, float], ...] = (
    ("transact", 0.3),
    ("transfer", 0.18),
    ("reverse", 0.1),
    ("hold", 0.1),
    ("capture", 0.14),  # a client with no hold to capture or void creates one instead
    ("void", 0.06),
    ("batch", 0.12),
)


@dataclass(frozen=True, slots=True)
class Mix:
    """What clients send. `Mix()` is the classic TOPUP/SPEND/BONUS load; `kinds=EVERY_KIND`
    adds transfers, reversals, holds and batches."""

    hot_share: float = 0.5
    types: Sequence[tuple[TxType, float]] = (("TOPUP", 0.35), ("SPEND", 0.5), ("BONUS", 0.15))
    asset_weights: Sequence[float] = (0.8, 0.2)
    max_amount: int = 100
    graphql_share: float = 0.5
    kinds: Sequence[tuple[OpKind, float]] = CLASSIC
    rest_only: frozenset[OpKind] = frozenset()  # kinds the GraphQL API lacks
    short_hold_share: float = 0.25  # holds left to expire
    late_share: float = 0.5  # of those, how many the client tries to capture or void anyway
    partial_share: float = 0.5  # reversals and captures of part of the amount (else all of it)
    capture_to_user_share: float = 0.4  # captures paid to another user (else to the Treasury)
    atomic_share: float = 0.5
    batch_size: tuple[int, int] = (2, 6)
    batch_ops: Sequence[tuple[PostingType, float]] = (
        ("TOPUP", 0.3),
        ("BONUS", 0.2),
        ("SPEND", 0.3),
        ("TRANSFER", 0.2),
    )

    def _user(self, rng: random.Random, wallets: Wallets) -> uuid.UUID:
        return rng.choice(wallets.hot if rng.random() < self.hot_share else wallets.cold)

    def _other(self, rng: random.Random, wallets: Wallets, user: uuid.UUID) -> uuid.UUID:
        while (other := self._user(rng, wallets)) == user:
            pass
        return other

    def _asset(self, rng: random.Random, wallets: Wallets) -> str:
        return rng.choices(list(wallets.assets), weights=list(self.asset_weights))[0]

    def _amount(self, rng: random.Random) -> int:
        return rng.randint(1, self.max_amount)

    def _part(self, rng: random.Random, whole: int) -> int | None:
        return rng.randint(1, whole) if rng.random() < self.partial_share else None

    def _transact(self, rng: random.Random, wallets: Wallets) -> Transact:
        tx_type = rng.choices([k for k, _ in self.types], weights=[w for _, w in self.types])[0]
        user = self._user(rng, wallets)
        return Transact(user, self._asset(rng, wallets), tx_type, self._amount(rng))

    def _item(self, rng: random.Random, wallets: Wallets, *, keyed: bool) -> BatchItem:
        ops = [k for k, _ in self.batch_ops]
        op = rng.choices(ops, weights=[w for _, w in self.batch_ops])[0]
        user = self._user(rng, wallets)
        return BatchItem(
            op=op,
            user_id=user,
            asset=self._asset(rng, wallets),
            amount=self._amount(rng),
            to_user_id=self._other(rng, wallets, user) if op == "TRANSFER" else None,
            key=f"chaos-{uuid.uuid4()}" if keyed else None,
        )

    def _request(self, rng: random.Random, wallets: Wallets, memory: Memory) -> Request:
        kinds = [k for k, _ in self.kinds]
        kind = rng.choices(kinds, weights=[w for _, w in self.kinds])[0]
        if kind == "reverse" and memory.postings:
            original = rng.choice(memory.postings)
            return Reverse(original, self._part(rng, original.amount))
        if kind in ("capture", "void"):
            hold = memory.take_hold(rng, late_share=self.late_share)
            if hold is not None and kind == "void":
                return Void(hold)
            if hold is not None:
                to_user = None
                if rng.random() < self.capture_to_user_share:
                    to_user = self._other(rng, wallets, hold.user_id)
                return Capture(hold, self._part(rng, hold.amount), to_user)
            kind = "hold"  # nothing to capture or void yet
        if kind == "hold":
            short = rng.random() < self.short_hold_share
            expires = rng.randint(*(SHORT_EXPIRY_S if short else LONG_EXPIRY_S))
            user = self._user(rng, wallets)
            return CreateHold(user, self._asset(rng, wallets), self._amount(rng), expires)
        if kind == "transfer":
            user = self._user(rng, wallets)
            to_user = self._other(rng, wallets, user)
            return Transfer(user, to_user, self._asset(rng, wallets), self._amount(rng))
        if kind == "batch":
            atomic = rng.random() < self.atomic_share
            size = rng.randint(*self.batch_size)
            items = tuple(self._item(rng, wallets, keyed=not atomic) for _ in range(size))
            return Batch(atomic, items)
        return self._transact(rng, wallets)  # transact, or a reversal with nothing to reverse

    def next_op(self, rng: random.Random, wallets: Wallets, memory: Memory | None = None) -> Op:
        request = self._request(rng, wallets, memory if memory is not None else Memory())
        graphql = rng.random() < self.graphql_share
        op = Op(key=f"chaos-{uuid.uuid4()}", surface="rest", request=request)
        if graphql and op.kind not in self.rest_only:
            op.surface = "graphql"
        return op


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
            answered = rest_attempt(op.request, response, latency)
        else:
            answered = graphql_attempt(op.request, response, latency)
        answered.started_at = started
        return answered

    async def _send(self, op: Op, *, timeouts: httpx.Timeout) -> httpx.Response:
        if op.surface == "rest":
            path, body = rest_call(op.request)
            return await self.http.post(
                f"{self._base()}{path}",
                json=body,
                headers={"Idempotency-Key": op.key},
                timeout=timeouts,
            )
        return await self.http.post(
            f"{self._base()}/graphql", json=graphql_call(op.request, op.key), timeout=timeouts
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
        memory = Memory()
        while not self.stopping.is_set() and len(self.ops) < self.max_requests:
            op = self.mix.next_op(rng, self.wallets, memory)
            self.ops.append(op)
            await run_op(
                self.client, op, self.policy, rng, first_timeout=self.policy.first_timeout(rng)
            )
            memory.learn(op, late_share=self.mix.late_share, rng=rng)

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
