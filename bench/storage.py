"""How the ledger's tables grow: post N transactions through the real posting function (in the
database, no HTTP), then measure every table and index, per million postings.

Usage: python -m bench.storage [--postings 200000] [--users 1000] [--server-url URL | --private]
(the local PostgreSQL by default, or a private one; a database of its own, dropped afterwards).
docs/scaling.md quotes its output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import asyncpg
from sqlalchemy.engine import make_url

from chaos.standby import Pair
from wallet.cli import _run, migrate
from wallet.seed import seed

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CHUNK = 5_000  # postings per statement

# A realistic mix: keys like a client's UUIDs, a 32-byte fingerprint, a key name as principal;
# TOPUPs and BONUSes of up to 500, SPENDs of up to 100 (a few refused for funds, as in life).
POST_CHUNK = """
SELECT count(*) FILTER (WHERE t.outcome = 'COMPLETED')
FROM generate_series(1, $1) AS g(i)
CROSS JOIN LATERAL (
    SELECT (ARRAY['TOPUP', 'TOPUP', 'BONUS', 'SPEND', 'SPEND'])[1 + floor(random() * 5)::int]
               AS kind,
           1 + floor(random() * $2)::int + 0 * g.i AS n  -- g.i: drawn for every row
) AS k
JOIN bench_users AS u ON u.n = k.n
CROSS JOIN LATERAL wallet_transact(
    'shop-backend', gen_random_uuid()::text, sha256(random()::text::bytea),
    u.id, 'gold_coins', k.kind,
    CASE WHEN k.kind = 'SPEND' THEN 1 + floor(random() * 100)::bigint
         ELSE 1 + floor(random() * 500)::bigint END,
    gen_random_uuid(), 'shop-backend', NULL, '{}'::jsonb
) AS t
"""

SIZES = """
SELECT c.relname AS name, i.indrelid::regclass::text AS of_table,
       pg_relation_size(c.oid) AS bytes, c.relkind::text AS kind
FROM pg_class c
LEFT JOIN pg_index i ON i.indexrelid = c.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')
  AND (c.relname IN ('transactions', 'entries', 'idempotency_keys', 'accounts')
       OR i.indrelid::regclass::text IN ('transactions', 'entries', 'idempotency_keys', 'accounts'))
ORDER BY c.relkind DESC, bytes DESC
"""


async def measure(url: str, postings: int, users: int) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        # Memoize would call the posting function once per (user, kind) and repeat its answer.
        await conn.execute("SET enable_memoize = off")
        await conn.execute(
            "CREATE TEMP TABLE bench_users AS"
            " SELECT row_number() OVER () AS n, id FROM users WHERE false"
        )
        await conn.execute(
            "INSERT INTO users (id, username) SELECT gen_random_uuid(), 'growth-' || g"
            " FROM generate_series(1, $1) g",
            users,
        )
        await conn.execute(
            "INSERT INTO bench_users SELECT row_number() OVER (), id FROM users"
            " WHERE username LIKE 'growth-%'"
        )
        await conn.execute("CREATE INDEX ON bench_users (n)")
        started, completed = time.monotonic(), 0
        wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
        for done in range(0, postings, CHUNK):
            completed += await conn.fetchval(POST_CHUNK, min(CHUNK, postings - done), users)
        seconds = time.monotonic() - started
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before)
        await conn.execute("VACUUM (ANALYZE) transactions, entries, idempotency_keys, accounts")
        total = await conn.fetchval("SELECT count(*) FROM transactions")
        rows = await conn.fetch(SIZES)
    finally:
        await conn.close()
    per_million = 1_000_000 / total
    lines = [
        f"{postings:,} postings ({completed:,} completed, the rest refused for funds and kept as"
        f" stored answers) in {seconds:.0f} s ({postings / seconds:,.0f}/s in one session);"
        f" {total:,} transactions in all",
        "",
        "| relation | of | size | per million postings |",
        "|---|---|---:|---:|",
    ]
    heap = index = 0
    for row in rows:
        name = row["name"] if row["kind"] == "r" else f"`{row['name']}`"
        bytes_ = row["bytes"]
        if row["kind"] == "r":
            heap += bytes_
        else:
            index += bytes_
        lines.append(
            f"| {name} | {row['of_table'] or 'table'} | {bytes_ / 2**20:,.1f} MiB"
            f" | {bytes_ * per_million / 2**20:,.0f} MiB |"
        )
    lines += [
        "",
        f"Tables {heap * per_million / 2**20:,.0f} MiB + indexes {index * per_million / 2**20:,.0f}"
        f" MiB = {(heap + index) * per_million / 2**30:,.2f} GiB per million postings"
        f" ({(heap + index) / total:,.0f} bytes a posting).",
        f"WAL written while posting: {float(wal) / postings:,.0f} bytes a posting"
        f" ({float(wal) * 1_000_000 / postings / 2**30:,.2f} GiB per million: what a replica"
        " streams and an archive keeps; the server's other databases add theirs).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("--postings", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--server-url", default=os.environ.get("BENCH_SERVER_URL", DEFAULT_SERVER))
    parser.add_argument(
        "--private",
        action="store_true",
        help="on a PostgreSQL of its own (chaos.standby), so no one else's WAL is counted",
    )
    args = parser.parse_args(argv)
    if args.private:
        private = Pair(database="postgres", log_statements=False)
        try:
            private.primary.run(
                "initdb", "-D", str(private.primary.datadir), "-U", "postgres", "--auth=trust",
                "--no-sync",
            )  # fmt: skip
            private.primary.start()
            return run(private.primary.url("postgres"), args.postings, args.users)
        finally:
            private.close()
    return run(args.server_url, args.postings, args.users)


def run(server: str, postings: int, users: int) -> int:
    name = f"wallet_growth_{os.getpid()}"
    url = make_url(server).set(database=name).render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        migrate(url)
        _run(url, seed)
        for line in asyncio.run(measure(url, postings, users)):
            print(line)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
