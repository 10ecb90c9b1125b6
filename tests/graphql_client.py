"""Small clients for the GraphQL surface: HTTP POST and graphql-transport-ws subscriptions."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import websockets
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.typing import Subprotocol

from tests.factories import in_process_resources
from wallet.auth import ANONYMOUS
from wallet.resolvers.context import build_context
from wallet.schema.build import build_schema
from wallet.settings import Settings

PROTOCOLS = [Subprotocol("graphql-transport-ws")]

TRANSACT = """
mutation Transact($input: TransactInput!) {
  transact(input: $input) {
    __typename
    ... on TransactSuccess {
      replayed
      transaction { id type amount createdAt asset { slug name decimals } }
      balance { asset { slug } amount }
    }
    ... on Error { code message }
    ... on InsufficientFunds { balance { asset { slug } amount } requested }
    ... on InvalidInput { field }
    ... on IdempotencyKeyReused { originalTransactionId }
  }
}
"""


BALANCE = "asset { slug } amount held available"
TRANSACTION = "id type amount reference metadata reason principal reverses { id }"
_MEMBER_FIELDS = {
    "InsufficientFunds": f"balance {{ {BALANCE} }} requested available",
    "InvalidInput": "field",
    "IdempotencyKeyReused": "originalTransactionId",
    "ReversalExceedsOriginal": "remainingReversible",
    "HoldNotActive": "status",
    "BatchFailed": "index operationCode",
}


def failures(*members: str) -> str:
    """`code message` of every Error, plus the fields of those `members` (of the union) add."""
    spreads = [f"... on {m} {{ {_MEMBER_FIELDS[m]} }}" for m in members]
    return "\n".join(["... on Error { code message }", *spreads])


TRANSFER = f"""
mutation Transfer($input: TransferInput!) {{
  transfer(input: $input) {{
    __typename
    ... on TransferSuccess {{
      replayed transaction {{ {TRANSACTION} }} from {{ {BALANCE} }} to {{ {BALANCE} }}
    }}
    {failures("InsufficientFunds", "InvalidInput", "IdempotencyKeyReused")}
  }}
}}
"""
_REVERSE_FAILURES = failures(
    "InsufficientFunds", "InvalidInput", "IdempotencyKeyReused", "ReversalExceedsOriginal"
)
REVERSE = f"""
mutation Reverse($input: ReverseInput!) {{
  reverse(input: $input) {{
    __typename
    ... on ReverseSuccess {{
      replayed remainingReversible transaction {{ {TRANSACTION} }}
      reverses {{ id reversedAmount reversals {{ id }} }}
    }}
    {_REVERSE_FAILURES}
  }}
}}
"""
HOLD = (
    "id status amount capturedAmount expiresAt userId user { userId } asset { slug }"
    " reference metadata createdAt transaction { id type amount }"
)
HOLD_RESULT = f"""
    __typename
    ... on HoldSuccess {{ replayed hold {{ {HOLD} }} balance {{ {BALANCE} }} }}
    {failures("InsufficientFunds", "InvalidInput", "IdempotencyKeyReused", "HoldNotActive")}
"""
CREATE_HOLD = f"""
mutation Hold($input: CreateHoldInput!) {{ createHold(input: $input) {{ {HOLD_RESULT} }} }}
"""
CAPTURE_HOLD = f"""
mutation Capture($input: CaptureHoldInput!) {{ captureHold(input: $input) {{ {HOLD_RESULT} }} }}
"""
VOID_HOLD = f"""
mutation Void($input: VoidHoldInput!) {{ voidHold(input: $input) {{ {HOLD_RESULT} }} }}
"""
BATCH = f"""
mutation Batch($input: TransactBatchInput!) {{
  transactBatch(input: $input) {{
    __typename
    ... on BatchSuccess {{
      replayed
      results {{
        __typename
        ... on TransactSuccess {{
          replayed transaction {{ {TRANSACTION} }} balance {{ {BALANCE} }}
        }}
        ... on TransferSuccess {{
          replayed transaction {{ {TRANSACTION} }} from {{ {BALANCE} }} to {{ {BALANCE} }}
        }}
        {failures("InsufficientFunds", "IdempotencyKeyReused")}
      }}
    }}
    {failures("BatchFailed", "InvalidInput", "IdempotencyKeyReused")}
  }}
}}
"""
CREATE_ASSET = f"""
mutation Asset($input: CreateAssetInput!) {{
  createAsset(input: $input) {{
    __typename
    ... on CreateAssetSuccess {{ created asset {{ slug name decimals }} }}
    {failures("InvalidInput")}
  }}
}}
"""


async def gql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


async def mutate(
    client: httpx.AsyncClient,
    query: str,
    input: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run a one-field mutation with `$input`; its result (the union member), never errors."""
    body = await gql(client, query, {"input": input}, headers=headers)
    assert "errors" not in body, body
    (result,) = body["data"].values()
    assert isinstance(result, dict)
    return result


async def transact(
    client: httpx.AsyncClient,
    user: uuid.UUID,
    amount: int | str,
    kind: str = "SPEND",
    *,
    key: str | None = None,
    slug: str = "gold_coins",
) -> dict[str, Any]:
    variables = {
        "input": {
            "userId": str(user),
            "amount": amount,
            "assetSlug": slug,
            "type": kind,
            "idempotencyKey": str(uuid.uuid4()) if key is None else key,
        }
    }
    body = await gql(client, TRANSACT, variables)
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["transact"]
    return result


class Subscription:
    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket

    async def next(self, wait: float = 10) -> dict[str, Any]:
        """The next `next` payload (skipping pings)."""
        while True:
            message = json.loads(await asyncio.wait_for(self.socket.recv(), wait))
            if message["type"] == "ping":
                await self.socket.send(json.dumps({"type": "pong"}))
                continue
            assert message["type"] == "next", message
            payload: dict[str, Any] = message["payload"]
            return payload

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await self.next(wait=seconds)
        except TimeoutError:
            return True
        return False


@asynccontextmanager
async def subscribe(
    base_url: str, query: str, variables: dict[str, Any]
) -> AsyncIterator[Subscription]:
    url = base_url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(url, subprotocols=PROTOCOLS) as socket:
        await socket.send(json.dumps({"type": "connection_init"}))
        ack = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        await socket.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": query, "variables": variables},
                }
            )
        )
        yield Subscription(socket)


async def count_statements(engine: AsyncEngine, query: str, variables: dict[str, Any]) -> int:
    """Run one operation in process and count the SQL statements it sends: SQLAlchemy's own,
    and the fixed SQL the ledger runs on the asyncpg connection underneath (seen by asyncpg's
    query logger, which also sees BEGIN and COMMIT: those carry no arguments and do not count)."""
    settings = Settings(database_url="postgresql://unused")
    resources = in_process_resources(settings, engine)
    count = 0

    def tally(*_: object) -> None:
        nonlocal count
        count += 1

    def on_driver(record: Any) -> None:
        if record.args:
            tally()

    def on_checkout(_dbapi: object, record: Any, _proxy: object) -> None:
        record.driver_connection.add_query_logger(on_driver)

    def on_checkin(_dbapi: object, record: Any) -> None:
        if record.driver_connection is not None:
            record.driver_connection.remove_query_logger(on_driver)

    hooks: list[tuple[Any, str, Any]] = [
        (engine.sync_engine, "before_cursor_execute", tally),
        (engine.sync_engine.pool, "checkout", on_checkout),
        (engine.sync_engine.pool, "checkin", on_checkin),
    ]
    for target, name, fn in hooks:
        event.listen(target, name, fn)
    try:
        result = await build_schema(settings).execute(
            query,
            variable_values=variables,
            context_value=build_context(resources, principal=ANONYMOUS),
        )
    finally:
        for target, name, fn in hooks:
            event.remove(target, name, fn)
    assert result.errors is None, result.errors
    return count
