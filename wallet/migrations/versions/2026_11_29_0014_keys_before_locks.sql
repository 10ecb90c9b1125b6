-- The ledger's posting functions and guards: the one source of the logic that moves money.
--
-- A migration applies a frozen copy of this file (wallet/migrations/versions/*.sql), and
-- tests/test_ledger_sql.py proves that the functions of a migrated database are exactly these.
-- Statements are separated by a line holding only `--;` (see wallet/ledger/sql.py).
--
-- Conventions (the design note in wallet/ledger/__init__.py says why):
-- * An account's balance is its credits minus its debits. A user account (kind USER) never goes
--   below its `held` amount (trigger trg_accounts_held): available = balance - held.
-- * Treasury shards (kind TREASURY) may go negative; a posting touches one at random, as its last
--   write, never locked up front. A shard without room for the amount is skipped, so no credit
--   fails because of the shard it drew.
-- * Every user account a function touches is locked FOR UPDATE in ascending id order before any
--   balance check. Holds are locked before accounts; wallets a function opens are opened before it
--   locks any (an INSERT waits for another transaction opening the same wallet, so opening after
--   a lock could close a cycle with it).
-- * A wallet opens with the first coins that arrive in it. A request that opened one and then
--   posted nothing to it (refused) takes it away again in its own transaction, before anyone else
--   can see it (ledger_close_unused, trg_accounts_unused_only), so a refusal leaves no wallet.
-- * Idempotency: each public function claims (scope, key) first, and a batch (its own key with
--   them) or a group all its operations' keys, in key order, before it locks any wallet; a
--   concurrent duplicate blocks on that row. Outcomes the ledger decides (COMPLETED and the
--   422s) are stored with the answer and replayed; errors raised with a W0xxx SQLSTATE roll
--   back, so a corrected retry can run. A TOPUP, BONUS or SPEND claims its key as COMPLETED by
--   its transaction, and rewrites it only when it does not complete.
-- * Raised SQLSTATEs: W0001 user not found, W0002 asset not found, W0003 transaction not found,
--   W0004 hold not found, W0005 invalid batch operation, W0008 a transfer to its sender,
--   W0100 unbalanced, W0101 append-only; within a batch, W0200 an operation failed and W0201
--   its key was used before. An asset's whole Treasury without room for a posting is the
--   posting's BALANCE_LIMIT_EXCEEDED, stored and replayed as a wallet's limit is.

CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
-- After each INSERT statement on transactions: every new transaction has entries, so they came in
-- this same statement (an entry naming a transaction that did not exist yet was refused by its
-- own statement), and ledger_check_entries_balanced, run for this statement too, found it
-- balanced. A transaction and its entries are written by one statement, as every posting does;
-- entries that a later statement adds are refused by that check. Also here, rather than in a
-- CHECK read back from its text at every INSERT: a REVERSAL, and only a REVERSAL, names the
-- transaction it reverses (ck_transactions_reversal, SQLSTATE 23514 as the CHECK raised it).
DECLARE
    v_fault text;
BEGIN
    SELECT CASE WHEN (t.type = 'REVERSAL') <> (t.reverses_id IS NOT NULL) THEN 'reversal'
                ELSE 'entries' END
      INTO v_fault
      FROM new_transactions t
     WHERE (t.type = 'REVERSAL') <> (t.reverses_id IS NOT NULL)
        OR NOT EXISTS (SELECT 1 FROM entries e WHERE e.transaction_id = t.id)
     LIMIT 1;
    IF v_fault = 'reversal' THEN
        RAISE EXCEPTION 'a REVERSAL, and only a REVERSAL, names the transaction it reverses'
            USING ERRCODE = '23514', CONSTRAINT = 'ck_transactions_reversal';
    ELSIF v_fault = 'entries' THEN
        RAISE EXCEPTION 'an INSERT on transactions wrote a transaction without its entries'
            USING ERRCODE = 'W0100';
    END IF;
    RETURN NULL;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_check_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
-- After each INSERT statement on entries: every transaction it touched exists and is still
-- balanced, so entries cannot be added later to a committed transaction, nor point at none; and
-- every new entry's account exists, in the entry's asset. This check stands in for foreign keys
-- to transactions and to accounts (id, asset_id), checked once per statement rather than once
-- per entry: transactions are append-only, and an account with entries is never deleted nor
-- changes its id or asset (ledger_check_account_shape, ledger_check_account_unused). Postings
-- insert all the entries of a transaction in one statement.
BEGIN
    IF EXISTS (
        SELECT 1
          FROM (SELECT DISTINCT n.transaction_id FROM new_entries n) touched,
               LATERAL (  -- one index lookup per touched transaction, whatever the table sizes
                   SELECT min(t.amount) AS amount, bool_or(e.asset_id <> t.asset_id) AS mixed,
                          coalesce(sum(e.amount) FILTER (WHERE e.direction = 'DEBIT'), 0) AS debits,
                          coalesce(sum(e.amount) FILTER (WHERE e.direction = 'CREDIT'), 0) AS credits
                     FROM transactions t JOIN entries e ON e.transaction_id = t.id
                    WHERE t.id = touched.transaction_id) s
         WHERE s.amount IS NULL OR s.debits <> s.amount OR s.credits <> s.amount OR s.mixed
    ) OR EXISTS (
        SELECT 1 FROM new_entries n
         WHERE NOT EXISTS (SELECT 1 FROM accounts a
                            WHERE a.id = n.account_id AND a.asset_id = n.asset_id)
    ) THEN
        RAISE EXCEPTION 'INSERT on entries: unbalanced, or a missing transaction or account'
            USING ERRCODE = 'W0100';
    END IF;
    RETURN NULL;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
-- Append-only: history is never rewritten.
BEGIN
    RAISE EXCEPTION '% on % is not allowed: the ledger is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'W0101';
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_check_account_shape() RETURNS trigger LANGUAGE plpgsql AS $$
-- Before an account is opened or its id, asset, kind, owner or shard is written: a user's wallet
-- (kind USER, shard 0) or an asset's Treasury shard (kind TREASURY, no owner), whose id and
-- asset never change (entries name them: see ledger_check_entries_balanced). A trigger, not a
-- CHECK: a CHECK is read back from its text at every statement that writes the table, each
-- posting's balance updates included, and these columns never change once the account is open.
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.id <> OLD.id OR NEW.asset_id <> OLD.asset_id) THEN
        RAISE EXCEPTION 'account %: its id and asset never change', OLD.id
            USING ERRCODE = 'W0101';
    END IF;
    IF NOT (CASE WHEN NEW.user_id IS NULL THEN NEW.kind = 'TREASURY'
                 ELSE NEW.kind = 'USER' AND NEW.shard = 0 END) THEN
        RAISE EXCEPTION 'account %: kind %, owner %, shard % is neither a wallet nor a shard',
            NEW.id, NEW.kind, NEW.user_id, NEW.shard USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_check_account_held() RETURNS trigger LANGUAGE plpgsql AS $$
-- Before an account's balance or held amount is written (ck_accounts_held): a Treasury shard
-- holds nothing; a wallet holds from 0 to its balance, so what it has available never goes
-- below 0. A trigger rather than a CHECK, which PostgreSQL reads back from its text and plans
-- at every statement that writes the table: each posting's two account updates.
BEGIN
    IF NOT (CASE WHEN NEW.user_id IS NULL THEN NEW.held = 0
                 ELSE NEW.held >= 0 AND NEW.balance >= NEW.held END) THEN
        RAISE EXCEPTION 'account %: balance %, held %: a wallet holds from 0 to its balance',
            NEW.id, NEW.balance, NEW.held
            USING ERRCODE = '23514', CONSTRAINT = 'ck_accounts_held';
    END IF;
    RETURN NEW;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_check_account_unused() RETURNS trigger LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan AS $$
-- Before an account is deleted (trg_accounts_unused_only): only a wallet nothing was ever posted
-- to, held on or written about may go, which is a wallet a request opened for coins that then
-- did not arrive, taken away by that request's own transaction (ledger_close_unused) before
-- anyone else could see it. Every other account stays: entries name accounts without a foreign
-- key (ledger_check_entries_balanced), and an account with history is never deleted.
-- Planned for each account (the SET above): a plan kept for any account would judge the lookups
-- below by the account most entries or holds name, read every row for it (a seq scan stops at
-- the first match), and read them all for a new wallet, which has none (17 ms a wallet with
-- 300,000 holds on one account).
BEGIN
    IF OLD.kind <> 'USER' OR OLD.balance <> 0 OR OLD.held <> 0 OR OLD.version <> 0
       OR EXISTS (SELECT FROM entries e WHERE e.account_id = OLD.id)
       OR EXISTS (SELECT FROM holds h WHERE h.account_id = OLD.id) THEN
        RAISE EXCEPTION 'DELETE on accounts is not allowed: account % has a history', OLD.id
            USING ERRCODE = 'W0101';
    END IF;
    RETURN OLD;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_claim_key(
    p_scope text, p_key text, p_fingerprint bytea, p_txn uuid DEFAULT NULL
) RETURNS idempotency_keys LANGUAGE plpgsql AS $$
-- NULL when this call claimed the key; otherwise the stored row (after its writer finished).
-- With `p_txn`, the key is claimed as COMPLETED by that transaction (still to be written: the
-- key's foreign key is checked at commit), so a posting that completes writes its key once;
-- one that does not stores its outcome over the claim (wallet_transact).
DECLARE
    v_row idempotency_keys;
BEGIN
    INSERT INTO idempotency_keys (scope, key, fingerprint, outcome, transaction_id)
    VALUES (p_scope, p_key, p_fingerprint, CASE WHEN p_txn IS NOT NULL THEN 'COMPLETED' END, p_txn)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_row FROM idempotency_keys k WHERE k.scope = p_scope AND k.key = p_key;
    -- A completed TOPUP, BONUS or SPEND keeps its transaction in `transaction_id` only: every
    -- route that finds the key used for another request names that transaction as well.
    IF v_row.result IS NULL AND v_row.transaction_id IS NOT NULL THEN
        v_row.result := jsonb_build_object('transactionId', v_row.transaction_id);
    END IF;
    RETURN v_row;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_store_outcome(
    p_scope text, p_key text, p_outcome text, p_txn uuid, p_result jsonb
) RETURNS void LANGUAGE sql AS $$
    UPDATE idempotency_keys k SET outcome = p_outcome, transaction_id = p_txn, result = p_result
     WHERE k.scope = p_scope AND k.key = p_key;
$$;
--;
CREATE OR REPLACE FUNCTION ledger_claim_keys(
    p_scope text, p_ops jsonb, p_key text DEFAULT NULL, p_fingerprint bytea DEFAULT NULL
) RETURNS text[] LANGUAGE plpgsql AS $$
-- Claim the keys of a batch's or a group's operations at once, in key order, before any wallet
-- is locked: a request alone claims its key, then locks its wallets, so a batch that locked
-- first and then waited for a key a request alone held could deadlock with it. A TOPUP, BONUS or
-- SPEND claims its key as COMPLETED by its transaction (as wallet_transact does), a TRANSFER
-- with no outcome yet (as wallet_transfer does).
-- Each key is claimed for the first operation under it that names an existing user (or two)
-- and asset (ledger_claimants says which). An operation naming one that does not exist fails
-- (W0001, W0002) and must leave its key free, which only its own rollback could do (the
-- service's role may not delete a key): it never claims it, nor waits for it
-- (ledger_batch_claim).
-- A batch's own key (`p_key`) is claimed in the same pass, in its place in key order (two
-- batches each using the other's key for an operation would otherwise wait for each other); if
-- it was used before, this raises W0201, and the caller's rollback frees every key claimed here.
-- Answers the operations' keys claimed; a key stored before (or by a request that committed
-- meanwhile) is not, and its operations replay it. The batch's own key is not among them: an
-- operation under it finds it used.
-- PL/pgSQL keeps the statement's plan for the session, where an SQL function would plan it at
-- every call.
DECLARE
    v_claimed text[];
BEGIN
    WITH claimed AS (
        INSERT INTO idempotency_keys (scope, key, fingerprint, outcome, transaction_id)
        SELECT p_scope, k.key, k.fingerprint, k.outcome, k.transaction_id
          FROM (SELECT 0::bigint AS i, p_key AS key, p_fingerprint AS fingerprint,
                       NULL::text AS outcome, NULL::uuid AS transaction_id
                 WHERE p_key IS NOT NULL
                UNION ALL
                SELECT o.i, o.v->>'key', decode(o.v->>'fingerprint', 'hex'),
                       CASE WHEN o.v->>'op' <> 'TRANSFER' THEN 'COMPLETED' END,
                       CASE WHEN o.v->>'op' <> 'TRANSFER' THEN (o.v->>'txn')::uuid END
                  FROM jsonb_array_elements(p_ops) WITH ORDINALITY o (v, i)
                 WHERE o.v->>'key' IS NOT NULL  -- and its users and asset exist
                   AND EXISTS (SELECT FROM assets s WHERE s.slug = o.v->>'assetSlug')
                   AND EXISTS (SELECT FROM users u
                                WHERE u.id = (coalesce(o.v->>'userId', o.v->>'fromUserId'))::uuid)
                   AND (o.v->>'op' <> 'TRANSFER'
                        OR EXISTS (SELECT FROM users u WHERE u.id = (o.v->>'toUserId')::uuid))) k
         ORDER BY k.key, k.i  -- of a key given twice, the first row is claimed
        ON CONFLICT DO NOTHING
        RETURNING key
    )
    SELECT coalesce(array_agg(c.key), '{}') INTO v_claimed FROM claimed c;
    IF p_key IS NOT NULL THEN
        IF NOT p_key = ANY (v_claimed) THEN
            RAISE EXCEPTION 'key % was used before', p_key USING ERRCODE = 'W0201';
        END IF;
        v_claimed := array_remove(v_claimed, p_key);
    END IF;
    RETURN v_claimed;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_claimants(p_scope text, p_ops jsonb, p_claimed text[])
RETURNS jsonb LANGUAGE sql STABLE AS $$
-- {key: the ordinal (from 1) of the operation ledger_claim_keys claimed it for}: the first
-- operation under the key whose request is the one the claim stored.
    SELECT coalesce(jsonb_object_agg(f.key, f.i), '{}')
      FROM (SELECT DISTINCT ON (o.v->>'key') o.v->>'key' AS key, o.i
              FROM jsonb_array_elements(p_ops) WITH ORDINALITY o (v, i)
              JOIN idempotency_keys k ON k.scope = p_scope AND k.key = o.v->>'key'
             WHERE o.v->>'key' = ANY (p_claimed)
               AND k.fingerprint = decode(o.v->>'fingerprint', 'hex')
             ORDER BY o.v->>'key', o.i) f;
$$;
--;
CREATE OR REPLACE FUNCTION ledger_batch_claim(
    p_op jsonb, p_ordinal integer, p_claims jsonb, p_scope text
) RETURNS boolean LANGUAGE plpgsql AS $$
-- Whether an operation of a batch or a group runs under the key claimed for it
-- (ledger_claim_keys). One that names a user or an asset that does not exist, and would find its
-- key free if it ran alone at this point (no one stored it, or it is claimed for a later
-- operation of this batch), fails here with its route's not-found (W0002, then W0001, in its
-- route's order), without claiming or waiting for its key.
DECLARE
    v_key text := p_op->>'key';
    v_for integer := (p_claims->>v_key)::integer;
BEGIN
    IF v_key IS NULL THEN
        RETURN false;
    ELSIF v_for = p_ordinal THEN
        RETURN true;
    ELSIF v_for > p_ordinal
       OR (v_for IS NULL AND NOT EXISTS (SELECT FROM idempotency_keys k
                                         WHERE k.scope = p_scope AND k.key = v_key)) THEN
        PERFORM ledger_asset(p_op->>'assetSlug');
        PERFORM ledger_require_user((coalesce(p_op->>'userId', p_op->>'fromUserId'))::uuid);
        IF p_op->>'op' = 'TRANSFER' THEN
            PERFORM ledger_require_user((p_op->>'toUserId')::uuid);
        END IF;
    END IF;
    RETURN false;  -- a replay, or (made since the keys were claimed) its users and asset exist
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_asset(p_slug text) RETURNS assets LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_asset assets;
BEGIN
    SELECT * INTO v_asset FROM assets a WHERE a.slug = p_slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'asset % not found', p_slug USING ERRCODE = 'W0002', DETAIL = p_slug;
    END IF;
    RETURN v_asset;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_require_user(p_user uuid) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users u WHERE u.id = p_user;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user USING ERRCODE = 'W0001', DETAIL = p_user::text;
    END IF;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_lock_accounts(p_asset_id integer, p_users uuid[])
RETURNS void LANGUAGE plpgsql AS $$
-- Lock every account of `p_users` in the asset, in ascending id order (the ORDER BY sits below
-- the row locks).
BEGIN
    PERFORM 1 FROM accounts a
      WHERE a.asset_id = p_asset_id AND a.user_id = ANY (p_users)
      ORDER BY a.id FOR UPDATE;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_close_unused(p_opened jsonb) RETURNS void
LANGUAGE plpgsql AS $$
-- Take away the wallets of `p_opened` (a JSON array of account ids, opened by this transaction
-- and still locked by it) that nothing was posted to: a refusal leaves no wallet behind, as if
-- the request had not come.
BEGIN
    IF jsonb_array_length(p_opened) > 0 THEN
        DELETE FROM accounts a
         WHERE a.id IN (SELECT o::bigint FROM jsonb_array_elements_text(p_opened) o)
           AND a.version = 0 AND a.balance = 0 AND a.held = 0;
    END IF;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_move_user(
    p_account bigint, p_delta bigint, p_held_delta bigint DEFAULT 0,
    OUT balance bigint, OUT held bigint, OUT version bigint
) LANGUAGE plpgsql AS $$
-- Apply a change to a locked user account; the caller has checked available and the limit.
BEGIN
    UPDATE accounts a
       SET balance = a.balance + p_delta, held = a.held + p_held_delta,
           version = a.version + CASE WHEN p_delta = 0 THEN 0 ELSE 1 END
     WHERE a.id = p_account
    RETURNING a.balance, a.held, a.version INTO balance, held, version;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_treasury_move(
    p_asset_id integer, p_shards integer, p_delta bigint,
    OUT account_id bigint, OUT balance bigint, OUT version bigint
) LANGUAGE plpgsql AS $$
-- Move `p_delta` on one shard of the asset's Treasury: the one a batch pinned (see wallet_batch),
-- else the first shard from a random one on that no other posting holds and that has room for it
-- (bigint); if every shard is held or full, the one with the most room, waiting for it; NULLs
-- when no shard has room (ledger_post_user then undoes its wallet's move). Called as the last
-- write of a posting. A posting waits for a Treasury shard only when all of
-- them are held: otherwise each one it holds stays locked through its commit's WAL flush, and
-- postings that drew it would queue behind that flush.
DECLARE
    v_pinned bigint := (nullif(current_setting('wallet.treasury_pins', true), '')::jsonb
                        ->> p_asset_id::text)::bigint;
    v_shard integer := floor(random() * p_shards)::integer;
BEGIN
    IF v_pinned IS NOT NULL THEN
        UPDATE accounts a SET balance = a.balance + p_delta, version = a.version + 1
         WHERE a.id = v_pinned
           AND CASE WHEN p_delta < 0 THEN a.balance >= -9223372036854775808 - p_delta
                    ELSE a.balance <= 9223372036854775807 - p_delta END
        RETURNING a.id, a.balance, a.version INTO account_id, balance, version;
        IF FOUND THEN
            RETURN;
        END IF;
    ELSE
        FOR v_round IN 0..1 LOOP  -- from the drawn shard on, then from the first
            UPDATE accounts a SET balance = a.balance + p_delta, version = a.version + 1
             WHERE a.id = (
                    SELECT t.id FROM accounts t
                     WHERE t.kind = 'TREASURY' AND t.asset_id = p_asset_id AND t.shard >= v_shard
                       AND CASE WHEN p_delta < 0 THEN t.balance >= -9223372036854775808 - p_delta
                                ELSE t.balance <= 9223372036854775807 - p_delta END
                     ORDER BY t.shard LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING a.id, a.balance, a.version INTO account_id, balance, version;
            IF FOUND THEN
                RETURN;
            END IF;
            EXIT WHEN v_shard = 0;
            v_shard := 0;
        END LOOP;
    END IF;
    FOR attempt IN 1..3 LOOP
        UPDATE accounts a SET balance = a.balance + p_delta, version = a.version + 1
         WHERE a.id = (
                SELECT t.id FROM accounts t
                 WHERE t.kind = 'TREASURY' AND t.asset_id = p_asset_id
                 -- The most room: the highest balance for a debit, the lowest for a credit
                 -- (not by negating a balance, which overflows at -2^63, a shard's floor).
                 ORDER BY CASE WHEN p_delta < 0 THEN t.balance END DESC, t.balance
                 LIMIT 1)
           AND CASE WHEN p_delta < 0 THEN a.balance >= -9223372036854775808 - p_delta
                    ELSE a.balance <= 9223372036854775807 - p_delta END
        RETURNING a.id, a.balance, a.version INTO account_id, balance, version;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
    account_id := NULL;  -- no room: no shard moved
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_notify(p_account bigint) RETURNS void LANGUAGE plpgsql AS $$
-- Tell balance subscribers, at commit, about a user account's new state (only while anyone
-- listens: a NOTIFY serialises commits cluster-wide).
BEGIN
    IF EXISTS (SELECT FROM feed_listeners) THEN
        PERFORM pg_notify('wallet_balance', json_build_object(
            'userId', a.user_id, 'accountId', a.id, 'assetSlug', s.slug,
            'balance', a.balance::text, 'held', a.held::text,
            'available', (a.balance - a.held)::text, 'version', a.version
        )::text)
          FROM accounts a JOIN assets s ON s.id = a.asset_id WHERE a.id = p_account;
    END IF;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_post_user(
    p_asset assets, p_user uuid, p_type text, p_credit boolean, p_amount bigint, p_txn uuid,
    p_principal text, p_reference text, p_metadata jsonb, p_now timestamptz,
    p_reverses uuid DEFAULT NULL, p_reason text DEFAULT NULL, p_hold uuid DEFAULT NULL,
    p_release bigint DEFAULT 0,
    OUT outcome text, OUT balance_before bigint, OUT balance_after bigint, OUT available bigint,
    OUT posted_at timestamptz
) LANGUAGE plpgsql AS $$
-- Move coins between a user and the Treasury: `p_credit` when the Treasury pays the user (TOPUP,
-- BONUS, the reversal of a SPEND), otherwise the user pays it (SPEND, a capture, the reversal of
-- a TOPUP or BONUS). `p_release` is held on the user and released by this posting (a capture).
DECLARE
    v_delta bigint := CASE WHEN p_credit THEN p_amount ELSE -p_amount END;
    v_account bigint;
    v_balance bigint;
    v_held bigint;
    v_version bigint;
    v_listening boolean;
    v_moved record;
    v_treasury record;
    v_opened boolean := false;
BEGIN
    -- The common case in one statement: lock the wallet and move it, if the posting fits (the
    -- condition is evaluated again on the newest row when another posting held it first).
    UPDATE accounts a
       SET balance = a.balance + v_delta, held = a.held - p_release, version = a.version + 1
     WHERE a.user_id = p_user AND a.asset_id = p_asset.id
       AND CASE WHEN p_credit THEN a.balance <= 9223372036854775807 - p_amount
                ELSE a.balance - a.held + p_release >= p_amount END
    RETURNING a.id, a.balance, a.held, a.version, EXISTS (SELECT FROM feed_listeners)
         INTO v_account, v_balance, v_held, v_version, v_listening;
    IF NOT FOUND THEN
        -- No wallet yet, or the posting does not fit it: lock it (or open it) and decide.
        SELECT a.id, a.balance, a.held INTO v_account, v_balance, v_held
          FROM accounts a WHERE a.user_id = p_user AND a.asset_id = p_asset.id FOR UPDATE;
        IF NOT FOUND THEN
            PERFORM ledger_require_user(p_user);
            IF p_credit THEN
                -- Opened by this posting (unless a concurrent one opened it first): a refusal
                -- below takes it away again (ledger_close_unused).
                INSERT INTO accounts AS a (asset_id, kind, user_id)
                VALUES (p_asset.id, 'USER', p_user)
                ON CONFLICT (user_id, asset_id) DO NOTHING
                RETURNING a.id, a.balance, a.held INTO v_account, v_balance, v_held;
                v_opened := FOUND;
                IF NOT v_opened THEN
                    SELECT a.id, a.balance, a.held INTO v_account, v_balance, v_held
                      FROM accounts a WHERE a.user_id = p_user AND a.asset_id = p_asset.id
                       FOR UPDATE;
                END IF;
            ELSE
                v_balance := 0;
                v_held := 0;
            END IF;
        END IF;
        posted_at := greatest(p_now, clock_timestamp());
        balance_before := v_balance;
        balance_after := v_balance;
        available := v_balance - v_held;
        IF NOT p_credit AND v_balance - v_held + p_release < p_amount THEN
            outcome := 'INSUFFICIENT_FUNDS';
            RETURN;
        END IF;
        IF p_credit AND v_balance > 9223372036854775807 - p_amount THEN
            outcome := 'BALANCE_LIMIT_EXCEEDED';
            RETURN;
        END IF;
        v_moved := ledger_move_user(v_account, v_delta, -p_release);
        v_balance := v_moved.balance;
        v_held := v_moved.held;
        v_version := v_moved.version;
        v_listening := EXISTS (SELECT FROM feed_listeners);
    END IF;
    -- The posting's instant, taken once its lock is held: an account's entries are in the same
    -- order by time and by version, so the balance at an instant is a lookup.
    p_now := greatest(p_now, clock_timestamp());
    -- Helpers are called as expressions, not as `SELECT ... FROM f()`: PL/pgSQL evaluates a
    -- simple expression without starting an executor for it.
    v_treasury := ledger_treasury_move(p_asset.id, p_asset.treasury_shards, -v_delta);
    IF v_treasury.account_id IS NULL THEN
        -- The asset's whole Treasury has no room for the amount: put the wallet back as it was
        -- (still locked by this transaction, so nobody saw the move) and refuse the posting as a
        -- wallet's limit refuses it, an outcome its caller stores and replays.
        UPDATE accounts a
           SET balance = a.balance - v_delta, held = a.held + p_release, version = a.version - 1
         WHERE a.id = v_account;
        IF v_opened THEN
            PERFORM ledger_close_unused(jsonb_build_array(v_account));
        END IF;
        outcome := 'BALANCE_LIMIT_EXCEEDED';
        posted_at := p_now;
        balance_before := v_balance - v_delta;
        balance_after := v_balance - v_delta;
        available := v_balance - v_delta - v_held - p_release;
        RETURN;
    END IF;
    -- The transaction and its entries in one statement (ledger_check_balanced).
    WITH posted AS (
        INSERT INTO transactions (id, type, asset_id, user_id, amount, principal, reference,
                                  metadata, reverses_id, reason, hold_id, created_at)
        VALUES (p_txn, p_type, p_asset.id, p_user, p_amount, p_principal, p_reference, p_metadata,
                p_reverses, p_reason, p_hold, p_now)
    )
    INSERT INTO entries (transaction_id, account_id, asset_id, direction, amount, balance_after,
                         account_version, created_at)
    VALUES (p_txn, v_account, p_asset.id, CASE WHEN p_credit THEN 'CREDIT' ELSE 'DEBIT' END,
            p_amount, v_balance, v_version, p_now),
           (p_txn, v_treasury.account_id, p_asset.id,
            CASE WHEN p_credit THEN 'DEBIT' ELSE 'CREDIT' END, p_amount, v_treasury.balance,
            v_treasury.version, p_now);
    IF v_listening THEN  -- asked with the wallet's update (see ledger_notify)
        PERFORM ledger_notify(v_account);
    END IF;
    outcome := 'COMPLETED';
    posted_at := p_now;
    balance_before := v_balance - v_delta;
    balance_after := v_balance;
    available := v_balance - v_held;
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_transact(
    p_scope text, p_key text, p_fingerprint bytea,
    p_user uuid, p_asset text, p_type text, p_amount bigint, p_txn uuid,
    p_principal text, p_reference text, p_metadata jsonb, p_claimed boolean DEFAULT false
) RETURNS TABLE (
    outcome text, replayed boolean, fingerprint_matches boolean, transaction_id uuid,
    balance_before bigint, balance_after bigint, created_at timestamptz
) LANGUAGE plpgsql AS $$
-- One TOPUP, BONUS or SPEND, exactly once per (scope, key), in one round trip. `p_claimed`: the
-- caller has claimed the key in this transaction already (wallet_transact_group). The key is
-- claimed as COMPLETED by `p_txn`: a posting that completes leaves it so (the balances a replay
-- answers are then read from the transaction's entry on the wallet); any other outcome is
-- stored over the claim.
DECLARE
    v_stored idempotency_keys;
    v_asset assets;
    v_post record;
    v_now timestamptz;
BEGIN
    IF NOT p_claimed THEN
        v_stored := ledger_claim_key(p_scope, p_key, p_fingerprint, p_txn);
    END IF;
    IF v_stored.scope IS NOT NULL THEN
        RETURN QUERY
            SELECT v_stored.outcome::text, true, v_stored.fingerprint = p_fingerprint,
                   v_stored.transaction_id,
                   coalesce(v_stored.balance_before, e.balance_after
                            - CASE WHEN e.direction = 'CREDIT' THEN e.amount ELSE -e.amount END),
                   coalesce(v_stored.balance_after, e.balance_after),
                   coalesce(t.created_at, v_stored.created_at)
              FROM (SELECT 1) one
              LEFT JOIN transactions t ON t.id = v_stored.transaction_id
              LEFT JOIN accounts a ON a.user_id = t.user_id AND a.asset_id = t.asset_id
              LEFT JOIN entries e ON e.transaction_id = t.id AND e.account_id = a.id;
        RETURN;
    END IF;
    v_asset := ledger_asset(p_asset);
    v_now := clock_timestamp();  -- the posting takes its own instant once it holds its lock
    v_post := ledger_post_user(  -- as an expression: see ledger_post_user
        v_asset, p_user, p_type, p_type <> 'SPEND', p_amount, p_txn, p_principal, p_reference,
        p_metadata, v_now);
    IF p_claimed OR v_post.outcome <> 'COMPLETED' THEN
        UPDATE idempotency_keys k
           SET outcome = v_post.outcome,
               transaction_id = CASE WHEN v_post.outcome = 'COMPLETED' THEN p_txn END,
               balance_before = v_post.balance_before, balance_after = v_post.balance_after
         WHERE k.scope = p_scope AND k.key = p_key;
    END IF;
    outcome := v_post.outcome;  -- the row, without a query for it
    replayed := false;
    fingerprint_matches := true;
    transaction_id := CASE WHEN v_post.outcome = 'COMPLETED' THEN p_txn END;
    balance_before := v_post.balance_before;
    balance_after := v_post.balance_after;
    created_at := v_post.posted_at;
    RETURN NEXT;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_post_transfer(
    p_asset assets, p_from uuid, p_to uuid, p_amount bigint, p_txn uuid, p_type text,
    p_principal text, p_reference text, p_metadata jsonb, p_now timestamptz,
    p_reverses uuid DEFAULT NULL, p_reason text DEFAULT NULL, p_hold uuid DEFAULT NULL,
    p_release bigint DEFAULT 0,
    OUT outcome text, OUT from_balance bigint, OUT to_balance bigint, OUT available bigint,
    OUT posted_at timestamptz
) LANGUAGE plpgsql AS $$
-- Move coins from one user wallet to another (a TRANSFER, the reversal of one, or a capture to
-- a user). `p_release` is held on the sender and released by this posting (a capture).
DECLARE
    v_from accounts;
    v_to accounts;
    v_moved record;
    v_opened bigint;
BEGIN
    -- A recipient without a wallet in the asset gets one before any wallet is locked, as a batch
    -- opens its wallets before it locks them: opening after the sender's lock would wait for a
    -- batch opening the same wallet while that batch waits for the sender (a deadlock). A
    -- refusal takes it away again (ledger_close_unused).
    IF NOT EXISTS (SELECT FROM accounts a WHERE a.user_id = p_to AND a.asset_id = p_asset.id) THEN
        INSERT INTO accounts AS a (asset_id, kind, user_id) VALUES (p_asset.id, 'USER', p_to)
        ON CONFLICT (user_id, asset_id) DO NOTHING
        RETURNING a.id INTO v_opened;
    END IF;
    PERFORM ledger_lock_accounts(p_asset.id, ARRAY[p_from, p_to]);
    p_now := greatest(p_now, clock_timestamp());  -- once the locks are held (see ledger_post_user)
    posted_at := p_now;
    SELECT * INTO v_from FROM accounts a WHERE a.user_id = p_from AND a.asset_id = p_asset.id;
    SELECT * INTO v_to FROM accounts a WHERE a.user_id = p_to AND a.asset_id = p_asset.id;
    IF v_from.id IS NULL OR v_from.balance - v_from.held + p_release < p_amount THEN
        IF v_opened IS NOT NULL THEN  -- no coins arrive: the recipient has no wallet, as before
            PERFORM ledger_close_unused(jsonb_build_array(v_opened));
            v_to.balance := NULL;
        END IF;
        outcome := 'INSUFFICIENT_FUNDS';
        from_balance := coalesce(v_from.balance, 0);
        to_balance := v_to.balance;
        available := coalesce(v_from.balance - v_from.held, 0);
        RETURN;
    END IF;
    IF v_to.balance > 9223372036854775807 - p_amount THEN
        outcome := 'BALANCE_LIMIT_EXCEEDED';
        from_balance := v_from.balance;
        to_balance := v_to.balance;
        available := v_from.balance - v_from.held;
        RETURN;
    END IF;
    v_moved := ledger_move_user(v_from.id, -p_amount, -p_release);  -- see ledger_post_user
    from_balance := v_moved.balance;
    available := v_moved.balance - v_moved.held;
    v_from.version := v_moved.version;
    v_moved := ledger_move_user(v_to.id, p_amount);
    to_balance := v_moved.balance;
    v_to.version := v_moved.version;
    WITH posted AS (  -- the transaction and its entries in one statement (ledger_check_balanced)
        INSERT INTO transactions (id, type, asset_id, user_id, amount, principal, reference,
                                  metadata, reverses_id, reason, hold_id, created_at)
        VALUES (p_txn, p_type, p_asset.id, p_from, p_amount, p_principal, p_reference, p_metadata,
                p_reverses, p_reason, p_hold, p_now)
    )
    INSERT INTO entries (transaction_id, account_id, asset_id, direction, amount, balance_after,
                         account_version, created_at)
    VALUES (p_txn, v_from.id, p_asset.id, 'DEBIT', p_amount, from_balance, v_from.version, p_now),
           (p_txn, v_to.id, p_asset.id, 'CREDIT', p_amount, to_balance, v_to.version, p_now);
    PERFORM ledger_notify(v_from.id);
    PERFORM ledger_notify(v_to.id);
    outcome := 'COMPLETED';
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_transfer_result(
    p_txn uuid, p_from uuid, p_to uuid, p_asset text, p_amount bigint, p_from_balance bigint,
    p_to_balance bigint, p_reference text, p_metadata jsonb, p_now timestamptz
) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'transactionId', p_txn, 'fromUserId', p_from, 'toUserId', p_to, 'assetSlug', p_asset,
        'amount', p_amount, 'fromBalanceAfter', p_from_balance::text,
        'toBalanceAfter', p_to_balance::text, 'reference', p_reference,
        'metadata', p_metadata, 'createdAt', p_now);
$$;
--;
CREATE OR REPLACE FUNCTION ledger_transfer(
    p_from uuid, p_to uuid, p_asset text, p_amount bigint, p_txn uuid, p_principal text,
    p_reference text, p_metadata jsonb, OUT outcome text, OUT result jsonb
) LANGUAGE plpgsql AS $$
-- A TRANSFER without its key (wallet_transfer and the batch claim theirs).
DECLARE
    v_asset assets := ledger_asset(p_asset);
    v_now timestamptz;
    v_post record;
BEGIN
    IF p_from = p_to THEN
        RAISE EXCEPTION 'a transfer needs two users' USING ERRCODE = 'W0008';
    END IF;
    PERFORM ledger_require_user(p_from);
    PERFORM ledger_require_user(p_to);
    v_now := clock_timestamp();
    SELECT * INTO v_post FROM ledger_post_transfer(
        v_asset, p_from, p_to, p_amount, p_txn, 'TRANSFER', p_principal, p_reference,
        p_metadata, v_now);
    outcome := v_post.outcome;
    IF outcome = 'COMPLETED' THEN
        result := ledger_transfer_result(p_txn, p_from, p_to, p_asset, p_amount,
            v_post.from_balance, v_post.to_balance, p_reference, p_metadata, v_post.posted_at);
    ELSE
        result := jsonb_build_object('available', v_post.available::text,
                                     'balance', v_post.from_balance::text,
                                     'toBalance', v_post.to_balance::text);
    END IF;
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_transfer(
    p_scope text, p_key text, p_fingerprint bytea,
    p_from uuid, p_to uuid, p_asset text, p_amount bigint, p_txn uuid, p_principal text,
    p_reference text, p_metadata jsonb
) RETURNS TABLE (outcome text, replayed boolean, fingerprint_matches boolean, result jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_stored idempotency_keys;
    v_done record;
BEGIN
    v_stored := ledger_claim_key(p_scope, p_key, p_fingerprint);
    IF v_stored.scope IS NOT NULL THEN
        RETURN QUERY SELECT v_stored.outcome::text, true, v_stored.fingerprint = p_fingerprint,
                            v_stored.result;
        RETURN;
    END IF;
    SELECT * INTO v_done FROM ledger_transfer(
        p_from, p_to, p_asset, p_amount, p_txn, p_principal, p_reference, p_metadata);
    PERFORM ledger_store_outcome(p_scope, p_key, v_done.outcome,
        CASE WHEN v_done.outcome = 'COMPLETED' THEN p_txn END, v_done.result);
    RETURN QUERY SELECT v_done.outcome, false, true, v_done.result;
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_reverse(
    p_scope text, p_key text, p_fingerprint bytea,
    p_original uuid, p_amount bigint, p_reason text, p_metadata jsonb, p_txn uuid,
    p_principal text
) RETURNS TABLE (outcome text, replayed boolean, fingerprint_matches boolean, result jsonb)
LANGUAGE plpgsql AS $$
-- Move `p_amount` (default: all still reversible) back along the original's legs, the other
-- way. The original's row is locked, so concurrent reversals of it queue and never exceed it.
DECLARE
    v_stored idempotency_keys;
    v_original transactions;
    v_asset assets;
    v_reversed bigint;
    v_amount bigint;
    v_user uuid;       -- the user side of a TOPUP, BONUS or SPEND
    v_to uuid;         -- the recipient of a TRANSFER
    v_now timestamptz;
    v_post record;
    v_outcome text;
    v_balances jsonb;
BEGIN
    v_stored := ledger_claim_key(p_scope, p_key, p_fingerprint);
    IF v_stored.scope IS NOT NULL THEN
        RETURN QUERY SELECT v_stored.outcome::text, true, v_stored.fingerprint = p_fingerprint,
                            v_stored.result;
        RETURN;
    END IF;
    SELECT * INTO v_original FROM transactions t WHERE t.id = p_original FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % not found', p_original USING ERRCODE = 'W0003';
    END IF;
    SELECT * INTO v_asset FROM assets a WHERE a.id = v_original.asset_id;
    SELECT coalesce(sum(t.amount), 0) INTO v_reversed
      FROM transactions t WHERE t.reverses_id = p_original;
    v_amount := coalesce(p_amount, v_original.amount - v_reversed);

    IF v_original.type = 'REVERSAL' THEN
        v_outcome := 'NOT_REVERSIBLE';
    ELSIF v_amount < 1 OR v_amount > v_original.amount - v_reversed THEN
        v_outcome := 'REVERSAL_EXCEEDS_ORIGINAL';
    END IF;
    IF v_outcome IS NOT NULL THEN
        PERFORM ledger_store_outcome(p_scope, p_key, v_outcome, NULL, jsonb_build_object(
            'remainingReversible', v_original.amount - v_reversed, 'requested', v_amount));
        RETURN QUERY SELECT v_outcome, false, true, jsonb_build_object(
            'remainingReversible', v_original.amount - v_reversed, 'requested', v_amount);
        RETURN;
    END IF;

    v_now := clock_timestamp();
    IF v_original.type = 'TRANSFER' THEN
        SELECT a.user_id INTO v_to FROM entries e JOIN accounts a ON a.id = e.account_id
         WHERE e.transaction_id = p_original AND e.direction = 'CREDIT';
        SELECT * INTO v_post FROM ledger_post_transfer(
            v_asset, v_to, v_original.user_id, v_amount, p_txn, 'REVERSAL', p_principal, NULL,
            p_metadata, v_now, p_original, p_reason);
        v_outcome := v_post.outcome;
        v_balances := jsonb_build_array(
            jsonb_build_object('userId', v_original.user_id,
                               'balanceAfter', v_post.to_balance::text),
            jsonb_build_object('userId', v_to, 'balanceAfter', v_post.from_balance::text));
    ELSE
        -- A SPEND's user is refunded by the Treasury; a TOPUP's or BONUS's user pays it back.
        v_user := v_original.user_id;
        SELECT * INTO v_post FROM ledger_post_user(
            v_asset, v_user, 'REVERSAL', v_original.type = 'SPEND', v_amount, p_txn, p_principal,
            NULL, p_metadata, v_now, p_original, p_reason);
        v_outcome := v_post.outcome;
        v_balances := jsonb_build_array(
            jsonb_build_object('userId', v_user, 'balanceAfter', v_post.balance_after::text));
    END IF;
    IF v_outcome <> 'COMPLETED' THEN
        PERFORM ledger_store_outcome(p_scope, p_key, v_outcome, NULL,
            jsonb_build_object('available', v_post.available::text, 'requested', v_amount));
        RETURN QUERY SELECT v_outcome, false, true,
            jsonb_build_object('available', v_post.available::text, 'requested', v_amount);
        RETURN;
    END IF;
    v_stored.result := jsonb_build_object(
        'transactionId', p_txn, 'reversesTransactionId', p_original, 'assetSlug', v_asset.slug,
        'amount', v_amount, 'remainingReversible', v_original.amount - v_reversed - v_amount,
        'balances', v_balances, 'reason', p_reason, 'metadata', p_metadata,
        'createdAt', v_post.posted_at);
    PERFORM ledger_store_outcome(p_scope, p_key, 'COMPLETED', p_txn, v_stored.result);
    RETURN QUERY SELECT 'COMPLETED'::text, false, true, v_stored.result;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_hold_view(p_hold holds) RETURNS jsonb LANGUAGE sql STABLE AS $$
-- What every hold route answers. A hold past its expiry is EXPIRED even before the sweeper ran.
    SELECT jsonb_build_object(
        'holdId', p_hold.id,
        'status', CASE WHEN p_hold.status = 'HELD' AND p_hold.expires_at <= clock_timestamp()
                       THEN 'EXPIRED' ELSE p_hold.status END,
        'userId', p_hold.user_id, 'assetSlug', s.slug, 'amount', p_hold.amount,
        'capturedAmount', p_hold.captured_amount, 'expiresAt', p_hold.expires_at,
        'transactionId', p_hold.transaction_id, 'reference', p_hold.reference,
        'metadata', p_hold.metadata, 'createdAt', p_hold.created_at)
      FROM assets s WHERE s.id = p_hold.asset_id;
$$;
--;
CREATE OR REPLACE FUNCTION ledger_with_balance(p_view jsonb, p_account bigint)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT p_view || jsonb_build_object('balance', a.balance::text,
                                        'available', (a.balance - a.held)::text)
      FROM accounts a WHERE a.id = p_account;
$$;
--;
CREATE OR REPLACE FUNCTION ledger_release_hold(p_hold holds, p_status text)
RETURNS holds LANGUAGE plpgsql AS $$
-- Finish a HELD hold without moving coins (VOIDED or EXPIRED): its amount is available again.
DECLARE
    v_hold holds;
BEGIN
    PERFORM 1 FROM accounts a WHERE a.id = p_hold.account_id FOR UPDATE;
    PERFORM ledger_move_user(p_hold.account_id, 0, -p_hold.amount);
    UPDATE holds h SET status = p_status, finished_at = clock_timestamp()
     WHERE h.id = p_hold.id RETURNING * INTO v_hold;
    PERFORM ledger_notify(p_hold.account_id);
    RETURN v_hold;
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_hold_create(
    p_scope text, p_key text, p_fingerprint bytea,
    p_hold uuid, p_user uuid, p_asset text, p_amount bigint, p_expires_in_seconds integer,
    p_principal text, p_reference text, p_metadata jsonb
) RETURNS TABLE (outcome text, replayed boolean, fingerprint_matches boolean, result jsonb)
LANGUAGE plpgsql AS $$
-- Reserve `p_amount` of the user's available coins until captured, voided or expired.
DECLARE
    v_stored idempotency_keys;
    v_asset assets;
    v_account accounts;
    v_hold holds;
    v_result jsonb;
    v_now timestamptz;
BEGIN
    v_stored := ledger_claim_key(p_scope, p_key, p_fingerprint);
    IF v_stored.scope IS NOT NULL THEN
        RETURN QUERY SELECT v_stored.outcome::text, true, v_stored.fingerprint = p_fingerprint,
                            v_stored.result;
        RETURN;
    END IF;
    v_asset := ledger_asset(p_asset);
    PERFORM ledger_require_user(p_user);
    SELECT * INTO v_account FROM accounts a
     WHERE a.user_id = p_user AND a.asset_id = v_asset.id FOR UPDATE;
    IF v_account.id IS NULL OR v_account.balance - v_account.held < p_amount THEN
        v_result := jsonb_build_object(
            'available', coalesce(v_account.balance - v_account.held, 0)::text,
            'requested', p_amount);
        PERFORM ledger_store_outcome(p_scope, p_key, 'INSUFFICIENT_FUNDS', NULL, v_result);
        RETURN QUERY SELECT 'INSUFFICIENT_FUNDS'::text, false, true, v_result;
        RETURN;
    END IF;
    PERFORM ledger_move_user(v_account.id, 0, p_amount);
    v_now := clock_timestamp();  -- one instant: expiresAt - createdAt = expiresInSeconds
    INSERT INTO holds (id, account_id, asset_id, user_id, amount, status, expires_at, principal,
                       reference, metadata, created_at)
    VALUES (p_hold, v_account.id, v_asset.id, p_user, p_amount, 'HELD',
            v_now + make_interval(secs => p_expires_in_seconds), p_principal,
            p_reference, p_metadata, v_now)
    RETURNING * INTO v_hold;
    PERFORM ledger_notify(v_account.id);
    v_result := ledger_with_balance(ledger_hold_view(v_hold), v_account.id);
    PERFORM ledger_store_outcome(p_scope, p_key, 'COMPLETED', NULL, v_result);
    RETURN QUERY SELECT 'COMPLETED'::text, false, true, v_result;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_lock_hold(p_hold uuid) RETURNS holds LANGUAGE plpgsql AS $$
DECLARE
    v_hold holds;
BEGIN
    SELECT * INTO v_hold FROM holds h WHERE h.id = p_hold FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hold % not found', p_hold USING ERRCODE = 'W0004';
    END IF;
    RETURN v_hold;
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_hold_capture(
    p_scope text, p_key text, p_fingerprint bytea,
    p_hold uuid, p_amount bigint, p_to uuid, p_txn uuid, p_principal text, p_reference text,
    p_metadata jsonb
) RETURNS TABLE (outcome text, replayed boolean, fingerprint_matches boolean, result jsonb)
LANGUAGE plpgsql AS $$
-- Charge `p_amount` (default: all) of a HELD hold to the Treasury (a SPEND) or to `p_to` (a
-- TRANSFER), releasing the rest. Past its expiry the hold expires here instead.
DECLARE
    v_stored idempotency_keys;
    v_hold holds;
    v_asset assets;
    v_amount bigint;
    v_now timestamptz;
    v_post record;
    v_outcome text;
    v_result jsonb;
BEGIN
    v_stored := ledger_claim_key(p_scope, p_key, p_fingerprint);
    IF v_stored.scope IS NOT NULL THEN
        RETURN QUERY SELECT v_stored.outcome::text, true, v_stored.fingerprint = p_fingerprint,
                            v_stored.result;
        RETURN;
    END IF;
    v_hold := ledger_lock_hold(p_hold);
    v_now := clock_timestamp();  -- a hold no longer HELD answers so, whatever the body asks
    IF v_hold.status = 'HELD' AND v_hold.expires_at <= v_now THEN
        v_hold := ledger_release_hold(v_hold, 'EXPIRED');
        v_outcome := 'HOLD_EXPIRED';
    ELSIF v_hold.status = 'EXPIRED' THEN  -- swept already: the same answer as unswept
        v_outcome := 'HOLD_EXPIRED';
    ELSIF v_hold.status <> 'HELD' THEN
        v_outcome := 'HOLD_NOT_ACTIVE';
    END IF;
    IF v_outcome IS NOT NULL THEN
        v_result := ledger_hold_view(v_hold);
        PERFORM ledger_store_outcome(p_scope, p_key, v_outcome, NULL, v_result);
        RETURN QUERY SELECT v_outcome, false, true, v_result;
        RETURN;
    END IF;
    v_amount := coalesce(p_amount, v_hold.amount);
    IF v_amount > v_hold.amount THEN
        RAISE EXCEPTION 'amount % exceeds the hold''s %', v_amount, v_hold.amount
            USING ERRCODE = 'W0006';
    END IF;
    IF p_to = v_hold.user_id THEN
        RAISE EXCEPTION 'toUserId is the hold''s own user' USING ERRCODE = 'W0007';
    END IF;
    IF p_to IS NOT NULL THEN
        PERFORM ledger_require_user(p_to);
    END IF;

    SELECT * INTO v_asset FROM assets a WHERE a.id = v_hold.asset_id;
    IF p_to IS NULL THEN
        SELECT * INTO v_post FROM ledger_post_user(
            v_asset, v_hold.user_id, 'SPEND', false, v_amount, p_txn, p_principal, p_reference,
            p_metadata, v_now, NULL, NULL, v_hold.id, v_hold.amount);
    ELSE
        SELECT * INTO v_post FROM ledger_post_transfer(
            v_asset, v_hold.user_id, p_to, v_amount, p_txn, 'TRANSFER', p_principal, p_reference,
            p_metadata, v_now, NULL, NULL, v_hold.id, v_hold.amount);
    END IF;
    IF v_post.outcome <> 'COMPLETED' THEN  -- only BALANCE_LIMIT_EXCEEDED can get here
        v_result := ledger_hold_view(v_hold);
        PERFORM ledger_store_outcome(p_scope, p_key, v_post.outcome, NULL, v_result);
        RETURN QUERY SELECT v_post.outcome, false, true, v_result;
        RETURN;
    END IF;
    UPDATE holds h SET status = 'CAPTURED', captured_amount = v_amount, transaction_id = p_txn,
                       finished_at = v_now
     WHERE h.id = v_hold.id RETURNING * INTO v_hold;
    v_result := ledger_with_balance(ledger_hold_view(v_hold), v_hold.account_id);
    PERFORM ledger_store_outcome(p_scope, p_key, 'COMPLETED', p_txn, v_result);
    RETURN QUERY SELECT 'COMPLETED'::text, false, true, v_result;
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_hold_void(
    p_scope text, p_key text, p_fingerprint bytea, p_hold uuid, p_principal text
) RETURNS TABLE (outcome text, replayed boolean, fingerprint_matches boolean, result jsonb)
LANGUAGE plpgsql AS $$
-- Release all of a HELD hold. A hold past its expiry is no longer HELD.
DECLARE
    v_stored idempotency_keys;
    v_hold holds;
    v_outcome text := 'COMPLETED';
    v_result jsonb;
BEGIN
    v_stored := ledger_claim_key(p_scope, p_key, p_fingerprint);
    IF v_stored.scope IS NOT NULL THEN
        RETURN QUERY SELECT v_stored.outcome::text, true, v_stored.fingerprint = p_fingerprint,
                            v_stored.result;
        RETURN;
    END IF;
    v_hold := ledger_lock_hold(p_hold);
    IF v_hold.status = 'HELD' AND v_hold.expires_at <= clock_timestamp() THEN
        v_hold := ledger_release_hold(v_hold, 'EXPIRED');
        v_outcome := 'HOLD_NOT_ACTIVE';
    ELSIF v_hold.status <> 'HELD' THEN
        v_outcome := 'HOLD_NOT_ACTIVE';
    ELSE
        v_hold := ledger_release_hold(v_hold, 'VOIDED');
    END IF;
    v_result := ledger_hold_view(v_hold);
    IF v_outcome = 'COMPLETED' THEN
        v_result := ledger_with_balance(v_result, v_hold.account_id);
    END IF;
    PERFORM ledger_store_outcome(p_scope, p_key, v_outcome, NULL, v_result);
    RETURN QUERY SELECT v_outcome, false, true, v_result;
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_expire_holds(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
-- Release up to `p_limit` holds past their expiry. Safe from any number of processes and hosts:
-- each takes holds nobody else has locked (SKIP LOCKED), then their accounts in ascending order.
DECLARE
    v_holds holds[];
    v_hold holds;
BEGIN
    SELECT coalesce(array_agg(x ORDER BY x.expires_at), '{}') INTO v_holds
      FROM (SELECT * FROM holds h WHERE h.status = 'HELD' AND h.expires_at <= clock_timestamp()
             ORDER BY h.expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED) x;
    PERFORM 1 FROM accounts a WHERE a.id IN (SELECT e.account_id FROM unnest(v_holds) e)
      ORDER BY a.id FOR UPDATE;
    FOREACH v_hold IN ARRAY v_holds LOOP
        PERFORM ledger_release_hold(v_hold, 'EXPIRED');
    END LOOP;
    RETURN cardinality(v_holds);
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_batch_op(
    p_op jsonb, p_scope text, p_principal text, p_claimed boolean DEFAULT false
) RETURNS jsonb LANGUAGE plpgsql AS $$
-- One operation of a batch, under its own key when it has one (exactly the rules of its own
-- route, so a retry of that route replays it). Answers the raw outcome; the service shapes it.
-- `p_claimed`: this transaction has claimed the operation's key for it (ledger_batch_claim).
DECLARE
    v_key text := p_op->>'key';
    v_fingerprint bytea := decode(p_op->>'fingerprint', 'hex');
    v_txn uuid := (p_op->>'txn')::uuid;
    v_amount bigint := (p_op->>'amount')::bigint;
    v_metadata jsonb := coalesce(p_op->'metadata', '{}');
    v_now timestamptz;
    v_row record;
BEGIN
    IF p_op->>'op' = 'TRANSFER' THEN
        IF v_key IS NOT NULL AND NOT p_claimed THEN
            SELECT * INTO v_row FROM wallet_transfer(
                p_scope, v_key, v_fingerprint, (p_op->>'fromUserId')::uuid,
                (p_op->>'toUserId')::uuid, p_op->>'assetSlug', v_amount, v_txn, p_principal,
                p_op->>'reference', v_metadata);
        ELSE
            SELECT d.outcome, false AS replayed, true AS fingerprint_matches, d.result
              INTO v_row
              FROM ledger_transfer((p_op->>'fromUserId')::uuid, (p_op->>'toUserId')::uuid,
                                   p_op->>'assetSlug', v_amount, v_txn, p_principal,
                                   p_op->>'reference', v_metadata) d;
            IF p_claimed THEN  -- as wallet_transfer stores it
                PERFORM ledger_store_outcome(p_scope, v_key, v_row.outcome,
                    CASE WHEN v_row.outcome = 'COMPLETED' THEN v_txn END, v_row.result);
            END IF;
        END IF;
        RETURN jsonb_build_object('outcome', v_row.outcome, 'replayed', v_row.replayed,
                                  'fingerprintMatches', v_row.fingerprint_matches,
                                  'result', v_row.result);
    END IF;
    IF v_key IS NOT NULL THEN
        SELECT * INTO v_row FROM wallet_transact(
            p_scope, v_key, v_fingerprint, (p_op->>'userId')::uuid, p_op->>'assetSlug',
            p_op->>'op', v_amount, v_txn, p_principal, p_op->>'reference', v_metadata, p_claimed);
    ELSE
        v_now := clock_timestamp();
        SELECT d.outcome, false AS replayed, true AS fingerprint_matches,
               CASE WHEN d.outcome = 'COMPLETED' THEN v_txn END AS transaction_id,
               d.balance_before, d.balance_after, d.posted_at AS created_at
          INTO v_row
          FROM ledger_post_user(ledger_asset(p_op->>'assetSlug'), (p_op->>'userId')::uuid,
                                p_op->>'op', p_op->>'op' <> 'SPEND', v_amount, v_txn,
                                p_principal, p_op->>'reference', v_metadata, v_now) d;
    END IF;
    RETURN jsonb_build_object('outcome', v_row.outcome, 'replayed', v_row.replayed,
                              'fingerprintMatches', v_row.fingerprint_matches,
                              'transactionId', v_row.transaction_id,
                              'balanceBefore', v_row.balance_before::text,
                              'balanceAfter', v_row.balance_after::text,
                              'createdAt', v_row.created_at);
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_batch_set(p_ops jsonb, p_principal text, p_pins jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
-- An atomic batch without per-operation keys, set-based: one UPDATE of its accounts, one INSERT
-- of its transactions, one of its entries. Every leg is checked on its account's running balance
-- in input order. Answers each operation's result, or NULL, having written nothing, unless every
-- operation succeeds (wallet_batch then runs the batch operation by operation to name the first
-- failure). The caller holds the lock of every account involved: the user wallets and the
-- Treasury shard it pinned per asset (`p_pins`: asset id -> account id). Each operation's instant
-- is a microsecond after the one before it, so that the balance at an entry's instant is the one
-- after that entry, as for postings one by one.
DECLARE
    v_now timestamptz := clock_timestamp();
    v_results jsonb;
    v_accounts bigint[];
BEGIN
    WITH ops AS MATERIALIZED (
        SELECT o.i - 1 AS idx, v_now + (o.i - 1) * interval '1 microsecond' AS at,
               o.v->>'op' AS op, s.id AS asset_id, s.slug,
               (o.v->>'amount')::bigint AS amount, (o.v->>'txn')::uuid AS txn,
               o.v->>'reference' AS reference, coalesce(o.v->'metadata', '{}') AS metadata,
               (coalesce(o.v->>'userId', o.v->>'fromUserId'))::uuid AS user_id,
               (o.v->>'toUserId')::uuid AS to_id,
               (p_pins->>s.id::text)::bigint AS treasury_id
          FROM jsonb_array_elements(p_ops) WITH ORDINALITY o (v, i)
          LEFT JOIN assets s ON s.slug = o.v->>'assetSlug'
    ), legs AS MATERIALIZED (
        -- Every leg in posting order (an operation's user leg, then its Treasury or recipient
        -- leg), with its operation and its account's balance and version after it. Accounts
        -- are read one lookup per leg (LATERAL ... LIMIT 1, and the ids as an array in `moved`):
        -- the planner expects a hundred operations of any batch, and joined a group of eight
        -- to every account of a table of a few thousand.
        SELECT l.*, a.kind, a.held,
               a.balance + sum(l.delta) OVER w AS balance_after,
               a.version + row_number() OVER w AS version_after
          FROM (SELECT o.*, 0 AS leg, a.id AS account_id,
                       CASE WHEN o.op IN ('SPEND', 'TRANSFER') THEN -o.amount ELSE o.amount END
                           AS delta
                  FROM ops o LEFT JOIN LATERAL (
                       SELECT a.id FROM accounts a
                        WHERE a.user_id = o.user_id AND a.asset_id = o.asset_id LIMIT 1) a ON true
                UNION ALL
                SELECT o.*, 1, a.id, o.amount
                  FROM ops o LEFT JOIN LATERAL (
                       SELECT a.id FROM accounts a
                        WHERE a.user_id = o.to_id AND a.asset_id = o.asset_id LIMIT 1) a ON true
                 WHERE o.op = 'TRANSFER'
                UNION ALL
                SELECT o.*, 1, o.treasury_id,
                       CASE WHEN o.op = 'SPEND' THEN o.amount ELSE -o.amount END
                  FROM ops o WHERE o.op <> 'TRANSFER') l
          LEFT JOIN LATERAL (SELECT a.kind, a.held, a.balance, a.version FROM accounts a
                              WHERE a.id = l.account_id LIMIT 1) a ON true
        WINDOW w AS (PARTITION BY l.account_id ORDER BY l.idx, l.leg)
    ), ok AS (
        SELECT NOT EXISTS (
                   SELECT FROM ops o
                    WHERE o.op IS NULL OR o.op NOT IN ('TOPUP', 'BONUS', 'SPEND', 'TRANSFER')
                       OR o.asset_id IS NULL OR o.amount IS NULL OR o.amount <= 0
                       OR o.txn IS NULL OR o.user_id IS NULL
                       OR (o.op = 'TRANSFER' AND (o.to_id IS NULL OR o.to_id = o.user_id)))
           AND NOT EXISTS (
                   SELECT FROM legs l
                    WHERE l.kind IS NULL
                       OR l.balance_after > 9223372036854775807
                       OR l.balance_after < CASE WHEN l.kind = 'USER' THEN l.held
                                                 ELSE -9223372036854775808 END) AS ok
    ), moved AS (
        UPDATE accounts a SET balance = f.balance_after, version = f.version_after
          FROM (SELECT DISTINCT ON (l.account_id) l.account_id, l.balance_after, l.version_after
                  FROM legs l ORDER BY l.account_id, l.idx DESC, l.leg DESC) f, ok
         WHERE ok.ok AND a.id = f.account_id
           AND a.id = ANY (ARRAY(SELECT l.account_id FROM legs l))  -- by key (see legs)
    ), posted AS (
        INSERT INTO transactions (id, type, asset_id, user_id, amount, principal, reference,
                                  metadata, created_at)
        SELECT o.txn, o.op, o.asset_id, o.user_id, o.amount, p_principal, o.reference,
               o.metadata, o.at
          FROM ops o, ok WHERE ok.ok ORDER BY o.idx
    ), written AS (
        INSERT INTO entries (transaction_id, account_id, asset_id, direction, amount,
                             balance_after, account_version, created_at)
        SELECT l.txn, l.account_id, l.asset_id,
               CASE WHEN l.delta > 0 THEN 'CREDIT' ELSE 'DEBIT' END, l.amount, l.balance_after,
               l.version_after, l.at
          FROM legs l, ok WHERE ok.ok ORDER BY l.idx, l.leg
    )
    SELECT CASE WHEN ok.ok THEN r.results END,
           (SELECT array_agg(DISTINCT l.account_id) FROM legs l WHERE l.kind = 'USER')
      INTO v_results, v_accounts
      FROM ok, (
        SELECT jsonb_agg(CASE WHEN x.op = 'TRANSFER' THEN jsonb_build_object(
                   'outcome', 'COMPLETED', 'replayed', false, 'fingerprintMatches', true,
                   'result', ledger_transfer_result(x.txn, x.user_id, x.to_id, x.slug, x.amount,
                       x.balances[1]::bigint, x.balances[2]::bigint, x.reference, x.metadata,
                       x.at))
               ELSE jsonb_build_object(
                   'outcome', 'COMPLETED', 'replayed', false, 'fingerprintMatches', true,
                   'transactionId', x.txn, 'balanceBefore', (x.balances[1] - x.delta)::text,
                   'balanceAfter', x.balances[1]::text, 'createdAt', x.at) END
               ORDER BY x.idx) AS results
          FROM (SELECT l.idx, l.at, l.op, l.txn, l.user_id, l.to_id, l.slug, l.amount,
                       l.reference, l.metadata, (array_agg(l.delta ORDER BY l.leg))[1] AS delta,
                       array_agg(l.balance_after ORDER BY l.leg) AS balances
                  FROM legs l
                 GROUP BY l.idx, l.at, l.op, l.txn, l.user_id, l.to_id, l.slug, l.amount,
                          l.reference, l.metadata) x) r;
    IF v_results IS NOT NULL AND EXISTS (SELECT FROM feed_listeners) THEN
        PERFORM ledger_notify(a) FROM unnest(v_accounts) a;
    END IF;
    RETURN v_results;
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_error_code(p_state text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_state WHEN 'W0001' THEN 'USER_NOT_FOUND' WHEN 'W0002' THEN 'ASSET_NOT_FOUND'
                        ELSE 'INTERNAL_ERROR' END;
$$;
--;
CREATE OR REPLACE FUNCTION ledger_batch_each(
    p_ops jsonb, p_scope text, p_principal text, p_claimed text[] DEFAULT '{}'
) RETURNS jsonb LANGUAGE plpgsql AS $$
-- Each operation alone, in order, under its own key (ledger_batch_op), in the caller's transaction
-- and locks: an unknown user or asset is that operation's ERROR, not the batch's, naming it
-- (`subject`: the id or slug ledger_require_user or ledger_asset could not find), and its key
-- stays free. `p_claimed`: the keys this transaction claimed (ledger_claim_keys), each for one
-- operation (ledger_claimants, ledger_batch_claim).
DECLARE
    v_claims jsonb := ledger_claimants(p_scope, p_ops, p_claimed);
    v_results jsonb[] := '{}';
    v_one jsonb;
    v_op jsonb;
    v_ordinal bigint;
    v_subject text;
BEGIN
    FOR v_op, v_ordinal IN
        SELECT o.v, o.i FROM jsonb_array_elements(p_ops) WITH ORDINALITY o (v, i)
    LOOP
        BEGIN
            v_one := ledger_batch_op(
                v_op, p_scope, p_principal,
                ledger_batch_claim(v_op, v_ordinal::integer, v_claims, p_scope));
        EXCEPTION WHEN SQLSTATE 'W0001' OR SQLSTATE 'W0002' THEN
            GET STACKED DIAGNOSTICS v_subject = PG_EXCEPTION_DETAIL;
            v_one := jsonb_build_object('outcome', 'ERROR', 'code', ledger_error_code(SQLSTATE),
                                        'subject', v_subject);
        END;
        v_results := v_results || v_one;
    END LOOP;
    RETURN to_jsonb(v_results);
END $$;
--;
CREATE OR REPLACE FUNCTION ledger_lock_batch(p_ops jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
-- Take every lock a batch of operations needs, in the one order that keeps concurrent batches
-- (and group commits) from deadlocking: its user wallets in ascending id order, then one
-- Treasury shard per asset. Answers {"pins": {asset id: shard account id}, "opened": [the
-- wallets it opened]}, which the caller closes again if nothing arrives in them
-- (ledger_close_unused).
DECLARE
    v_wallets bigint[];
    v_pins jsonb;
    v_opened jsonb;
BEGIN
    -- Open the credited wallets not open yet (in one global order, so concurrent batches cannot
    -- deadlock on the inserts either; ON CONFLICT settles two opening one at once: the account
    -- shape trigger runs for every row proposed), then lock every wallet of the batch in
    -- ascending id order.
    WITH inserted AS (
        INSERT INTO accounts (asset_id, kind, user_id)
        SELECT DISTINCT s.id, 'USER', u.id
          FROM jsonb_array_elements(p_ops) o
          JOIN assets s ON s.slug = o->>'assetSlug'
          JOIN users u ON u.id = (CASE WHEN o->>'op' = 'TRANSFER' THEN o->>'toUserId'
                                       ELSE o->>'userId' END)::uuid
         WHERE o->>'op' IN ('TOPUP', 'BONUS', 'TRANSFER')
           AND NOT EXISTS (SELECT FROM accounts a WHERE a.user_id = u.id AND a.asset_id = s.id)
         ORDER BY u.id, s.id
        ON CONFLICT (user_id, asset_id) DO NOTHING
        RETURNING id
    )
    SELECT coalesce(jsonb_agg(i.id), '[]') INTO v_opened FROM inserted i;
    -- Each wallet found by its (user, asset) key, one lookup per wallet (LIMIT 1 keeps the
    -- planner from joining the batch to every account: it expects a hundred operations of any
    -- batch, and read all of a few thousand accounts to lock a group's eight), then locked
    -- through the primary key.
    SELECT array_agg(x.id) INTO v_wallets
      FROM (SELECT o->>'assetSlug' AS slug, (o->>'userId')::uuid AS user_id
              FROM jsonb_array_elements(p_ops) o WHERE o->>'op' <> 'TRANSFER'
            UNION SELECT o->>'assetSlug', (o->>'fromUserId')::uuid
              FROM jsonb_array_elements(p_ops) o WHERE o->>'op' = 'TRANSFER'
            UNION SELECT o->>'assetSlug', (o->>'toUserId')::uuid
              FROM jsonb_array_elements(p_ops) o WHERE o->>'op' = 'TRANSFER') w
      JOIN assets s ON s.slug = w.slug
      CROSS JOIN LATERAL (SELECT a.id FROM accounts a
                           WHERE a.user_id = w.user_id AND a.asset_id = s.id LIMIT 1) x;
    PERFORM 1 FROM accounts a WHERE a.id = ANY (v_wallets) ORDER BY a.id FOR UPDATE;
    -- Pin one Treasury shard per asset, locked in asset order: every Treasury move of the batch
    -- lands on it (ledger_treasury_move reads the pins), so concurrent batches take their shard
    -- locks in one order too.
    WITH pick AS MATERIALIZED (
        SELECT s.id, floor(random() * s.treasury_shards)::integer AS shard
          FROM assets s
         WHERE s.slug IN (SELECT o->>'assetSlug' FROM jsonb_array_elements(p_ops) o
                           WHERE o->>'op' <> 'TRANSFER')
    )
    SELECT coalesce(jsonb_object_agg(t.asset_id, t.id), '{}') INTO v_pins
      FROM (SELECT a.id, a.asset_id FROM accounts a JOIN pick ON pick.id = a.asset_id
             WHERE a.kind = 'TREASURY' AND a.shard = pick.shard
             ORDER BY a.asset_id FOR UPDATE OF a) t;
    PERFORM set_config('wallet.treasury_pins', v_pins::text, true);
    RETURN jsonb_build_object('pins', v_pins, 'opened', v_opened);
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_batch(
    p_scope text, p_key text, p_fingerprint bytea, p_atomic boolean, p_ops jsonb,
    p_principal text
) RETURNS TABLE (outcome text, replayed boolean, fingerprint_matches boolean, result jsonb)
LANGUAGE plpgsql AS $$
-- Up to 1,000 TOPUP, BONUS, SPEND and TRANSFER operations in one round trip. The batch's key and
-- its operations' keys are claimed first, in key order (ledger_claim_keys), then every account
-- they touch is locked, in ascending id order, so concurrent batches, groups and requests alone
-- never deadlock. Atomic: all or nothing; the first failure rolls everything back (BATCH_FAILED),
-- the keys it claimed and the wallets it opened for its credits included, and then claims the
-- batch's key again to store the failure; without per-operation keys it is posted set-based
-- (ledger_batch_set). Not atomic: each operation stands alone under its own key.
DECLARE
    v_stored idempotency_keys;
    v_results jsonb[] := '{}';
    v_one jsonb;
    v_index integer := 0;
    v_failure jsonb;
    v_op jsonb;
    v_pins jsonb;
    v_lock jsonb;
    v_set jsonb;
    v_claimed text[];
    v_claims jsonb;
BEGIN
    IF p_atomic THEN
        BEGIN  -- a failure, or a key used before, rolls back to here: nothing is left
            v_claimed := ledger_claim_keys(p_scope, p_ops, p_key, p_fingerprint);
            v_pins := ledger_lock_batch(p_ops)->'pins';  -- its wallets all credited, or rolled back
            IF NOT EXISTS (SELECT FROM jsonb_array_elements(p_ops) o
                            WHERE o->>'key' IS NOT NULL) THEN
                v_set := ledger_batch_set(p_ops, p_principal, v_pins);
            END IF;
            IF v_set IS NULL THEN  -- not set-based: each operation in order
                v_claims := ledger_claimants(p_scope, p_ops, v_claimed);
                FOR v_op IN SELECT * FROM jsonb_array_elements(p_ops) LOOP
                    v_one := ledger_batch_op(v_op, p_scope, p_principal,
                                             ledger_batch_claim(v_op, v_index + 1, v_claims,
                                                                p_scope));
                    IF NOT (v_one->>'fingerprintMatches')::boolean THEN
                        v_failure := jsonb_build_object('index', v_index,
                                                        'code', 'IDEMPOTENCY_KEY_REUSED');
                    ELSIF v_one->>'outcome' <> 'COMPLETED' THEN
                        v_failure := jsonb_build_object('index', v_index,
                                                        'code', v_one->>'outcome');
                    END IF;
                    IF v_failure IS NOT NULL THEN
                        RAISE EXCEPTION 'batch operation % failed', v_index
                            USING ERRCODE = 'W0200';
                    END IF;
                    v_results := v_results || v_one;
                    v_index := v_index + 1;
                END LOOP;
            END IF;
        EXCEPTION
            WHEN SQLSTATE 'W0201' THEN
                NULL;  -- the batch's key was used before: replayed below
            WHEN SQLSTATE 'W0200' THEN
                NULL;  -- v_failure says which; everything the batch did is rolled back
            WHEN SQLSTATE 'W0001' OR SQLSTATE 'W0002' THEN
                v_failure := jsonb_build_object('index', v_index,
                                                'code', ledger_error_code(SQLSTATE));
        END;
        IF v_failure IS NOT NULL THEN
            -- Claim the key again to store the failure. A request under it that waited for this
            -- one may have run meanwhile (this one left nothing): its answer is then replayed.
            v_stored := ledger_claim_key(p_scope, p_key, p_fingerprint);
            IF v_stored.scope IS NULL THEN
                PERFORM ledger_store_outcome(p_scope, p_key, 'BATCH_FAILED', NULL, v_failure);
                RETURN QUERY SELECT 'BATCH_FAILED'::text, false, true, v_failure;
                RETURN;
            END IF;
        ELSIF v_claimed IS NOT NULL THEN
            v_set := coalesce(v_set, to_jsonb(v_results));
            PERFORM ledger_store_outcome(p_scope, p_key, 'COMPLETED', NULL, v_set);
            RETURN QUERY SELECT 'COMPLETED'::text, false, true, v_set;
            RETURN;
        END IF;
    ELSE
        BEGIN  -- a key used before rolls back to here, freeing the operations' keys claimed
            v_claimed := ledger_claim_keys(p_scope, p_ops, p_key, p_fingerprint);
        EXCEPTION WHEN SQLSTATE 'W0201' THEN
            NULL;  -- replayed below
        END;
        IF v_claimed IS NOT NULL THEN
            v_lock := ledger_lock_batch(p_ops);
            v_set := ledger_batch_each(p_ops, p_scope, p_principal, v_claimed);
            PERFORM ledger_close_unused(v_lock->'opened');  -- the refused credits' new wallets
            PERFORM ledger_store_outcome(p_scope, p_key, 'COMPLETED', NULL, v_set);
            RETURN QUERY SELECT 'COMPLETED'::text, false, true, v_set;
            RETURN;
        END IF;
    END IF;
    IF v_stored.scope IS NULL THEN  -- the key was used before this batch
        v_stored := ledger_claim_key(p_scope, p_key, p_fingerprint);
    END IF;
    RETURN QUERY SELECT v_stored.outcome::text, true, v_stored.fingerprint = p_fingerprint,
                        v_stored.result;
END $$;
--;
CREATE OR REPLACE FUNCTION wallet_transact_group(p_scope text, p_ops jsonb, p_principal text)
RETURNS jsonb LANGUAGE plpgsql AS $$
-- Group commit: TOPUP, BONUS and SPEND postings that waited together, each under its own key in
-- `p_scope` (a key appears once), posted in one transaction and one commit. Locks are taken as
-- a posting alone takes them, keys first, then wallets, then the Treasury: every key in key order
-- (no group holds a wallet while it waits for a key; ledger_claim_keys, as a batch claims its
-- operations'), then every wallet in ascending id order and one Treasury shard per asset
-- (ledger_lock_batch). When every key is new and every posting completes, set-based
-- (ledger_batch_set), the keys then left as claimed; otherwise each
-- posting runs alone, in order, as wallet_transact (ledger_batch_each), which decides every
-- other case: a replay, a reused key, a refusal, an unknown user or asset.
-- Answers {"set": whether the set-based path posted, "results": each posting's answer, as
-- ledger_batch_op's}.
DECLARE
    v_claimed text[];
    v_lock jsonb;
    v_results jsonb;
BEGIN
    v_claimed := ledger_claim_keys(p_scope, p_ops);
    v_lock := ledger_lock_batch(p_ops);
    IF cardinality(v_claimed) = jsonb_array_length(p_ops) THEN
        v_results := ledger_batch_set(p_ops, p_principal, v_lock->'pins');  -- NULL: nothing written
        IF v_results IS NOT NULL THEN  -- every key stays as claimed, every wallet credited
            RETURN jsonb_build_object('set', true, 'results', v_results);
        END IF;
    END IF;
    v_results := ledger_batch_each(p_ops, p_scope, p_principal, v_claimed);
    PERFORM ledger_close_unused(v_lock->'opened');  -- the refused credits' new wallets
    RETURN jsonb_build_object('set', false, 'results', v_results);
END $$;
