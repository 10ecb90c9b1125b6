"""Set-based atomic batches, pinned Treasury shards for batches, and a leaner posting path.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

The posting functions come from the frozen copy beside this file
(`2026_11_27_0005_batch_and_hot_path.sql`, wallet/sql/ledger.sql at this revision). No table
changes: every transaction, entry, balance and stored key is untouched. The downgrade restores
revision 0003's functions from its own frozen copy.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")
PREVIOUS = Path(__file__).with_name("2026_11_27_0003_ledger_v2.sql")


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


def upgrade() -> None:
    _run(FROZEN.read_text(encoding="utf-8"))


def downgrade() -> None:
    op.execute("DROP FUNCTION ledger_batch_set")
    _run(PREVIOUS.read_text(encoding="utf-8"))
