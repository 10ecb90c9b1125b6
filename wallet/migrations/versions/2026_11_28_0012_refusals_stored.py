"""A Treasury without room is a stored refusal; a failed atomic batch leaves no wallet behind; a
reused key names its first transaction on every route; a capture of a hold no longer HELD says
so whatever its body asks.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28

* When every shard of an asset's Treasury is too near its floor for a credit (or its ceiling for
  a debit), the posting raised W0103 and rolled back: its key was not stored, so a retry under
  the same key posted once the Treasury had room again. `ledger_treasury_move` now answers
  NULLs there, and `ledger_post_user` puts its wallet back and refuses the posting as
  BALANCE_LIMIT_EXCEEDED, an outcome every caller stores and replays (a wallet's own limit was
  already so). W0103 is no longer raised.
* An atomic batch opened the wallets its credits name before deciding, and kept them when it
  failed (BATCH_FAILED): empty wallets of users whose operations never ran. Its locks, its
  set-based attempt and its operations now run in one block that a failure rolls back whole.
* A key a TOPUP, BONUS or SPEND completed keeps its transaction in `transaction_id` only, so
  the other routes, finding the key used for another request, named no original transaction
  (`originalTransactionId: null`). `ledger_claim_key` answers it as the stored result then.
* `wallet_hold_capture` checked the amount against the hold and `toUserId` against its user
  before the hold's status: a capture of a finished hold with another amount answered 400
  instead of HOLD_NOT_ACTIVE or HOLD_EXPIRED. The status comes first now.

The functions come from the frozen copy beside this file (wallet/sql/ledger.sql at this
revision); the downgrade puts back revision 0011's.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")
PREVIOUS = Path(__file__).with_name("2026_11_28_0011_treasury_room.sql")


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


def upgrade() -> None:
    _run(FROZEN.read_text(encoding="utf-8"))


def downgrade() -> None:
    _run(PREVIOUS.read_text(encoding="utf-8"))
