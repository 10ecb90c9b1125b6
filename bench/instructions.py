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

Usage: python -m bench.instructions [--against 0006]   (make bench-instructions)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from alembic import command

from bench import seeding
from chaos.standby import Pair, Server
from wallet.migrations import alembic_config

USERS = 1_000
FEW, MANY = 50, 250

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


def instructions(server: Server, workdir: Path, script: str) -> int:
    """callgrind's instruction total for `postgres --single` running `script` on a copy of the
    server's (stopped) data directory."""
    copy = workdir / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(server.datadir, copy, symlinks=True)
    if server.user:
        subprocess.run(["chown", "-R", server.user, str(copy)], check=True)
    out = workdir / "callgrind.out"
    done = subprocess.run(
        [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            str(server.bindir / "postgres"), "--single", "-D", str(copy), "-F", "wallet",
        ],
        input=script,
        text=True,
        capture_output=True,
        user=server.user,
        check=True,
        timeout=1800,
    )  # fmt: skip
    completed = done.stdout.count('outcome = "COMPLETED"')
    if completed != script.count("\n"):
        raise RuntimeError(f"{completed} TOPUPs completed of {script.count(chr(10))}")
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in {out}")
    shutil.rmtree(copy, ignore_errors=True)
    return int(found[1])


def per_posting(server: Server, workdir: Path) -> int:
    few = instructions(server, workdir, statements(FEW))
    many = instructions(server, workdir, statements(MANY))
    return (many - few) // (MANY - FEW)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--against", default="0006", help="the older revision (default 0006)")
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
        pair.primary.stop()
        head = per_posting(pair.primary, workdir)
        pair.primary.start()
        command.downgrade(alembic_config(url), args.against)
        pair.primary.stop()
        older = per_posting(pair.primary, workdir)
    finally:
        pair.close()
    print(f"PostgreSQL instructions per TOPUP (callgrind, {MANY - FEW} postings, single-user mode)")
    print("| revision | instructions | vs the older |")
    print("|---|---:|---:|")
    print(f"| {args.against} | {older:,} | 1.00 |")
    print(f"| head | {head:,} | {head / older:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
