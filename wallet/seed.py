"""`wallet seed`: the demo assets and wallets, given through real ledger postings (re-runnable)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from wallet import ledger

ALICE = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
BOB = uuid.UUID("b0eebc99-9c0b-4ef8-bb6d-6bb9bd380b22")

ASSETS = [("gold_coins", "Gold Coins", 0), ("diamonds", "Diamonds", 0)]
USERS = [(ALICE, "alice", 100), (BOB, "bob", 50)]


async def seed(conn: AsyncConnection) -> None:
    """Re-runnable: a user is granted coins only in the run (one transaction) that creates them."""
    for slug, name, decimals in ASSETS:
        await ledger.ensure_asset(conn, slug=slug, name=name, decimals=decimals)
    for user_id, username, gold in USERS:
        user = await ledger.create_user(conn, user_id=user_id, username=username)
        if not user.created:
            continue
        await ledger.transact(
            conn,
            ledger.TransactRequest(
                user_id=user_id, asset_slug="gold_coins", amount=gold, type="TOPUP"
            ),
            key=f"seed:{username}:gold_coins",
            principal="seed",
        )
