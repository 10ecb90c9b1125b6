"""The bench's own database: created fresh, migrated and seeded by the service's own commands,
then filled in bulk through the ledger function itself, so `wallet audit` holds throughout."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import make_url

from wallet import ledger
from wallet.cli import migrate
from wallet.db.engine import create_engine
from wallet.inputs import TxType
from wallet.seed import seed

PREFIX = "wallet_bench_"
ASSET = "gold_coins"
HOT_ROW_ASSET = "bench_hot_row"  # bench-only: its Treasury is ONE row (treasury_shards = 1)
HOT_WALLET = uuid.UUID("b0000000-0000-4000-8000-00000000beef")
INITIAL_BALANCE = 1_000_000
HOT_WALLET_BALANCE = 10**15  # spend-hot takes 1 a request: it never runs dry
HISTORY_ENTRIES = 20  # graphql-wallet's users hold a full 20-entry ledger page
BATCH = 2_000  # postings per database transaction while seeding, each followed by ANALYZE
SEED_SCOPE = "bench-seed"


def user_id(n: int) -> uuid.UUID:
    """Bench user n (1-based); wrk.lua and the pgbench scripts build the same ids."""
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012x}")


def user_id_sql(variable: str) -> str:
    """The same id in SQL, from a pgbench integer variable."""
    return f"('00000000-0000-4000-8000-' || lpad(to_hex(:{variable}::int), 12, '0'))::uuid"


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def new_database_name() -> str:
    return f"{PREFIX}{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"


async def create_database(server_url: str, name: str) -> str:
    if not name.startswith(PREFIX):
        raise ValueError(f"bench databases are named {PREFIX}*")
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a bench database")
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Posting:
    user: uuid.UUID
    asset: str
    amount: int
    type: TxType
    key: str

    def fingerprint(self) -> bytes:
        """The fingerprint the service would store, so a seed posting replays like any other."""
        request = ledger.TransactRequest(
            user_id=self.user, asset_slug=self.asset, amount=self.amount, type=self.type
        )
        return request.fingerprint()


_BULK_POST = """
SELECT count(*) FILTER (WHERE t.outcome = 'COMPLETED')
  FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::bigint[])
       WITH ORDINALITY AS p(user_id, key, fingerprint, asset, type, amount, n),
       LATERAL wallet_transact($7, p.key, p.fingerprint, p.user_id, p.asset, p.type, p.amount,
                               gen_random_uuid(), $7, NULL, '{}') AS t
"""


async def post_in_bulk(conn: asyncpg.Connection, postings: list[Posting]) -> int:
    """Many postings through wallet_transact, BATCH to a database transaction, each followed by
    ANALYZE. The ledger's guards keep their plans for the session: planned on the nearly empty
    tables of a new database, the check that each new transaction has entries hashes all of
    `entries` at every posting, and the seed slowed down with every batch (40,000 postings took
    388 s; autovacuum would re-plan it, but is off on some servers, this machine's among them)."""
    done = 0
    for start in range(0, len(postings), BATCH):
        batch = postings[start : start + BATCH]
        async with conn.transaction():
            completed = await conn.fetchval(
                _BULK_POST,
                [p.user for p in batch],
                [p.key for p in batch],
                [p.fingerprint() for p in batch],
                [p.asset for p in batch],
                [p.type for p in batch],
                [p.amount for p in batch],
                SEED_SCOPE,
            )
        if completed != len(batch):
            raise RuntimeError(f"seeding: {completed} of {len(batch)} postings completed")
        await conn.execute("ANALYZE")
        done += completed
    return done


@dataclass(frozen=True, slots=True)
class SeedReport:
    users: int
    history_users: int
    postings: int
    seconds: float


async def _ensure_hot_row_asset(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await ledger.ensure_asset(
                conn, slug=HOT_ROW_ASSET, name="Bench: one-row Treasury", shards=1
            )
            await seed(conn)
    finally:
        await engine.dispose()


async def prepare(database_url: str, *, users: int, history_users: int) -> SeedReport:
    """Migrate, seed (the service's own seed), then bench users, balances and history."""
    started = time.monotonic()
    await asyncio.to_thread(migrate, database_url)
    await _ensure_hot_row_asset(database_url)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO users (id, username)"
            " SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,"
            " 'bench_' || i FROM generate_series(1, $1::int) AS i",
            users,
        )
        await conn.execute(
            "INSERT INTO users (id, username) VALUES ($1, 'bench_hot_wallet')", HOT_WALLET
        )
        postings = [
            Posting(user_id(n), ASSET, INITIAL_BALANCE, "TOPUP", f"seed:{ASSET}:{n}")
            for n in range(1, users + 1)
        ]
        postings.append(Posting(HOT_WALLET, ASSET, HOT_WALLET_BALANCE, "TOPUP", "seed:hot"))
        # Every user gets an account in the one-row asset too, so its ceiling posts like gold's.
        postings += [
            Posting(user_id(n), HOT_ROW_ASSET, INITIAL_BALANCE, "TOPUP", f"seed:hot-row:{n}")
            for n in range(1, users + 1)
        ]
        postings += [
            Posting(user_id(n), ASSET, 1, "BONUS", f"seed:history:{n}:{k}")
            for k in range(HISTORY_ENTRIES)
            for n in range(1, history_users + 1)
        ]
        posted = await post_in_bulk(conn, postings)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return SeedReport(users, history_users, posted, time.monotonic() - started)


async def hot_wallet_check(database_url: str) -> dict[str, int | bool]:
    """Zero double spends: the hot wallet's balance is its initial balance minus every SPEND
    the ledger holds for it, and it made exactly one entry (one version) per SPEND."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await conn.fetchrow(
            """
            SELECT acc.balance, acc.version,
                   coalesce(sum(t.amount) FILTER (WHERE t.type = 'SPEND'), 0) AS spent,
                   count(*) FILTER (WHERE t.type = 'SPEND') AS spends,
                   coalesce(sum(t.amount) FILTER (WHERE t.type <> 'SPEND'), 0) AS credited,
                   count(*) AS entries
              FROM accounts acc
              JOIN assets a ON a.id = acc.asset_id AND a.slug = $2
              LEFT JOIN entries e ON e.account_id = acc.id
              LEFT JOIN transactions t ON t.id = e.transaction_id
             WHERE acc.user_id = $1
             GROUP BY acc.balance, acc.version
            """,
            HOT_WALLET,
            ASSET,
        )
    finally:
        await conn.close()
    if row is None:
        raise RuntimeError("the hot wallet has no account")
    spent, balance = int(row["spent"]), int(row["balance"])
    expected = HOT_WALLET_BALANCE - spent
    return {
        "initial": HOT_WALLET_BALANCE,
        "spends": int(row["spends"]),
        "spent": spent,
        "balance": balance,
        "expected_balance": expected,
        "discrepancy": balance - expected,  # > 0 would be a spend that debited nothing
        "version": int(row["version"]),
        "entries": int(row["entries"]),
        "ok": balance == expected
        and int(row["credited"]) == HOT_WALLET_BALANCE
        and row["version"] == row["entries"],
    }


async def maintenance(database_url: str) -> None:
    """Before every measured run, as the reference does: flush dirty pages, tidy the heap."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute("CHECKPOINT")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def server_facts(database_url: str) -> dict[str, str]:
    names = [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "max_connections",
        "max_wal_size",
        "checkpoint_timeout",
        "autovacuum",
        "work_mem",
    ]
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT name, current_setting(name) AS value FROM unnest($1::text[]) AS name", names
        )
    finally:
        await conn.close()
    return {r["name"]: r["value"] for r in rows}


async def clone_database(server_url: str, source: str, name: str) -> str:
    """A copy of the seeded database (CREATE DATABASE ... TEMPLATE: a file copy, seconds)."""
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def load_reference(database_url: str, directory: str) -> None:
    """The reference ceiling's own schema and function (../shared/reference/dbceiling), read
    from where the team keeps them, into a database of their own."""
    from pathlib import Path

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        schema = (Path(directory) / "schema.sql").read_text()
        for statement in schema.split(";"):  # one at a time: it ends with a VACUUM
            if statement.strip():
                await conn.execute(statement)
        await conn.execute((Path(directory) / "functions.sql").read_text())
    finally:
        await conn.close()
