"""The database itself enforces the ledger's invariants, whatever code talks to it."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.factories import Factory


def sqlstate(error: DBAPIError) -> str | None:
    state: str | None = getattr(error.orig, "sqlstate", None)
    return state


async def _accounts(conn: AsyncConnection, user_id: uuid.UUID) -> tuple[int, int, int]:
    """(user account id, a treasury shard id, asset id) for the user's gold_coins."""
    row = (
        await conn.execute(
            text(
                "SELECT u.id AS user_acc, t.id AS treasury, u.asset_id FROM accounts u"
                " JOIN accounts t ON t.asset_id = u.asset_id AND t.kind = 'TREASURY'"
                " JOIN assets a ON a.id = u.asset_id AND a.slug = 'gold_coins'"
                " WHERE u.user_id = :u ORDER BY t.id LIMIT 1"
            ),
            {"u": user_id},
        )
    ).one()
    return row.user_acc, row.treasury, row.asset_id


async def _insert_transaction(
    conn: AsyncConnection, user_id: uuid.UUID, asset_id: int, amount: int
) -> uuid.UUID:
    txn = uuid.uuid4()
    await conn.execute(
        text(
            "INSERT INTO transactions (id, type, asset_id, user_id, amount)"
            " VALUES (:id, 'TOPUP', :asset, :user, :amount)"
        ),
        {"id": txn, "asset": asset_id, "user": user_id, "amount": amount},
    )
    return txn


async def _insert_entry(
    conn: AsyncConnection, txn: uuid.UUID, account: int, asset_id: int, direction: str, amount: int
) -> None:
    await _insert_entries(conn, txn, asset_id, [(account, direction, amount)])


_LEGS = (
    "SELECT :txn, leg.account, :asset, leg.direction, leg.amount, 0,"
    " 1000000 + floor(random() * 1e9)"
    " FROM unnest(CAST(:accounts AS bigint[]), CAST(:directions AS text[]),"
    " CAST(:amounts AS bigint[])) AS leg (account, direction, amount)"
)
_ENTRIES = (
    "INSERT INTO entries (transaction_id, account_id, asset_id, direction, amount,"
    " balance_after, account_version) "
)


_TRANSACTION = (
    "INSERT INTO transactions (id, type, asset_id, user_id, amount)"
    " VALUES (:txn, 'TOPUP', :transaction_asset, :user, :amount)"
)
_POST = f"WITH posted AS ({_TRANSACTION}) {_ENTRIES}{_LEGS}"
_ENTRIES_ALONE = f"{_ENTRIES}{_LEGS}"
_LINKED = (  # a transaction of any kind, naming what it reverses or not
    "INSERT INTO transactions (id, type, asset_id, user_id, amount, reverses_id)"
    " VALUES (:txn, :kind, :asset, :user, 5, :reverses)"
)
_POST_LINKED = f"WITH posted AS ({_LINKED}) {_ENTRIES}{_LEGS}"


def _legs(txn: uuid.UUID, asset_id: int, legs: list[tuple[int, str, int]]) -> dict[str, object]:
    return {
        "txn": txn,
        "asset": asset_id,
        "accounts": [leg[0] for leg in legs],
        "directions": [leg[1] for leg in legs],
        "amounts": [leg[2] for leg in legs],
    }


async def _insert_entries(
    conn: AsyncConnection, txn: uuid.UUID, asset_id: int, legs: list[tuple[int, str, int]]
) -> None:
    """Entries of an existing transaction, in a statement of their own."""
    await conn.execute(text(_ENTRIES_ALONE), _legs(txn, asset_id, legs))


async def _post(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    asset_id: int,
    amount: int,
    legs: list[tuple[int, str, int]],
    *,
    transaction_asset: int | None = None,
) -> uuid.UUID:
    """A transaction and its entries in one statement, the way postings write them."""
    txn = uuid.uuid4()
    await conn.execute(
        text(_POST),
        {
            **_legs(txn, asset_id, legs),
            "transaction_asset": asset_id if transaction_asset is None else transaction_asset,
            "user": user_id,
            "amount": amount,
        },
    )
    return txn


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE transactions SET amount = amount + 1 WHERE user_id = :u",
        "DELETE FROM transactions WHERE user_id = :u",
        "UPDATE entries SET amount = amount + 1 WHERE transaction_id IN"
        " (SELECT id FROM transactions WHERE user_id = :u)",
        "DELETE FROM entries WHERE transaction_id IN"
        " (SELECT id FROM transactions WHERE user_id = :u)",
        "TRUNCATE entries CASCADE",
        "TRUNCATE transactions CASCADE",
        # Entries name accounts without a foreign key (migration 0009): the account must stay.
        "DELETE FROM accounts WHERE user_id = :u",
        "DELETE FROM accounts WHERE user_id IS NULL",
        "TRUNCATE accounts CASCADE",
        "UPDATE accounts SET asset_id = (SELECT id FROM assets WHERE slug = 'diamonds')"
        " WHERE user_id = :u",
        "UPDATE accounts SET id = DEFAULT WHERE user_id = :u",
    ],
)
async def test_ledger_tables_are_append_only(
    engine: AsyncEngine, factory: Factory, statement: str
) -> None:
    """Transactions and entries are never rewritten; an account is never deleted and never gets
    another id or asset."""
    user = await factory.user(gold=10)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(statement), {"u": user})
    assert sqlstate(caught.value) == "W0101"
    assert await factory.balance(user) == 10


async def test_only_a_wallet_nothing_was_posted_to_can_be_deleted(
    engine: AsyncEngine, factory: Factory
) -> None:
    """A wallet back at 0 keeps its history, so it stays (so does every Treasury shard: above); a
    wallet opened and never posted to, which a refused request takes away again, may go."""
    emptied = await factory.user(gold=10)
    await factory.transact(emptied, 10, "SPEND")
    unused = await factory.user()
    delete = "DELETE FROM accounts WHERE user_id = :u"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO accounts (asset_id, kind, user_id)"
                " SELECT id, 'USER', :u FROM assets WHERE slug = 'gold_coins'"
            ),
            {"u": unused},
        )
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(delete), {"u": emptied})
    assert sqlstate(caught.value) == "W0101"
    async with engine.connect() as conn:
        kept = await conn.scalar(
            text("SELECT count(*) FROM accounts WHERE user_id = :u"), {"u": emptied}
        )
    assert kept == 1
    async with engine.begin() as conn:
        deleted = await conn.execute(text(delete), {"u": unused})
    assert deleted.rowcount == 1


async def test_one_sided_transaction_is_rejected(engine: AsyncEngine, factory: Factory) -> None:
    user = await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            user_acc, _, asset = await _accounts(conn, user)
            await _post(conn, user, asset, 5, [(user_acc, "CREDIT", 5)])
    assert sqlstate(caught.value) == "W0100"


async def test_transaction_without_entries_is_rejected(
    engine: AsyncEngine, factory: Factory
) -> None:
    """Refused by its own INSERT: a transaction's entries come in the statement that writes it
    (migration 0009), so entries written by a later statement never make it balanced."""
    user = await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            _, _, asset = await _accounts(conn, user)
            await _insert_transaction(conn, user, asset, 5)
    assert sqlstate(caught.value) == "W0100"


@pytest.mark.parametrize(
    ("debit", "credit", "directions"),
    [(5, 6, ("DEBIT", "CREDIT")), (5, 5, ("CREDIT", "CREDIT")), (4, 4, ("DEBIT", "CREDIT"))],
    ids=["amounts differ", "two credits", "not the transaction amount"],
)
async def test_unbalanced_pair_is_rejected(
    engine: AsyncEngine,
    factory: Factory,
    debit: int,
    credit: int,
    directions: tuple[str, str],
) -> None:
    user = await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            user_acc, treasury, asset = await _accounts(conn, user)
            await _post(
                conn,
                user,
                asset,
                5,
                [(treasury, directions[0], debit), (user_acc, directions[1], credit)],
            )
    assert sqlstate(caught.value) == "W0100"


async def test_entries_cannot_be_added_to_a_committed_transaction(
    engine: AsyncEngine, factory: Factory
) -> None:
    """Even a balanced pair: the transaction's amount would no longer match its entries."""
    user = await factory.user(gold=1)
    async with engine.begin() as conn:
        user_acc, treasury, asset = await _accounts(conn, user)
        await _post(conn, user, asset, 5, [(treasury, "DEBIT", 5), (user_acc, "CREDIT", 5)])
        await conn.rollback()
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            committed = await conn.scalar(
                text(
                    "SELECT transaction_id FROM entries e JOIN accounts a ON a.id = e.account_id"
                    " WHERE a.user_id = :u LIMIT 1"
                ),
                {"u": user},
            )
            await _insert_entries(
                conn, committed, asset, [(treasury, "DEBIT", 1), (user_acc, "CREDIT", 1)]
            )
    assert sqlstate(caught.value) == "W0100"


async def test_a_third_entry_added_later_is_rejected(engine: AsyncEngine, factory: Factory) -> None:
    user = await factory.user(gold=3)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            user_acc, _, asset = await _accounts(conn, user)
            txn = await conn.scalar(
                text("SELECT id FROM transactions WHERE user_id = :u"), {"u": user}
            )
            assert isinstance(txn, uuid.UUID)
            await _insert_entry(conn, txn, user_acc, asset, "CREDIT", 3)
    assert sqlstate(caught.value) == "W0100"


async def test_a_balanced_hand_written_transaction_is_accepted(
    engine: AsyncEngine, factory: Factory
) -> None:
    """The guard is not a blanket refusal: a correct pair commits (then rolls back here)."""
    user = await factory.user(gold=1)
    async with engine.connect() as conn:
        trans = await conn.begin()
        user_acc, treasury, asset = await _accounts(conn, user)
        await _post(conn, user, asset, 5, [(treasury, "DEBIT", 5), (user_acc, "CREDIT", 5)])
        await trans.rollback()  # both triggers ran at the end of that statement


@pytest.mark.parametrize(
    ("kind", "reverses"),
    [("REVERSAL", False), ("TOPUP", True)],
    ids=["a REVERSAL naming nothing", "a TOPUP naming what it reverses"],
)
async def test_only_a_reversal_names_what_it_reverses(
    engine: AsyncEngine, factory: Factory, kind: str, reverses: bool
) -> None:
    """ck_transactions_reversal, checked by the transactions statement trigger since 0010, on a
    transaction that is otherwise well formed: balanced, written with its entries."""
    user = await factory.user(gold=5)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            user_acc, treasury, asset = await _accounts(conn, user)
            original = await conn.scalar(
                text("SELECT id FROM transactions WHERE user_id = :u"), {"u": user}
            )
            await conn.execute(
                text(_POST_LINKED),
                {
                    **_legs(uuid.uuid4(), asset, [(user_acc, "DEBIT", 5), (treasury, "CREDIT", 5)]),
                    "kind": kind,
                    "user": user,
                    "reverses": original if reverses else None,
                },
            )
    assert sqlstate(caught.value) == "23514"
    driver_error = caught.value.orig.__cause__ if caught.value.orig is not None else None
    assert getattr(driver_error, "constraint_name", None) == "ck_transactions_reversal"


async def test_a_key_naming_a_transaction_never_written_fails_at_commit(
    engine: AsyncEngine, factory: Factory
) -> None:
    """A posting claims its key naming its transaction before writing it (0010): the key's
    foreign key waits for the commit, and refuses it there if the transaction never came."""
    await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, outcome,"
                    " transaction_id) VALUES ('guards', 'k', '\\x00', 'COMPLETED', :txn)"
                ),
                {"txn": uuid.uuid4()},
            )
    assert sqlstate(caught.value) == "23503"  # foreign_key_violation, at commit


async def test_user_balance_cannot_go_negative(engine: AsyncEngine, factory: Factory) -> None:
    user = await factory.user(gold=2)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE accounts SET balance = -1 WHERE user_id = :u"), {"u": user}
            )
    assert sqlstate(caught.value) == "23514"  # check_violation


async def test_treasury_may_go_negative(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        total = await conn.scalar(
            text(
                "SELECT sum(balance) FROM accounts a JOIN assets s ON s.id = a.asset_id"
                " WHERE a.kind = 'TREASURY' AND s.slug = 'gold_coins'"
            )
        )
    assert total is not None
    assert total < 0


async def test_an_entry_without_its_transaction_is_rejected(
    engine: AsyncEngine, factory: Factory
) -> None:
    """The entries trigger stands in for a foreign key to transactions (migration 0007)."""
    user = await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            user_acc, treasury, asset = await _accounts(conn, user)
            await _insert_entries(
                conn, uuid.uuid4(), asset, [(treasury, "DEBIT", 5), (user_acc, "CREDIT", 5)]
            )
    assert sqlstate(caught.value) == "W0100"
    assert await factory.balance(user) == 1


async def test_a_transaction_in_an_asset_that_does_not_exist_is_rejected(
    engine: AsyncEngine, factory: Factory
) -> None:
    """Its entries must be in its asset, and entries reference accounts (id, asset_id)."""
    user = await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            user_acc, treasury, asset = await _accounts(conn, user)
            missing = await conn.scalar(text("SELECT max(id) + 1 FROM assets"))
            await _post(
                conn,
                user,
                asset,
                5,
                [(treasury, "DEBIT", 5), (user_acc, "CREDIT", 5)],
                transaction_asset=missing,
            )
    assert sqlstate(caught.value) == "W0100"


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO transactions (id, type, asset_id, user_id, amount)"
        " VALUES (gen_random_uuid(), 'GIFT', :asset, :u, 1)",
        "INSERT INTO transactions (id, type, asset_id, user_id, amount)"
        " VALUES (gen_random_uuid(), 'TOPUP', :asset, :u, 0)",
        "INSERT INTO transactions (id, type, asset_id, user_id, amount)"
        " VALUES (gen_random_uuid(), 'TOPUP', :asset, :u, 9007199254740992)",
        "INSERT INTO transactions (id, type, asset_id, user_id, amount, metadata)"
        " VALUES (gen_random_uuid(), 'TOPUP', :asset, :u, 1, '[1]')",
        "INSERT INTO transactions (id, type, asset_id, user_id, amount, reference)"
        " VALUES (gen_random_uuid(), 'TOPUP', :asset, :u, 1, E'line\\nbreak')",
        "INSERT INTO transactions (id, type, asset_id, user_id, amount, reason)"
        " VALUES (gen_random_uuid(), 'TOPUP', :asset, :u, 1, repeat('x', 257))",
        "INSERT INTO entries (transaction_id, account_id, asset_id, direction, amount,"
        " balance_after, account_version) VALUES (gen_random_uuid(), :acc, :asset, 'UP', 1, 0, 9)",
        "INSERT INTO entries (transaction_id, account_id, asset_id, direction, amount,"
        " balance_after, account_version)"
        " VALUES (gen_random_uuid(), :acc, :asset, 'DEBIT', 0, 0, 9)",
        "INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES ('', '', '\\x00')",
        "INSERT INTO idempotency_keys (scope, key, fingerprint)"
        " VALUES ('', repeat('k', 256), '\\x00')",
        "UPDATE idempotency_keys SET outcome = 'MAYBE' WHERE scope = ''",
        "UPDATE accounts SET shard = 1 WHERE user_id = :u",
        "UPDATE accounts SET held = 1 WHERE kind = 'TREASURY' AND asset_id = :asset",
        "INSERT INTO accounts (asset_id, kind, user_id) VALUES (:asset, 'TREASURY', :u)",
        "INSERT INTO accounts (asset_id, kind, shard) VALUES (:asset, 'USER', 999)",
        "INSERT INTO accounts (asset_id, kind, shard) VALUES (:asset, 'BANK', 999)",
        "UPDATE accounts SET kind = 'TREASURY' WHERE user_id = :u",
        "UPDATE accounts SET user_id = NULL WHERE user_id = :u",
        "UPDATE accounts SET held = balance + 1 WHERE user_id = :u",
        "UPDATE accounts SET held = -1, balance = balance - 1 WHERE user_id = :u",
        "UPDATE accounts SET balance = held - 1 WHERE user_id = :u",
    ],
    ids=[
        "transaction type",
        "amount 0",
        "amount past 2^53 - 1",
        "metadata not an object",
        "reference with a line break",
        "reason too long",
        "entry direction",
        "entry amount 0",
        "empty key",
        "key too long",
        "outcome",
        "user wallet off shard 0",
        "treasury holding",
        "treasury with an owner",
        "user wallet without one",
        "account kind",
        "a wallet made a Treasury shard",
        "a wallet without its owner",
        "held past the balance",
        "held below zero",
        "balance below held",
    ],
)
async def test_each_row_check_still_holds(
    engine: AsyncEngine, factory: Factory, statement: str
) -> None:
    """The checks migration 0007 moved into domains (or merged), and migration 0009 split into a
    trigger on an account's fixed shape and a CHECK on its held amount, refuse what they refused."""
    user = await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            user_acc, _, asset = await _accounts(conn, user)
            await conn.execute(text(statement), {"u": user, "asset": asset, "acc": user_acc})
    assert sqlstate(caught.value) == "23514"  # check_violation (a domain's, or the table's)


async def test_an_entry_on_an_account_that_does_not_exist_is_rejected(
    engine: AsyncEngine, factory: Factory
) -> None:
    """The entries trigger stands in for the key to accounts (id, asset_id) (migration 0009)."""
    user = await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            _, treasury, asset = await _accounts(conn, user)
            missing = await conn.scalar(text("SELECT max(id) + 1 FROM accounts"))
            await _post(conn, user, asset, 5, [(treasury, "DEBIT", 5), (missing, "CREDIT", 5)])
    assert sqlstate(caught.value) == "W0100"


async def test_an_entry_naming_an_account_of_another_asset_is_rejected(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            user_acc, _, asset = await _accounts(conn, user)
            diamonds = await conn.scalar(
                text(
                    "SELECT a.id FROM accounts a JOIN assets s ON s.id = a.asset_id"
                    " WHERE s.slug = 'diamonds' AND a.kind = 'TREASURY' LIMIT 1"
                )
            )
            await _post(conn, user, asset, 5, [(diamonds, "DEBIT", 5), (user_acc, "CREDIT", 5)])
    assert sqlstate(caught.value) == "W0100"


async def test_taking_a_wallet_away_reads_no_hold_whoever_holds_the_most(
    engine: AsyncEngine, factory: Factory
) -> None:
    """The DELETE guard looks holds and entries up by account, planned for each account: a plan
    kept for any account, judged by the statistics (here every hold names one wallet), read
    every hold for each new wallet taken away (a batch of 1,000 refused credits ran past its
    statement timeout). Counted in this transaction's own table statistics, then rolled back."""
    holder = await factory.user(gold=10)
    ids = {"ids": [str(uuid.uuid4()) for _ in range(20)]}
    async with engine.connect() as conn:
        trans = await conn.begin()
        await conn.execute(
            text(
                "INSERT INTO holds (id, account_id, asset_id, user_id, amount, status, expires_at,"
                "                   principal, finished_at)"
                " SELECT gen_random_uuid(), a.id, a.asset_id, a.user_id, 1, 'VOIDED', now(),"
                "        'test', now()"
                "   FROM accounts a, generate_series(1, 5000) WHERE a.user_id = :u"
            ),
            {"u": holder},
        )
        await conn.execute(text("ANALYZE holds"))
        await conn.execute(
            text(
                "INSERT INTO users (id, username)"
                " SELECT u, 'away-' || u FROM unnest(CAST(:ids AS uuid[])) u"
            ),
            ids,
        )
        await conn.execute(
            text(
                "INSERT INTO accounts (asset_id, kind, user_id)"
                " SELECT s.id, 'USER', u FROM unnest(CAST(:ids AS uuid[])) u, assets s"
                " WHERE s.slug = 'gold_coins'"
            ),
            ids,
        )
        deleted = await conn.execute(
            text("DELETE FROM accounts WHERE user_id = ANY(CAST(:ids AS uuid[]))"), ids
        )
        scans = await conn.scalar(
            text("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'holds'")
        )
        await trans.rollback()
    assert deleted.rowcount == len(ids["ids"])
    assert scans == 0
