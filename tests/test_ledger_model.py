"""The ledger core against a model small enough to be obviously right, on the real database.

Hypothesis drives `wallet.ledger` (transact, balances, history) through random sequences of
postings, idempotent replays, key reuse, keys shared across principals and requests for unknown
users or assets, and checks every answer and every read against a dictionary-and-list model.
Each example makes its own users and keys, so examples never see each other's data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from wallet import ledger
from wallet.audit import audit
from wallet.db.engine import create_engine, driver
from wallet.errors import AssetNotFound, IdempotencyKeyReused, UserNotFound
from wallet.inputs import MAX_AMOUNT, TxType

T = TypeVar("T")
ASSETS = ("gold_coins", "diamonds")
TYPES: tuple[TxType, ...] = ("TOPUP", "SPEND", "BONUS")
PRINCIPALS = ("", "backend-a", "backend-b")
amounts = st.one_of(st.integers(1, 150), st.just(MAX_AMOUNT))
KeyRef = tuple[str, str]  # (principal, key)


@dataclass(frozen=True)
class Posted:
    """What the model says a key decided."""

    request: ledger.TransactRequest
    outcome: str
    transaction_id: uuid.UUID | None
    balance_before: int
    balance_after: int


@dataclass(frozen=True)
class Line:
    """One user-side entry, as history reports it."""

    transaction_id: uuid.UUID
    type: str
    asset: str
    amount: int
    direction: str
    balance_after: int
    principal: str


class Database:
    """The real database, reached from Hypothesis's synchronous rules through one event loop."""

    def __init__(self, url: str) -> None:
        self.runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        self.engine: AsyncEngine = self.runner.run(self._engine(url))

    @staticmethod
    async def _engine(url: str) -> AsyncEngine:
        return create_engine(url, pool_size=2, application_name="ledger-model")

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(work)

    def close(self) -> None:
        self.runner.run(self.engine.dispose())
        self.runner.close()


class LedgerModel(RuleBasedStateMachine):
    db: Database  # set by the test before it runs

    users = Bundle("users")
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.balances: dict[tuple[uuid.UUID, str], int] = {}  # only accounts that exist
        self.posted: dict[KeyRef, Posted] = {}
        self.lines: dict[uuid.UUID, list[Line]] = {}  # oldest first
        self.known: list[uuid.UUID] = []

    # --- calls into the ledger, each in its own transaction (as the service's boundary does)

    def _transact(
        self, request: ledger.TransactRequest, *, key: str, principal: str
    ) -> ledger.TransactOutcome:
        async def go() -> ledger.TransactOutcome:
            async with self.db.engine.begin() as conn:
                return await ledger.transact(conn, request, key=key, principal=principal)

        return self.db.run(go())

    def _post_and_check(self, request: ledger.TransactRequest, key: str, principal: str) -> None:
        """Post as new: the answer must be what the model predicts; then the model moves."""
        wallet = (request.user_id, request.asset_slug)
        before = self.balances.get(wallet, 0)
        outcome = self._transact(request, key=key, principal=principal)
        assert not outcome.replayed
        assert outcome.balance_before == before
        if request.type == "SPEND" and before < request.amount:
            assert outcome.outcome == "INSUFFICIENT_FUNDS"
            assert outcome.transaction_id is None
            assert outcome.balance_after == before
            self.posted[(principal, key)] = Posted(request, outcome.outcome, None, before, before)
            return
        after = before - request.amount if request.type == "SPEND" else before + request.amount
        assert outcome.outcome == "COMPLETED"
        assert outcome.balance_after == after
        assert outcome.transaction_id is not None
        self.balances[wallet] = after
        self.lines[request.user_id].append(
            Line(
                outcome.transaction_id,
                request.type,
                request.asset_slug,
                request.amount,
                "DEBIT" if request.type == "SPEND" else "CREDIT",
                after,
                principal,
            )
        )
        self.posted[(principal, key)] = Posted(
            request, outcome.outcome, outcome.transaction_id, before, after
        )

    def _new_user(self) -> uuid.UUID:
        user_id = uuid.uuid4()

        async def go() -> None:
            async with self.db.engine.begin() as conn:
                await ledger.create_user(conn, user_id=user_id, username=f"model-{user_id.hex}")

        self.db.run(go())
        self.lines[user_id] = []
        self.known.append(user_id)
        return user_id

    # --- rules

    @initialize(target=users)
    def first_user(self) -> uuid.UUID:
        return self._new_user()

    @precondition(lambda self: len(self.known) < 3)  # few wallets, so each gets a history
    @rule(target=users)
    def another_user(self) -> uuid.UUID:
        return self._new_user()

    @rule(
        target=keys,
        user=users,
        asset=st.sampled_from(ASSETS),
        tx_type=st.sampled_from(TYPES),
        amount=amounts,
        principal=st.sampled_from(PRINCIPALS),
    )
    def transact(
        self, user: uuid.UUID, asset: str, tx_type: TxType, amount: int, principal: str
    ) -> KeyRef:
        key = f"model-{uuid.uuid4()}"
        self._post_and_check(ledger.TransactRequest(user, asset, amount, tx_type), key, principal)
        return (principal, key)

    @rule(ref=keys)
    def replay(self, ref: KeyRef) -> None:
        """The same request with the same key: the stored answer, and nothing moves."""
        posted = self.posted[ref]
        outcome = self._transact(posted.request, key=ref[1], principal=ref[0])
        assert outcome.replayed
        assert (outcome.outcome, outcome.transaction_id) == (
            posted.outcome,
            posted.transaction_id,
        )
        assert (outcome.balance_before, outcome.balance_after) == (
            posted.balance_before,
            posted.balance_after,
        )
        txn = posted.transaction_id
        if txn is not None:

            async def record() -> ledger.TransactionRecord | None:
                async with self.db.engine.connect() as conn:
                    return (await ledger.transactions_by_id(conn, [txn])).get(txn)

            found = self.db.run(record())
            request = posted.request
            assert found is not None
            assert (found.user_id, found.type, found.amount, found.principal) == (
                request.user_id,
                request.type,
                request.amount,
                ref[0],
            )

    @rule(ref=keys, bump=st.integers(1, 5), other_type=st.sampled_from(TYPES))
    def reuse(self, ref: KeyRef, bump: int, other_type: TxType) -> None:
        """The same key for a different request: refused, naming the first; nothing moves."""
        posted = self.posted[ref]
        first = posted.request
        changed = ledger.TransactRequest(
            first.user_id, first.asset_slug, min(first.amount + bump, MAX_AMOUNT), other_type
        )
        if changed == first:
            changed = ledger.TransactRequest(first.user_id, first.asset_slug, 1, "BONUS")
            if changed == first:
                changed = ledger.TransactRequest(first.user_id, first.asset_slug, 2, "BONUS")
        with pytest.raises(IdempotencyKeyReused) as caught:
            self._transact(changed, key=ref[1], principal=ref[0])
        original = caught.value.details.get("originalTransactionId")
        expected = str(posted.transaction_id) if posted.transaction_id else None
        assert original == expected

    @rule(target=keys, ref=keys, other=st.sampled_from(PRINCIPALS))
    def same_key_for_another_principal(self, ref: KeyRef, other: str) -> KeyRef:
        """Keys are scoped per principal: another caller's identical key is a new request."""
        key = ref[1]
        if (other, key) in self.posted:
            return (other, key)
        self._post_and_check(self.posted[ref].request, key, other)
        return (other, key)

    @rule(
        asset=st.sampled_from(ASSETS),
        tx_type=st.sampled_from(TYPES),
        amount=amounts,
        user=users,
    )
    def unknown_user_then_key_is_free(
        self, asset: str, tx_type: TxType, amount: int, user: uuid.UUID
    ) -> None:
        """A not-found request rolls back: its key stays free for the corrected retry."""
        key = f"model-{uuid.uuid4()}"
        with pytest.raises(UserNotFound):
            self._transact(
                ledger.TransactRequest(uuid.uuid4(), asset, amount, tx_type), key=key, principal=""
            )
        self._post_and_check(ledger.TransactRequest(user, asset, amount, tx_type), key, "")

    @rule(user=users, tx_type=st.sampled_from(TYPES), amount=amounts)
    def unknown_asset(self, user: uuid.UUID, tx_type: TxType, amount: int) -> None:
        with pytest.raises(AssetNotFound):
            self._transact(
                ledger.TransactRequest(user, "no_such_asset", amount, tx_type),
                key=f"model-{uuid.uuid4()}",
                principal="",
            )

    def _history(
        self, user: uuid.UUID, limit: int, asset: str | None, tx_type: TxType | None
    ) -> list[Line]:
        """Every page, following cursors to the end."""

        async def pages() -> list[Line]:
            seen: list[Line] = []
            before: int | None = None
            async with self.db.engine.connect() as conn:
                while True:
                    page = await ledger.history(
                        conn,
                        user,
                        limit=limit,
                        before=before,
                        filters=ledger.HistoryFilter(asset_slug=asset, type=tx_type),
                    )
                    assert len(page.items) <= limit
                    seen += [
                        Line(
                            i.transaction_id,
                            i.type,
                            i.asset.slug,
                            i.amount,
                            i.direction,
                            i.balance_after,
                            i.principal,
                        )
                        for i in page.items
                    ]
                    if page.next_cursor is None:
                        return seen
                    before = ledger.decode_cursor(page.next_cursor)

        return self.db.run(pages())

    @rule(
        user=users,
        limit=st.integers(1, 4),
        asset=st.sampled_from((None, *ASSETS)),
        tx_type=st.sampled_from((None, *TYPES)),
    )
    def filtered_history(
        self, user: uuid.UUID, limit: int, asset: str | None, tx_type: TxType | None
    ) -> None:
        """Newest first, filtered, paged: exactly the model's lines."""
        expected = [
            line
            for line in reversed(self.lines[user])
            if asset in (None, line.asset) and tx_type in (None, line.type)
        ]
        assert self._history(user, limit, asset, tx_type) == expected

    # --- what must hold after every step

    @invariant()
    def balances_match(self) -> None:
        async def read() -> dict[uuid.UUID, list[ledger.Balance]]:
            async with self.db.engine.connect() as conn, driver(conn) as pg:
                return await ledger.balances_by_user(pg, self.known)

        for user, found in self.db.run(read()).items():
            have = {(b.asset.slug, b.amount, b.version) for b in found}
            want = {
                (slug, amount, sum(1 for line in self.lines[user] if line.asset == slug))
                for (owner, slug), amount in self.balances.items()
                if owner == user
            }
            assert have == want, (user, have, want)

    @invariant()
    def histories_match(self) -> None:
        """Each wallet's whole history in pages of two (so cursors are always followed)."""
        for user in self.known:
            assert self._history(user, 2, None, None) == list(reversed(self.lines[user]))


@pytest.fixture(scope="module")
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.close()


def test_ledger_agrees_with_the_model(database: Database) -> None:
    LedgerModel.db = database
    run_state_machine_as_test(
        LedgerModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

    async def check() -> bool:
        async with database.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                return (await audit(conn)).ok

    assert database.run(check()), "wallet audit fails after the model's postings"
