"""A Treasury nearly full answers BALANCE_LIMIT_EXCEEDED, never an overflow; and an operation of a
batch that finds no room is that operation's refusal, not the batch's.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28

* `ledger_treasury_move`, when no shard has room at first sight, takes the shard with the most
  room. It ordered the shards by the negated balance for a debit, which overflows bigint on a
  shard at -2^63, its floor: a batch pins one shard and can fill it exactly, and the next move
  then failed with "bigint out of range" (a 500) instead of taking another shard or raising
  W0103. The order now needs no arithmetic (the highest balance first for a debit, the lowest
  for a credit).
* W0103 (the asset's whole Treasury has no room for the amount) is, in a batch that is not
  atomic and in group commit, that operation's ERROR (`BALANCE_LIMIT_EXCEEDED`), as an unknown
  user or asset is, instead of failing every operation; in an atomic batch it is the batch's
  BATCH_FAILED with that code and the operation's index (it escaped as the whole request's
  error).

The functions come from the frozen copy beside this file (wallet/sql/ledger.sql at this
revision); the downgrade puts back revision 0010's.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")
PREVIOUS = Path(__file__).with_name("2026_11_28_0010_guards_by_trigger.sql")


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


def upgrade() -> None:
    _run(FROZEN.read_text(encoding="utf-8"))


def downgrade() -> None:
    _run(PREVIOUS.read_text(encoding="utf-8"))
