"""The chaos suite's judge catches each breach it claims to: a judge that passes everything would
make every chaos run green. Ledgers are built through the real ledger functions on fresh wallets;
records are written by hand the way the workload's clients would have written them."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chaos.judge import Balances, Judgement, judge, seed_wallets, snapshot
from chaos.ops import (
    Attempt,
    Batch,
    BatchItem,
    Capture,
    CreateHold,
    HeldHold,
    Op,
    Posting,
    PostingType,
    Request,
    Reverse,
    Transact,
    Transfer,
    Void,
)
from chaos.wire import MALFORMED, graphql_attempt, rest_attempt
from chaos.workload import Wallets
from wallet import ledger
from wallet.errors import Declined, WalletError
from wallet.inputs import TxType

T = TypeVar("T")
GOLD = "gold_coins"


def new_key() -> str:
    return f"judge-{uuid.uuid4()}"


def told(**fields: Any) -> Attempt:
    """An acknowledgement, as the client read it."""
    return Attempt("acked", 0.01, status=200, **fields)


def refused(code: str, **fields: Any) -> Attempt:
    return Attempt("refused", 0.01, status=422, code=code, **fields)


class Books:
    """Moves money through the real ledger and writes the record a careful client would have."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.ops: list[Op] = []

    async def _run(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self.engine.begin() as conn:
            return await fn(conn)

    def record(self, request: Request, *attempts: Attempt, key: str = "") -> Op:
        op = Op(key=key or new_key(), surface="rest", request=request, attempts=list(attempts))
        self.ops.append(op)
        return op

    async def transact(self, user: uuid.UUID, amount: int, kind: TxType, *, key: str = "") -> Op:
        key = key or new_key()
        outcome = await self._run(
            lambda c: ledger.transact(
                c, ledger.TransactRequest(user, GOLD, amount, kind), key=key, principal=""
            )
        )
        if outcome.outcome == "INSUFFICIENT_FUNDS":
            answer = refused("INSUFFICIENT_FUNDS")
        else:
            answer = told(
                transaction_id=outcome.transaction_id, balance_after=outcome.balance_after
            )
        return self.record(Transact(user, GOLD, kind, amount), answer, key=key)

    async def transfer(self, src: uuid.UUID, dst: uuid.UUID, amount: int) -> Op:
        key = new_key()
        done = await self._run(
            lambda c: ledger.transfer(
                c, ledger.TransferRequest(src, dst, GOLD, amount), key=key, principal=""
            )
        )
        if isinstance(done, Declined):
            answer = refused(done.code)
        else:
            answer = told(
                transaction_id=done.transaction_id,
                balances={src: done.from_balance_after, dst: done.to_balance_after},
            )
        return self.record(Transfer(src, dst, GOLD, amount), answer, key=key)

    async def reverse(self, original: Posting, amount: int | None) -> Op:
        key = new_key()
        done = await self._run(
            lambda c: ledger.reverse(
                c, ledger.ReverseRequest(original.transaction_id, amount), key=key, principal=""
            )
        )
        if isinstance(done, Declined):
            answer = refused(done.code)
        else:
            answer = told(
                transaction_id=done.transaction_id,
                amount=done.amount,
                balances=dict(done.balances),
            )
        return self.record(Reverse(original, amount), answer, key=key)

    async def hold(self, user: uuid.UUID, amount: int, *, expires_in_s: int = 300) -> Op:
        key = new_key()
        done = await self._run(
            lambda c: ledger.create_hold(
                c, ledger.HoldRequest(user, GOLD, amount, expires_in_s), key=key, principal=""
            )
        )
        if isinstance(done, Declined):
            answer = refused(done.code)
        else:
            answer = told(hold_id=done.hold_id, hold_status=done.status, amount=done.amount)
        return self.record(CreateHold(user, GOLD, amount, expires_in_s), answer, key=key)

    async def capture(
        self, hold: HeldHold, amount: int | None = None, to_user: uuid.UUID | None = None
    ) -> Op:
        key = new_key()
        request = ledger.CaptureRequest(hold.hold_id, amount, to_user)
        done = await self._run(lambda c: ledger.capture_hold(c, request, key=key, principal=""))
        if isinstance(done, Declined):
            answer = refused(done.code)
        else:
            assert done.balance is not None
            answer = told(
                hold_id=done.hold_id,
                hold_status=done.status,
                amount=done.captured_amount,
                transaction_id=done.transaction_id,
                balances={hold.user_id: done.balance},
            )
        return self.record(Capture(hold, amount, to_user), answer, key=key)

    async def void(self, hold: HeldHold) -> Op:
        key = new_key()
        done = await self._run(lambda c: ledger.void_hold(c, hold.hold_id, key=key, principal=""))
        if isinstance(done, Declined):
            answer = refused(done.code)
        else:
            answer = told(hold_id=done.hold_id, hold_status=done.status)
        return self.record(Void(hold), answer, key=key)

    async def batch(self, items: list[BatchItem], *, atomic: bool) -> Op:
        key = new_key()
        operations = [ledger.BatchOperation(_ledger_request(i), i.key) for i in items]
        done = await self._run(
            lambda c: ledger.batch(c, operations, atomic=atomic, key=key, principal="")
        )
        if isinstance(done, Declined):
            answer = refused(done.code, failed_index=done.details["index"])
        else:
            answer = told(results=[_item_answer(r) for r in done.results])
        return self.record(Batch(atomic, tuple(items)), answer, key=key)


def _ledger_request(item: BatchItem) -> ledger.TransactRequest | ledger.TransferRequest:
    if item.op == "TRANSFER":
        assert item.to_user_id is not None
        return ledger.TransferRequest(item.user_id, item.to_user_id, GOLD, item.amount)
    return ledger.TransactRequest(item.user_id, GOLD, item.amount, item.op)


def _item_answer(result: ledger.OperationResult) -> Attempt:
    if isinstance(result, ledger.TransactOutcome):
        return told(transaction_id=result.transaction_id, balance_after=result.balance_after)
    if isinstance(result, ledger.TransferDone):
        return told(
            transaction_id=result.transaction_id,
            balances={
                result.from_user_id: result.from_balance_after,
                result.to_user_id: result.to_balance_after,
            },
        )
    assert isinstance(result, WalletError)
    return refused(result.code)


def posting(op: Op) -> Posting:
    """The posting an acknowledged transact, transfer or capture made (to reverse it)."""
    answer = op.answer
    assert answer is not None
    assert answer.transaction_id is not None
    request = op.request
    if isinstance(request, Transact):
        return Posting(
            answer.transaction_id, request.type, request.user_id, None, GOLD, request.amount
        )
    if isinstance(request, Transfer):
        return Posting(
            answer.transaction_id,
            "TRANSFER",
            request.from_user_id,
            request.to_user_id,
            GOLD,
            request.amount,
        )
    assert isinstance(request, Capture)
    assert answer.amount is not None
    kind: PostingType = "SPEND" if request.to_user_id is None else "TRANSFER"
    return Posting(
        answer.transaction_id,
        kind,
        request.hold.user_id,
        request.to_user_id,
        GOLD,
        answer.amount,
    )


def held(op: Op) -> HeldHold:
    answer = op.answer
    assert answer is not None
    assert answer.hold_id is not None
    assert isinstance(op.request, CreateHold)
    return HeldHold(answer.hold_id, op.request.user_id, GOLD, op.request.amount, due=0.0)


async def wallets(engine: AsyncEngine) -> tuple[Wallets, uuid.UUID, uuid.UUID, Balances]:
    """Two hot wallets (1,000,000 gold coins each) and one cold one."""
    found, seed = await seed_wallets(engine, random.Random(3), hot=2, cold=1)
    return found, found.hot[0], found.hot[1], seed


async def test_an_honest_record_of_every_kind_passes(engine: AsyncEngine) -> None:
    found, alice, bob, seed = await wallets(engine)
    books = Books(engine)
    key = new_key()
    first = await books.transact(alice, 5, "TOPUP", key=key)
    books.ops.remove(first)
    replay = await books.transact(alice, 5, "TOPUP", key=key)  # a retry: answered, moved nothing
    replay.attempts.insert(0, Attempt("timeout", 1.0))
    assert first.answer == replay.answer
    await books.transact(alice, 10**9, "SPEND")  # refused
    spend = await books.transact(alice, 40, "SPEND")
    sent = await books.transfer(alice, bob, 30)
    await books.transfer(found.cold[0], alice, 10**9)  # refused
    await books.reverse(posting(spend), 15)
    await books.reverse(posting(spend), None)  # the remaining 25
    await books.reverse(posting(spend), None)  # nothing left: REVERSAL_EXCEEDS_ORIGINAL
    await books.reverse(posting(sent), 10)
    bought = held(await books.hold(alice, 50))
    gift = held(await books.hold(bob, 20))
    dropped = held(await books.hold(alice, 7))
    held(await books.hold(alice, 8))  # left HELD
    await books.hold(found.cold[0], 10**9)  # refused
    purchase = await books.capture(bought, 30)  # to the Treasury, 20 released
    await books.capture(gift, None, alice)  # all of it, to Alice
    await books.reverse(posting(purchase), 5)
    await books.void(dropped)
    short = held(await books.hold(bob, 3, expires_in_s=1))
    expiring = held(await books.hold(bob, 4, expires_in_s=1))
    await asyncio.sleep(1.1)
    await books.capture(short)  # HOLD_EXPIRED
    await books.void(expiring)  # HOLD_NOT_ACTIVE (expired)
    cold = found.cold[0]
    await books.batch(
        [BatchItem("BONUS", cold, GOLD, 5), BatchItem("TRANSFER", alice, GOLD, 7, to_user_id=bob)],
        atomic=True,
    )
    await books.batch(
        [BatchItem("TOPUP", bob, GOLD, 1), BatchItem("SPEND", cold, GOLD, 10**9)], atomic=True
    )  # BATCH_FAILED at 1: nothing moved
    await books.batch(
        [
            BatchItem("SPEND", bob, GOLD, 3, key=new_key()),
            BatchItem("SPEND", cold, GOLD, 10**9, key=new_key()),  # refused on its own
            BatchItem("TRANSFER", bob, GOLD, 2, to_user_id=cold, key=new_key()),
        ],
        atomic=False,
    )
    answers = [op.answer for op in books.ops]
    assert all(a is not None for a in answers)
    codes = {a.code for a in answers if a is not None and a.kind == "refused"}
    assert codes == {
        "INSUFFICIENT_FUNDS",
        "REVERSAL_EXCEEDS_ORIGINAL",
        "HOLD_EXPIRED",
        "HOLD_NOT_ACTIVE",
        "BATCH_FAILED",
    }
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert verdict.ok, verdict.problems()
    assert verdict.holds_checked == 6
    assert verdict.acknowledged == sum(a is not None and a.kind == "acked" for a in answers)


async def test_a_lost_acknowledgement_is_caught(engine: AsyncEngine) -> None:
    found, alice, bob, seed = await wallets(engine)
    books = Books(engine)
    books.record(
        Transact(alice, GOLD, "TOPUP", 5), told(transaction_id=uuid.uuid4(), balance_after=1)
    )
    books.record(
        Transfer(alice, bob, GOLD, 5), told(transaction_id=uuid.uuid4(), balances={alice: 1})
    )
    original = posting(await books.transact(alice, 9, "SPEND"))
    books.record(Reverse(original, 4), told(transaction_id=uuid.uuid4(), amount=4, balances={}))
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert len(verdict.lost) == 3
    assert verdict.balance_breaches  # the client counts coins the ledger never moved
    assert verdict.conservation  # 5 coins in, 4 refunded: the wallets hold 9 fewer than counted
    assert not verdict.ok


async def test_a_posting_nobody_acknowledged_is_a_duplicate(engine: AsyncEngine) -> None:
    found, alice, _, seed = await wallets(engine)
    books = Books(engine)
    key = new_key()
    await books.transact(alice, 5, "TOPUP", key=key)
    await Books(engine).transact(alice, 5, "TOPUP")  # posted twice, under another key
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert len(verdict.duplicated) == 1
    assert len(verdict.balance_breaches) == 1
    assert not verdict.ok


async def test_the_bank_invariant_tells_money_from_nowhere_from_money_moved(
    engine: AsyncEngine,
) -> None:
    found, alice, bob, seed = await wallets(engine)
    stray = Books(engine)
    await stray.transfer(alice, bob, 50)  # nobody acknowledged it: it only moved coins around
    verdict = await judge(engine, [], found, seed, principal="")
    assert len(verdict.duplicated) == 1
    assert len(verdict.balance_breaches) == 2
    assert not verdict.conservation  # the wallets' total is intact
    await stray.transact(bob, 50, "BONUS")  # coins from the Treasury nobody was told of
    verdict = await judge(engine, [], found, seed, principal="")
    assert len(verdict.conservation) == 1
    assert "gold_coins" in verdict.conservation[0]


async def test_a_refusal_that_moved_money_is_caught(engine: AsyncEngine) -> None:
    found, alice, bob, seed = await wallets(engine)
    books = Books(engine)
    spend = await books.transact(alice, 5, "SPEND")  # it completed, but the client heard refused
    spend.attempts = [refused("INSUFFICIENT_FUNDS")]
    moved = await books.transfer(alice, bob, 5)
    moved.attempts = [refused("INSUFFICIENT_FUNDS")]
    failed = await books.batch([BatchItem("TOPUP", bob, GOLD, 1)], atomic=True)
    failed.attempts = [refused("BATCH_FAILED", failed_index=0)]
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert len(verdict.refused_moved) == 3
    assert not verdict.ok


async def test_wrong_answers_and_principals_are_mismatches(engine: AsyncEngine) -> None:
    found, alice, bob, seed = await wallets(engine)
    books = Books(engine)
    topup = await books.transact(alice, 5, "TOPUP")
    sent = await books.transfer(alice, bob, 5)
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert verdict.ok, verdict.problems()
    assert topup.answer is not None
    assert topup.answer.balance_after is not None
    topup.answer.balance_after += 1
    assert sent.answer is not None
    assert sent.answer.balances is not None
    sent.answer.balances[bob] += 1
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert len(verdict.mismatched) == 2
    topup.answer.balance_after -= 1
    sent.answer.balances[bob] -= 1
    verdict = await judge(engine, books.ops, found, seed, principal="someone-else")
    assert len(verdict.mismatched) == 2


async def test_a_reversal_of_another_transaction_is_a_mismatch(engine: AsyncEngine) -> None:
    found, alice, _, seed = await wallets(engine)
    books = Books(engine)
    spend = posting(await books.transact(alice, 10, "SPEND"))
    other = posting(await books.transact(alice, 10, "SPEND"))
    reversal = await books.reverse(spend, 3)
    reversal.request = Reverse(other, 3)  # the client's record names another original
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert len(verdict.mismatched) == 1
    assert not verdict.balance_breaches  # the same wallet, the same amount


async def test_hold_accounting(engine: AsyncEngine) -> None:
    found, alice, bob, seed = await wallets(engine)
    books, stray = Books(engine), Books(engine)
    # Told CAPTURED, but the ledger voided it.
    voided = held(await books.hold(alice, 10))
    await stray.void(voided)
    books.record(
        Capture(voided, None, None),
        told(hold_id=voided.hold_id, amount=10, transaction_id=uuid.uuid4(), balances={}),
    )
    # Told VOIDED, but the ledger captured it (a posting nobody acknowledged, too).
    captured = held(await books.hold(alice, 10))
    await stray.capture(captured, 4, bob)
    books.record(Void(captured), told(hold_id=captured.hold_id, hold_status="VOIDED"))
    # Told HOLD_EXPIRED, but it is still HELD.
    live = held(await books.hold(bob, 10))
    books.record(Capture(live, None, None), refused("HOLD_EXPIRED"))
    # A hold nobody was told of.
    await stray.hold(bob, 3)
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert len(verdict.hold_breaches) == 4, verdict.hold_breaches
    assert len(verdict.lost) == 2  # the capture's transaction, the void's key
    assert len(verdict.refused_moved) == 1  # no HOLD_EXPIRED is stored under that key
    assert len(verdict.duplicated) == 1  # the stray capture
    assert not verdict.ok


async def test_a_batch_told_other_transactions_loses_them(engine: AsyncEngine) -> None:
    found, alice, bob, seed = await wallets(engine)
    books = Books(engine)
    ran = await books.batch(
        [BatchItem("BONUS", alice, GOLD, 5), BatchItem("TRANSFER", alice, GOLD, 7, to_user_id=bob)],
        atomic=True,
    )
    assert ran.answer is not None
    assert ran.answer.results is not None
    ran.answer.results[1].transaction_id = uuid.uuid4()
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert len(verdict.lost) == 1
    assert len(verdict.duplicated) == 1  # the transfer it did post matches nothing told


async def test_available_below_zero_and_early_expiry_are_caught(engine: AsyncEngine) -> None:
    """PostgreSQL itself refuses both, so the judge is shown a doctored snapshot."""
    found, alice, _, seed = await wallets(engine)
    books = Books(engine)
    hold = held(await books.hold(alice, 10, expires_in_s=1))
    await asyncio.sleep(1.1)
    await books.void(hold)  # HOLD_NOT_ACTIVE: it expires there and then
    honest = await snapshot(engine, books.ops, found.all)
    assert Judgement(honest, seed, "").run(books.ops).ok
    row = honest.holds[hold.hold_id]
    assert row.status == "EXPIRED"
    balance, _ = honest.accounts[(alice, GOLD)]
    doctored = replace(
        honest,
        accounts={**honest.accounts, (alice, GOLD): (balance, balance + 1)},
        holds={hold.hold_id: replace(row, finished_at=row.expires_at - timedelta(seconds=1))},
    )
    verdict = Judgement(doctored, seed, "").run(books.ops)
    assert len(verdict.available_breaches) == 1
    assert len(verdict.hold_breaches) == 1
    assert "before its expiry" in verdict.hold_breaches[0]


async def test_a_request_left_without_an_answer_fails_the_run(engine: AsyncEngine) -> None:
    found, alice, bob, seed = await wallets(engine)
    books = Books(engine)
    posted = await books.transact(alice, 5, "TOPUP")  # it did post; the client never learned
    posted.attempts = [Attempt("timeout", 10.0)]
    batch = await books.batch([BatchItem("BONUS", bob, GOLD, 5)], atomic=True)
    batch.attempts = [Attempt("dropped", 0.1)]
    verdict = await judge(engine, books.ops, found, seed, principal="")
    assert (verdict.unresolved, verdict.unresolved_committed) == (2, 2)
    assert not verdict.duplicated  # not duplicates: unanswered
    assert not verdict.ok


async def test_a_hold_left_held_past_its_expiry_is_released_late(engine: AsyncEngine) -> None:
    found, alice, _, seed = await wallets(engine)
    books = Books(engine)
    hold = held(await books.hold(alice, 10, expires_in_s=1))
    found_now = await snapshot(engine, books.ops, found.all)
    row = found_now.holds[hold.hold_id]
    on_time = Judgement(found_now, seed, "", stopped_at=row.expires_at + timedelta(seconds=2))
    verdict = on_time.run(books.ops)
    assert verdict.ok, verdict.problems()
    assert verdict.expiry_lag_max_s == 2.0
    late = Judgement(found_now, seed, "", stopped_at=row.expires_at + timedelta(seconds=6))
    verdict = late.run(books.ops)
    assert len(verdict.late_expiries) == 1
    assert not verdict.ok
    # Time the database or the service was down does not count: 8 s late, 4 s of it down.
    down = [
        (row.expires_at + timedelta(seconds=s), row.expires_at + timedelta(seconds=e))
        for s, e in ((1, 3), (2, 4), (7, 9))
    ]
    stopped = row.expires_at + timedelta(seconds=8)
    verdict = Judgement(found_now, seed, "", stopped_at=stopped, outages=down).run(books.ops)
    assert verdict.ok, verdict.problems()
    assert verdict.expiry_lag_max_s == 8.0


def _response(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def test_batch_answers_are_read_as_the_contracts_write_them() -> None:
    """An atomic batch answers each operation's own data (whose `status` is "COMPLETED"); a
    non-atomic one wraps each in {"status": 200, "data"} or {"status": 422, "code"}."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    txns = [str(uuid.uuid4()) for _ in range(2)]
    items = (
        BatchItem("BONUS", alice, GOLD, 5),
        BatchItem("TRANSFER", alice, GOLD, 7, to_user_id=bob),
    )
    topup = {"transactionId": txns[0], "status": "COMPLETED", "balanceAfter": "105"}
    sent = {"transactionId": txns[1], "fromBalanceAfter": "98", "toBalanceAfter": "7"}
    atomic = rest_attempt(
        Batch(True, items), _response(200, {"success": True, "data": {"results": [topup, sent]}}), 0
    )
    assert atomic.kind == "acked"
    assert atomic.results is not None
    assert [r.kind for r in atomic.results] == ["acked", "acked"]
    assert atomic.results[0].balance_after == 105
    assert atomic.results[1].balances == {alice: 98, bob: 7}
    wrapped = {
        "results": [{"status": 200, "data": topup}, {"status": 422, "code": "INSUFFICIENT_FUNDS"}]
    }
    loose = rest_attempt(Batch(False, items), _response(200, {"success": True, "data": wrapped}), 0)
    assert loose.results is not None
    assert [(r.kind, r.code) for r in loose.results] == [
        ("acked", None),
        ("refused", "INSUFFICIENT_FUNDS"),
    ]
    failed = rest_attempt(
        Batch(True, items),
        _response(
            422,
            {
                "success": False,
                "code": "BATCH_FAILED",
                "details": {"index": 1, "code": "INSUFFICIENT_FUNDS"},
            },
        ),
        0,
    )
    assert (failed.kind, failed.failed_index, failed.failed_code) == (
        "refused",
        1,
        "INSUFFICIENT_FUNDS",
    )
    graphql = graphql_attempt(
        Batch(True, items),
        _response(
            200,
            {
                "data": {
                    "transactBatch": {
                        "__typename": "BatchSuccess",
                        "replayed": False,
                        "results": [
                            {
                                "__typename": "TransactSuccess",
                                "replayed": False,
                                "transaction": {"id": txns[0]},
                                "balance": {"amount": "105"},
                            },
                            {"__typename": "InsufficientFunds", "code": "INSUFFICIENT_FUNDS"},
                        ],
                    }
                }
            },
        ),
        0,
    )
    assert graphql.results is not None
    assert [r.kind for r in graphql.results] == ["acked", "refused"]


def test_an_unexpected_refusal_or_a_broken_success_is_rejected() -> None:
    """Only the refusals a request may meet are definite refusals; a 200 that breaks the
    contract is reported, never read as a success."""
    request = Transfer(uuid.uuid4(), uuid.uuid4(), GOLD, 5)
    reused = _response(422, {"success": False, "code": "IDEMPOTENCY_KEY_REUSED"})
    assert rest_attempt(request, reused, 0).kind == "rejected"
    broken = rest_attempt(request, _response(200, {"success": True, "data": {"x": 1}}), 0)
    assert (broken.kind, broken.code) == ("rejected", MALFORMED)
    expired = _response(422, {"success": False, "code": "HOLD_EXPIRED"})
    hold = HeldHold(uuid.uuid4(), uuid.uuid4(), GOLD, 5, due=0.0)
    assert rest_attempt(Capture(hold, None, None), expired, 0).kind == "refused"
    assert rest_attempt(request, expired, 0).kind == "rejected"
