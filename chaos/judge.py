"""The database as the judge: the harness's record of definite answers against the ledger.

After a scenario, with the service stopped, in one REPEATABLE READ snapshot:
* every acknowledged op's key names exactly what the client was told (the transaction of a
  posting, transfer, reversal or capture; the hold it created; a batch's per-operation
  transactions, stored under the batch's key or, in a non-atomic batch, each operation's own),
  and each such transaction exists once, is what was asked (type, wallets and directions, asset,
  amount, the original it reverses, the hold it captures, the principal), and left each wallet
  with the balance the client was told (else it is *lost* or *mismatched*);
* every transaction touching the workload's wallets is either a seed or the one transaction of
  exactly one acknowledged request (else it is *duplicated*: posted twice, or never acknowledged);
* every refusal (INSUFFICIENT_FUNDS, REVERSAL_EXCEEDS_ORIGINAL, HOLD_EXPIRED, HOLD_NOT_ACTIVE,
  BATCH_FAILED) is stored as that refusal under its key, with no transaction;
* for every wallet and asset: balance = seed + the acknowledged effects;
* Jepsen's bank invariant, per asset: the workload's wallets together hold the seed plus what the
  acknowledged requests brought in from the Treasury (TOPUP, BONUS, the reversal of a SPEND)
  minus what they paid it (SPEND, a capture to the Treasury, the reversal of a TOPUP or BONUS);
  transfers, captures to a user and their reversals move nothing in or out;
* holds: every hold the client was told about is in that state or a later legal one (HELD ->
  CAPTURED | VOIDED | EXPIRED), a capture it was told of posted exactly its captured amount, once;
  no hold changed state, and none exists, without an acknowledged request; none expired early;
* available = balance - held >= 0 for every wallet;
* `wallet audit` passes (which also proves held = the sum of each wallet's HELD holds).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.ops import (
    Attempt,
    Batch,
    BatchItem,
    Capture,
    CreateHold,
    Op,
    Posting,
    Reverse,
    Transact,
    Transfer,
    Void,
)
from chaos.snapshot import (
    Balances,
    KeyRow,
    Snapshot,
    Txn,
    database_now,
    quiesce,
    seed_wallets,
    snapshot,
)
from chaos.workload import Wallets
from wallet.audit import AuditReport

__all__ = [
    "Balances",
    "Judgement",
    "Outage",
    "Verdict",
    "database_now",
    "judge",
    "quiesce",
    "seed_wallets",
    "snapshot",
]

EXPIRY_GRACE_S = 5.0  # a hold past its expiry is released within this (issue 10's promise)
Outage = tuple[datetime, datetime]  # the database or the service down on purpose, from-to


def _overlap(outages: Sequence[Outage], start: datetime, end: datetime) -> float:
    """Seconds of [start, end] inside the union of `outages` (sorted by start)."""
    total, reached = 0.0, start
    for down, up in outages:
        down, up = max(down, reached), min(up, end)
        if up > down:
            total += (up - down).total_seconds()
            reached = up
    return total


@dataclass(slots=True)
class Verdict:
    """What the judge found; `ok` only when nothing is wrong."""

    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    refused_moved: list[str] = field(default_factory=list)
    balance_breaches: list[str] = field(default_factory=list)
    conservation: list[str] = field(default_factory=list)  # the bank invariant, per asset
    hold_breaches: list[str] = field(default_factory=list)
    available_breaches: list[str] = field(default_factory=list)
    unresolved: int = 0
    unresolved_committed: int = 0  # of those, how many the ledger shows done
    wallets_checked: int = 0
    holds_checked: int = 0
    # Expiry: the longest a hold stayed HELD past its expiry (released late, or still HELD when
    # the service stopped), and each one past EXPIRY_GRACE_S.
    expiry_lag_max_s: float | None = None
    late_expiries: list[str] = field(default_factory=list)
    audit: AuditReport | None = None

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.duplicated
            and not self.mismatched
            and not self.refused_moved
            and not self.balance_breaches
            and not self.conservation
            and not self.hold_breaches
            and not self.available_breaches
            and not self.late_expiries
            and self.unresolved == 0
            and self.audit is not None
            and self.audit.ok
        )

    def problems(self) -> list[str]:
        found = [
            *(f"lost: {x}" for x in self.lost),
            *(f"duplicated: {x}" for x in self.duplicated),
            *(f"answer disagrees with the ledger: {x}" for x in self.mismatched),
            *(f"refused but moved money: {x}" for x in self.refused_moved),
            *(f"balance: {x}" for x in self.balance_breaches),
            *(f"bank invariant: {x}" for x in self.conservation),
            *(f"hold: {x}" for x in self.hold_breaches),
            *(f"available < 0: {x}" for x in self.available_breaches),
            *(f"released late: {x}" for x in self.late_expiries),
        ]
        if self.unresolved:
            found.append(
                f"{self.unresolved} ops never got a definite answer"
                f" ({self.unresolved_committed} of them done)"
            )
        if self.audit is not None and not self.audit.ok:
            found += [f"audit: {check}: {rows[0]}" for check, rows in self.audit.breaches.items()]
        return found


async def judge(
    engine: AsyncEngine,
    ops: Sequence[Op],
    wallets: Wallets,
    seed: Balances,
    *,
    principal: str | None,
    stopped_at: datetime | None = None,
    outages: Sequence[Outage] = (),
) -> Verdict:
    """Compare the record with the ledger; `principal` is who the clients authenticated as
    (None: a credential the harness was handed, whose name it does not know). With
    `stopped_at` (the database's clock when the service was told to stop), holds must have been
    released within EXPIRY_GRACE_S of their expiry while it ran, not counting `outages` (when
    the database or the service was down, on purpose)."""
    found = await snapshot(engine, ops, wallets.all)
    return Judgement(
        found, seed, principal, assets=wallets.assets, stopped_at=stopped_at, outages=outages
    ).run(ops)


@dataclass(frozen=True, slots=True)
class Want:
    """What an acknowledged posting must be in the ledger, and what it did to the books."""

    label: str
    type: str
    user_id: uuid.UUID  # the transaction's user column: the wallet, the sender, the payer back
    asset: str
    amount: int
    legs: dict[uuid.UUID, str]  # each user wallet's direction
    treasury_in: int  # what it brought into the wallets from the Treasury (negative: paid out)
    reverses: uuid.UUID | None = None
    hold: uuid.UUID | None = None


_SIGN = {"CREDIT": 1, "DEBIT": -1}
_HOLD_REFUSALS = frozenset({"HOLD_EXPIRED", "HOLD_NOT_ACTIVE"})
_TREASURY_IN = {"TOPUP": 1, "BONUS": 1, "SPEND": -1, "TRANSFER": 0}


def posting_want(label: str, posting: Posting) -> Want:
    """A TOPUP, BONUS, SPEND or TRANSFER (posted on its own, in a batch, or by a capture)."""
    legs = {posting.user_id: "CREDIT" if _TREASURY_IN[posting.type] > 0 else "DEBIT"}
    if posting.to_user_id is not None:
        legs[posting.to_user_id] = "CREDIT"
    return Want(
        label,
        posting.type,
        posting.user_id,
        posting.asset,
        posting.amount,
        legs,
        _TREASURY_IN[posting.type] * posting.amount,
    )


def reversal_want(label: str, original: Posting, amount: int) -> Want:
    """`amount` of `original` back along its legs, the other way."""
    undone = posting_want(label, original)
    legs = {u: "DEBIT" if d == "CREDIT" else "CREDIT" for u, d in undone.legs.items()}
    payer = original.to_user_id if original.to_user_id is not None else original.user_id
    return Want(
        label,
        "REVERSAL",
        payer,
        original.asset,
        amount,
        legs,
        -_TREASURY_IN[original.type] * amount,
        reverses=original.transaction_id,
    )


def _item_posting(item: BatchItem, transaction_id: uuid.UUID) -> Posting:
    return Posting(transaction_id, item.op, item.user_id, item.to_user_id, item.asset, item.amount)


def _stored_transaction(raw: Any) -> uuid.UUID | None:
    """The transaction id of one operation's result as a batch stores it."""
    if not isinstance(raw, dict):
        return None
    value = raw.get("transactionId") or (raw.get("result") or {}).get("transactionId")
    return uuid.UUID(str(value)) if value else None


class Judgement:
    """One pass over the record against a snapshot of the ledger."""

    def __init__(
        self,
        found: Snapshot,
        seed: Balances,
        principal: str | None,
        *,
        assets: Sequence[str] = ("gold_coins", "diamonds"),
        stopped_at: datetime | None = None,
        outages: Sequence[Outage] = (),
    ) -> None:
        self.found = found
        self.stopped_at = stopped_at
        self.outages = sorted(outages)
        self.seed = seed
        self.principal = principal
        self.assets = assets
        self.verdict = Verdict(audit=found.audit)
        self.expected: dict[tuple[uuid.UUID, str], int] = defaultdict(int, seed)
        self.treasury_in: dict[str, int] = defaultdict(int)
        self.claimed: dict[uuid.UUID, str] = {}  # transaction id -> the acknowledged request
        self.excused: set[uuid.UUID] = set()  # transactions and holds of unanswered requests
        self.told: dict[uuid.UUID, list[tuple[str, str, int | None, uuid.UUID | None]]] = (
            defaultdict(list)  # hold id -> (request key, state, captured amount, transaction)
        )

    def run(self, ops: Sequence[Op]) -> Verdict:
        for op in ops:
            answer = op.answer
            if answer is None:
                self._unanswered(op)
            elif answer.kind == "refused":
                self._refused(op, answer)
            elif answer.kind == "acked":
                self.verdict.acknowledged += 1
                self._acked(op, answer)
            # rejected: reported by the figures; the ledger's rules say it moved nothing
        self._unclaimed()
        self._holds()
        self._expiry()
        self._wallets()
        return self.verdict

    # ---- what each answer says ----------------------------------------------------------------

    def _key(self, key: str) -> KeyRow | None:
        return self.found.keys.get(key)

    def _unanswered(self, op: Op) -> None:
        self.verdict.unresolved += 1
        rows = [self._key(op.key)]
        if isinstance(op.request, Batch):
            rows += [self._key(i.key) for i in op.request.items if i.key is not None]
            row = rows[0]
            if row is not None and isinstance(row.result, list):
                self.excused.update(t for t in map(_stored_transaction, row.result) if t)
        if isinstance(op.request, Capture | Void):
            self.excused.add(op.request.hold.hold_id)
        done = False
        for row in rows:
            if row is None:
                continue
            done = done or row.outcome == "COMPLETED"
            if row.transaction_id is not None:
                self.excused.add(row.transaction_id)
            if isinstance(row.result, dict) and row.result.get("holdId"):
                self.excused.add(uuid.UUID(str(row.result["holdId"])))
        self.verdict.unresolved_committed += done

    def _refusal_stored(self, key: str, code: str | None, label: str) -> KeyRow | None:
        row = self._key(key)
        # The ledger stores a capture past expiry as HOLD_EXPIRED, or as HOLD_NOT_ACTIVE once
        # the hold is EXPIRED; an API may answer either for it. Which one matters less than
        # that nothing moved, and the hold's state (judged with the holds).
        same = {code} if code not in _HOLD_REFUSALS else _HOLD_REFUSALS
        if row is None or row.outcome not in same or row.transaction_id is not None:
            outcome = "no key" if row is None else f"{row.outcome} ({row.transaction_id})"
            self.verdict.refused_moved.append(f"{label}: told {code}, the ledger says {outcome}")
            return None
        return row

    def _refused(self, op: Op, answer: Attempt) -> None:
        label = f"{op.key} ({op.kind})"
        row = self._refusal_stored(op.key, answer.code, label)
        request = op.request
        if isinstance(request, Capture | Void):
            self.told[request.hold.hold_id].append((op.key, "EXPIRED", None, None))
        if isinstance(request, Batch) and row is not None:
            stored = row.result if isinstance(row.result, dict) else {}
            if answer.failed_index is not None and stored.get("index") != answer.failed_index:
                self.verdict.mismatched.append(
                    f"{label}: told operation {answer.failed_index} failed, the ledger stored"
                    f" {stored}"
                )

    def _acked(self, op: Op, answer: Attempt) -> None:
        label = f"{op.key} ({op.kind})"
        match op.request:
            case Transact(user_id, asset, tx_type, amount):
                posting = Posting(uuid.UUID(int=0), tx_type, user_id, None, asset, amount)
                balances = (
                    {user_id: answer.balance_after} if answer.balance_after is not None else {}
                )
                self._keyed_posting(op.key, label, posting_want(label, posting), answer, balances)
            case Transfer(from_user, to_user, asset, amount):
                posting = Posting(uuid.UUID(int=0), "TRANSFER", from_user, to_user, asset, amount)
                want = posting_want(label, posting)
                self._keyed_posting(op.key, label, want, answer, answer.balances or {})
            case Reverse(original, asked):
                amount = answer.amount if answer.amount is not None else asked or 0
                if asked is not None and amount != asked:
                    self.verdict.mismatched.append(
                        f"{label}: asked to reverse {asked}, told {amount}"
                    )
                want = reversal_want(label, original, amount)
                self._keyed_posting(op.key, label, want, answer, answer.balances or {})
            case CreateHold(user_id, asset, amount):
                self._hold_created(op.key, label, op.request, answer)
            case Capture(hold, asked, to_user):
                captured = answer.amount if answer.amount is not None else 0
                if captured != (asked if asked is not None else hold.amount):
                    self.verdict.mismatched.append(
                        f"{label}: asked to capture {asked or 'all'} of {hold.amount}, told"
                        f" {captured}"
                    )
                posting = Posting(
                    uuid.UUID(int=0),
                    "SPEND" if to_user is None else "TRANSFER",
                    hold.user_id,
                    to_user,
                    hold.asset,
                    captured,
                )
                want = replace(posting_want(label, posting), hold=hold.hold_id)
                self._keyed_posting(op.key, label, want, answer, answer.balances or {})
                self.told[hold.hold_id].append(
                    (op.key, "CAPTURED", captured, answer.transaction_id)
                )
            case Void(hold):
                row = self._key(op.key)
                if row is None or row.outcome != "COMPLETED":
                    self.verdict.lost.append(f"{label}: told VOIDED, the key has {row}")
                self.told[hold.hold_id].append((op.key, "VOIDED", None, None))
            case Batch():
                self._batch(op, label, answer)

    def _keyed_posting(
        self, key: str, label: str, want: Want, answer: Attempt, balances: dict[uuid.UUID, int]
    ) -> None:
        """A posting under its own key: the key must name the transaction the client was told."""
        row = self._key(key)
        told = answer.transaction_id
        if row is None or told is None or row.transaction_id != told:
            self._effects(want)
            self.verdict.lost.append(
                f"{label} ({want.type} {want.amount} {want.asset}): told {told}, the key has"
                f" {row.transaction_id if row is not None else 'no row'}"
            )
            return
        self._posting(want, told, balances)

    def _posting(self, want: Want, told: uuid.UUID, balances: dict[uuid.UUID, int]) -> None:
        """Count what the client was told happened, then hold the ledger's transaction to it."""
        self._effects(want)
        txn = self.found.txns.get(told)
        if txn is None:
            self.verdict.lost.append(f"{want.label}: told transaction {told}, the ledger has none")
            return
        if told in self.claimed:
            self.verdict.duplicated.append(
                f"transaction {told} acknowledged to {self.claimed[told]} and {want.label}"
            )
        self.claimed[told] = want.label
        asked = (want.type, want.user_id, want.amount, want.asset, want.reverses, want.hold)
        has = (txn.type, txn.user_id, txn.amount, txn.slug, txn.reverses_id, txn.hold_id)
        legs = {u: d for u, (d, _) in txn.legs.items()}
        after = {u: b for u, (_, b) in txn.legs.items() if u in balances}
        wrong_principal = self.principal is not None and txn.principal != self.principal
        if asked != has or legs != want.legs or after != balances or wrong_principal:
            self.verdict.mismatched.append(
                f"{want.label}: asked {asked} legs {want.legs} as {self.principal!r}, told"
                f" balances {balances}; the ledger has {has} legs {txn.legs} by"
                f" {txn.principal!r}"
            )

    def _effects(self, want: Want) -> None:
        for user, direction in want.legs.items():
            self.expected[(user, want.asset)] += _SIGN[direction] * want.amount
        self.treasury_in[want.asset] += want.treasury_in

    def _hold_created(self, key: str, label: str, request: CreateHold, answer: Attempt) -> None:
        row = self._key(key)
        told = answer.hold_id
        stored = (
            row.result.get("holdId") if row is not None and isinstance(row.result, dict) else None
        )
        if told is None or row is None or row.outcome != "COMPLETED" or stored != str(told):
            self.verdict.lost.append(f"{label}: told hold {told}, the key has {stored}")
            return
        self.told[told].append((key, "HELD", None, None))
        hold = self.found.holds.get(told)
        if hold is None:
            self.verdict.lost.append(f"{label}: told hold {told}, the ledger has none")
            return
        asked = (request.user_id, request.asset, request.amount, request.amount)
        has = (hold.user_id, hold.slug, hold.amount, answer.amount)
        if asked != has:
            self.verdict.mismatched.append(f"{label}: asked {asked}, told/ledger has {has}")

    def _batch(self, op: Op, label: str, answer: Attempt) -> None:
        assert isinstance(op.request, Batch)
        atomic, items = op.request.atomic, op.request.items
        row = self._key(op.key)
        results = answer.results or []
        if row is None or row.outcome != "COMPLETED" or not isinstance(row.result, list):
            self.verdict.lost.append(f"{label}: told it ran, the key has {row}")
            stored: list[Any] = []
        else:
            stored = row.result
        if len(results) != len(items):
            self.verdict.mismatched.append(
                f"{label}: {len(items)} operations, {len(results)} answers"
            )
            return
        for index, (item, result) in enumerate(zip(items, results, strict=True)):
            item_label = f"{label}[{index}] {item.op}"
            if result.kind != "acked" and atomic:
                self.verdict.mismatched.append(
                    f"{item_label}: {result.kind} {result.code} inside an atomic batch that ran"
                )
            if result.kind == "refused" and item.key is not None:
                self._refusal_stored(item.key, result.code, item_label)
            if result.kind != "acked":
                continue
            told = result.transaction_id
            assert told is not None
            posting = _item_posting(item, told)
            want = posting_want(item_label, posting)
            balances = result.balances or (
                {item.user_id: result.balance_after} if result.balance_after is not None else {}
            )
            kept = _stored_transaction(stored[index]) if index < len(stored) else None
            if item.key is not None:
                self._keyed_posting(item.key, item_label, want, result, balances)
            elif kept != told:
                self._effects(want)
                self.verdict.lost.append(f"{item_label}: told {told}, the batch stored {kept}")
            else:
                self._posting(want, told, balances)

    # ---- what the ledger holds ----------------------------------------------------------------

    def _unclaimed(self) -> None:
        for txn in self.found.txns.values():
            if txn.seed or txn.id in self.claimed:
                if len(txn.keys) > 1:
                    self.verdict.duplicated.append(
                        f"transaction {txn.id} is claimed by keys {list(txn.keys)}"
                    )
                continue
            if txn.id in self.excused:
                continue  # counted as unresolved_committed
            self.verdict.duplicated.append(
                f"transaction {txn.id} ({txn.type} {txn.amount} {txn.slug} for {txn.user_id})"
                f" matches no acknowledged request (keys {list(txn.keys)})"
            )

    def _holds(self) -> None:
        postings: dict[uuid.UUID, list[Txn]] = defaultdict(list)
        for txn in self.found.txns.values():
            if txn.hold_id is not None:
                postings[txn.hold_id].append(txn)
        breaches = self.verdict.hold_breaches
        for hold in self.found.holds.values():
            self.verdict.holds_checked += 1
            name = f"{hold.id} ({hold.amount} {hold.slug} of {hold.user_id})"
            posted = postings.get(hold.id, [])
            if hold.status == "CAPTURED" and (
                len(posted) != 1 or posted[0].amount != hold.captured_amount
            ):
                breaches.append(
                    f"{name} is CAPTURED {hold.captured_amount} but posted"
                    f" {[(t.id, t.amount) for t in posted]}"
                )
            if hold.status != "CAPTURED" and posted:
                breaches.append(f"{name} is {hold.status} but posted {[t.id for t in posted]}")
            if hold.status == "EXPIRED" and (
                hold.finished_at is None or hold.finished_at < hold.expires_at
            ):
                breaches.append(
                    f"{name} EXPIRED at {hold.finished_at}, before its expiry {hold.expires_at}"
                )
            told = self.told.get(hold.id)
            if told is None:
                if hold.id not in self.excused:
                    breaches.append(f"{name} is {hold.status}: no acknowledged request made it")
                continue
            finals = {(state, amount, txn) for _, state, amount, txn in told if state != "HELD"}
            if len(finals) > 1:
                breaches.append(f"{name}: the client was told {sorted(map(str, finals))}")
                continue
            if not finals:
                if hold.status not in ("HELD", "EXPIRED") and hold.id not in self.excused:
                    breaches.append(f"{name} is {hold.status}: no acknowledged request made it")
                continue
            state, amount, posting = finals.pop()
            has = (hold.status, hold.captured_amount, hold.transaction_id)
            want = (state, amount if amount is not None else 0, posting)
            if has != want:
                breaches.append(f"{name}: the client was told {want}, the ledger has {has}")
        for hold_id, told in self.told.items():
            if hold_id not in self.found.holds and any(s == "HELD" for _, s, _, _ in told):
                continue  # reported as lost when its creation was judged
            if hold_id not in self.found.holds:
                breaches.append(f"{hold_id}: told {told}, the ledger has no such hold")

    def _expiry(self) -> None:
        """How long holds stayed HELD past their expiry: released late, or never (still HELD
        when the service stopped). Time the database or the service was down does not count."""
        if self.stopped_at is None:
            return
        worst = 0.0
        for hold in self.found.holds.values():
            if hold.status == "EXPIRED" and hold.finished_at is not None:
                released = hold.finished_at
            elif hold.status == "HELD" and hold.expires_at < self.stopped_at:
                released = self.stopped_at
            else:
                continue
            lag = (released - hold.expires_at).total_seconds()
            worst = max(worst, lag)
            up = lag - _overlap(self.outages, hold.expires_at, released)
            if up > EXPIRY_GRACE_S:
                self.verdict.late_expiries.append(
                    f"{hold.id} ({hold.amount} {hold.slug} of {hold.user_id}): {hold.status}"
                    f" {lag:.1f} s after its expiry {hold.expires_at.isoformat()}, {up:.1f} s"
                    " of it with the database and the service up"
                )
        self.verdict.expiry_lag_max_s = round(worst, 3)

    def _wallets(self) -> None:
        final = self.found.accounts
        for wallet in sorted(set(self.expected) | set(final)):
            want = self.expected.get(wallet, 0)
            have, held = final.get(wallet, (0, 0))
            if want != have:
                self.verdict.balance_breaches.append(
                    f"{wallet[0]} {wallet[1]}: expected {want}, the ledger holds {have}"
                )
            if have - held < 0 or held < 0:
                self.verdict.available_breaches.append(
                    f"{wallet[0]} {wallet[1]}: balance {have}, held {held}"
                )
        self.verdict.wallets_checked = len(set(self.expected) | set(final))
        for asset in sorted({*self.assets, *(slug for _, slug in final)}):
            seeded = sum(v for (_, slug), v in self.seed.items() if slug == asset)
            holds = sum(b for (_, slug), (b, _) in final.items() if slug == asset)
            want = seeded + self.treasury_in[asset]
            if holds != want:
                self.verdict.conservation.append(
                    f"{asset}: the wallets hold {holds}; seed {seeded} + {self.treasury_in[asset]}"
                    f" from the Treasury = {want}"
                )
