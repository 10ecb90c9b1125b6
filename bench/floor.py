"""The floor: the leanest sane app on the service's own stack, to measure the service against.

uvicorn, Starlette, an asyncpg pool of the service's size and orjson; two routes with the
service's own SQL (its balance query and its posting function) and nothing else: no auth, no
middleware, no validation beyond what the SQL needs. `make bench` serves it beside the service
with the same worker count and reports service / floor per scenario.

Its `/graphql` is the same for GraphQL: Strawberry with its parser and validation caches,
answering the bench's wallet query (a wallet's balances and a 20-entry ledger page) with two
statements, the wallet's and its page's (the service reads both in one), and its transact
mutation with the same posting call as the
floor's REST route, and nothing else: what any Strawberry service pays for those operations.

    python -m bench.floor --port 3100 --workers 2   (DATABASE_URL names the database)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import strawberry
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache

from wallet.ledger.balances import WALLET_BY_ID_SQL
from wallet.ledger.common import encode_cursor
from wallet.ledger.history import HistoryFilter, history_statement

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


@strawberry.type
class FloorAsset:
    slug: str
    name: str
    decimals: int


@strawberry.type
class FloorBalance:
    asset: FloorAsset
    amount: str


@strawberry.type
class FloorTransaction:
    id: uuid.UUID
    type: str


@strawberry.type
class FloorEntry:
    direction: str
    amount: str
    balance_after: str
    created_at: datetime
    transaction: FloorTransaction


@strawberry.type
class FloorEdge:
    cursor: str
    node: FloorEntry


@strawberry.type
class FloorPageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class FloorLedger:
    edges: list[FloorEdge]
    page_info: FloorPageInfo


@strawberry.type
class FloorWallet:
    user_id: strawberry.Private[uuid.UUID]
    username: str
    balances: list[FloorBalance]  # read with the user, in the service's one statement

    @strawberry.field
    async def ledger(self, info: strawberry.Info, first: int = 20) -> FloorLedger:
        statement, args = history_statement(
            self.user_id, limit=first, before=None, filters=HistoryFilter()
        )
        rows = await info.context["pool"].fetch(statement, *args)
        edges = [
            FloorEdge(
                cursor=encode_cursor(r["id"]),
                node=FloorEntry(
                    direction=r["direction"],
                    amount=str(r["amount"]),
                    balance_after=str(r["balance_after"]),
                    created_at=r["created_at"],
                    transaction=FloorTransaction(id=r["transaction_id"], type=r["type"]),
                ),
            )
            for r in rows[:first]
        ]
        end = edges[-1].cursor if len(rows) > first and edges else None
        return FloorLedger(
            edges=edges, page_info=FloorPageInfo(has_next_page=end is not None, end_cursor=end)
        )


@strawberry.type
class FloorQuery:
    @strawberry.field
    async def wallet(self, info: strawberry.Info, user_id: uuid.UUID) -> FloorWallet | None:
        rows = await info.context["pool"].fetch(WALLET_BY_ID_SQL, user_id)
        if not rows:
            return None
        balances = [
            FloorBalance(
                asset=FloorAsset(slug=r["slug"], name=r["name"], decimals=r["decimals"]),
                amount=str(r["balance"]),
            )
            for r in rows
            if r["id"] is not None
        ]
        return FloorWallet(user_id=user_id, username=rows[0]["username"], balances=balances)


@strawberry.input
class TransactInput:
    user_id: uuid.UUID
    amount: str
    asset_slug: str
    type: str
    idempotency_key: str


@strawberry.type
class FloorPosted:
    id: uuid.UUID
    created_at: datetime


@strawberry.type
class FloorAmount:
    amount: str


@strawberry.type
class TransactSuccess:
    replayed: bool
    transaction: FloorPosted
    balance: FloorAmount


@strawberry.interface
class Error:
    code: str
    message: str


@strawberry.type
class Refused(Error):
    pass


@strawberry.type
class FloorMutation:
    @strawberry.mutation
    async def transact(
        self, info: strawberry.Info, input: TransactInput
    ) -> TransactSuccess | Refused:
        row = await info.context["pool"].fetchrow(
            TRANSACT_SQL,
            "floor",
            input.idempotency_key,
            hashlib.sha256(input.idempotency_key.encode()).digest(),
            input.user_id,
            input.asset_slug,
            input.type,
            int(input.amount),
            uuid.uuid4(),
        )
        if row["outcome"] != "COMPLETED":
            return Refused(code=row["outcome"], message="refused")
        return TransactSuccess(
            replayed=False,
            transaction=FloorPosted(id=row["transaction_id"], created_at=row["created_at"]),
            balance=FloorAmount(amount=str(row["balance_after"])),
        )


class FloorGraphQL(GraphQL[dict[str, Any], None]):
    def __init__(self, get_pool: Callable[[], asyncpg.Pool]) -> None:
        schema = strawberry.Schema(
            query=FloorQuery, mutation=FloorMutation, extensions=[ParserCache, ValidationCache]
        )
        super().__init__(schema)
        self.get_pool = get_pool

    async def get_context(self, request: Any, response: Any) -> dict[str, Any]:
        return {"pool": self.get_pool()}

    def encode_json(self, data: object) -> str:
        return orjson.dumps(data).decode()


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

    def current_pool() -> asyncpg.Pool:
        assert pool is not None
        return pool

    return Starlette(
        routes=[
            Route("/graphql", FloorGraphQL(current_pool), methods=["POST"]),
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
