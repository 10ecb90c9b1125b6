"""The floor: the leanest sane app on the service's own stack, to measure the service against.

uvicorn, Starlette, an asyncpg pool of the service's size and orjson; two routes with the
service's own SQL (its balance query and its posting function) and nothing else: no auth, no
middleware, no validation beyond what the SQL needs. `make bench` serves it beside the service
with the same worker count and reports service / floor per scenario.

    python -m bench.floor --port 3100 --workers 2   (DATABASE_URL names the database)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# The service's balance query (wallet/ledger/balances.py) and posting call (wallet_transact).
BALANCE_SQL = (
    "SELECT a.id, a.balance, a.held, s.slug, s.name, s.decimals FROM accounts a"
    " JOIN assets s ON s.id = a.asset_id WHERE a.user_id = $1 AND a.kind = 'USER'"
    " ORDER BY s.slug"
)
TRANSACT_SQL = (
    "SELECT outcome, transaction_id, balance_before, balance_after, created_at"
    " FROM wallet_transact($1, $2, $3, $4, $5, $6, $7, $8, $1, NULL, '{}')"
)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def create_app(dsn: str, pool_size: int) -> Starlette:
    pool: asyncpg.Pool | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal pool
        pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
        yield
        await pool.close()

    async def balance(request: Request) -> Response:
        assert pool is not None
        rows = await pool.fetch(BALANCE_SQL, uuid.UUID(request.path_params["userId"]))
        return _json(
            {
                "success": True,
                "data": [
                    {
                        "id": r["id"],
                        "slug": r["slug"],
                        "name": r["name"],
                        "balance": str(r["balance"]),
                        "available": str(r["balance"] - r["held"]),
                        "held": str(r["held"]),
                        "decimals": r["decimals"],
                    }
                    for r in rows
                ],
            }
        )

    async def transact(request: Request) -> Response:
        assert pool is not None
        raw = await request.body()
        body = orjson.loads(raw)
        fingerprint = hashlib.sha256(raw).digest()
        row = await pool.fetchrow(
            TRANSACT_SQL,
            "floor",
            request.headers["idempotency-key"],
            fingerprint,
            uuid.UUID(body["userId"]),
            body["assetSlug"],
            body["type"],
            int(body["amount"]),
            uuid.uuid4(),
        )
        assert row is not None
        if row["outcome"] != "COMPLETED":
            return _json({"success": False, "code": row["outcome"]}, 422)
        return _json(
            {
                "success": True,
                "data": {
                    "transactionId": str(row["transaction_id"]),
                    "status": "COMPLETED",
                    "balanceBefore": str(row["balance_before"]),
                    "balanceAfter": str(row["balance_after"]),
                    "createdAt": row["created_at"].isoformat(),
                },
            }
        )

    return Starlette(
        routes=[
            Route("/api/wallet/balance/{userId}", balance, methods=["GET"]),
            Route("/api/wallet/transact", transact, methods=["POST"]),
            Route("/readyz", lambda request: _json({"success": True}), methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def app_from_environment() -> Starlette:
    """uvicorn's factory for each worker process."""
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    return create_app(dsn, int(os.environ.get("WALLET_POOL_SIZE", "8")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(
        "bench.floor:app_from_environment",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
