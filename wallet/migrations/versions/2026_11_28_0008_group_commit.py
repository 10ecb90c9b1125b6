"""Group commit: TOPUP, BONUS and SPEND postings that wait for a connection together are posted in
one transaction (`wallet_transact_group`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

A posting alone runs about a dozen statements and one commit; at 32 clients most of its cost in
PostgreSQL is that per-statement and per-commit work, not its rows (a batch of 100 costs a
fifth as much per posting). `wallet_transact_group` posts a group of postings, each under its own
key, in one call and one commit, taking locks in a posting's own order (keys, then wallets in
ascending id order, then one Treasury shard per asset: `ledger_lock_batch`, the locking
`wallet_batch` did inline):

* when every key is new and every posting completes, set-based (`ledger_batch_set`), each key's
  outcome then stored as `wallet_transact` stores it;
* otherwise each posting runs alone, in order, as `wallet_transact` (`ledger_batch_each`, the
  loop `wallet_batch` ran inline for batches that are not atomic), so that a replay, a reused
  key, a refusal or an unknown user or asset is decided exactly as alone. `wallet_transact` and
  `ledger_batch_op` take `p_claimed` (default false) for a key the group has claimed already.

Only functions change: they come from the frozen copy beside this file (wallet/sql/ledger.sql at
this revision). The downgrade drops the new functions and signatures and puts back revision
0007's.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")
PREVIOUS = Path(__file__).with_name("2026_11_28_0007_lean_guards.sql")


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


# Signatures that gain `p_claimed` (a new signature is another function: the old one goes).
_TRANSACT_0007 = (
    "wallet_transact(text, text, bytea, uuid, text, text, bigint, uuid, text, text, jsonb)"
)
_BATCH_OP_0007 = "ledger_batch_op(jsonb, text, text)"
_NEW = (
    "wallet_transact_group(text, jsonb, text)",
    "ledger_batch_each(jsonb, text, text, text[])",
    "ledger_lock_batch(jsonb)",
    "wallet_transact(text, text, bytea, uuid, text, text, bigint, uuid, text, text, jsonb, boolean)",
    "ledger_batch_op(jsonb, text, text, boolean)",
)


def upgrade() -> None:
    op.execute(f"DROP FUNCTION {_TRANSACT_0007}")
    op.execute(f"DROP FUNCTION {_BATCH_OP_0007}")
    _run(FROZEN.read_text(encoding="utf-8"))


def downgrade() -> None:
    for function in _NEW:
        op.execute(f"DROP FUNCTION {function}")
    _run(PREVIOUS.read_text(encoding="utf-8"))
