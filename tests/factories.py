"""Factories: every test makes its own users, so tests never share mutable state."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from wallet import ledger
from wallet.auth import Authenticator, RateLimiter
from wallet.feed import BalanceFeed
from wallet.inputs import TxType
from wallet.resources import Resources
from wallet.settings import Settings


class Factory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def user(self, *, gold: int = 0, diamonds: int = 0) -> uuid.UUID:
        """A new user holding the given balances, granted through real TOPUPs."""
        user_id = uuid.uuid4()
        async with self.engine.begin() as conn:
            await ledger.create_user(conn, user_id=user_id, username=f"user-{user_id.hex[:12]}")
            for slug, amount in (("gold_coins", gold), ("diamonds", diamonds)):
                if amount:
                    await ledger.transact(
                        conn,
                        ledger.TransactRequest(user_id, slug, amount, "TOPUP"),
                        key=f"factory:{user_id}:{slug}",
                        principal="",
                    )
        return user_id

    async def transact(
        self, user_id: uuid.UUID, amount: int, kind: TxType, *, slug: str = "gold_coins"
    ) -> ledger.TransactOutcome:
        async with self.engine.begin() as conn:
            return await ledger.transact(
                conn,
                ledger.TransactRequest(user_id, slug, amount, kind),
                key=str(uuid.uuid4()),
                principal="",
            )

    async def balance(self, user_id: uuid.UUID, slug: str = "gold_coins") -> int:
        async with self.engine.connect() as conn:
            for b in await ledger.balances(conn, user_id):
                if b.asset.slug == slug:
                    return b.amount
        return 0


def in_process_resources(settings: Settings, engine: AsyncEngine) -> Resources:
    """What the lifespan would open, around a test's engine, for code run in process."""
    return Resources(
        settings=settings,
        engine=engine,
        autocommit=engine.execution_options(isolation_level="AUTOCOMMIT"),
        feed=BalanceFeed("postgresql://unused"),
        auth=Authenticator(settings, engine),
        rate_limiter=RateLimiter(0, 0),
    )
