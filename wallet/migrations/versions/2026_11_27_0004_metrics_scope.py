"""API keys may carry the `metrics` scope (GET /metrics once credentials are configured).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Only widens ck_api_keys_scopes. The downgrade narrows it back, and fails while a key still
holds the scope: revoke or recreate such keys first.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _scopes_check(scopes: str) -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_scopes")
    op.execute(
        f"ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_scopes CHECK (scopes <@ ARRAY[{scopes}])"
    )


def upgrade() -> None:
    _scopes_check("'read', 'transact', 'admin', 'metrics'")


def downgrade() -> None:
    _scopes_check("'read', 'transact', 'admin'")
