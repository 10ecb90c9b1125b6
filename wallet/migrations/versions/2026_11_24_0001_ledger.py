"""The ledger: assets, users, accounts, transactions, entries, idempotency keys, and their guards.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = """
CREATE TABLE assets (
    id              integer GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_assets PRIMARY KEY,
    slug            text NOT NULL CONSTRAINT uq_assets_slug UNIQUE
                    CONSTRAINT ck_assets_slug CHECK (slug ~ '^[a-z][a-z0-9_]{0,63}$'),
    name            text NOT NULL CONSTRAINT ck_assets_name CHECK (length(name) BETWEEN 1 AND 100),
    decimals        smallint NOT NULL DEFAULT 0
                    CONSTRAINT ck_assets_decimals CHECK (decimals BETWEEN 0 AND 18),
    treasury_shards smallint NOT NULL DEFAULT 32
                    CONSTRAINT ck_assets_treasury_shards CHECK (treasury_shards BETWEEN 1 AND 1024),
    created_at      timestamptz NOT NULL DEFAULT now()
);
--;
CREATE TABLE users (
    id         uuid CONSTRAINT pk_users PRIMARY KEY,
    username   text NOT NULL CONSTRAINT uq_users_username UNIQUE
               CONSTRAINT ck_users_username CHECK (length(username) BETWEEN 1 AND 64),
    created_at timestamptz NOT NULL DEFAULT now()
);
--;
CREATE TABLE accounts (
    id         bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_accounts PRIMARY KEY,
    asset_id   integer NOT NULL CONSTRAINT fk_accounts_asset_id_assets REFERENCES assets (id),
    kind       text NOT NULL CONSTRAINT ck_accounts_kind CHECK (kind IN ('USER', 'TREASURY')),
    user_id    uuid CONSTRAINT fk_accounts_user_id_users REFERENCES users (id),
    shard      smallint NOT NULL DEFAULT 0,
    balance    bigint NOT NULL DEFAULT 0,
    version    bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ck_accounts_owner CHECK ((kind = 'USER') = (user_id IS NOT NULL)),
    CONSTRAINT ck_accounts_user_shard CHECK (kind = 'TREASURY' OR shard = 0),
    CONSTRAINT ck_accounts_user_balance_non_negative CHECK (kind = 'TREASURY' OR balance >= 0),
    CONSTRAINT uq_accounts_id_asset_id UNIQUE (id, asset_id),
    CONSTRAINT uq_accounts_user_id_asset_id UNIQUE (user_id, asset_id)
);
--;
CREATE UNIQUE INDEX uq_accounts_treasury_shard ON accounts (asset_id, shard) WHERE kind = 'TREASURY';
--;
CREATE TABLE transactions (
    id         uuid CONSTRAINT pk_transactions PRIMARY KEY,
    type       text NOT NULL CONSTRAINT ck_transactions_type CHECK (type IN ('TOPUP', 'SPEND', 'BONUS')),
    asset_id   integer NOT NULL CONSTRAINT fk_transactions_asset_id_assets REFERENCES assets (id),
    user_id    uuid NOT NULL CONSTRAINT fk_transactions_user_id_users REFERENCES users (id),
    amount     bigint NOT NULL
               CONSTRAINT ck_transactions_amount CHECK (amount BETWEEN 1 AND 9007199254740991),
    principal  text NOT NULL DEFAULT '',  -- who asked: an API key's name, 'user:<id>', or ''
    created_at timestamptz NOT NULL DEFAULT now()
);
--;
CREATE TABLE entries (
    id              bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_entries PRIMARY KEY,
    transaction_id  uuid NOT NULL
                    CONSTRAINT fk_entries_transaction_id_transactions REFERENCES transactions (id),
    account_id      bigint NOT NULL,
    asset_id        integer NOT NULL,
    direction       text NOT NULL CONSTRAINT ck_entries_direction CHECK (direction IN ('DEBIT', 'CREDIT')),
    amount          bigint NOT NULL CONSTRAINT ck_entries_amount CHECK (amount > 0),
    balance_after   bigint NOT NULL,
    account_version bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT fk_entries_account_id_asset_id_accounts
        FOREIGN KEY (account_id, asset_id) REFERENCES accounts (id, asset_id),
    CONSTRAINT uq_entries_account_id_account_version UNIQUE (account_id, account_version)
);
--;
CREATE INDEX ix_entries_transaction_id ON entries (transaction_id);
--;
CREATE INDEX ix_entries_account_id_id ON entries (account_id, id);
--;
CREATE TABLE idempotency_keys (
    scope          text NOT NULL DEFAULT '',
    key            text NOT NULL CONSTRAINT ck_idempotency_keys_key CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint    bytea NOT NULL,
    outcome        text CONSTRAINT ck_idempotency_keys_outcome
                   CHECK (outcome IN ('COMPLETED', 'INSUFFICIENT_FUNDS')),
    transaction_id uuid CONSTRAINT fk_idempotency_keys_transaction_id_transactions
                   REFERENCES transactions (id),
    balance_before bigint,
    balance_after  bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_idempotency_keys PRIMARY KEY (scope, key)
);
--;
CREATE INDEX ix_idempotency_keys_created_at ON idempotency_keys (created_at);
--;
-- One row per connection LISTENing for balance changes (see wallet/feed.py). Postings notify
-- only while a row exists: a NOTIFY serialises commits cluster-wide, so nobody pays for it
-- unless somebody listens.
CREATE TABLE feed_listeners (
    pid        integer CONSTRAINT pk_feed_listeners PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now()
);
"""

GUARDS = """
-- Double entry, checked at commit: exactly one DEBIT and one CREDIT of the transaction's amount
-- and asset, on two different accounts.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_amount bigint;
    v_asset integer;
    n integer; n_debit integer; n_credit integer; n_accounts integer; n_bad integer;
BEGIN
    IF TG_TABLE_NAME = 'transactions' THEN
        v_id := NEW.id;
    ELSE
        v_id := NEW.transaction_id;
    END IF;
    SELECT t.amount, t.asset_id INTO v_amount, v_asset FROM transactions t WHERE t.id = v_id;
    SELECT count(*),
           count(*) FILTER (WHERE e.direction = 'DEBIT'),
           count(*) FILTER (WHERE e.direction = 'CREDIT'),
           count(DISTINCT e.account_id),
           count(*) FILTER (WHERE e.amount <> v_amount OR e.asset_id <> v_asset)
      INTO n, n_debit, n_credit, n_accounts, n_bad
      FROM entries e WHERE e.transaction_id = v_id;
    IF n <> 2 OR n_debit <> 1 OR n_credit <> 1 OR n_accounts <> 2 OR n_bad <> 0 THEN
        RAISE EXCEPTION 'transaction % is unbalanced: % entries (% debit, % credit, % mismatched)',
            v_id, n, n_debit, n_credit, n_bad
            USING ERRCODE = 'W0100';
    END IF;
    RETURN NULL;
END $$;
--;
CREATE CONSTRAINT TRIGGER trg_transactions_balanced AFTER INSERT ON transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();
--;
CREATE CONSTRAINT TRIGGER trg_entries_balanced AFTER INSERT ON entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();
--;
-- Append-only: history is never rewritten.
CREATE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is not allowed: the ledger is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'W0101';
END $$;
--;
CREATE TRIGGER trg_transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
--;
CREATE TRIGGER trg_transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
--;
CREATE TRIGGER trg_entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
--;
CREATE TRIGGER trg_entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
"""

# The whole posting in one round trip (see wallet/ledger.py for the design note).
# Errors it raises: W0001 user not found, W0002 asset not found; the caller rolls back.
POST_FUNCTION = """
CREATE FUNCTION wallet_transact(
    p_scope text, p_key text, p_fingerprint bytea,
    p_user uuid, p_asset text, p_type text, p_amount bigint, p_txn uuid,
    p_principal text DEFAULT ''
) RETURNS TABLE (
    outcome text, replayed boolean, fingerprint_matches boolean, transaction_id uuid,
    balance_before bigint, balance_after bigint, created_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_asset_id integer;
    v_shards integer;
    v_user_account bigint;
    v_balance bigint;
    v_version bigint;
    v_shard integer;
    v_treasury bigint;
    v_treasury_balance bigint;
    v_treasury_version bigint;
    v_now timestamptz := now();
BEGIN
    -- Claim the key first: a concurrent duplicate blocks here until this transaction ends,
    -- then finds the stored outcome (or, if this one rolled back, runs itself).
    INSERT INTO idempotency_keys AS k (scope, key, fingerprint)
    VALUES (p_scope, p_key, p_fingerprint)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT k.outcome, true, k.fingerprint = p_fingerprint, k.transaction_id,
                   k.balance_before, k.balance_after, coalesce(t.created_at, k.created_at)
              FROM idempotency_keys k LEFT JOIN transactions t ON t.id = k.transaction_id
             WHERE k.scope = p_scope AND k.key = p_key;
        RETURN;
    END IF;

    SELECT a.id, a.treasury_shards INTO v_asset_id, v_shards FROM assets a WHERE a.slug = p_asset;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'asset % not found', p_asset USING ERRCODE = 'W0002';
    END IF;
    PERFORM 1 FROM users u WHERE u.id = p_user;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user USING ERRCODE = 'W0001';
    END IF;

    -- Pessimistic lock on the user's row before the balance check.
    SELECT a.id, a.balance INTO v_user_account, v_balance
      FROM accounts a WHERE a.user_id = p_user AND a.asset_id = v_asset_id FOR UPDATE;
    IF NOT FOUND AND p_type <> 'SPEND' THEN
        INSERT INTO accounts (asset_id, kind, user_id) VALUES (v_asset_id, 'USER', p_user)
        ON CONFLICT (user_id, asset_id) DO NOTHING;
        SELECT a.id, a.balance INTO v_user_account, v_balance
          FROM accounts a WHERE a.user_id = p_user AND a.asset_id = v_asset_id FOR UPDATE;
    END IF;
    v_balance := coalesce(v_balance, 0);

    IF p_type = 'SPEND' AND v_balance < p_amount THEN
        UPDATE idempotency_keys k
           SET outcome = 'INSUFFICIENT_FUNDS', balance_before = v_balance, balance_after = v_balance
         WHERE k.scope = p_scope AND k.key = p_key;
        RETURN QUERY SELECT 'INSUFFICIENT_FUNDS'::text, false, true, NULL::uuid,
                            v_balance, v_balance, v_now;
        RETURN;
    END IF;

    UPDATE accounts a
       SET balance = a.balance + CASE WHEN p_type = 'SPEND' THEN -p_amount ELSE p_amount END,
           version = a.version + 1
     WHERE a.id = v_user_account
    RETURNING a.balance, a.version INTO v_balance, v_version;

    -- The Treasury is never locked up front and no single row of it is hot: each posting
    -- touches one of its shards, chosen at random, as the last write of the transaction.
    v_shard := floor(random() * v_shards)::integer;
    UPDATE accounts a
       SET balance = a.balance + CASE WHEN p_type = 'SPEND' THEN p_amount ELSE -p_amount END,
           version = a.version + 1
     WHERE a.kind = 'TREASURY' AND a.asset_id = v_asset_id
       AND a.shard = v_shard
    RETURNING a.id, a.balance, a.version INTO v_treasury, v_treasury_balance, v_treasury_version;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'asset % has no treasury shard', p_asset USING ERRCODE = 'W0102';
    END IF;

    INSERT INTO transactions (id, type, asset_id, user_id, amount, principal, created_at)
    VALUES (p_txn, p_type, v_asset_id, p_user, p_amount, p_principal, v_now);

    IF p_type = 'SPEND' THEN
        INSERT INTO entries (transaction_id, account_id, asset_id, direction, amount,
                             balance_after, account_version, created_at)
        VALUES (p_txn, v_user_account, v_asset_id, 'DEBIT', p_amount, v_balance, v_version, v_now),
               (p_txn, v_treasury, v_asset_id, 'CREDIT', p_amount, v_treasury_balance,
                v_treasury_version, v_now);
    ELSE
        INSERT INTO entries (transaction_id, account_id, asset_id, direction, amount,
                             balance_after, account_version, created_at)
        VALUES (p_txn, v_treasury, v_asset_id, 'DEBIT', p_amount, v_treasury_balance,
                v_treasury_version, v_now),
               (p_txn, v_user_account, v_asset_id, 'CREDIT', p_amount, v_balance, v_version, v_now);
    END IF;

    UPDATE idempotency_keys k
       SET outcome = 'COMPLETED', transaction_id = p_txn,
           balance_before = v_balance - CASE WHEN p_type = 'SPEND' THEN -p_amount ELSE p_amount END,
           balance_after = v_balance
     WHERE k.scope = p_scope AND k.key = p_key;

    -- Delivered to LISTENers at commit, never before and never for a rollback.
    IF EXISTS (SELECT FROM feed_listeners) THEN
        PERFORM pg_notify('wallet_balance', json_build_object(
            'userId', p_user, 'accountId', v_user_account, 'assetSlug', p_asset,
            'balance', v_balance::text, 'version', v_version
        )::text);
    END IF;

    RETURN QUERY SELECT 'COMPLETED'::text, false, true, p_txn,
        v_balance - CASE WHEN p_type = 'SPEND' THEN -p_amount ELSE p_amount END, v_balance, v_now;
END $$;
"""


def _run(script: str) -> None:
    """Run a script one statement at a time (prepared statements hold a single command)."""
    for statement in script.split("\n--;\n"):
        op.execute(statement)


def upgrade() -> None:
    _run(TABLES)
    _run(GUARDS)
    _run(POST_FUNCTION)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION wallet_transact(text, text, bytea, uuid, text, text, bigint, uuid, text)"
    )
    op.execute(
        "DROP TABLE feed_listeners, idempotency_keys, entries, transactions, accounts, users,"
        " assets"
    )
    op.execute("DROP FUNCTION ledger_reject_change()")
    op.execute("DROP FUNCTION ledger_check_balanced()")
