"""pgbench scripts made from the service's own statements, and running them.

A captured statement keeps its SQL text; each `$n` becomes a literal, except the request's user
(a random bench user per transaction, `:u`), its Idempotency-Key and its transaction id (fresh
per transaction, as the service sends them). pgbench runs with `-M prepared`, like the service.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench.capture import Statement
from bench.measure import Measurement
from bench.seeding import user_id_sql

_PLACEHOLDER = re.compile(r"\$(\d+)")
_PGBENCH_VARIABLE = re.compile(r"(?<!:):[A-Za-z_]")


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return f"({value})"
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, uuid.UUID | str):
        text = str(value).replace("'", "''")
        if _PGBENCH_VARIABLE.search(text):
            raise ValueError(f"literal {text!r} would read as a pgbench variable")
        return f"'{text}'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def render(
    statement: Statement,
    *,
    random_user: uuid.UUID | None,
    known: frozenset[uuid.UUID],
    key_prefix: str = "capture-",
    second_user: uuid.UUID | None = None,
) -> str:
    """One statement as a pgbench command: the sample user becomes `:u` (in an array too), the
    Idempotency-Key and any UUID the request did not name (the new transaction's id) are fresh
    per transaction, everything else stays as captured."""

    def substitute(match: re.Match[str]) -> str:
        return value_sql(statement.params[int(match.group(1)) - 1])

    def value_sql(value: Any) -> str:
        if isinstance(value, list | tuple):  # an array argument (`= ANY($1::uuid[])`)
            return "ARRAY[" + ", ".join(value_sql(v) for v in value) + "]"
        if random_user is not None and value == random_user:
            return user_id_sql("u")
        if second_user is not None and value == second_user:
            return user_id_sql("v")
        if isinstance(value, str) and value.startswith(key_prefix):
            return "(gen_random_uuid()::text)"
        if isinstance(value, uuid.UUID) and value not in known:
            return "gen_random_uuid()"
        return _literal(value)

    return " ".join(_PLACEHOLDER.sub(substitute, statement.sql).split())


def script(
    statements: Sequence[Statement],
    *,
    random_user: uuid.UUID | None,
    known: frozenset[uuid.UUID],
    users: int,
    replace: tuple[str, str] | None = None,
    second_user: uuid.UUID | None = None,
) -> str:
    """A pgbench script: each statement its own command (autocommit), as the service's pooled
    connections send them; `replace` swaps one name in the SQL (the no-NOTIFY diagnostic)."""
    lines = [f"-- made by bench from {len(statements)} captured statement(s)"]
    if random_user is not None:
        lines.append(f"\\set u random(1, {users})")
    if second_user is not None:  # a second random user, never the first: a transfer's recipient
        lines.append(f"\\set v 1 + (:u + random(0, {users - 2})) % {users}")
    for statement in statements:
        sql = render(statement, random_user=random_user, known=known, second_user=second_user)
        if replace is not None:
            if replace[0] not in sql:
                raise ValueError(f"{replace[0]!r} is not in the captured SQL")
            sql = sql.replace(replace[0], replace[1])
        lines.append(sql + ";")
    return "\n".join(lines) + "\n"


def pgbench_binary() -> str:
    found = shutil.which("pgbench") or "/usr/bin/pgbench"
    if not Path(found).exists():
        raise RuntimeError("pgbench not found: apt-get install postgresql-client")
    return found


def _connection_env(database_url: str) -> tuple[dict[str, str], str]:
    url = make_url(database_url)
    env = {
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "postgres",
    }
    if url.password:
        env["PGPASSWORD"] = url.password
    return env, url.database or "postgres"


def _latencies_ms(log_dir: Path) -> list[float]:
    """Per-transaction latencies from pgbench's -l logs (the third field is microseconds)."""
    found: list[float] = []
    for path in log_dir.glob("pgb*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                found.append(int(fields[2]) / 1000)
    return found


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def run(
    database_url: str,
    script_text: str,
    *,
    name: str,
    clients: int,
    duration_s: int,
    rep: int,
    env: dict[str, str],
) -> Measurement:
    """pgbench -M prepared for `duration_s` seconds; TPS without connection time."""
    conn_env, database = _connection_env(database_url)
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as tmp:
        work = Path(tmp)
        script_path = work / "script.sql"
        script_path.write_text(script_text)
        command = [
            pgbench_binary(),
            "-n",
            "-M",
            "prepared",
            "-T",
            str(duration_s),
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-l",
            "--log-prefix",
            str(work / "pgb"),
            "-f",
            str(script_path),
            database,
        ]
        done = subprocess.run(
            command,
            env={**env, **conn_env},
            capture_output=True,
            text=True,
            cwd=work,
            timeout=duration_s + 120,
            check=False,
        )
        output = done.stdout + done.stderr
        latencies = sorted(_latencies_ms(work))
    tps = _number(r"^tps = ([0-9.]+)", output)
    processed = int(_number(r"number of transactions actually processed: (\d+)", output))
    failed = int(_number(r"number of failed transactions: (\d+)", output))
    aborted = len(re.findall(r"client \d+ aborted", output))
    if done.returncode not in (0, 2) or (tps == 0 and processed == 0):
        raise RuntimeError(f"pgbench {name} c={clients} failed:\n{output[-2000:]}")
    return Measurement(
        name=name,
        kind="ceiling",
        clients=clients,
        rep=rep,
        duration_s=float(duration_s),
        requests=processed + failed,
        ok=processed,
        errors=failed + aborted,
        tps=tps,
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
        mean_ms=statistics.fmean(latencies) if latencies else 0.0,
    )


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
