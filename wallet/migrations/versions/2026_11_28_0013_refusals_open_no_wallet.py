"""A refused credit leaves no wallet behind, on every route.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28

A wallet opens with the first coins that arrive in it: a single TRANSFER already opened its
recipient's wallet only once the sender could pay, and a failed atomic batch rolls back the
wallets it opened (0012). Three paths still left an empty wallet (balance 0, nothing posted)
after a refusal, which then showed in the user's balances:

* a non-atomic batch, which opens the wallets its credits name before running its operations
  (one order of locks for every batch): a TRANSFER the sender could not pay, or a TOPUP under a
  key another request used, left its recipient's new wallet;
* group commit, which opens a group's wallets the same way: a TOPUP or BONUS under a reused key
  left one;
* a TOPUP or BONUS that opened its wallet and found no Treasury shard with room for it.

Each now takes away, in its own transaction and before anyone else can see them, the wallets it
opened that nothing was posted to (`ledger_close_unused`; `ledger_lock_batch` answers the
wallets it opened beside its pins: `{"pins": ..., "opened": [...]}`).

* `trg_accounts_never_deleted` refused every DELETE on accounts; `trg_accounts_unused_only`
  refuses the DELETE of any account but a wallet with no balance, nothing held, no version, no
  entry and no hold (`ledger_check_account_unused`), and TRUNCATE stays refused
  (`trg_accounts_no_truncate`). The service's role `wallet_app` may DELETE on accounts, within
  what the trigger lets through.
* `holds (account_id, asset_id)` is indexed: the DELETE of a wallet checks that no hold names
  it (the trigger, and the holds -> accounts foreign key), which read every hold without it.
  The trigger plans its lookups for each account (`plan_cache_mode = force_custom_plan`): a
  plan kept for any account, judged by the account most holds name, read every hold for a new
  wallet (17 ms a wallet with 300,000 holds on one account).
* A TRANSFER (and a capture to a user) opens its recipient's wallet before it locks the
  sender's, as a batch and a group open theirs before locking: it opened it after, so it could
  wait for a batch opening the same wallet while that batch waited for the sender's lock (a
  deadlock, answered 503). It takes the wallet away again when refused. `ledger_lock_accounts`
  no longer opens accounts (its third argument is gone).

The functions come from the frozen copy beside this file (wallet/sql/ledger.sql at this
revision); the downgrade puts back revision 0012's.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")
PREVIOUS = Path(__file__).with_name("2026_11_28_0012_refusals_stored.sql")

NEVER_DELETED = (  # as revision 0009 made it
    "CREATE TRIGGER trg_accounts_never_deleted BEFORE DELETE OR TRUNCATE ON accounts"
    " FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change()"
)
NO_TRUNCATE = (
    "CREATE TRIGGER trg_accounts_no_truncate BEFORE TRUNCATE ON accounts"
    " FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change()"
)
UNUSED_ONLY = (
    "CREATE TRIGGER trg_accounts_unused_only BEFORE DELETE ON accounts"
    " FOR EACH ROW EXECUTE FUNCTION ledger_check_account_unused()"
)

HOLDS_BY_ACCOUNT = "CREATE INDEX ix_holds_account_id_asset_id ON holds (account_id, asset_id)"


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


def upgrade() -> None:
    op.execute("DROP FUNCTION ledger_lock_accounts(integer, uuid[], uuid[])")
    _run(FROZEN.read_text(encoding="utf-8"))
    op.execute("DROP TRIGGER trg_accounts_never_deleted ON accounts")
    op.execute(NO_TRUNCATE)
    op.execute(UNUSED_ONLY)
    op.execute(HOLDS_BY_ACCOUNT)
    op.execute("GRANT DELETE ON accounts TO wallet_app")


def downgrade() -> None:
    op.execute("REVOKE DELETE ON accounts FROM wallet_app")
    op.execute("DROP INDEX ix_holds_account_id_asset_id")
    op.execute("DROP TRIGGER trg_accounts_unused_only ON accounts")
    op.execute("DROP TRIGGER trg_accounts_no_truncate ON accounts")
    op.execute(NEVER_DELETED)
    op.execute("DROP FUNCTION ledger_close_unused(jsonb)")
    op.execute("DROP FUNCTION ledger_check_account_unused()")
    op.execute("DROP FUNCTION ledger_lock_accounts(integer, uuid[])")
    _run(PREVIOUS.read_text(encoding="utf-8"))
