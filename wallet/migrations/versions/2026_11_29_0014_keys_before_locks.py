"""Batches claim their operations' keys before they lock; the service's role may reverse; the
empty wallets refusals left before 0013 go.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29

* A batch claims every operation's idempotency key at once, in key order, before it locks any
  wallet (`ledger_claim_keys`, which a group commit now uses too). It locked its wallets first,
  then claimed each operation's key as it ran it; a request alone claims its key first, then
  locks. The same key sent to both at once could deadlock them (PostgreSQL failed one, answered
  503 BUSY). The batch's own key is claimed in the same pass, in its place in key order (two
  batches each using the other's key for an operation deadlocked too). A claimed TRANSFER's
  outcome is stored as `wallet_transfer` stores it, and a key an operation repeats is claimed
  for its first operation only (a later one replays it). An operation naming an unknown user
  or asset never claims its key, nor waits for it: it fails alone as its route would, before
  its key (`ledger_batch_claim`), and the key is claimed for the first operation under it that
  names existing ones.
* `wallet_app` may UPDATE the `id` of transactions: a reversal locks the transaction it reverses
  (`SELECT ... FOR UPDATE`, so that concurrent reversals of it queue), and a row lock needs the
  UPDATE privilege. Every reversal failed as the service's role. The append-only trigger still
  refuses every UPDATE of a transaction, and no other column may be named in one.

* The empty wallets that refusals left before revision 0013 are taken away: a user's wallet that
  nothing was ever posted to (version 0) and nothing held on. Only a posting opens a wallet, so
  each of these is what a refused credit opened; it showed as a zero balance of the user's. The
  downgrade does not put them back (a wallet opens again with its first coins).

The functions come from the frozen copy beside this file (wallet/sql/ledger.sql at this
revision); the downgrade puts back revision 0013's.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")
PREVIOUS = Path(__file__).with_name("2026_11_28_0013_refusals_open_no_wallet.sql")


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


# What trg_accounts_unused_only lets go (it refuses anything else, whatever this selects).
NEVER_USED = """
DELETE FROM accounts a
 WHERE a.kind = 'USER' AND a.version = 0 AND a.balance = 0 AND a.held = 0
   AND NOT EXISTS (SELECT FROM entries e WHERE e.account_id = a.id)
   AND NOT EXISTS (SELECT FROM holds h WHERE h.account_id = a.id)
"""


def upgrade() -> None:
    _run(FROZEN.read_text(encoding="utf-8"))
    op.execute("GRANT UPDATE (id) ON transactions TO wallet_app")
    op.execute(NEVER_USED)


def downgrade() -> None:
    op.execute("REVOKE UPDATE (id) ON transactions FROM wallet_app")
    for function in (
        "ledger_claim_keys(text, jsonb, text, bytea)",
        "ledger_claimants(text, jsonb, text[])",
        "ledger_batch_claim(jsonb, integer, jsonb, text)",
    ):
        op.execute(f"DROP FUNCTION {function}")
    _run(PREVIOUS.read_text(encoding="utf-8"))
