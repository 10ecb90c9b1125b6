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
from websockets.typing import Subprotocol

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


async def gql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


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
