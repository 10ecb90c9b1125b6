"""A posting's guards without CHECKs read back at every statement, a completed posting's key
written once, and group commit reading its accounts by key.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28

Counted with callgrind on `postgres --single` running bench's TOPUP statement (the measure of
`python -m bench.instructions`): a TOPUP went from 1,580 k instructions at 0009 to 1,422 k
(0.90x). What each change saves:

* `ck_accounts_held` (a Treasury shard holds nothing; a wallet holds from 0 to its balance)
  was read back from its text and planned at both of a posting's account updates (ExecRelCheck
  does so at every statement that writes the table): about 42 k each. A row trigger on the
  columns it reads (`trg_accounts_held`, `BEFORE INSERT OR UPDATE OF balance, held`) checks the
  same rows for about 4 k, and raises SQLSTATE 23514 naming the constraint as before.
* `ck_transactions_reversal` (a REVERSAL, and only a REVERSAL, names what it reverses), the
  same cost at each INSERT on transactions: the statement trigger on transactions, which reads
  every new transaction anyway, checks it (23514, naming the constraint).
* A TOPUP, BONUS or SPEND claims its key as COMPLETED by its transaction (`ledger_claim_key`'s
  new `p_txn`), so a posting that completes writes its key once; a refusal stores its outcome
  over the claim as before. The key's foreign key to transactions is checked at commit
  (DEFERRABLE INITIALLY DEFERRED), since the claim names the transaction before it is written.
  A replay reads the balances of a key stored so from the transaction's entry on the wallet.
  The second write of the key and its key check cost about 90 k. Group commit
  (`wallet_transact_group`) claims its keys the same way, and leaves them so when the group
  posts set-based (no second write of eight keys).
* Group commit and atomic batches read their accounts one lookup per leg
  (`LATERAL ... LIMIT 1`, and the ids as an array for the UPDATE), in `ledger_batch_set` and
  `ledger_lock_batch`. The planner expects a hundred operations of any batch: on the bench's
  20,000 accounts it hash-joined a group of eight to every account, and on a few thousand it
  did so for the locks and the legs too. Counted on the bench's data (10,000 users, groups of
  eight TOPUPs): 3,464 k instructions a posting before, 985 k after (a TOPUP alone: 1,454 k);
  a batch of 1,000 BONUS stays at 728 k a posting.

The functions come from the frozen copy beside this file (wallet/sql/ledger.sql at this
revision). The downgrade puts back both CHECKs, the immediate key and revision 0009's
functions; keys claimed as COMPLETED keep their transaction and answer the balances they
answered, read from the entries.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")
PREVIOUS = Path(__file__).with_name("2026_11_28_0009_lean_posting.sql")

HELD_CHECK = "CASE WHEN user_id IS NULL THEN held = 0 ELSE held >= 0 AND balance >= held END"
REVERSAL_CHECK = "(type = 'REVERSAL') = (reverses_id IS NOT NULL)"
HELD_TRIGGER = (
    "CREATE TRIGGER trg_accounts_held BEFORE INSERT OR UPDATE OF balance, held ON accounts"
    " FOR EACH ROW EXECUTE FUNCTION ledger_check_account_held()"
)
KEY = "fk_idempotency_keys_transaction_id_transactions"


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


def upgrade() -> None:
    op.execute("DROP FUNCTION ledger_claim_key(text, text, bytea)")
    _run(FROZEN.read_text(encoding="utf-8"))
    op.execute(HELD_TRIGGER)
    op.execute("ALTER TABLE accounts DROP CONSTRAINT ck_accounts_held")
    op.execute("ALTER TABLE transactions DROP CONSTRAINT ck_transactions_reversal")
    op.execute(f"ALTER TABLE idempotency_keys ALTER CONSTRAINT {KEY} DEFERRABLE INITIALLY DEFERRED")


def downgrade() -> None:
    # Keys a completed posting wrote once carry no balances: give them the ones they answer.
    op.execute(
        "UPDATE idempotency_keys k"
        " SET balance_before = e.balance_after"
        " - CASE WHEN e.direction = 'CREDIT' THEN e.amount ELSE -e.amount END,"
        " balance_after = e.balance_after"
        " FROM transactions t, accounts a, entries e"
        " WHERE k.outcome = 'COMPLETED' AND k.balance_after IS NULL AND k.result IS NULL"
        " AND t.id = k.transaction_id AND a.user_id = t.user_id AND a.asset_id = t.asset_id"
        " AND e.transaction_id = t.id AND e.account_id = a.id"
    )
    op.execute(f"ALTER TABLE idempotency_keys ALTER CONSTRAINT {KEY} NOT DEFERRABLE")
    op.execute(
        f"ALTER TABLE transactions ADD CONSTRAINT ck_transactions_reversal CHECK ({REVERSAL_CHECK})"
    )
    op.execute(f"ALTER TABLE accounts ADD CONSTRAINT ck_accounts_held CHECK ({HELD_CHECK})")
    op.execute("DROP TRIGGER trg_accounts_held ON accounts")
    op.execute("DROP FUNCTION ledger_check_account_held()")
    op.execute("DROP FUNCTION ledger_claim_key(text, text, bytea, uuid)")
    _run(PREVIOUS.read_text(encoding="utf-8"))
