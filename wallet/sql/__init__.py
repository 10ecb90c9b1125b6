"""The ledger's SQL source (wallet/sql/ledger.sql) and how migrations apply frozen copies of it."""

from __future__ import annotations

from pathlib import Path
from typing import Final

SQL_DIR: Final = Path(__file__).resolve().parent
LEDGER_SQL: Final = SQL_DIR / "ledger.sql"
SEPARATOR: Final = "\n--;\n"


def statements(script: str) -> list[str]:
    """A script's statements: a driver that prepares statements runs one command at a time."""
    return [part.strip() for part in script.split(SEPARATOR) if part.strip()]
