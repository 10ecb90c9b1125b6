"""Tell the planner that an account's entries are many, so that it walks them by index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

A ledger page, a balance at an instant and a subscription's catch-up each read one account's
newest (or next) entries through a LATERAL join on `entries.account_id = a.id`, bounded by a
LIMIT. PostgreSQL plans that join with the average number of entries per account, which ANALYZE
takes from `n_distinct(account_id)`: on a real ledger most accounts hold a handful of entries,
so the average is a few rows, and the planner prefers to read every entry of the account and
sort them (a bitmap scan, a join to transactions, a top-N sort) over walking the index
backwards. For an account with a long history that costs the whole history per page (measured
on a bench database, a page of a 5,511-entry account among 400 one-entry ones: 24 ms and 33,000
buffers, against 1 ms and 200 buffers for the walk).

The walk's cost is bounded by its LIMIT whatever the account's length; reading and sorting is
not. So the estimate is fixed on the side where the cheap plan wins: 100 distinct accounts, that
is, about 1% of the table per account. Plans that read an account's entries without a LIMIT
(the audit) read them all either way. No data changes; the downgrade returns the estimate to
ANALYZE.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNTS_ESTIMATED: int = 100


def upgrade() -> None:
    op.execute(
        f"ALTER TABLE entries ALTER COLUMN account_id SET (n_distinct = {ACCOUNTS_ESTIMATED})"
    )
    op.execute("ANALYZE entries")  # the estimate applies from the next ANALYZE: now


def downgrade() -> None:
    op.execute("ALTER TABLE entries ALTER COLUMN account_id RESET (n_distinct)")
    op.execute("ANALYZE entries")
