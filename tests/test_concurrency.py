"""Races on real parallel connections and real HTTP: no double spend, no double charge."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.factories import Factory
from wallet import ledger
from wallet.db.engine import create_engine
from wallet.errors import BatchFailed, IdempotencyKeyReused, UserNotFound
from wallet.inputs import TxType


def spend_body(user: uuid.UUID, amount: int, kind: str = "SPEND") -> dict[str, object]:
    return {"userId": str(user), "amount": amount, "assetSlug": "gold_coins", "type": kind}


async def test_concurrent_spends_over_http_pass_exactly_the_affordable_ones(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=255)
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/wallet/transact",
                json=spend_body(user, 10),
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            for _ in range(60)
        )
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 25, 422: 35}
    assert {r.json()["code"] for r in responses if r.status_code == 422} == {"INSUFFICIENT_FUNDS"}
    # Each success saw the balance the previous one left: a chain 255 -> 245 -> ... -> 5.
    afters = sorted(
        int(r.json()["data"]["balanceAfter"]) for r in responses if r.status_code == 200
    )
    assert afters == list(range(5, 255, 10))
    assert await factory.balance(user) == 5


async def test_concurrent_spends_on_parallel_database_connections(
    database_url: str, factory: Factory
) -> None:
    """50 connections, each posting at the same moment: the row lock queues them."""
    user = await factory.user(gold=100)
    engine = create_engine(database_url, pool_size=50, lock_timeout_ms=30_000)
    start = asyncio.Event()

    async def spend() -> str:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))  # connection is open before the race
            await conn.commit()
            await start.wait()
            async with conn.begin():
                outcome = await ledger.transact(
                    conn,
                    ledger.TransactRequest(user, "gold_coins", 3, "SPEND"),
                    key=str(uuid.uuid4()),
                    principal="",
                )
                return outcome.outcome

    try:
        tasks = [asyncio.create_task(spend()) for _ in range(50)]
        await asyncio.sleep(0.5)
        start.set()
        outcomes = Counter(await asyncio.gather(*tasks))
    finally:
        await engine.dispose()
    assert outcomes == {"COMPLETED": 33, "INSUFFICIENT_FUNDS": 17}
    assert await factory.balance(user) == 1


async def test_same_key_sent_at_once_charges_once_and_answers_identically(
    client: httpx.AsyncClient, factory: Factory, engine: AsyncEngine
) -> None:
    user = await factory.user(gold=100)
    key = f"dup-{uuid.uuid4()}"
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/wallet/transact", json=spend_body(user, 7), headers={"Idempotency-Key": key}
            )
            for _ in range(25)
        )
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert replayed.count(None) == 1
    assert replayed.count("true") == 24
    assert await factory.balance(user) == 93
    async with engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM transactions WHERE user_id = :u AND type = 'SPEND'"),
            {"u": user},
        )
    assert count == 1


async def test_mixed_concurrent_traffic_on_one_wallet_adds_up(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=50)
    kinds = ["TOPUP", "SPEND", "BONUS", "SPEND"] * 15
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/wallet/transact",
                json=spend_body(user, 9, kind),
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            for kind in kinds
        )
    )
    expected = 50
    for kind, response in zip(kinds, responses, strict=True):
        if response.status_code == 200:
            expected += 9 if kind != "SPEND" else -9
        else:
            assert (kind, response.json()["code"]) == ("SPEND", "INSUFFICIENT_FUNDS")
    assert await factory.balance(user) == expected


async def test_topup_storm_never_funnels_through_one_treasury_row(
    client: httpx.AsyncClient, factory: Factory, engine: AsyncEngine
) -> None:
    users = [await factory.user() for _ in range(40)]
    async with engine.connect() as conn:
        before: dict[int, int] = dict(
            (
                await conn.execute(text("SELECT id, version FROM accounts WHERE kind = 'TREASURY'"))
            ).all()
        )

    async def topup(user: uuid.UUID) -> httpx.Response:
        """Retried with the same key if the connection drops before an answer (a careful
        client's rule): the key makes the retry replay, so the counts below stay exact."""
        key = str(uuid.uuid4())
        for attempt in range(3):
            try:
                return await client.post(
                    "/api/wallet/transact",
                    json=spend_body(user, 1, "TOPUP"),
                    headers={"Idempotency-Key": key},
                )
            except httpx.TransportError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    responses = await asyncio.gather(*(topup(users[i % len(users)]) for i in range(400)))
    assert Counter(r.status_code for r in responses) == {200: 400}
    async with engine.connect() as conn:
        after: dict[int, int] = dict(
            (
                await conn.execute(text("SELECT id, version FROM accounts WHERE kind = 'TREASURY'"))
            ).all()
        )
    writes = {acc: after[acc] - before[acc] for acc in after if after[acc] != before[acc]}
    assert sum(writes.values()) == 400
    assert len(writes) >= 16  # spread over many shards...
    assert max(writes.values()) < 400 // 4  # ...so no row is written by every transaction


async def test_postings_proceed_while_another_posting_holds_its_locks(
    database_url: str, factory: Factory
) -> None:
    """An open posting holds one user row and one Treasury shard; others are not queued behind it.

    With a single Treasury row (the legacy design) every one of these would time out. The asset
    here has two shards: a posting that drew the held one takes the other (SKIP LOCKED) instead
    of waiting for it, so without that about half of them would time out.
    """
    slug = f"two_{uuid.uuid4().hex[:8]}"
    holder_user = await factory.user()
    others = [await factory.user() for _ in range(12)]
    engine = create_engine(database_url, pool_size=2, lock_timeout_ms=300)
    try:
        async with engine.begin() as conn:
            await ledger.ensure_asset(conn, slug=slug, name="Two shards", shards=2)
        async with engine.connect() as holder:
            trans = await holder.begin()
            await ledger.transact(
                holder,
                ledger.TransactRequest(holder_user, slug, 5, "TOPUP"),
                key=str(uuid.uuid4()),
                principal="",
            )
            async with engine.connect() as other:
                for user in others:  # a lock wait past 300 ms raises 55P03 and fails the test
                    async with other.begin():
                        outcome = await ledger.transact(
                            other,
                            ledger.TransactRequest(user, slug, 5, "TOPUP"),
                            key=str(uuid.uuid4()),
                            principal="",
                        )
                        assert outcome.outcome == "COMPLETED"
            await trans.rollback()
        async with engine.connect() as conn:
            shards = (
                await conn.execute(
                    text(
                        "SELECT a.version FROM accounts a JOIN assets s ON s.id = a.asset_id"
                        " WHERE s.slug = :slug AND a.kind = 'TREASURY'"
                    ),
                    {"slug": slug},
                )
            ).scalars()
            assert sorted(shards) == [0, len(others)]  # all took the shard nobody held
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("first", "end", "outcome", "before", "after"),
    [
        (("SPEND", 3), "commit", "INSUFFICIENT_FUNDS", 2, 2),
        (("TOPUP", 10), "commit", "COMPLETED", 15, 10),
        (("SPEND", 3), "rollback", "COMPLETED", 5, 0),
    ],
    ids=["spent first", "topped up first", "rolled back first"],
)
async def test_a_posting_that_waited_for_its_wallet_is_judged_on_the_balance_it_finds(
    database_url: str,
    factory: Factory,
    first: tuple[TxType, int],
    end: str,
    outcome: str,
    before: int,
    after: int,
) -> None:
    """A SPEND of 5 on a wallet of 5 waits for another posting on the wallet to end.

    The SPEND locks and moves the wallet in one UPDATE when it fits; PostgreSQL evaluates that
    condition again on the row the other posting left, and a SPEND that no longer fits takes
    the path that locks the wallet and refuses it on that balance."""
    user = await factory.user(gold=5)
    engine = create_engine(database_url, pool_size=3)
    try:
        async with engine.connect() as holder:
            trans = await holder.begin()
            kind, amount = first
            await ledger.transact(
                holder,
                ledger.TransactRequest(user, "gold_coins", amount, kind),
                key=str(uuid.uuid4()),
                principal="",
            )

            async def spend() -> ledger.TransactOutcome:
                async with engine.begin() as conn:
                    return await ledger.transact(
                        conn,
                        ledger.TransactRequest(user, "gold_coins", 5, "SPEND"),
                        key=str(uuid.uuid4()),
                        principal="",
                    )

            waiting = asyncio.create_task(spend())
            async with engine.connect() as watcher:
                for _ in range(1000):  # until the SPEND waits for the wallet's lock (up to 20 s)
                    waits = await watcher.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                            " current_database() AND wait_event_type = 'Lock'"
                        )
                    )
                    if waits:
                        break
                    await asyncio.sleep(0.02)
                assert waits == 1
            assert not waiting.done()
            await (trans.commit() if end == "commit" else trans.rollback())
            result = await waiting
        assert (result.outcome, result.balance_before, result.balance_after) == (
            outcome,
            before,
            after,
        )
        assert await factory.balance(user) == after
    finally:
        await engine.dispose()


async def _lock_gold_wallet(conn: AsyncConnection, user: uuid.UUID) -> None:
    """Hold the user's gold wallet in `conn`'s transaction, as a third session."""
    await conn.execute(
        text(
            "SELECT 1 FROM accounts a JOIN assets s ON s.id = a.asset_id"
            " WHERE a.user_id = :u AND s.slug = 'gold_coins' FOR UPDATE"
        ),
        {"u": user},
    )


async def _waiting_for_a_lock(
    engine: AsyncEngine, count: int, *, unless: asyncio.Task[object] | None = None
) -> None:
    """Until `count` sessions of this database wait for a lock, or `unless` is done (10 s at
    most). Each look is its own transaction: a transaction reads pg_stat_activity once and keeps
    what it read."""
    for _ in range(200):
        if unless is not None and unless.done():
            return
        async with engine.begin() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} sessions never waited for a lock")


async def test_a_transfer_and_a_batch_opening_one_wallet_never_deadlock(
    engine: AsyncEngine, database_url: str, factory: Factory
) -> None:
    """A batch opens its credits' wallets before it locks any; a TRANSFER to a user without a
    wallet must too. It opened the wallet after locking the sender's, so (sender locked by a
    third session, the TRANSFER queued first on it, then the batch, which opened the wallet and
    queued too) the TRANSFER got the sender and waited for the batch's new wallet while the batch
    waited for the sender: PostgreSQL broke the cycle by failing one (40P01, answered 503)."""
    sender, newcomer = await factory.user(gold=10), await factory.user()
    # One engine per session, so that none waits for another's pool.
    third_engine, transfer_engine, batch_engine = (
        create_engine(database_url, pool_size=1, lock_timeout_ms=10_000) for _ in range(3)
    )

    async def transfer() -> object:
        async with transfer_engine.begin() as conn:
            request = ledger.TransferRequest(sender, newcomer, "gold_coins", 1)
            return await ledger.transfer(conn, request, key=str(uuid.uuid4()), principal="")

    async def batch() -> object:
        refused = ledger.TransferRequest(sender, newcomer, "gold_coins", 1_000)
        operation = ledger.BatchOperation(refused, key=str(uuid.uuid4()))
        async with batch_engine.begin() as conn:
            return await ledger.batch(
                conn, [operation], atomic=False, key=str(uuid.uuid4()), principal=""
            )

    try:
        async with third_engine.begin() as third:
            await _lock_gold_wallet(third, sender)
            first = asyncio.create_task(transfer())
            await _waiting_for_a_lock(engine, 1)
            second = asyncio.create_task(batch())
            await _waiting_for_a_lock(engine, 2)
        moved, batched = await asyncio.gather(first, second)  # the third session committed
        assert isinstance(moved, ledger.TransferDone)
        assert isinstance(batched, ledger.BatchDone)
        assert (await factory.balance(sender), await factory.balance(newcomer)) == (9, 1)
    finally:
        for one in (third_engine, transfer_engine, batch_engine):
            await one.dispose()


@pytest.mark.parametrize("atomic", [False, True])
@pytest.mark.parametrize("kind", ["TOPUP", "TRANSFER"])
async def test_one_key_sent_alone_and_in_a_batch_at_once_never_deadlocks(
    engine: AsyncEngine, database_url: str, factory: Factory, kind: str, atomic: bool
) -> None:
    """A request alone claims its key, then locks its wallets; a batch locked its wallets, then
    claimed each operation's key. So (the wallet locked by a third session, the batch queued
    first on it, then the request alone, which claimed the key and queued too) the batch got the
    wallet and waited for the key while the request waited for the wallet: PostgreSQL failed one
    (40P01, answered 503). A batch claims its keys before it locks; the request then waits for
    the batch's key and replays the batch's operation."""
    user, other = await factory.user(gold=10), await factory.user()
    key = str(uuid.uuid4())
    request: ledger.TransactRequest | ledger.TransferRequest = (
        ledger.TransactRequest(user, "gold_coins", 5, "TOPUP")
        if kind == "TOPUP"
        else ledger.TransferRequest(user, other, "gold_coins", 5)
    )
    third_engine, alone_engine, batch_engine = (
        create_engine(database_url, pool_size=1, lock_timeout_ms=10_000) for _ in range(3)
    )

    async def alone() -> object:
        async with alone_engine.begin() as conn:
            if isinstance(request, ledger.TransactRequest):
                return await ledger.transact(conn, request, key=key, principal="")
            return await ledger.transfer(conn, request, key=key, principal="")

    async def batch() -> object:
        operation = ledger.BatchOperation(request, key=key)
        async with batch_engine.begin() as conn:
            return await ledger.batch(
                conn, [operation], atomic=atomic, key=str(uuid.uuid4()), principal=""
            )

    try:
        async with third_engine.begin() as third:
            await _lock_gold_wallet(third, user)
            first = asyncio.create_task(batch())
            await _waiting_for_a_lock(engine, 1)
            second = asyncio.create_task(alone())
            await _waiting_for_a_lock(engine, 2)
        batched, posted = await asyncio.gather(first, second)  # the third session committed
    finally:
        for one in (third_engine, alone_engine, batch_engine):
            await one.dispose()
    assert isinstance(batched, ledger.BatchDone)
    (result,) = batched.results
    assert isinstance(result, ledger.TransactOutcome | ledger.TransferDone)
    assert isinstance(posted, ledger.TransactOutcome | ledger.TransferDone)
    assert (result.replayed, posted.replayed) == (False, True)
    assert posted.transaction_id == result.transaction_id
    assert await factory.balance(user) == (15 if kind == "TOPUP" else 5)


async def test_two_batches_each_using_the_others_key_for_an_operation_never_deadlock(
    engine: AsyncEngine, database_url: str, factory: Factory
) -> None:
    """A batch claimed its own key, then its operations' keys in key order. Batch A (key x,
    operations under a0 and y) held x and waited for a0 (held by a third session); batch B
    (key y, an operation under x) held y and waited for x; once a0 was free, A waited for y:
    PostgreSQL failed one (40P01, 503). A batch claims its own key in the same pass, in key order:
    B takes x and y and posts, and A finds its key used (IDEMPOTENCY_KEY_REUSED)."""
    user = await factory.user(gold=10)
    tag = uuid.uuid4().hex
    a0, x, y = f"a0-{tag}", f"x-{tag}", f"y-{tag}"
    third_engine, a_engine, b_engine = (
        create_engine(database_url, pool_size=1, lock_timeout_ms=10_000) for _ in range(3)
    )

    def topup(key: str) -> ledger.BatchOperation:
        return ledger.BatchOperation(
            ledger.TransactRequest(user, "gold_coins", 5, "TOPUP"), key=key
        )

    async def batch(
        engine: AsyncEngine, key: str, operations: list[ledger.BatchOperation]
    ) -> object:
        async with engine.begin() as conn:
            return await ledger.batch(conn, operations, atomic=False, key=key, principal="")

    try:
        async with third_engine.connect() as third:
            holding = await third.begin()
            await third.execute(
                text("INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES ('', :k, '')"),
                {"k": a0},
            )
            first = asyncio.create_task(batch(a_engine, x, [topup(a0), topup(y)]))
            await _waiting_for_a_lock(engine, 1)
            second = asyncio.create_task(batch(b_engine, y, [topup(x)]))
            await _waiting_for_a_lock(engine, 2, unless=second)  # B posts, or (did) waits for x
            await holding.rollback()  # a0 is free
        a_done, b_done = await asyncio.gather(first, second, return_exceptions=True)
    finally:
        for one in (third_engine, a_engine, b_engine):
            await one.dispose()
    assert isinstance(b_done, ledger.BatchDone), b_done
    assert isinstance(a_done, IdempotencyKeyReused), a_done
    assert await factory.balance(user) == 15


@pytest.mark.parametrize("atomic", [False, True])
async def test_an_operation_naming_no_one_never_waits_for_its_key(
    engine: AsyncEngine, database_url: str, factory: Factory, atomic: bool
) -> None:
    """An operation naming an unknown user claimed its key as it ran, after its batch had locked
    its wallets. A request alone that had claimed that key and queued for one of those wallets
    then waited for the batch while the batch waited for the key: PostgreSQL failed one (40P01,
    503). The operation fails before its key, as its route would, without claiming or waiting for
    it; the request alone then posts."""
    user, nobody, key = await factory.user(gold=10), uuid.uuid4(), str(uuid.uuid4())
    third_engine, alone_engine, batch_engine = (
        create_engine(database_url, pool_size=1, lock_timeout_ms=10_000) for _ in range(3)
    )
    operations = [
        ledger.BatchOperation(
            ledger.TransactRequest(user, "gold_coins", 1, "BONUS"), key=str(uuid.uuid4())
        ),
        ledger.BatchOperation(ledger.TransactRequest(nobody, "gold_coins", 5, "TOPUP"), key=key),
    ]

    async def alone() -> object:
        async with alone_engine.begin() as conn:
            request = ledger.TransactRequest(user, "gold_coins", 5, "TOPUP")
            return await ledger.transact(conn, request, key=key, principal="")

    async def batch() -> object:
        async with batch_engine.begin() as conn:
            return await ledger.batch(
                conn, operations, atomic=atomic, key=str(uuid.uuid4()), principal=""
            )

    try:
        async with third_engine.begin() as third:
            await _lock_gold_wallet(third, user)
            first = asyncio.create_task(batch())
            await _waiting_for_a_lock(engine, 1)
            second = asyncio.create_task(alone())
            await _waiting_for_a_lock(engine, 2)
        batched, posted = await asyncio.gather(first, second)  # the third session committed
    finally:
        for one in (third_engine, alone_engine, batch_engine):
            await one.dispose()
    assert isinstance(posted, ledger.TransactOutcome)
    assert (posted.outcome, posted.replayed) == ("COMPLETED", False)
    if atomic:
        assert isinstance(batched, BatchFailed)
        assert batched.details == {"index": 1, "code": "USER_NOT_FOUND"}
        assert await factory.balance(user) == 15
    else:
        assert isinstance(batched, ledger.BatchDone)
        assert isinstance(batched.results[1], UserNotFound)
        assert await factory.balance(user) == 16
