"""History reads with and without the read replica, on one machine: what the read-your-writes
rule costs, and how many reads the replica takes while writes go on.

A private primary and a streaming standby (chaos.standby), `wallet serve --workers 2` on the
primary, then wrk on one wallet's history page for each case: no replica; the replica, no
writes; the replica, with a writer posting TOPUPs all along. Prints a Markdown table.

Usage: python -m bench.replica [--seconds 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from chaos.service import Service
from chaos.standby import Pair
from wallet.cli import _run, migrate
from wallet.seed import seed

ALICE = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def wrk(url: str, *, seconds: float, connections: int) -> tuple[float, str, str]:
    """Requests per second, p50 and p99 of wrk on `url`."""
    tool = shutil.which("wrk")
    if tool is None:
        raise SystemExit("wrk not found (Debian's package wrk)")
    out = subprocess.run(
        [tool, "-t2", f"-c{connections}", f"-d{round(seconds)}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = re.search(r"\s50%\s+(\S+)", out)[1]  # type: ignore[index]
    p99 = re.search(r"\s99%\s+(\S+)", out)[1]  # type: ignore[index]
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rate, p50, p99


def replica_reads(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "wallet_replica_reads_total":
                key = f"{s.labels['target']}:{s.labels['reason']}"
                found[key] = found.get(key, 0) + s.value
    return found


async def writer(base: str, stop: asyncio.Event) -> int:
    posted = 0
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while not stop.is_set():
            answer = await client.post(
                "/api/wallet/transact",
                json={"userId": ALICE, "amount": 1, "assetSlug": "gold_coins", "type": "TOPUP"},
                headers={"idempotency-key": str(uuid.uuid4())},
            )
            answer.raise_for_status()
            posted += 1
    return posted


async def case(
    pair: Pair, work: Path, *, replica: bool, writes: bool, seconds: float, connections: int
) -> str:
    env = {"DATABASE_READ_URL": pair.standby_url} if replica else {}
    service = Service(pair.primary_url, log_file=work / "serve.log", workers=2, env=env)
    await service.start()
    try:
        before = replica_reads(service.base_url)
        stop = asyncio.Event()
        posting = asyncio.create_task(writer(service.base_url, stop)) if writes else None
        url = f"{service.base_url}/api/wallet/transactions/{ALICE}?limit=20"
        rate, p50, p99 = await asyncio.to_thread(wrk, url, seconds=seconds, connections=connections)
        stop.set()
        posted = await posting if posting is not None else 0
        after = replica_reads(service.base_url)
    finally:
        await service.terminate()
    routed = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    total = sum(routed.values()) or 1
    on_replica = routed.get("replica:caught_up", 0) / total
    label = ("replica" if replica else "primary only") + (", writes" if writes else "")
    share = f"{on_replica:.0%}" if replica else "-"
    return f"| {label} | {rate:,.0f} | {p50} | {p99} | {share} | {posted / seconds:,.0f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replica", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    pair = Pair(log_statements=False)
    try:
        pair.start_primary()
        migrate(pair.primary_url)
        _run(pair.primary_url, seed)
        pair.start_standby()
        rows = [
            "| reads of a history page | reads/s | p50 | p99 | on the replica | postings/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        with tempfile.TemporaryDirectory(prefix="wallet-bench-replica-") as work:
            for replica, writes in ((False, False), (True, False), (False, True), (True, True)):
                rows.append(
                    asyncio.run(
                        case(
                            pair,
                            Path(work),
                            replica=replica,
                            writes=writes,
                            seconds=args.seconds,
                            connections=args.connections,
                        )
                    )
                )
    finally:
        pair.close()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
