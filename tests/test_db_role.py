"""The service's database role may append to the ledger but never rewrite it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ROOT, start_server
from tests.factories import Factory
from tests.test_group_commit import _gold, _groups, _queued
from wallet import ledger
from wallet.db.engine import create_engine
from wallet.errors import IdempotencyKeyReused, InsufficientFunds, TransactionNotFound, UserNotFound
from wallet.seed import ALICE

ROLE = "wallet_test_service"


@pytest.fixture(scope="module")
def service_url(database_url: str) -> str:
    """A login role that is a member of wallet_app (roles are cluster-wide: made once)."""
    owner = create_engine(database_url, pool_size=1)

    async def make_role() -> None:
        async with owner.begin() as conn:
            await conn.execute(  # ROLE is a constant of this module; DO takes no parameters
                text(
                    f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}')"
                    f" THEN CREATE ROLE {ROLE} LOGIN IN ROLE wallet_app; END IF; END $$"
                )
            )
        await owner.dispose()

    asyncio.run(make_role())
    return make_url(database_url).set(username=ROLE).render_as_string(hide_password=False)


@pytest.fixture
async def service(service_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(service_url, pool_size=2)
    yield engine
    await engine.dispose()


async def test_service_role_can_post(service: AsyncEngine, factory: Factory) -> None:
    user = await factory.user(gold=10)
    async with service.begin() as conn:
        outcome = await ledger.transact(
            conn,
            ledger.TransactRequest(user, "gold_coins", 4, "SPEND"),
            key=str(uuid.uuid4()),
            principal="",
        )
        await ledger.create_user(conn, username=f"svc-{uuid.uuid4().hex[:8]}")
    assert outcome.outcome == "COMPLETED"
    assert await factory.balance(user) == 6


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET amount = amount + 1",
        "DELETE FROM entries",
        "UPDATE transactions SET amount = amount + 1",
        "DELETE FROM transactions",
        "TRUNCATE transactions CASCADE",
        "DELETE FROM idempotency_keys",
        "UPDATE api_keys SET secret_hash = 'x'",
        "DELETE FROM api_keys",
        "UPDATE assets SET decimals = 2",
        "DROP TABLE entries",
    ],
)
async def test_service_role_cannot_rewrite_history(service: AsyncEngine, statement: str) -> None:
    with pytest.raises(DBAPIError) as caught:
        async with service.begin() as conn:
            await conn.execute(text(statement))
    assert getattr(caught.value.orig, "sqlstate", None) in ("42501", "42809")  # privilege


async def test_the_one_column_it_may_update_on_transactions_still_changes_nothing(
    service: AsyncEngine, factory: Factory
) -> None:
    """UPDATE (id) on transactions is granted for the row lock a reversal takes; the append-only
    trigger refuses the UPDATE itself."""
    await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with service.begin() as conn:
            await conn.execute(text("UPDATE transactions SET id = id"))
    assert getattr(caught.value.orig, "sqlstate", None) == "W0101"  # append-only


async def test_service_role_reverses(service: AsyncEngine, factory: Factory) -> None:
    """A reversal locks the transaction it reverses (FOR UPDATE needs the UPDATE privilege):
    every reversal failed as the service's role, an unknown transaction's included."""
    user = await factory.user()
    async with service.begin() as conn:
        topup = await ledger.transact(
            conn,
            ledger.TransactRequest(user, "gold_coins", 10, "TOPUP"),
            key=str(uuid.uuid4()),
            principal="",
        )
        assert topup.transaction_id is not None
        done = await ledger.reverse(
            conn, ledger.ReverseRequest(topup.transaction_id, 4), key=str(uuid.uuid4()),
            principal="",
        )  # fmt: skip
    assert isinstance(done, ledger.ReversalDone)
    assert (done.amount, done.remaining_reversible) == (4, 6)
    assert await factory.balance(user) == 6
    with pytest.raises(TransactionNotFound):
        async with service.begin() as conn:
            await ledger.reverse(
                conn, ledger.ReverseRequest(uuid.uuid4()), key=str(uuid.uuid4()), principal=""
            )


def test_server_on_the_service_role_with_an_owner_url_for_operators(
    database_url: str, service_url: str
) -> None:
    proc, base = start_server(service_url, WALLET_MIGRATE_DATABASE_URL=database_url)
    try:
        balance = httpx.get(f"{base}/api/wallet/balance/{ALICE}", timeout=10)
        assert balance.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    env = {**os.environ, "DATABASE_URL": service_url, "WALLET_MIGRATE_DATABASE_URL": database_url}
    purge = subprocess.run(
        [sys.executable, "-m", "wallet.cli", "purge-idempotency"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert purge.returncode == 0, purge.stderr  # DELETE needs the owner: it got the owner's URL
    denied = subprocess.run(
        [sys.executable, "-m", "wallet.cli", "purge-idempotency"],
        env={**os.environ, "DATABASE_URL": service_url}, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert denied.returncode != 0


async def test_service_role_takes_away_the_wallets_a_refusal_opened(
    service: AsyncEngine, service_url: str, factory: Factory
) -> None:
    """A refused credit's new wallet is deleted with the service's own rights (migration 0013
    grants DELETE on accounts; the trigger lets only such a wallet go): in a non-atomic batch, a
    TRANSFER alone and a group of postings."""
    poor, newcomer, other = await factory.user(gold=1), await factory.user(), await factory.user()
    async with service.begin() as conn:
        done = await ledger.batch(
            conn,
            [
                ledger.BatchOperation(
                    ledger.TransferRequest(poor, newcomer, "diamonds", 5), key=str(uuid.uuid4())
                ),
                ledger.BatchOperation(
                    ledger.TransactRequest(other, "gold_coins", 3, "TOPUP"), key=str(uuid.uuid4())
                ),
            ],
            atomic=False,
            key=str(uuid.uuid4()),
            principal="",
        )
        alone = await ledger.transfer(
            conn,
            ledger.TransferRequest(poor, newcomer, "diamonds", 5),
            key=str(uuid.uuid4()),
            principal="",
        )
    assert isinstance(done, ledger.BatchDone)
    assert isinstance(done.results[0], InsufficientFunds)
    assert isinstance(done.results[1], ledger.TransactOutcome)
    assert isinstance(alone, InsufficientFunds)
    used = str(uuid.uuid4())
    reused = (ledger.TransactRequest(newcomer, "diamonds", 5, "TOPUP"), used)
    async with _groups(service_url) as (groups, pool, metrics):
        await groups.transact(_gold(poor, 1), key=used, principal="group-test")
        answers = await _queued(groups, pool, [(_gold(other, 2), str(uuid.uuid4())), reused])
    assert metrics.group_commits.labels("each")._value.get() == 1  # not "failed", then alone
    assert isinstance(answers[0], ledger.TransactOutcome)
    assert isinstance(answers[1], IdempotencyKeyReused)
    async with service.connect() as conn:
        wallets = await conn.scalar(
            text("SELECT count(*) FROM accounts WHERE user_id = :u"), {"u": newcomer}
        )
    assert wallets == 0
    assert await factory.balance(other) == 5


async def test_service_role_deletes_no_account_with_a_history(
    service: AsyncEngine, factory: Factory
) -> None:
    """Its DELETE on accounts (for the wallets refusals opened) stops at the trigger: a wallet
    with coins, or emptied, and every Treasury shard stay."""
    emptied = await factory.user(gold=3)
    await factory.transact(emptied, 3, "SPEND")
    for statement in ("DELETE FROM accounts WHERE user_id = :u", "DELETE FROM accounts"):
        with pytest.raises(DBAPIError) as caught:
            async with service.begin() as conn:
                await conn.execute(text(statement), {"u": emptied})
        assert getattr(caught.value.orig, "sqlstate", None) == "W0101"


async def test_service_role_runs_operations_naming_no_one_and_leaves_their_keys_free(
    service: AsyncEngine, service_url: str, factory: Factory
) -> None:
    """An operation naming an unknown user or asset fails alone (404) and leaves its key free for
    a corrected request. Its key was claimed up front and then deleted, which the service's role
    may not do: the whole batch answered 500, and a group failed whole (`posted="failed"`)."""
    user, nobody = await factory.user(gold=10), uuid.uuid4()
    wrong: list[ledger.TransactRequest | ledger.TransferRequest] = [
        ledger.TransactRequest(nobody, "gold_coins", 5, "TOPUP"),
        ledger.TransactRequest(user, "no_such_asset", 5, "TOPUP"),
        ledger.TransferRequest(user, nobody, "gold_coins", 5),
        ledger.TransferRequest(nobody, user, "gold_coins", 5),
    ]
    keys = [str(uuid.uuid4()) for _ in wrong]
    async with service.begin() as conn:
        done = await ledger.batch(
            conn,
            [ledger.BatchOperation(r, key=k) for r, k in zip(wrong, keys, strict=True)],
            atomic=False,
            key=str(uuid.uuid4()),
            principal="",
        )
    assert isinstance(done, ledger.BatchDone)
    assert [type(r).__name__ for r in done.results] == [
        "UserNotFound",
        "AssetNotFound",
        "UserNotFound",
        "UserNotFound",
    ]
    async with service.begin() as conn:  # each key is free: a corrected request runs under it
        topup = await ledger.transact(
            conn, ledger.TransactRequest(user, "gold_coins", 5, "TOPUP"), key=keys[0],
            principal="",
        )  # fmt: skip
    assert (topup.outcome, topup.replayed) == ("COMPLETED", False)
    async with _groups(service_url) as (groups, pool, metrics):
        answers = await _queued(
            groups, pool, [(_gold(user, 2), str(uuid.uuid4())), (_gold(nobody, 2), keys[1])]
        )
    assert metrics.group_commits.labels("each")._value.get() == 1  # not "failed", then alone
    assert isinstance(answers[0], ledger.TransactOutcome)
    assert isinstance(answers[1], UserNotFound)
    assert await factory.balance(user) == 17
