"""Ledger v2: transfers, reversals, references and metadata, holds, batches, overflow guards.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

The posting functions come from the frozen copy beside this file
(`2026_11_27_0003_ledger_v2.sql`, a copy of wallet/sql/ledger.sql at this revision): a later
change to the live file comes with a migration and a copy of its own. Every transaction, entry,
balance and idempotency key survives the upgrade; keys stored before it still replay, because a
request without `reference` and `metadata` keeps the fingerprint it had.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

from wallet.sql import statements

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_suffix(".sql")

SCHEMA = """
ALTER TABLE accounts ADD COLUMN held bigint NOT NULL DEFAULT 0
--;
ALTER TABLE accounts DROP CONSTRAINT ck_accounts_user_balance_non_negative
--;
ALTER TABLE accounts ADD CONSTRAINT ck_accounts_available_non_negative
    CHECK (kind = 'TREASURY' OR (held >= 0 AND balance >= held))
--;
ALTER TABLE accounts ADD CONSTRAINT ck_accounts_treasury_holds_nothing
    CHECK (kind = 'USER' OR held = 0)
--;
ALTER TABLE transactions DROP CONSTRAINT ck_transactions_type
--;
ALTER TABLE transactions
    ADD CONSTRAINT ck_transactions_type
        CHECK (type IN ('TOPUP', 'SPEND', 'BONUS', 'TRANSFER', 'REVERSAL')),
    ADD COLUMN reference text
        CONSTRAINT ck_transactions_reference CHECK (reference ~ '^[ -~]{1,128}$'),
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT ck_transactions_metadata CHECK (jsonb_typeof(metadata) = 'object'),
    ADD COLUMN reverses_id uuid
        CONSTRAINT fk_transactions_reverses_id_transactions REFERENCES transactions (id),
    ADD COLUMN reason text CONSTRAINT ck_transactions_reason CHECK (length(reason) <= 256),
    ADD COLUMN hold_id uuid,
    ADD CONSTRAINT ck_transactions_reversal CHECK ((type = 'REVERSAL') = (reverses_id IS NOT NULL))
--;
CREATE INDEX ix_transactions_reference ON transactions (reference) WHERE reference IS NOT NULL
--;
-- Only transactions that carry metadata: most postings have none, and a GIN insert on every
-- posting cost a fifth of the posting's throughput (history's metadata filter states the same
-- predicate, so the planner uses this index).
CREATE INDEX ix_transactions_metadata ON transactions USING gin (metadata jsonb_path_ops)
    WHERE metadata <> '{}'::jsonb
--;
CREATE INDEX ix_transactions_reverses_id ON transactions (reverses_id)
    WHERE reverses_id IS NOT NULL
--;
CREATE INDEX ix_entries_account_id_created_at ON entries (account_id, created_at)
--;
-- A hold reserves part of a wallet: it counts in the account's `held` until it is captured
-- (a posting), voided or expired. Holds are locked before accounts.
CREATE TABLE holds (
    id              uuid CONSTRAINT pk_holds PRIMARY KEY,
    seq             bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT uq_holds_seq UNIQUE,
    account_id      bigint NOT NULL,
    asset_id        integer NOT NULL,
    user_id         uuid NOT NULL CONSTRAINT fk_holds_user_id_users REFERENCES users (id),
    amount          bigint NOT NULL
                    CONSTRAINT ck_holds_amount CHECK (amount BETWEEN 1 AND 9007199254740991),
    captured_amount bigint NOT NULL DEFAULT 0,
    status          text NOT NULL
                    CONSTRAINT ck_holds_status
                    CHECK (status IN ('HELD', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    expires_at      timestamptz NOT NULL,
    principal       text NOT NULL,
    reference       text CONSTRAINT ck_holds_reference CHECK (reference ~ '^[ -~]{1,128}$'),
    metadata        jsonb NOT NULL DEFAULT '{}'
                    CONSTRAINT ck_holds_metadata CHECK (jsonb_typeof(metadata) = 'object'),
    transaction_id  uuid CONSTRAINT fk_holds_transaction_id_transactions
                    REFERENCES transactions (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT fk_holds_account_id_asset_id_accounts
        FOREIGN KEY (account_id, asset_id) REFERENCES accounts (id, asset_id),
    CONSTRAINT ck_holds_captured CHECK (captured_amount BETWEEN 0 AND amount),
    CONSTRAINT ck_holds_capture_posted CHECK ((status = 'CAPTURED') = (transaction_id IS NOT NULL)),
    CONSTRAINT ck_holds_finished CHECK ((status = 'HELD') = (finished_at IS NULL))
)
--;
CREATE INDEX ix_holds_user_id_seq ON holds (user_id, seq)
--;
CREATE INDEX ix_holds_expires_at ON holds (expires_at) WHERE status = 'HELD'
--;
ALTER TABLE transactions ADD CONSTRAINT fk_transactions_hold_id_holds
    FOREIGN KEY (hold_id) REFERENCES holds (id)
--;
ALTER TABLE idempotency_keys
    ALTER COLUMN scope DROP DEFAULT,
    ADD COLUMN result jsonb,
    DROP CONSTRAINT ck_idempotency_keys_outcome,
    ADD CONSTRAINT ck_idempotency_keys_outcome CHECK (outcome IN (
        'COMPLETED', 'INSUFFICIENT_FUNDS', 'BALANCE_LIMIT_EXCEEDED', 'REVERSAL_EXCEEDS_ORIGINAL',
        'NOT_REVERSIBLE', 'HOLD_NOT_ACTIVE', 'HOLD_EXPIRED', 'BATCH_FAILED'))
--;
DROP TRIGGER trg_entries_balanced ON entries
--;
DROP FUNCTION wallet_transact(text, text, bytea, uuid, text, text, bigint, uuid, text)
"""

# Installed after the functions they call.
TRIGGERS = """
CREATE TRIGGER trg_entries_balanced AFTER INSERT ON entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_entries_balanced()
--;
GRANT SELECT, INSERT, UPDATE ON holds TO wallet_app
--;
GRANT INSERT ON assets TO wallet_app
"""

DOWNGRADE = """
DROP TRIGGER trg_entries_balanced ON entries
--;
DROP FUNCTION wallet_batch, ledger_error_code, ledger_batch_op, wallet_expire_holds,
    wallet_hold_void, wallet_hold_capture, ledger_lock_hold, wallet_hold_create,
    ledger_release_hold, ledger_with_balance, ledger_hold_view, wallet_reverse, wallet_transfer,
    ledger_transfer, ledger_transfer_result, ledger_post_transfer, wallet_transact,
    ledger_post_user, ledger_notify, ledger_treasury_move, ledger_move_user,
    ledger_lock_accounts, ledger_require_user, ledger_asset, ledger_store_outcome,
    ledger_claim_key, ledger_check_entries_balanced
--;
ALTER TABLE transactions DROP CONSTRAINT fk_transactions_hold_id_holds
--;
DROP TABLE holds
--;
ALTER TABLE idempotency_keys
    ALTER COLUMN scope SET DEFAULT '',
    DROP COLUMN result,
    DROP CONSTRAINT ck_idempotency_keys_outcome,
    ADD CONSTRAINT ck_idempotency_keys_outcome CHECK (outcome IN ('COMPLETED', 'INSUFFICIENT_FUNDS'))
--;
DROP INDEX ix_entries_account_id_created_at
--;
ALTER TABLE transactions
    DROP CONSTRAINT ck_transactions_reversal,
    DROP COLUMN hold_id, DROP COLUMN reason, DROP COLUMN reverses_id, DROP COLUMN metadata,
    DROP COLUMN reference,
    DROP CONSTRAINT ck_transactions_type,
    ADD CONSTRAINT ck_transactions_type CHECK (type IN ('TOPUP', 'SPEND', 'BONUS'))
--;
ALTER TABLE accounts
    DROP CONSTRAINT ck_accounts_treasury_holds_nothing,
    DROP CONSTRAINT ck_accounts_available_non_negative,
    DROP COLUMN held,
    ADD CONSTRAINT ck_accounts_user_balance_non_negative CHECK (kind = 'TREASURY' OR balance >= 0)
"""


def _run(script: str) -> None:
    for statement in statements(script):
        op.execute(statement)


def upgrade() -> None:
    _run(SCHEMA)
    _run(FROZEN.read_text(encoding="utf-8"))
    _run(TRIGGERS)


def downgrade() -> None:
    _run(DOWNGRADE)
    first = Path(__file__).with_name("2026_11_24_0001_ledger.py")
    spec = importlib.util.spec_from_file_location("wallet_migration_0001", first)
    assert spec is not None
    assert spec.loader is not None
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    # The 0001 balance check (row by row) and posting function, as they were.
    for statement in statements(previous.GUARDS):
        if "CREATE FUNCTION ledger_check_balanced()" in statement:
            op.execute(statement.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
        elif "TRIGGER trg_entries_balanced" in statement:
            op.execute(statement)
    _run(previous.POST_FUNCTION)
    op.execute(
        "GRANT EXECUTE ON FUNCTION"
        " wallet_transact(text, text, bytea, uuid, text, text, bigint, uuid, text) TO wallet_app"
    )
