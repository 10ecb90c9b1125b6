"""Instructions PostgreSQL executes for one TOPUP, counted by callgrind, at the newest migration
and at an older one: a measure of the posting SQL's cost that the machine's neighbours do not
move (pgbench's ceilings do; the same count repeats to a few hundred instructions in a million).

A private server from Debian's binaries (chaos.standby.Server) is migrated and seeded the bench's
way (1,000 users, each with a first TOPUP). Its data directory is then copied, and
`postgres --single` runs the service's own TOPUP statement with literal values, 50 and then 250
times, under `valgrind --tool=callgrind`; (instructions(250) - instructions(50)) / 200 is one
posting without start-up. The older revision is measured on the same data after
`alembic downgrade`. Single-user mode parses and plans the outer SELECT at every statement (the
service prepares it once per connection): the same for both revisions, so the difference is the
posting's own.

A TOPUP in a group is counted the same way: groups of 8 TOPUPs to distinct users, each one call
of `wallet_transact_group` as group commit makes it (10 and then 50 groups), divided by the 320
postings between them. A revision older than group commit (migration 0008) has no such row.

With `--breakdown`, what the posting's guards cost and what the team's reference posting
(../shared/reference/dbceiling, `wallet_sharded_fn.sql`: its `wallet_spend` on its own schema,
in a database of its own on the same server) costs, counted the same way: a TOPUP at the newest
migration, then again after dropping, one after the other, the balanced checks (the statement
triggers on transactions and entries), the two foreign keys a TOPUP checks (its key's
transaction, its transaction's user) and the held check on accounts. The guards are dropped on
that private server only.

Usage: python -m bench.instructions [--against 0006 | --breakdown]   (make bench-instructions)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg
from alembic import command

from bench import seeding
from bench.cli import REFERENCE_DIR
from chaos.standby import Pair, Server
from wallet.migrations import alembic_config

USERS = 1_000
FEW, MANY = 50, 250
GROUP = 8  # TOPUPs per grouped call, as group commit makes them at 32 clients
FEW_GROUPS, MANY_GROUPS = 10, 50

# wallet.ledger.postings' statement, with the values the service binds written in.
TOPUP = (
    "SELECT outcome, replayed, fingerprint_matches, transaction_id, balance_before,"
    " balance_after, created_at FROM wallet_transact('', '{key}', '\\x{fingerprint}'::bytea,"
    " '{user}'::uuid, 'gold_coins', 'TOPUP', 1, '{txn}'::uuid, '', NULL, '{{}}'::jsonb)"
)


def statements(count: int, seed: int = 7) -> str:
    """`count` TOPUPs of one coin to random bench users, one per line (single-user mode's
    statement separator), the same for every revision."""
    draw = random.Random(seed)
    lines = []
    for _ in range(count):
        lines.append(
            TOPUP.format(
                key=uuid.UUID(int=draw.getrandbits(128)),
                fingerprint=draw.randbytes(32).hex(),
                user=seeding.user_id(draw.randint(1, USERS)),
                txn=uuid.UUID(int=draw.getrandbits(128), version=4),
            )
        )
    return "\n".join(lines) + "\n"


def group_statements(count: int, seed: int = 11) -> str:
    """`count` calls of `wallet_transact_group`, each with GROUP TOPUPs of one coin to distinct
    random bench users, as `ledger.transact_group_pg` sends them."""
    draw = random.Random(seed)
    lines = []
    for _ in range(count):
        operations: list[dict[str, object]] = [
            {
                "op": "TOPUP",
                "assetSlug": "gold_coins",
                "amount": 1,
                "reference": None,
                "metadata": {},
                "txn": str(uuid.UUID(int=draw.getrandbits(128), version=4)),
                "key": str(uuid.UUID(int=draw.getrandbits(128))),
                "fingerprint": draw.randbytes(32).hex(),
                "userId": str(seeding.user_id(n)),
            }
            for n in draw.sample(range(1, USERS + 1), GROUP)
        ]
        lines.append(f"SELECT wallet_transact_group('', '{json.dumps(operations)}'::jsonb, '')")
    return "\n".join(lines) + "\n"


# The guards, dropped one after the other by --breakdown: what each costs a TOPUP.
GUARDS: list[tuple[str, str]] = [
    (
        "without the balanced checks",
        "DROP TRIGGER trg_transactions_balanced ON transactions;"
        " DROP TRIGGER trg_entries_balanced ON entries",
    ),
    (
        "without those and the two foreign keys",
        "ALTER TABLE idempotency_keys"
        " DROP CONSTRAINT fk_idempotency_keys_transaction_id_transactions;"
        " ALTER TABLE transactions DROP CONSTRAINT fk_transactions_user_id_users",
    ),
    ("without any guard (also the held check)", "DROP TRIGGER trg_accounts_held ON accounts"),
]
REFERENCE_DATABASE = "reference"


def reference_statements(count: int, seed: int = 13) -> str:
    """`count` calls of the reference's posting as its wallet_sharded_fn.sql makes them: a
    random one of its 10,000 users, a random one of 64 Treasury rows, a new key."""
    draw = random.Random(seed)
    return "".join(
        f"SELECT wallet_spend({draw.randint(1001, 11000)}, {draw.randint(0, 63)},"
        f" '{uuid.UUID(int=draw.getrandbits(128), version=4)}') AS txn\n"
        for _ in range(count)
    )


def instructions(
    server: Server,
    workdir: Path,
    script: str,
    *,
    completed: int,
    sets: int = 0,
    database: str = "wallet",
) -> int:
    """callgrind's instruction total for `postgres --single` running `script` on a copy of the
    server's (stopped) data directory; `completed` postings must say COMPLETED (in the
    reference's database: must name their transaction), and `sets` groups must have been
    posted set-based (not each alone)."""
    copy = workdir / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(server.datadir, copy, symlinks=True)
    if server.user:
        subprocess.run(["chown", "-R", server.user, str(copy)], check=True)
    out = workdir / "callgrind.out"
    done = subprocess.run(
        [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            str(server.bindir / "postgres"), "--single", "-D", str(copy), "-F", database,
        ],
        input=script,
        text=True,
        capture_output=True,
        user=server.user,
        check=True,
        timeout=1800,
    )  # fmt: skip
    # A TOPUP alone prints `outcome = "COMPLETED"`; a group, its jsonb `"outcome": "COMPLETED"`;
    # the reference's posting, `txn = "<its id>"`.
    done_pattern = (
        r'txn = "\d+"' if database == REFERENCE_DATABASE else (r'outcome"?\s*[=:]\s*\\?"COMPLETED')
    )
    found_completed = len(re.findall(done_pattern, done.stdout))
    if found_completed != completed:
        raise RuntimeError(f"{found_completed} TOPUPs completed of {completed}")
    if done.stdout.count('"set": true') != sets:
        raise RuntimeError(f"{sets} groups expected set-based: {done.stdout[-2000:]}")
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in {out}")
    shutil.rmtree(copy, ignore_errors=True)
    return int(found[1])


def per_posting(server: Server, workdir: Path) -> int:
    few = instructions(server, workdir, statements(FEW), completed=FEW)
    many = instructions(server, workdir, statements(MANY), completed=MANY)
    return (many - few) // (MANY - FEW)


def per_reference_posting(server: Server, workdir: Path) -> int:
    few, many = (
        instructions(
            server, workdir, reference_statements(n), completed=n, database=REFERENCE_DATABASE
        )
        for n in (FEW, MANY)
    )
    return (many - few) // (MANY - FEW)


def per_grouped_posting(server: Server, workdir: Path) -> int:
    few, many = (
        instructions(
            server, workdir, group_statements(groups), completed=groups * GROUP, sets=groups
        )
        for groups in (FEW_GROUPS, MANY_GROUPS)
    )
    return (many - few) // ((MANY_GROUPS - FEW_GROUPS) * GROUP)


async def _has_group_commit(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT to_regproc('wallet_transact_group') IS NOT NULL"))
    finally:
        await conn.close()


def measure(pair: Pair, workdir: Path) -> tuple[int, int | None]:
    """Per TOPUP alone and per TOPUP in a group (None before group commit), at the primary's
    revision; the primary is running before and after."""
    grouped = asyncio.run(_has_group_commit(pair.primary_url))
    pair.primary.stop()
    alone = per_posting(pair.primary, workdir)
    in_group = per_grouped_posting(pair.primary, workdir) if grouped else None
    pair.primary.start()
    return alone, in_group


async def _load_reference(url: str) -> None:
    """The reference's schema and posting, in a database of their own beside `url`'s."""
    conn = await asyncpg.connect(seeding.with_database(url, "postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{REFERENCE_DATABASE}"')
    finally:
        await conn.close()
    await seeding.load_reference(seeding.with_database(url, REFERENCE_DATABASE), str(REFERENCE_DIR))


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def breakdown(pair: Pair, workdir: Path) -> list[tuple[str, int]]:
    """A TOPUP at head, the reference's posting, then a TOPUP without each guard in turn."""
    asyncio.run(_load_reference(pair.primary_url))
    pair.primary.stop()
    rows = [
        ("a TOPUP (head)", per_posting(pair.primary, workdir)),
        ("the reference posting", per_reference_posting(pair.primary, workdir)),
    ]
    for name, sql in GUARDS:
        pair.primary.start()
        asyncio.run(_execute(pair.primary_url, sql))
        pair.primary.stop()
        rows.append((f"a TOPUP {name}", per_posting(pair.primary, workdir)))
    pair.primary.start()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--against", default="0006", help="the older revision (default 0006)")
    parser.add_argument(
        "--breakdown", action="store_true", help="what the guards and the reference cost"
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian's package valgrind)")
    pair = Pair("wallet", log_statements=False)
    workdir = Path(tempfile.mkdtemp(prefix="wallet-instructions-", dir=pair.base))
    if pair.primary.user:
        shutil.chown(workdir, pair.primary.user, pair.primary.user)
    url = pair.primary_url.replace("postgresql://", "postgresql+asyncpg://")
    try:
        pair.start_primary()
        asyncio.run(seeding.prepare(url, users=USERS, history_users=0))
        if args.breakdown:
            rows = breakdown(pair, workdir)
            print("PostgreSQL instructions per posting (callgrind, single-user mode)")
            print("| posting | instructions | the reference / it |")
            print("|---|---:|---:|")
            for name, count in rows:
                print(f"| {name} | {count:,} | {rows[1][1] / count:.2f} |")
            return 0
        head = measure(pair, workdir)
        command.downgrade(alembic_config(url), args.against)
        older = measure(pair, workdir)
    finally:
        pair.close()
    print(
        f"PostgreSQL instructions per TOPUP (callgrind, single-user mode): alone ({MANY - FEW}"
        f" postings) and in groups of {GROUP} ({(MANY_GROUPS - FEW_GROUPS) * GROUP} postings)"
    )
    print("| revision | alone | vs the older | in a group | vs alone |")
    print("|---|---:|---:|---:|---:|")
    for name, (alone, in_group) in ((args.against, older), ("head", head)):
        grouped = f"{in_group:,} | {in_group / alone:.2f}" if in_group else "— | —"
        print(f"| {name} | {alone:,} | {alone / older[0]:.2f} | {grouped} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
