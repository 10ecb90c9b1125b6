"""A posting in fewer statements, its balance checked once per statement, and an account's fixed
shape checked only where it is set.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28

Counted with callgrind on a PostgreSQL backend running `wallet_transact` TOPUPs (bench's own
pgbench statement): a posting cost 1,760 k instructions against the reference posting's 565 k;
`python -m bench.instructions --against 0008` counts 1,850,511 at 0008 and 1,584,766 at 0009.

* `ck_accounts_shape` (a wallet is kind USER on shard 0, a Treasury shard has no owner and holds
  nothing) was re-read from its text at both of a posting's account updates (ExecRelCheck plans
  a table's CHECKs at every statement that writes the table): a tenth of the posting. Kind,
  owner and shard never change once an account is open, so a trigger checks them where they
  are written (`BEFORE INSERT OR UPDATE OF id, asset_id, kind, user_id, shard`, SQLSTATE 23514
  as before; a new id or asset is W0101, see below).
  The held amount, which postings write, stays in a CHECK: `ck_accounts_held` (a Treasury
  shard holds nothing; a wallet holds between 0 and its balance) replaces
  `ck_accounts_available_non_negative`. The same rows are allowed as before.
* `ledger_post_user` locks and moves the wallet in one UPDATE when the posting fits it (no
  separate `SELECT ... FOR UPDATE`, whose row lock was a WAL record of its own), asks whether
  anyone listens for balances in that UPDATE, and writes the transaction and its entries in one
  statement. A posting that does not fit, or a wallet not opened yet, takes the path it took.
* A transaction's balance is no longer checked again at commit by a deferred constraint
  trigger per row (a batch of 1,000 postings ran 1,000 trigger calls at its commit, a ninth of
  its instructions). The statement trigger on entries checks every transaction an INSERT on
  entries touches, as before; a statement trigger on transactions (`trg_transactions_balanced`,
  once per INSERT statement) now requires each new transaction to have entries by the end of
  that statement, which therefore wrote them and had them checked. A transaction and its
  entries are written by one statement, as every posting function writes them
  (`ledger_post_transfer` now does too); a transaction inserted alone is refused at once
  (W0100), where it was refused at commit.
* `entries (account_id, asset_id) -> accounts`: that key checked each entry on its own (two
  queries a posting, 2,000 a batch of 1,000); the entries trigger now checks every new entry's
  account in its one query. An account is never deleted (`trg_accounts_never_deleted`, W0101)
  and never changes its id or asset (the shape trigger, W0101), so an entry's account cannot
  disappear later, as the key ensured. Holds keep their key to accounts.

The functions come from the frozen copy beside this file (wallet/sql/ledger.sql at this
revision). The downgrade puts back the two checks, the deferred trigger and revision
0008's functions.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")
PREVIOUS = Path(__file__).with_name("2026_11_28_0008_group_commit.sql")

CHECKS_BEFORE: tuple[tuple[str, str], ...] = (
    (
        "ck_accounts_shape",
        "CASE WHEN user_id IS NULL THEN kind = 'TREASURY' AND held = 0"
        " ELSE kind = 'USER' AND shard = 0 END",
    ),
    ("ck_accounts_available_non_negative", "user_id IS NULL OR (held >= 0 AND balance >= held)"),
)
CHECKS_AFTER: tuple[tuple[str, str], ...] = (
    (
        "ck_accounts_held",
        "CASE WHEN user_id IS NULL THEN held = 0 ELSE held >= 0 AND balance >= held END",
    ),
)
BALANCED_BY_STATEMENT = (
    "CREATE TRIGGER trg_transactions_balanced AFTER INSERT ON transactions"
    " REFERENCING NEW TABLE AS new_transactions"
    " FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_balanced()"
)
BALANCED_AT_COMMIT = (  # as revision 0001 made it
    "CREATE CONSTRAINT TRIGGER trg_transactions_balanced AFTER INSERT ON transactions"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced()"
)
SHAPE_TRIGGER = (
    "CREATE TRIGGER trg_accounts_shape"
    " BEFORE INSERT OR UPDATE OF id, asset_id, kind, user_id, shard ON accounts"
    " FOR EACH ROW EXECUTE FUNCTION ledger_check_account_shape()"
)
NEVER_DELETED = (
    "CREATE TRIGGER trg_accounts_never_deleted BEFORE DELETE OR TRUNCATE ON accounts"
    " FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change()"
)
ENTRY_ACCOUNT_KEY = (
    "fk_entries_account_id_asset_id_accounts",
    "FOREIGN KEY (account_id, asset_id) REFERENCES accounts (id, asset_id)",
)


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


def _account_checks(drop: tuple[tuple[str, str], ...], add: tuple[tuple[str, str], ...]) -> None:
    changes = [f"DROP CONSTRAINT {name}" for name, _ in drop]
    changes += [f"ADD CONSTRAINT {name} CHECK ({check})" for name, check in add]
    op.execute(f"ALTER TABLE accounts {', '.join(changes)}")


def upgrade() -> None:
    op.execute("DROP TRIGGER trg_transactions_balanced ON transactions")
    _run(FROZEN.read_text(encoding="utf-8"))
    op.execute(BALANCED_BY_STATEMENT)
    op.execute(SHAPE_TRIGGER)
    op.execute(NEVER_DELETED)
    op.execute(f"ALTER TABLE entries DROP CONSTRAINT {ENTRY_ACCOUNT_KEY[0]}")
    _account_checks(CHECKS_BEFORE, CHECKS_AFTER)


def downgrade() -> None:
    _account_checks(CHECKS_AFTER, CHECKS_BEFORE)
    op.execute(f"ALTER TABLE entries ADD CONSTRAINT {ENTRY_ACCOUNT_KEY[0]} {ENTRY_ACCOUNT_KEY[1]}")
    op.execute("DROP TRIGGER trg_accounts_never_deleted ON accounts")
    op.execute("DROP TRIGGER trg_accounts_shape ON accounts")
    op.execute("DROP FUNCTION ledger_check_account_shape()")
    op.execute("DROP TRIGGER trg_transactions_balanced ON transactions")
    _run(PREVIOUS.read_text(encoding="utf-8"))
    op.execute(BALANCED_AT_COMMIT)
