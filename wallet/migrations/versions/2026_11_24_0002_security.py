"""Security: API keys (hashed), and a service role that can append to the ledger but not rewrite it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

The owner (whoever runs the migrations) keeps every right. The role `wallet_app` gets what the
running service needs and no more: it may INSERT ledger rows but never UPDATE or DELETE them
(the append-only triggers are the second line), and of an API key it may change nothing but the
revocation time. Operators give it to a login role: `CREATE ROLE wallet_service LOGIN PASSWORD '…' IN ROLE
wallet_app;` and point DATABASE_URL at that role.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

API_KEYS = """
CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_api_keys PRIMARY KEY,
    name        text NOT NULL CONSTRAINT uq_api_keys_name UNIQUE
                CONSTRAINT ck_api_keys_name CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    prefix      text NOT NULL CONSTRAINT uq_api_keys_prefix UNIQUE,
    secret_hash bytea NOT NULL,
    scopes      text[] NOT NULL
                CONSTRAINT ck_api_keys_scopes CHECK (scopes <@ ARRAY['read', 'transact', 'admin']),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
)
"""

# Roles are cluster-wide: create it once, whichever database migrates first.
CREATE_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'wallet_app') THEN
        CREATE ROLE wallet_app NOLOGIN;
    END IF;
END $$
"""

GRANTS = [
    "GRANT USAGE ON SCHEMA public TO wallet_app",
    "GRANT SELECT ON assets, alembic_version TO wallet_app",
    # Admins manage keys over HTTP too: create and revoke, never rewrite a secret.
    "GRANT SELECT, INSERT, UPDATE (revoked_at) ON api_keys TO wallet_app",
    "GRANT SELECT, INSERT ON users, transactions, entries TO wallet_app",
    "GRANT SELECT, INSERT, UPDATE ON accounts, idempotency_keys TO wallet_app",
    "GRANT SELECT, INSERT, DELETE ON feed_listeners TO wallet_app",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO wallet_app",
    "GRANT EXECUTE ON FUNCTION"
    " wallet_transact(text, text, bytea, uuid, text, text, bigint, uuid, text) TO wallet_app",
]


def upgrade() -> None:
    op.execute(API_KEYS)
    op.execute(CREATE_ROLE)
    for grant in GRANTS:
        op.execute(grant)


def downgrade() -> None:
    op.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM wallet_app")
    op.execute("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM wallet_app")
    op.execute(
        "REVOKE ALL ON FUNCTION"
        " wallet_transact(text, text, bytea, uuid, text, text, bigint, uuid, text) FROM wallet_app"
    )
    op.execute("REVOKE USAGE ON SCHEMA public FROM wallet_app")
    op.execute("DROP TABLE api_keys")
