"""The backup drill (`make backup-drill`): pg_dump under write load, restore, and prove it.

1. A fresh database, migrated and seeded, behind `wallet serve --workers 2`; writers post TOPUPs
   and SPENDs over HTTP and note the moment each one was acknowledged.
2. Mid-load, a transaction exports its snapshot and `pg_dump --snapshot` dumps exactly that
   snapshot while the writers go on (the dump is consistent: one snapshot for every table).
3. The dump is restored into a new database; `wallet audit` must pass on it; every transaction
   acknowledged before the snapshot was taken must be in it, and nothing the snapshot did not
   hold; a request acknowledged before the dump, sent again to a server on the restored
   database, is replayed from its idempotency key rather than posted twice.

Usage: python -m chaos.backup_drill [--server-url URL] [--seconds S] [--keep]
The server defaults to DRILL_SERVER_URL, else the local PostgreSQL on 127.0.0.1:5432; pg_dump
and pg_restore come from PG_BINDIR or PATH and must be at least the server's version.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from chaos.service import Service
from wallet.cli import _run, migrate
from wallet.seed import seed

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
WRITERS = 8
USERS = 20


@dataclass(frozen=True)
class Ack:
    transaction_id: uuid.UUID
    at: float  # time.monotonic() when the answer arrived
    key: str
    body: dict[str, object]


@dataclass
class Load:
    acks: list[Ack] = field(default_factory=list)
    refused: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def tool(name: str) -> str:
    bindir = os.environ.get("PG_BINDIR")
    found = str(Path(bindir) / name) if bindir else shutil.which(name)
    if not found:
        raise SystemExit(f"backup drill: {name} not found (set PG_BINDIR)")
    return found


async def admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def writer(
    client: httpx.AsyncClient, users: list[str], load: Load, rng: random.Random
) -> None:
    while not load.stop.is_set():
        kind = rng.choice(("TOPUP", "TOPUP", "SPEND"))
        body: dict[str, object] = {
            "userId": rng.choice(users),
            "amount": rng.randint(1, 40),
            "assetSlug": "gold_coins",
            "type": kind,
        }
        key = f"drill-{uuid.uuid4()}"
        answer = await client.post(
            "/api/wallet/transact", json=body, headers={"idempotency-key": key}
        )
        if answer.status_code == 200:
            tx = uuid.UUID(answer.json()["data"]["transactionId"])
            load.acks.append(Ack(tx, time.monotonic(), key, body))
        elif answer.status_code == 422:
            load.refused += 1
        else:
            raise RuntimeError(f"the service answered {answer.status_code}: {answer.text[:200]}")


async def make_users(client: httpx.AsyncClient) -> list[str]:
    users = []
    for i in range(USERS):
        answer = await client.post(
            "/api/users", json={"username": f"drill-{i}-{uuid.uuid4().hex[:6]}"}
        )
        answer.raise_for_status()
        users.append(answer.json()["data"]["id"])
    return users


async def drill(server_url: str, *, seconds: float, keep: bool, work: Path) -> list[str]:
    stamp = f"{os.getpid()}_{int(time.time())}"
    source_name, restored_name = f"wallet_drill_{stamp}", f"wallet_drill_{stamp}_restored"
    source, restored = (
        with_database(server_url, source_name),
        with_database(server_url, restored_name),
    )
    report: list[str] = []
    await admin(server_url, f'CREATE DATABASE "{source_name}"')
    try:
        await asyncio.to_thread(migrate, source)
        await asyncio.to_thread(_run, source, seed)
        service = Service(source, log_file=work / "serve.log", workers=2)
        await service.start()
        load = Load()
        try:
            async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
                users = await make_users(client)
                rng = random.Random(12)
                writers = [
                    asyncio.create_task(writer(client, users, load, random.Random(rng.random())))
                    for _ in range(WRITERS)
                ]
                await asyncio.sleep(seconds / 2)  # load before the snapshot...
                dump, snapshot_at, in_snapshot, dump_s = await dump_under_load(source, work, load)
                await asyncio.sleep(seconds / 2)  # ...and after it
                load.stop.set()
                await asyncio.gather(*writers)
        finally:
            await service.terminate()
        before = [a for a in load.acks if a.at < snapshot_at]
        after = [a for a in load.acks if a.at >= snapshot_at]
        report.append(
            f"load: {len(load.acks)} postings acknowledged ({len(before)} before the snapshot,"
            f" {len(after)} after), {load.refused} refused for funds"
        )
        report.append(f"dump: {dump.stat().st_size / 1e6:.2f} MB in {dump_s:.2f} s, under load")

        await admin(server_url, f'CREATE DATABASE "{restored_name}"')
        started = time.monotonic()
        restore = await asyncio.to_thread(
            subprocess.run,
            [
                tool("pg_restore"),
                "--exit-on-error",
                "--no-owner",
                "-j",
                "2",
                "-d",
                restored,
                str(dump),
            ],
            capture_output=True,
            text=True,
        )
        if restore.returncode != 0:
            raise AssertionError(f"pg_restore failed:\n{restore.stderr[-2000:]}")
        report.append(f"restore: {time.monotonic() - started:.2f} s into {restored_name}")
        audit = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "wallet.cli", "audit"],
            env={**os.environ, "DATABASE_URL": restored, "WALLET_MIGRATE_DATABASE_URL": restored},
            capture_output=True,
            text=True,
        )
        if audit.returncode != 0:
            raise AssertionError(f"wallet audit failed on the restored database:\n{audit.stdout}")
        report.append("audit: every invariant holds on the restored database")

        conn = await asyncpg.connect(restored)
        try:
            present = {
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM transactions WHERE id = ANY($1::uuid[])",
                    [a.transaction_id for a in load.acks],
                )
            }
            restored_ids = {r["id"] for r in await conn.fetch("SELECT id FROM transactions")}
        finally:
            await conn.close()
        lost = [a for a in before if a.transaction_id not in present]
        if lost:
            raise AssertionError(f"{len(lost)} postings acknowledged before the snapshot are lost")
        if restored_ids != in_snapshot:
            raise AssertionError("the restored transactions are not exactly the snapshot's")
        report.append(
            f"acknowledged before the snapshot: {len(before)}/{len(before)} restored;"
            f" the restore holds exactly the snapshot's {len(in_snapshot)} transactions"
        )
        replayed = await replay_on_restored(restored, work, before)
        report.append(f"replay: {replayed}")
    finally:
        if not keep:
            for name in (restored_name, source_name):
                await admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return report


async def dump_under_load(
    source: str, work: Path, load: Load
) -> tuple[Path, float, set[uuid.UUID], float]:
    """pg_dump of one exported snapshot, taken while the writers run. Returns the dump, the
    moment just before the snapshot was taken, the snapshot's transaction ids, the dump's time."""
    holder = await asyncpg.connect(source)
    try:
        await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot_at = time.monotonic()  # every answer before this moment was committed before
        snapshot = await holder.fetchval("SELECT pg_export_snapshot()")
        in_snapshot = {r["id"] for r in await holder.fetch("SELECT id FROM transactions")}
        dump = work / "wallet.dump"
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            tool("pg_dump"),
            "--format=custom",
            f"--snapshot={snapshot}",
            f"--file={dump}",
            source,
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {errors.decode()[:500]}")
        await holder.execute("COMMIT")
        if not any(a.at >= started for a in load.acks):
            raise AssertionError("no posting was acknowledged during the dump: not under load")
        return dump, snapshot_at, in_snapshot, time.monotonic() - started
    finally:
        await holder.close()


async def replay_on_restored(restored: str, work: Path, before: list[Ack]) -> str:
    """A request acknowledged before the dump, sent again to the restored database's server."""
    sample = before[len(before) // 2]
    service = Service(restored, log_file=work / "serve-restored.log")
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
            answer = await client.post(
                "/api/wallet/transact", json=sample.body, headers={"idempotency-key": sample.key}
            )
    finally:
        await service.terminate()
    if answer.headers.get("idempotent-replayed") != "true":
        raise AssertionError(f"a restored key did not replay: {answer.status_code} {answer.text}")
    if uuid.UUID(answer.json()["data"]["transactionId"]) != sample.transaction_id:
        raise AssertionError("a restored key replayed another transaction")
    return "a request acknowledged before the dump, sent again after the restore, is replayed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.backup_drill", description=__doc__)
    parser.add_argument("--server-url", default=os.environ.get("DRILL_SERVER_URL", DEFAULT_SERVER))
    parser.add_argument("--seconds", type=float, default=6.0, help="of write load in all")
    parser.add_argument("--keep", action="store_true", help="keep both databases")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wallet-drill-") as work:
        try:
            lines = asyncio.run(
                drill(args.server_url, seconds=args.seconds, keep=args.keep, work=Path(work))
            )
        except AssertionError as failure:
            print(f"backup drill FAILED: {failure}", file=sys.stderr)
            return 1
    for line in lines:
        print(line)
    print("backup drill passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
