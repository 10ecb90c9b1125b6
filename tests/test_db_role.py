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
from wallet import ledger
from wallet.db.engine import create_engine
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
