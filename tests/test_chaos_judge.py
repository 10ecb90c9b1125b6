"""The chaos suite's judge catches each breach it claims to: a judge that passes everything would
make every chaos run green. Breaches are staged directly in the ledger of fresh wallets."""

from __future__ import annotations

import random
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.judge import judge, seed_wallets
from chaos.workload import Attempt, Op, Wallets
from wallet import ledger
from wallet.inputs import TxType


async def post(
    engine: AsyncEngine, user: uuid.UUID, amount: int, kind: TxType, *, key: str
) -> ledger.TransactOutcome:
    async with engine.begin() as conn:
        return await ledger.transact(
            conn, ledger.TransactRequest(user, "gold_coins", amount, kind), key=key, principal=""
        )


def op(user: uuid.UUID, amount: int, kind: TxType, *attempts: Attempt, key: str = "") -> Op:
    return Op(
        key=key or f"judge-{uuid.uuid4()}",
        surface="rest",
        user_id=user,
        asset="gold_coins",
        type=kind,
        amount=amount,
        attempts=list(attempts),
    )


def acked(outcome: ledger.TransactOutcome) -> Attempt:
    return Attempt(
        "acked",
        0.01,
        status=200,
        transaction_id=outcome.transaction_id,
        balance_after=outcome.balance_after,
    )


async def wallets(
    engine: AsyncEngine,
) -> tuple[Wallets, uuid.UUID, dict[tuple[uuid.UUID, str], int]]:
    found, seed = await seed_wallets(engine, random.Random(3), hot=1, cold=1)
    return found, found.hot[0], seed


async def test_an_honest_record_passes(engine: AsyncEngine) -> None:
    found, user, seed = await wallets(engine)
    key = f"judge-{uuid.uuid4()}"
    first = await post(engine, user, 5, "TOPUP", key=key)
    replay = await post(engine, user, 5, "TOPUP", key=key)  # a retry: answered, moved nothing
    refused = await post(engine, user, 10**9, "SPEND", key=(refused_key := f"r-{uuid.uuid4()}"))
    ops = [
        op(user, 5, "TOPUP", Attempt("timeout", 1.0), acked(replay), key=key),
        op(user, 10**9, "SPEND", Attempt("refused", 0.01, 422), key=refused_key),
    ]
    assert first.transaction_id == replay.transaction_id
    assert refused.outcome == "INSUFFICIENT_FUNDS"
    verdict = await judge(engine, ops, found, seed, principal="")
    assert verdict.ok, verdict.problems()
    assert verdict.acknowledged == 1


async def test_a_lost_acknowledgement_is_caught(engine: AsyncEngine) -> None:
    found, user, seed = await wallets(engine)
    told = Attempt("acked", 0.01, status=200, transaction_id=uuid.uuid4(), balance_after=1)
    verdict = await judge(engine, [op(user, 5, "TOPUP", told)], found, seed, principal="")
    assert len(verdict.lost) == 1
    assert verdict.balance_breaches  # the client counts 5 coins the ledger never got
    assert not verdict.ok


async def test_a_posting_nobody_acknowledged_is_a_duplicate(engine: AsyncEngine) -> None:
    found, user, seed = await wallets(engine)
    key = f"judge-{uuid.uuid4()}"
    answered = await post(engine, user, 5, "TOPUP", key=key)
    await post(engine, user, 5, "TOPUP", key=f"stray-{uuid.uuid4()}")  # posted twice
    verdict = await judge(
        engine, [op(user, 5, "TOPUP", acked(answered), key=key)], found, seed, principal=""
    )
    assert len(verdict.duplicated) == 1
    assert len(verdict.balance_breaches) == 1
    assert not verdict.ok


async def test_a_refusal_that_moved_money_is_caught(engine: AsyncEngine) -> None:
    found, user, seed = await wallets(engine)
    key = f"judge-{uuid.uuid4()}"
    await post(engine, user, 5, "SPEND", key=key)  # it completed, but the client heard "refused"
    refused = op(user, 5, "SPEND", Attempt("refused", 0.01, 422), key=key)
    verdict = await judge(engine, [refused], found, seed, principal="")
    assert len(verdict.refused_moved) == 1
    assert not verdict.ok


async def test_a_wrong_answer_and_a_wrong_principal_are_mismatches(engine: AsyncEngine) -> None:
    found, user, seed = await wallets(engine)
    key = f"judge-{uuid.uuid4()}"
    outcome = await post(engine, user, 5, "TOPUP", key=key)
    wrong = acked(outcome)
    wrong.balance_after = (outcome.balance_after or 0) + 1
    verdict = await judge(engine, [op(user, 5, "TOPUP", wrong, key=key)], found, seed, principal="")
    assert len(verdict.mismatched) == 1
    right = op(user, 5, "TOPUP", acked(outcome), key=key)
    verdict = await judge(engine, [right], found, seed, principal="someone-else")
    assert len(verdict.mismatched) == 1


async def test_a_request_left_without_an_answer_fails_the_run(engine: AsyncEngine) -> None:
    found, user, seed = await wallets(engine)
    key = f"judge-{uuid.uuid4()}"
    await post(engine, user, 5, "TOPUP", key=key)  # it did post; the client never learned
    verdict = await judge(
        engine, [op(user, 5, "TOPUP", Attempt("timeout", 10.0), key=key)], found, seed, principal=""
    )
    assert (verdict.unresolved, verdict.unresolved_committed) == (1, 1)
    assert not verdict.duplicated  # it is not a duplicate: it is unanswered
    assert not verdict.ok
