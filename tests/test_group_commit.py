"""Group commit: TOPUP, BONUS and SPEND postings that wait for a connection together are posted in
one transaction, and each gets exactly the answer it would have had alone.

Each test holds its pool's only connection while postings arrive, so that they queue, then frees
it: the first connection the pool frees takes them all as one group.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Factory
from wallet import ledger
from wallet.audit import audit
from wallet.db.engine import create_pool
from wallet.errors import (
    AssetNotFound,
    IdempotencyKeyReused,
    UserNotFound,
    WalletError,
)
from wallet.inputs import TxType
from wallet.ledger.postings import transact_answer
from wallet.observability import Metrics
from wallet.resources import GroupCommit

Posting = tuple[ledger.TransactRequest, str]  # a request and its key
Answer = ledger.TransactOutcome | BaseException


@asynccontextmanager
async def _groups(
    database_url: str, *, size: int = 1, lock_timeout_ms: int = 2000
) -> AsyncIterator[tuple[GroupCommit, asyncpg.Pool, Metrics]]:
    pool = await create_pool(database_url, size=size, lock_timeout_ms=lock_timeout_ms)
    metrics = Metrics()
    groups = GroupCommit(pool, max_size=32, in_flight=1, timeout_s=10, metrics=metrics)
    try:
        yield groups, pool, metrics
    finally:
        await groups.close()
        await pool.close()


async def _queued(
    groups: GroupCommit,
    pool: asyncpg.Pool,
    postings: Sequence[Posting],
    *,
    meanwhile: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> list[Answer]:
    """Post each while the pool's only connection is held and the one call allowed waits for
    it (so they queue), then free it: the call ends, and the queue goes as one group."""
    held = await pool.acquire()
    nobody = ledger.TransactRequest(uuid.uuid4(), "gold_coins", 1, "TOPUP")  # fails fast
    opener = asyncio.create_task(groups.transact(nobody, key=_key(), principal="group-test"))
    await asyncio.sleep(0.05)
    tasks = [
        asyncio.create_task(groups.transact(request, key=key, principal="group-test"))
        for request, key in postings
    ]
    await asyncio.sleep(0.1)  # every posting is queued behind the opener
    if meanwhile is not None:
        await meanwhile(held)
    await pool.release(held)
    with contextlib.suppress(UserNotFound):
        await opener
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def _gold(user: uuid.UUID, amount: int, kind: TxType = "TOPUP") -> ledger.TransactRequest:
    return ledger.TransactRequest(user, "gold_coins", amount, kind)


def _key() -> str:
    return f"group-{uuid.uuid4()}"


async def _one(answer: Answer) -> ledger.TransactOutcome:
    if isinstance(answer, BaseException):
        raise answer
    return answer


async def test_postings_that_wait_together_commit_as_one_transaction(
    database_url: str, factory: Factory, engine: AsyncEngine
) -> None:
    users = [await factory.user(gold=100) for _ in range(3)]
    postings = [
        (_gold(users[0], 5), _key()),
        (_gold(users[1], 7, "SPEND"), _key()),
        (_gold(users[0], 3, "BONUS"), _key()),
        (_gold(users[2], 100, "SPEND"), _key()),
        (_gold(users[0], 2, "SPEND"), _key()),
    ]
    async with _groups(database_url) as (groups, pool, metrics):
        answers = [await _one(a) for a in await _queued(groups, pool, postings)]
        async with pool.acquire() as conn:
            xids = await conn.fetchval(
                "SELECT count(DISTINCT xmin::text) FROM transactions WHERE id = ANY($1::uuid[])",
                [a.transaction_id for a in answers],
            )
    assert metrics.group_commits.labels("set")._value.get() == 1
    assert metrics.grouped_postings._value.get() == 5
    assert xids == 1, "one database transaction posted the whole group"
    assert [a.outcome for a in answers] == ["COMPLETED"] * 5
    assert not any(a.replayed for a in answers)
    # Each saw the balance the postings before it in the group left, as if posted one by one.
    assert [(a.balance_before, a.balance_after) for a in answers] == [
        (100, 105),
        (100, 93),
        (105, 108),
        (100, 0),
        (108, 106),
    ]
    assert [await factory.balance(u) for u in users] == [106, 93, 0]
    # Each posting has its own instant, in order, so the balance at that instant is the one
    # after it (the set-based path spaces them a microsecond apart).
    instants = [a.created_at for a in answers]
    assert instants == sorted(instants)
    assert len(set(instants)) == 5
    async with engine.connect() as conn:
        for answer in (answers[0], answers[2], answers[4]):
            at = await ledger.balances_at(conn, users[0], answer.created_at)
            assert [b.amount for b in at if b.asset.slug == "gold_coins"] == [answer.balance_after]
    # The group left each key as it claimed it (COMPLETED by its transaction, since 0010): a
    # retry alone answers what the group answered, balances read from the entries.
    for (request, key), answer in zip(postings, answers, strict=True):
        async with engine.begin() as conn:
            again = await ledger.transact(conn, request, key=key, principal="group-test")
        assert again.replayed
        assert (again.outcome, again.transaction_id, again.created_at) == (
            answer.outcome,
            answer.transaction_id,
            answer.created_at,
        )
        assert (again.balance_before, again.balance_after) == (
            answer.balance_before,
            answer.balance_after,
        )


async def test_a_group_answers_every_posting_exactly_as_alone(
    database_url: str, factory: Factory
) -> None:
    """Replays, reused keys, refusals and unknown users or assets: the group's call posts each
    alone, in order, so each gets its own answer, and the ones that could complete do."""
    rich, poor = await factory.user(gold=100), await factory.user(gold=5)
    earlier = (_gold(rich, 1), _key())
    twice = _key()
    postings: list[Posting] = [
        (_gold(rich, 10), _key()),
        (_gold(poor, 50, "SPEND"), _key()),
        (_gold(uuid.uuid4(), 1), _key()),
        (ledger.TransactRequest(rich, "no_such_asset", 1, "TOPUP"), _key()),
        earlier,
        (_gold(rich, 2), earlier[1]),  # the earlier key, another request
        (_gold(poor, 3), twice),
        (_gold(poor, 3), twice),
    ]
    async with _groups(database_url) as (groups, pool, metrics):
        first = await groups.transact(earlier[0], key=earlier[1], principal="group-test")
        answers = await _queued(groups, pool, postings)
        async with pool.acquire() as conn:  # an error keeps no key: a corrected retry can run
            kept = await conn.fetchval(
                "SELECT count(*) FROM idempotency_keys WHERE key = ANY($1::text[])",
                [postings[2][1], postings[3][1]],
            )
    # Two calls, each posting its group one by one: a key appears once in a group, so the reused
    # key and the second send of `twice` wait for the second.
    assert metrics.group_commits.labels("each")._value.get() == 2
    assert metrics.group_commits.labels("failed")._value.get() == 0
    topup, refused, no_user, no_asset, replay, reused, once, again = answers
    assert isinstance(topup, ledger.TransactOutcome)
    assert (topup.outcome, topup.balance_after, topup.replayed) == ("COMPLETED", 111, False)
    assert isinstance(refused, ledger.TransactOutcome)
    assert (refused.outcome, refused.balance_before) == ("INSUFFICIENT_FUNDS", 5)
    assert isinstance(no_user, UserNotFound)
    assert isinstance(no_asset, AssetNotFound)
    assert no_user.message == f"User {postings[2][0].user_id} not found."  # as alone
    assert kept == 0
    assert isinstance(replay, ledger.TransactOutcome)
    assert replay.replayed
    assert replay.transaction_id == first.transaction_id
    assert isinstance(reused, IdempotencyKeyReused)
    assert reused.details == {"originalTransactionId": str(first.transaction_id)}
    assert isinstance(once, ledger.TransactOutcome)
    assert isinstance(again, ledger.TransactOutcome)
    assert (once.outcome, again.outcome) == ("COMPLETED", "COMPLETED")
    assert {once.replayed, again.replayed} == {False, True}
    assert once.transaction_id == again.transaction_id
    assert await factory.balance(rich) == 111
    assert await factory.balance(poor) == 8


async def test_a_posting_refused_in_a_group_leaves_no_wallet_behind(
    database_url: str, factory: Factory
) -> None:
    """A group opens the wallets its credits name before it posts (one order of locks). A TOPUP
    refused there (its key was another request's) takes its new wallet away again, as it opens
    none alone; the group's other posting completes."""
    user, newcomer = await factory.user(gold=1), await factory.user()
    earlier = (_gold(user, 1), _key())
    reused = (ledger.TransactRequest(newcomer, "diamonds", 5, "TOPUP"), earlier[1])
    async with _groups(database_url) as (groups, pool, metrics):
        await groups.transact(earlier[0], key=earlier[1], principal="group-test")
        answers = await _queued(groups, pool, [(_gold(user, 2), _key()), reused])
        async with pool.acquire() as conn:
            wallets = await conn.fetchval(
                "SELECT count(*) FROM accounts WHERE user_id = $1", newcomer
            )
    assert metrics.group_commits.labels("each")._value.get() == 1
    completed, refused = answers
    assert isinstance(completed, ledger.TransactOutcome)
    assert completed.balance_after == 4
    assert isinstance(refused, IdempotencyKeyReused)
    assert wallets == 0


async def test_a_locked_wallet_fails_only_its_own_posting(
    database_url: str, factory: Factory, engine: AsyncEngine
) -> None:
    """The group waits for every wallet's lock: one held past the lock timeout rolls the set
    back, and each posting then runs alone, so only the locked wallet's own one fails."""
    free, locked = await factory.user(gold=10), await factory.user(gold=10)
    blocker = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", locked)
            async with _groups(database_url, lock_timeout_ms=300) as (groups, pool, metrics):
                answers = await _queued(
                    groups, pool, [(_gold(free, 1), _key()), (_gold(locked, 1), _key())]
                )
    finally:
        await blocker.close()
    done, failed = answers
    assert metrics.group_commits.labels("failed")._value.get() == 1
    assert isinstance(done, ledger.TransactOutcome)
    assert done.outcome == "COMPLETED"
    assert isinstance(failed, asyncpg.LockNotAvailableError)
    assert await factory.balance(free) == 11
    assert await factory.balance(locked) == 10


async def test_a_group_on_a_lost_connection_posts_each_exactly_once(
    database_url: str, factory: Factory
) -> None:
    """PostgreSQL ends the connection the group is handed: each posting is retried once on a
    fresh connection, as a posting alone is."""
    user = await factory.user(gold=0)
    postings = [(_gold(user, 1), _key()) for _ in range(4)]

    async def end_it(held: asyncpg.Connection) -> None:
        admin = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            await admin.fetchval("SELECT pg_terminate_backend($1)", held.get_server_pid())
        finally:
            await admin.close()
        await asyncio.sleep(0.2)

    async with _groups(database_url) as (groups, pool, _):
        answers = [await _one(a) for a in await _queued(groups, pool, postings, meanwhile=end_it)]
    assert [a.outcome for a in answers] == ["COMPLETED"] * 4
    assert await factory.balance(user) == 4


async def test_a_posting_cancelled_while_it_waits_is_never_posted(
    database_url: str, factory: Factory, engine: AsyncEngine
) -> None:
    user = await factory.user(gold=0)
    keys = [_key() for _ in range(3)]
    async with _groups(database_url) as (groups, pool, _):
        held = await pool.acquire()
        tasks = [
            asyncio.create_task(groups.transact(_gold(user, 1), key=k, principal="group-test"))
            for k in keys
        ]
        await asyncio.sleep(0.1)
        tasks[1].cancel()
        await pool.release(held)
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        async with pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM idempotency_keys WHERE key = ANY($1::text[])", keys
            )
    assert isinstance(answers[1], asyncio.CancelledError)
    assert stored == 2
    assert await factory.balance(user) == 2


@pytest.mark.parametrize("seed", [1, 2])
async def test_concurrent_groups_of_two_processes_post_each_key_once(
    database_url: str, factory: Factory, engine: AsyncEngine, seed: int
) -> None:
    """Two group commits (two workers' pools), 48 clients, every key sent twice at once, SPENDs
    that outrun the balances: no deadlock, each key posted once, and the ledger audits clean."""
    rng = random.Random(seed)
    users = [await factory.user(gold=20) for _ in range(4)]
    plan = [
        (
            _gold(rng.choice(users), rng.randint(1, 9), rng.choice(["TOPUP", "SPEND", "SPEND"])),
            _key(),
        )
        for _ in range(120)
    ]
    async with (
        _groups(database_url, size=3) as (first, _, m1),
        _groups(database_url, size=3) as (second, _, m2),
    ):
        sends = [(first, p) for p in plan] + [(second, p) for p in plan]
        rng.shuffle(sends)
        gate = asyncio.Semaphore(48)

        async def send(groups: GroupCommit, posting: Posting) -> Answer:
            async with gate:
                request, key = posting
                try:
                    return await groups.transact(request, key=key, principal="group-test")
                except Exception as error:
                    return error

        answers = await asyncio.gather(*(send(g, p) for g, p in sends))
    assert not [a for a in answers if isinstance(a, BaseException)]
    by_key: dict[str, list[ledger.TransactOutcome]] = {}
    for (_, (_, key)), answer in zip(sends, answers, strict=True):
        assert isinstance(answer, ledger.TransactOutcome)
        by_key.setdefault(key, []).append(answer)
    expected = {u: 20 for u in users}
    for request, key in plan:
        pair = by_key[key]
        assert sorted(a.replayed for a in pair) == [False, True], "each key decided once"
        assert pair[0].outcome == pair[1].outcome
        assert pair[0].transaction_id == pair[1].transaction_id
        if pair[0].outcome == "COMPLETED":
            expected[request.user_id] += request.amount * (-1 if request.type == "SPEND" else 1)
    assert {u: await factory.balance(u) for u in users} == expected
    grouped = m1.grouped_postings._value.get() + m2.grouped_postings._value.get()
    assert grouped > 0, "some postings were posted together"
    outcomes = Counter(a.outcome for a in answers if isinstance(a, ledger.TransactOutcome))
    assert outcomes["COMPLETED"] > 0
    async with engine.connect() as conn:
        report = await audit(conn)
    assert report.ok, report.render()


async def test_a_group_finds_its_keys_by_the_primary_key_whatever_the_statistics(
    database_url: str, factory: Factory
) -> None:
    """A scope the statistics counted as rare (a new API key's) that has since gained thousands
    of keys: storing a group's outcomes reads its own keys through the primary key, not every
    key of the scope (a plan from those statistics once made an API key's groups 4x dearer)."""
    user = await factory.user(gold=0)
    scope = f"rare-{uuid.uuid4()}"
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await conn.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES ($1, 'first', '\\x00')",
            scope,
        )
        await conn.execute("ANALYZE idempotency_keys")
        await conn.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint)"
            " SELECT $1, 'old-' || n, '\\x00' FROM generate_series(1, 5000) n",
            scope,
        )

        async def pk_reads() -> int:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            return int(
                await conn.fetchval(
                    "SELECT idx_tup_read FROM pg_stat_user_indexes"
                    " WHERE indexrelname = 'pk_idempotency_keys'"
                )
            )

        for _ in range(6):  # past PL/pgSQL's first custom plans, to the one it keeps
            before = await pk_reads()
            group = [ledger.BatchOperation(_gold(user, 1), _key()) for _ in range(4)]
            posted = await ledger.transact_group_pg(conn, group, principal=scope)
            assert posted.together
            read = await pk_reads() - before
            assert read < 500, f"storing 4 outcomes read {read} index entries"
    finally:
        await conn.execute("DELETE FROM idempotency_keys WHERE scope = $1", scope)
        await conn.close()
    assert await factory.balance(user) == 24


async def test_a_group_reads_its_accounts_by_key_among_thousands(
    database_url: str, factory: Factory
) -> None:
    """The set-based path updates a group's few accounts through the primary key: planned for a
    hundred operations, its UPDATE once read every account of the table (20,000 in the bench)
    for each group of eight."""
    user = await factory.user(gold=0)
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await conn.execute(
            "INSERT INTO users (id, username)"
            " SELECT gen_random_uuid(), 'many-' || gen_random_uuid() FROM generate_series(1, 5000)"
        )
        await conn.execute(
            "INSERT INTO accounts (asset_id, kind, user_id)"
            " SELECT s.id, 'USER', u.id FROM users u, assets s"
            " WHERE s.slug = 'gold_coins' AND u.username LIKE 'many-%'"
        )
        await conn.execute("ANALYZE accounts")

        async def scanned() -> int:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            return int(
                await conn.fetchval(
                    "SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables"
                    " WHERE relname = 'accounts'"
                )
            )

        for _ in range(6):  # past PL/pgSQL's first custom plans, to the one it keeps
            before = await scanned()
            group = [ledger.BatchOperation(_gold(user, 1), _key()) for _ in range(8)]
            posted = await ledger.transact_group_pg(conn, group, principal="many")
            assert posted.together
            read = await scanned() - before
            assert read < 500, f"a group of 8 read {read} accounts one by one"
    finally:
        await conn.close()
    assert await factory.balance(user) == 48


async def test_a_group_holding_a_transfer_is_refused_before_anything_posts(
    database_url: str, factory: Factory
) -> None:
    """A group is TOPUP, BONUS and SPEND only: anything else is refused before the call, so no
    posting of it is half answered."""
    user, other = await factory.user(gold=5), await factory.user()
    transfer = ledger.TransferRequest(user, other, "gold_coins", 2)
    group = [
        ledger.BatchOperation(_gold(user, 1), _key()),
        ledger.BatchOperation(transfer, _key()),
    ]
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        with pytest.raises(TypeError):
            await ledger.transact_group_pg(conn, group, principal="")
        stored = await conn.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE key = ANY($1::text[])",
            [o.key for o in group],
        )
    finally:
        await conn.close()
    assert stored == 0
    assert (await factory.balance(user), await factory.balance(other)) == (5, 0)


@pytest.mark.parametrize(
    ("code", "subject", "error", "message"),
    [
        ("USER_NOT_FOUND", "{user}", UserNotFound, "User {user} not found."),
        ("ASSET_NOT_FOUND", "gold_coins", AssetNotFound, "Asset 'gold_coins' not found."),
    ],
)
def test_a_grouped_posting_answered_as_an_error_raises_what_it_raises_alone(
    code: str, subject: str, error: type[WalletError], message: str
) -> None:
    """ledger_batch_each answers an operation's unknown user or asset as that operation's ERROR,
    with the id or slug it could not find: its poster raises what wallet_transact's SQLSTATE
    raises for the same request alone."""
    user = uuid.uuid4()
    request = ledger.TransactRequest(user, "gold_coins", 5, "TOPUP")
    answer = {"outcome": "ERROR", "code": code, "subject": subject.format(user=user)}
    with pytest.raises(error) as raised:
        transact_answer(answer, request)
    assert raised.value.message == message.format(user=user)


async def test_a_grouped_posting_under_a_batchs_key_is_reused_and_spares_the_group(
    database_url: str, engine: AsyncEngine, factory: Factory
) -> None:
    """A batch's key stores no balances. A TOPUP under it, in a group, had its answer read
    balances first: `int(None)` failed the whole group's answers after it had committed (the
    bystanders' postings were told 500). It is IDEMPOTENCY_KEY_REUSED, as alone."""
    user, other = await factory.user(gold=1), await factory.user()
    used = _key()
    async with engine.begin() as conn:
        done = await ledger.batch(
            conn,
            [ledger.BatchOperation(_gold(other, 3), key=_key())],
            atomic=False,
            key=used,
            principal="group-test",
        )
    assert isinstance(done, ledger.BatchDone)
    async with _groups(database_url) as (groups, pool, _):
        answers = await _queued(groups, pool, [(_gold(user, 2), _key()), (_gold(user, 5), used)])
    assert isinstance(answers[0], ledger.TransactOutcome)
    assert isinstance(answers[1], IdempotencyKeyReused)
    assert (await factory.balance(user), await factory.balance(other)) == (3, 3)
