"""Ledger v2 in the core, on real parallel connections: transfers, reversals, holds, batches,
the bigint ceiling, balances at an instant, and an in-place upgrade of a database with traffic."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.factories import Factory
from wallet import ledger
from wallet.audit import audit
from wallet.db.engine import create_engine, create_pool
from wallet.errors import (
    AssetNotFound,
    BalanceLimitExceeded,
    BatchFailed,
    Declined,
    HoldExpired,
    HoldNotActive,
    IdempotencyKeyReused,
    InsufficientFunds,
    NotReversible,
    ReversalExceedsOriginal,
    UserNotFound,
    ValidationError,
    WalletError,
)

T = TypeVar("T")
GOLD = "gold_coins"
MAX_BIGINT = 2**63 - 1
MAX_AMOUNT = 2**53 - 1


@pytest.fixture
async def parallel(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine with room for 32 connections at once, waiting patiently for row locks."""
    engine = create_engine(database_url, pool_size=32, lock_timeout_ms=30_000)
    yield engine
    await engine.dispose()


async def run(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T | Declined]]) -> T:
    """Run `work` in a committed transaction, then raise the refusal it returned (if any), as the
    service's routes do: raising inside would roll back the stored answer."""
    async with engine.begin() as conn:
        result = await work(conn)
    return ledger.settled(result)


def key() -> str:
    return str(uuid.uuid4())


async def audited(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        report = await audit(conn)
        await conn.rollback()
    assert report.ok, report.render()


async def balance(engine: AsyncEngine, user: uuid.UUID, slug: str = GOLD) -> ledger.Balance:
    async with engine.connect() as conn:
        found = [b for b in await ledger.balances(conn, user) if b.asset.slug == slug]
    assert found, f"{user} has no {slug} account"
    return found[0]


# --- transfers


async def test_transfer_moves_coins_and_opens_the_recipients_account(
    engine: AsyncEngine, factory: Factory
) -> None:
    alice, bob = await factory.user(gold=100), await factory.user()
    request = ledger.TransferRequest(
        alice, bob, GOLD, 30, reference="gift-1", metadata={"note": "hi", "n": 2}
    )
    k = key()
    done = await run(engine, lambda c: ledger.transfer(c, request, key=k, principal="t"))
    assert (done.from_balance_after, done.to_balance_after, done.replayed) == (70, 30, False)
    again = await run(engine, lambda c: ledger.transfer(c, request, key=k, principal="t"))
    assert again.replayed
    assert again.transaction_id == done.transaction_id
    assert again.created_at == done.created_at
    assert (await balance(engine, alice)).amount == 70
    assert (await balance(engine, bob)).amount == 30
    view = await run(engine, lambda c: ledger.transaction_view(c, done.transaction_id))
    assert view is not None
    assert view.record.type == "TRANSFER"
    assert view.record.reference == "gift-1"
    assert view.record.metadata == {"note": "hi", "n": 2}
    assert {(e.user_id, e.direction, e.balance_after) for e in view.entries} == {
        (alice, "DEBIT", 70),
        (bob, "CREDIT", 30),
    }
    other = ledger.TransferRequest(alice, bob, GOLD, 31, reference="gift-1")
    with pytest.raises(IdempotencyKeyReused):
        await run(engine, lambda c: ledger.transfer(c, other, key=k, principal="t"))
    await audited(engine)


async def test_transfer_refusals(engine: AsyncEngine, factory: Factory) -> None:
    alice, bob = await factory.user(gold=10), await factory.user(gold=1)
    k = key()
    short = ledger.TransferRequest(alice, bob, GOLD, 11)
    with pytest.raises(InsufficientFunds) as first:
        await run(engine, lambda c: ledger.transfer(c, short, key=k, principal="t"))
    assert not first.value.replayed
    with pytest.raises(InsufficientFunds) as second:  # stored, replayed
        await run(engine, lambda c: ledger.transfer(c, short, key=k, principal="t"))
    assert second.value.replayed
    for request, error in [
        (ledger.TransferRequest(uuid.uuid4(), bob, GOLD, 1), UserNotFound),
        (ledger.TransferRequest(alice, uuid.uuid4(), GOLD, 1), UserNotFound),
        (ledger.TransferRequest(alice, bob, "no_such_asset", 1), AssetNotFound),
        (ledger.TransferRequest(alice, alice, GOLD, 1), ValidationError),  # the SQL refuses it too
    ]:
        with pytest.raises(error):
            await transfer(engine, request)
    assert ((await balance(engine, alice)).amount, (await balance(engine, bob)).amount) == (10, 1)


async def test_transfer_storm_both_ways_never_deadlocks_and_conserves(
    parallel: AsyncEngine, factory: Factory
) -> None:
    """32 connections, random transfers among 10 wallets in both directions, for 4 s."""
    wallets = [await factory.user(gold=1_000) for _ in range(10)]
    deadline = asyncio.get_running_loop().time() + 4
    outcomes: Counter[str] = Counter()

    async def client() -> None:
        while asyncio.get_running_loop().time() < deadline:
            a, b = random.sample(wallets, 2)
            try:
                await transfer(parallel, ledger.TransferRequest(a, b, GOLD, random.randint(1, 300)))
                outcomes["ok"] += 1
            except InsufficientFunds:
                outcomes["short"] += 1

    await asyncio.gather(*(client() for _ in range(32)))  # a deadlock would raise here
    assert outcomes["ok"] > 100
    total = sum([(await balance(parallel, w)).amount for w in wallets])
    assert total == 10_000
    await audited(parallel)


async def transfer(engine: AsyncEngine, request: ledger.TransferRequest) -> ledger.TransferDone:
    async with engine.begin() as conn:
        result = await ledger.transfer(conn, request, key=key(), principal="t")
    return ledger.settled(result)


# --- reversals


async def test_twenty_concurrent_reversals_of_ten_on_a_spend_of_100(
    parallel: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    spend = await factory.transact(user, 100, "SPEND")
    assert spend.transaction_id is not None
    original = spend.transaction_id

    async def reverse() -> str:
        request = ledger.ReverseRequest(original, amount=10)
        try:
            await run(parallel, lambda c: ledger.reverse(c, request, key=key(), principal="r"))
        except ReversalExceedsOriginal:
            return "exceeds"
        return "ok"

    results = Counter(await asyncio.gather(*(reverse() for _ in range(20))))
    assert results == {"ok": 10, "exceeds": 10}
    assert (await balance(parallel, user)).amount == 100
    view = await run(parallel, lambda c: ledger.transaction_view(c, original))
    assert view is not None
    assert view.reversed_amount == 100
    await audited(parallel)


async def test_reversal_defaults_to_what_is_left_and_runs_back_along_the_legs(
    engine: AsyncEngine, factory: Factory
) -> None:
    alice, bob = await factory.user(gold=50), await factory.user()
    sent = await run(
        engine,
        lambda c: ledger.transfer(
            c, ledger.TransferRequest(alice, bob, GOLD, 40), key=key(), principal="t"
        ),
    )
    part = await run(
        engine,
        lambda c: ledger.reverse(
            c,
            ledger.ReverseRequest(sent.transaction_id, amount=15, reason="partial"),
            key=key(),
            principal="r",
        ),
    )
    assert part.remaining_reversible == 25
    assert dict(part.balances) == {alice: 25, bob: 25}
    rest = await run(
        engine,
        lambda c: ledger.reverse(
            c, ledger.ReverseRequest(sent.transaction_id), key=key(), principal="r"
        ),
    )
    assert (rest.amount, rest.remaining_reversible) == (25, 0)
    assert dict(rest.balances) == {alice: 50, bob: 0}
    with pytest.raises(NotReversible):
        await run(
            engine,
            lambda c: ledger.reverse(
                c, ledger.ReverseRequest(rest.transaction_id), key=key(), principal="r"
            ),
        )
    with pytest.raises(ReversalExceedsOriginal):
        await run(
            engine,
            lambda c: ledger.reverse(
                c, ledger.ReverseRequest(sent.transaction_id, amount=1), key=key(), principal="r"
            ),
        )
    await audited(engine)


async def test_a_reversal_racing_a_spend_of_the_same_coins(
    parallel: AsyncEngine, factory: Factory
) -> None:
    """A TOPUP of 50 on an empty wallet: taking it back and spending it cannot both happen."""
    for _ in range(10):
        user = await factory.user()
        topup = await factory.transact(user, 50, "TOPUP")
        assert topup.transaction_id is not None
        original = topup.transaction_id

        async def take_back(original: uuid.UUID) -> str:
            request = ledger.ReverseRequest(original)
            try:
                await run(parallel, lambda c: ledger.reverse(c, request, key=key(), principal="r"))
            except InsufficientFunds:
                return "refused"
            return "won"

        async def spend(user: uuid.UUID) -> str:
            outcome = await factory.transact(user, 50, "SPEND")
            return "won" if outcome.outcome == "COMPLETED" else "refused"

        results = sorted(await asyncio.gather(take_back(original), spend(user)))
        assert results == ["refused", "won"]
        assert (await balance(parallel, user)).amount == 0
    await audited(parallel)


# --- the bigint ceiling


async def test_a_credit_past_the_bigint_ceiling_is_refused_stored_and_replayed(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user()
    async with engine.begin() as conn:  # 1024 x (2^53 - 1) = 2^63 - 1024
        await conn.execute(
            text(
                "SELECT wallet_transact('t', 'fill-' || u || n, '\\x00', u, 'gold_coins', 'TOPUP',"
                " CAST(:amount AS bigint), gen_random_uuid(), 't', NULL, '{}')"
                " FROM CAST(:u AS uuid) u, generate_series(1, 1024) n"
            ),
            {"u": user, "amount": MAX_AMOUNT},
        )
    full = (await balance(engine, user)).amount
    assert full == 1024 * MAX_AMOUNT
    k = key()
    request = ledger.TransactRequest(user, GOLD, MAX_AMOUNT, "TOPUP")
    first = await run(engine, lambda c: ledger.transact(c, request, key=k, principal="t"))
    assert (first.outcome, first.replayed) == ("BALANCE_LIMIT_EXCEEDED", False)
    again = await run(engine, lambda c: ledger.transact(c, request, key=k, principal="t"))
    assert (again.outcome, again.replayed) == ("BALANCE_LIMIT_EXCEEDED", True)
    refusal = ledger.refusal(again)
    assert isinstance(refusal, BalanceLimitExceeded)
    assert refusal.replayed
    bob = await factory.user(gold=MAX_AMOUNT)
    with pytest.raises(BalanceLimitExceeded):
        await run(
            engine,
            lambda c: ledger.transfer(
                c, ledger.TransferRequest(bob, user, GOLD, MAX_AMOUNT), key=key(), principal="t"
            ),
        )
    assert (await balance(engine, user)).amount == full
    await audited(engine)


async def test_no_credit_fails_because_of_the_treasury_shard_it_drew(
    engine: AsyncEngine, factory: Factory
) -> None:
    """An asset with two shards, credited up to nearly all they can issue together (2 x 2^63):
    a random shard fills up long before that, and the posting must use the other one."""
    slug = f"tiny_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await ledger.ensure_asset(conn, slug=slug, name="Two shards", shards=2)
    users = [await factory.user() for _ in range(3)]
    async with engine.begin() as conn:
        outcomes = (
            await conn.execute(
                text(
                    "SELECT t.outcome FROM unnest(CAST(:users AS uuid[])) u,"
                    " generate_series(1, 680) n,"
                    " wallet_transact('t', 'shard-' || u || '-' || n, '\\x00', u,"
                    " CAST(:slug AS text), 'TOPUP', CAST(:amount AS bigint), gen_random_uuid(),"
                    " 't', NULL, '{}') t"
                ),
                {"users": users, "slug": slug, "amount": MAX_AMOUNT},
            )
        ).scalars()
        assert Counter(outcomes) == {"COMPLETED": 2040}
        shards = (
            await conn.execute(
                text(
                    "SELECT a.balance FROM accounts a JOIN assets s ON s.id = a.asset_id"
                    " WHERE s.slug = :slug AND a.kind = 'TREASURY'"
                ),
                {"slug": slug},
            )
        ).scalars()
        assert sum(shards) == -2040 * MAX_AMOUNT
    await audited(engine)


# --- holds


async def create_hold(engine: AsyncEngine, request: ledger.HoldRequest) -> ledger.HoldView:
    async with engine.begin() as conn:
        result = await ledger.create_hold(conn, request, key=key(), principal="h")
    return ledger.settled(result)


async def test_twenty_concurrent_holds_of_ten_on_a_balance_of_100(
    parallel: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=100)

    async def hold() -> str:
        request = ledger.HoldRequest(user, GOLD, 10)
        try:
            await run(parallel, lambda c: ledger.create_hold(c, request, key=key(), principal="h"))
        except InsufficientFunds:
            return "short"
        return "held"

    assert Counter(await asyncio.gather(*(hold() for _ in range(20)))) == {"held": 10, "short": 10}
    found = await balance(parallel, user)
    assert (found.amount, found.held, found.available) == (100, 100, 0)
    with pytest.raises(InsufficientFunds):
        await factory_spend(parallel, user, 1)
    await audited(parallel)


async def factory_spend(engine: AsyncEngine, user: uuid.UUID, amount: int) -> None:
    outcome = await run(
        engine,
        lambda c: ledger.transact(
            c, ledger.TransactRequest(user, GOLD, amount, "SPEND"), key=key(), principal="h"
        ),
    )
    refusal = ledger.refusal(outcome)
    if refusal is not None:
        raise refusal


async def test_capture_and_void_of_one_hold_at_the_same_moment(
    parallel: AsyncEngine, factory: Factory
) -> None:
    for _ in range(10):
        user, shop = await factory.user(gold=50), await factory.user()
        hold = await create_hold(parallel, ledger.HoldRequest(user, GOLD, 40))

        async def capture(hold_id: uuid.UUID, shop: uuid.UUID) -> str:
            request = ledger.CaptureRequest(hold_id, amount=25, to_user_id=shop)
            try:
                async with parallel.begin() as conn:
                    result = await ledger.capture_hold(conn, request, key=key(), principal="h")
                return ledger.settled(result).status
            except HoldNotActive:
                return "lost"

        async def void(hold_id: uuid.UUID) -> str:
            try:
                async with parallel.begin() as conn:
                    result = await ledger.void_hold(conn, hold_id, key=key(), principal="h")
                return ledger.settled(result).status
            except HoldNotActive:
                return "lost"

        results = await asyncio.gather(capture(hold.hold_id, shop), void(hold.hold_id))
        assert sorted(results) in (["CAPTURED", "lost"], ["VOIDED", "lost"])
        after = await balance(parallel, user)
        assert after.held == 0
        assert after.amount == (25 if "CAPTURED" in results else 50)
    await audited(parallel)


async def test_hold_lifecycle_partial_capture_expiry_and_replays(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    k = key()
    request = ledger.HoldRequest(user, GOLD, 60, reference="order-9", metadata={"sku": "a"})
    hold = await run(engine, lambda c: ledger.create_hold(c, request, key=k, principal="h"))
    assert (hold.status, hold.balance, hold.available) == ("HELD", 100, 40)
    replay = await run(engine, lambda c: ledger.create_hold(c, request, key=k, principal="h"))
    assert replay.replayed
    assert replay.hold_id == hold.hold_id
    ck = key()
    capture = ledger.CaptureRequest(hold.hold_id, amount=45)
    captured = await run(engine, lambda c: ledger.capture_hold(c, capture, key=ck, principal="h"))
    assert (captured.status, captured.captured_amount) == ("CAPTURED", 45)
    assert (captured.balance, captured.available) == (55, 55)  # the other 15 released at once
    again = await run(engine, lambda c: ledger.capture_hold(c, capture, key=ck, principal="h"))
    assert again.replayed
    assert again.transaction_id == captured.transaction_id
    with pytest.raises(HoldNotActive):
        await run(engine, lambda c: ledger.void_hold(c, hold.hold_id, key=key(), principal="h"))

    short = await run(
        engine,
        lambda c: ledger.create_hold(
            c, ledger.HoldRequest(user, GOLD, 5, expires_in_seconds=1), key=key(), principal="h"
        ),
    )
    await asyncio.sleep(1.2)
    with pytest.raises(HoldExpired):  # nobody swept it yet: expiry is checked at capture
        await run(
            engine,
            lambda c: ledger.capture_hold(
                c, ledger.CaptureRequest(short.hold_id), key=key(), principal="h"
            ),
        )
    found = await run(engine, lambda c: ledger.holds_by_id(c, [short.hold_id]))
    assert found[short.hold_id].status == "EXPIRED"
    swept = await create_hold(engine, ledger.HoldRequest(user, GOLD, 5, expires_in_seconds=1))
    await asyncio.sleep(1.2)
    await run(engine, lambda c: ledger.expire_holds(c))
    with pytest.raises(HoldExpired):  # swept first: the same answer, on every surface
        await run(
            engine,
            lambda c: ledger.capture_hold(
                c, ledger.CaptureRequest(swept.hold_id), key=key(), principal="h"
            ),
        )
    assert (await balance(engine, user)).held == 0
    await audited(engine)


async def test_the_sweeper_expires_holds_and_a_capture_racing_it_ends_one_way(
    parallel: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    holds = [
        await run(
            parallel,
            lambda c: ledger.create_hold(
                c,
                ledger.HoldRequest(user, GOLD, 10, expires_in_seconds=1),
                key=key(),
                principal="h",
            ),
        )
        for _ in range(5)
    ]
    await asyncio.sleep(1.05)

    async def capture(hold_id: uuid.UUID) -> str:
        try:
            return (
                await run(
                    parallel,
                    lambda c: ledger.capture_hold(
                        c, ledger.CaptureRequest(hold_id), key=key(), principal="h"
                    ),
                )
            ).status
        except (HoldExpired, HoldNotActive):
            return "EXPIRED"

    async def sweep() -> int:
        return await run(parallel, lambda c: ledger.expire_holds(c))

    swept = asyncio.gather(sweep(), sweep())
    captured = asyncio.gather(*(capture(h.hold_id) for h in holds))
    assert sum(await swept) <= 5
    assert set(await captured) <= {"EXPIRED"}
    found = await run(parallel, lambda c: ledger.holds_by_id(c, [h.hold_id for h in holds]))
    assert {h.status for h in found.values()} == {"EXPIRED"}
    assert (await balance(parallel, user)).held == 0
    await audited(parallel)


# --- batches


def bonus(user: uuid.UUID, amount: int, op_key: str | None = None) -> ledger.BatchOperation:
    return ledger.BatchOperation(ledger.TransactRequest(user, GOLD, amount, "BONUS"), op_key)


async def test_atomic_batch_all_or_nothing(engine: AsyncEngine, factory: Factory) -> None:
    users = [await factory.user(gold=5) for _ in range(3)]
    ops = [bonus(u, 10) for u in users]
    done = await run(engine, lambda c: ledger.batch(c, ops, atomic=True, key=key(), principal="b"))
    assert [getattr(r, "balance_after", None) for r in done.results] == [15, 15, 15]
    failing = [
        *ops,
        ledger.BatchOperation(ledger.TransactRequest(users[0], GOLD, 1_000, "SPEND")),
    ]
    k = key()
    with pytest.raises(BatchFailed) as failed:
        await run(engine, lambda c: ledger.batch(c, failing, atomic=True, key=k, principal="b"))
    assert failed.value.details == {"index": 3, "code": "INSUFFICIENT_FUNDS"}
    with pytest.raises(BatchFailed) as replayed:
        await run(engine, lambda c: ledger.batch(c, failing, atomic=True, key=k, principal="b"))
    assert replayed.value.replayed
    assert [(await balance(engine, u)).amount for u in users] == [15, 15, 15]
    await audited(engine)


async def test_non_atomic_batch_runs_each_operation_under_its_own_key(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=5)
    first_key = key()
    ops = [
        bonus(user, 10, first_key),
        ledger.BatchOperation(ledger.TransactRequest(user, GOLD, 1_000, "SPEND"), key()),
        bonus(uuid.uuid4(), 1, key()),
    ]
    done = await run(engine, lambda c: ledger.batch(c, ops, atomic=False, key=key(), principal="b"))
    ok, short, missing = done.results
    assert isinstance(ok, ledger.TransactOutcome)
    assert ok.balance_after == 15
    assert isinstance(short, InsufficientFunds)
    assert isinstance(missing, UserNotFound)
    # The operation's own key replays through its own route, and in a retried batch.
    single = await run(
        engine,
        lambda c: ledger.transact(
            c, ledger.TransactRequest(user, GOLD, 10, "BONUS"), key=first_key, principal="b"
        ),
    )
    assert single.replayed
    assert single.transaction_id == ok.transaction_id
    retry = await run(
        engine, lambda c: ledger.batch(c, ops, atomic=False, key=key(), principal="b")
    )
    assert isinstance(retry.results[0], ledger.TransactOutcome)
    assert retry.results[0].replayed
    assert (await balance(engine, user)).amount == 15


async def test_concurrent_batches_over_overlapping_wallets_never_deadlock(
    parallel: AsyncEngine, factory: Factory
) -> None:
    wallets = [await factory.user(gold=1_000) for _ in range(8)]

    async def one_batch(atomic: bool) -> None:
        ops: list[ledger.BatchOperation] = []
        for _ in range(20):
            a, b = random.sample(wallets, 2)
            ops.append(ledger.BatchOperation(ledger.TransferRequest(a, b, GOLD, 1), key()))
        await run(parallel, lambda c: ledger.batch(c, ops, atomic=atomic, key=key(), principal="b"))

    await asyncio.gather(*(one_batch(i % 2 == 0) for i in range(24)))
    assert sum([(await balance(parallel, w)).amount for w in wallets]) == 8_000
    await audited(parallel)


# --- balances at an instant


async def test_balance_at_each_entrys_time_is_its_balance_after_under_concurrency(
    parallel: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=1)
    await asyncio.gather(
        *(factory_credit(parallel, user, n) for n in range(1, 41)),
    )
    async with parallel.connect() as conn:
        page = await ledger.history(conn, user, limit=100)
        for item in page.items:
            at = await ledger.balances_at(conn, user, item.created_at)
            assert [(b.asset.slug, b.amount) for b in at] == [(GOLD, item.balance_after)]
        before = await ledger.balances_at(
            conn, user, page.items[-1].created_at - timedelta(microseconds=1)
        )
        assert before == []


async def factory_credit(engine: AsyncEngine, user: uuid.UUID, amount: int) -> None:
    await run(
        engine,
        lambda c: ledger.transact(
            c, ledger.TransactRequest(user, GOLD, amount, "TOPUP"), key=key(), principal="p"
        ),
    )


# --- what a WalletError carries


def test_refusals_are_wallet_errors_with_422() -> None:
    for kind in (InsufficientFunds, BalanceLimitExceeded, ReversalExceedsOriginal, HoldExpired):
        error: WalletError = kind("x")
        assert error.status == 422
        assert not error.replayed


async def test_a_posting_that_names_no_key_scope_cannot_run(engine: AsyncEngine) -> None:
    """The idempotency scope has no default in SQL either: a caller must say whose key it is."""
    with pytest.raises(DBAPIError):
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO idempotency_keys (key, fingerprint) VALUES ('k', '')")
            )


# --- the hot path's asyncpg variants answer exactly as the SQLAlchemy ones


async def test_the_asyncpg_hot_path_matches_the_core(
    database_url: str, engine: AsyncEngine, factory: Factory
) -> None:
    user, empty = await factory.user(gold=10), await factory.user()
    pool = await create_pool(database_url, size=2)
    try:
        async with pool.acquire() as conn:
            assert await ledger.balances_pg(conn, user) == await _core_balances(engine, user)
            assert await ledger.balances_pg(conn, empty) == []
            with pytest.raises(UserNotFound):
                await ledger.balances_pg(conn, uuid.uuid4())
            k = key()
            spend = ledger.TransactRequest(user, GOLD, 4, "SPEND", reference="o-1")
            first = await ledger.transact_pg(conn, spend, key=k, principal="p")
            assert (first.outcome, first.balance_after, first.replayed) == ("COMPLETED", 6, False)
            again = await ledger.transact_pg(conn, spend, key=k, principal="p")
            assert again.replayed
            assert again.transaction_id == first.transaction_id
            async with engine.begin() as sa:  # the same key through the core replays too
                core = await ledger.transact(sa, spend, key=k, principal="p")
            assert core.replayed
            assert core.transaction_id == first.transaction_id
            short = await ledger.transact_pg(
                conn, ledger.TransactRequest(user, GOLD, 99, "SPEND"), key=key(), principal="p"
            )
            assert isinstance(ledger.refusal(short), InsufficientFunds)
            with pytest.raises(IdempotencyKeyReused):
                await ledger.transact_pg(
                    conn, ledger.TransactRequest(user, GOLD, 5, "SPEND"), key=k, principal="p"
                )
            with pytest.raises(AssetNotFound):
                await ledger.transact_pg(
                    conn, ledger.TransactRequest(user, "nope", 1, "TOPUP"), key=key(), principal="p"
                )
    finally:
        await pool.close()


async def _core_balances(engine: AsyncEngine, user: uuid.UUID) -> list[ledger.Balance]:
    async with engine.connect() as conn:
        return await ledger.balances(conn, user)
