"""The posting logic has one source: a migrated database's functions are wallet/sql/ledger.sql's."""

from __future__ import annotations

import asyncpg

from wallet.sql import LEDGER_SQL, statements


async def _definitions(conn: asyncpg.Connection, schema: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT p.oid::regprocedure::text AS signature, pg_get_functiondef(p.oid) AS body"
        "  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = $1",
        schema,
    )
    return {
        r["signature"].removeprefix(f"{schema}."): r["body"].replace(f"{schema}.", "SCHEMA.")
        for r in rows
    }


async def test_migrated_functions_are_exactly_the_source_file(database_url: str) -> None:
    """Apply the live file into a scratch schema of the migrated database (rolled back after) and
    compare every function's definition, and that neither side has one the other lacks."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    scratch = conn.transaction()
    await scratch.start()
    try:
        await conn.execute("CREATE SCHEMA ledger_source")
        await conn.execute("SET LOCAL search_path = ledger_source, public")
        for statement in statements(LEDGER_SQL.read_text(encoding="utf-8")):
            await conn.execute(statement)
        from_file = await _definitions(conn, "ledger_source")
        migrated = await _definitions(conn, "public")
    finally:
        await scratch.rollback()
        await conn.close()
    assert len(from_file) > 10, "ledger.sql defines the posting functions"
    assert sorted(migrated) == sorted(from_file)
    for signature, body in from_file.items():
        assert migrated[signature] == body, f"{signature} differs from wallet/sql/ledger.sql"
