"""A document the schema accepted before is run past Strawberry's view and pipeline
(`WalletGraphQL.known`, `WalletSchema.execute_known`): its answer is the full pipeline's, byte
for byte; anything that pipeline must decide still goes through it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.factories import Factory, in_process_resources
from wallet.auth import ANONYMOUS
from wallet.graphql_app import WalletGraphQL, graphql_routes
from wallet.settings import Settings

WALLET = """query W($id: UUID!) { wallet(userId: $id) { username
  balances { asset { slug name decimals } amount }
  ledger(first: 20) { edges { cursor node { direction amount balanceAfter createdAt
    transaction { id type } } } pageInfo { hasNextPage endCursor } } } }"""
SHAPES = """query S($id: UUID!) { wallet(userId: $id) { __typename
  coins: balances { ...B kind: __typename } gold: balance(assetSlug: "gold_coins") { amount } } }
  fragment B on Balance { asset { slug } amount }"""
PAGE = """query P($id: UUID!, $n: Int!) {
  wallet(userId: $id) { ledger(first: $n) { edges { cursor } } } }"""
TRANSACT = """mutation T($input: TransactInput!) { transact(input: $input) { __typename
  ... on TransactSuccess { replayed balance { amount } }
  ... on InsufficientFunds { requested balance { amount } }
  ... on InvalidInput { field } ... on Error { code message } } }"""
TWO = "query A { assets { slug } } query B($id: UUID!) { wallet(userId: $id) { username } }"
SUBSCRIBE = "subscription S($id: UUID!) { balanceChanged(userId: $id) { amount } }"
INTROSPECT = "{ __schema { queryType { name } } }"


@dataclass
class App:
    client: httpx.AsyncClient
    view: WalletGraphQL

    async def twice(self, body: Any, again: Any = None, **kwargs: Any) -> tuple[int, int]:
        """Sends `body`, then `again` (or `body` once more); both answers must be the same.
        Returns how many times each of the two went the known way (0 or 1 each)."""
        runs = []
        answers = []
        for sent in (body, body if again is None else again):
            before = self.view.schema.known_runs
            answer = await self.client.post("/graphql", json=sent, **kwargs)
            runs.append(self.view.schema.known_runs - before)
            answers.append((answer.status_code, answer.headers.get("content-type"), answer.content))
        assert answers[0] == answers[1], body
        return runs[0], runs[1]


async def _app(engine: AsyncEngine, settings: Settings) -> AsyncIterator[App]:
    resources = in_process_resources(settings, engine)
    route = graphql_routes(settings)[0]
    assert isinstance(route, Route)
    view = route.app
    assert isinstance(view, WalletGraphQL)
    routes = Starlette(routes=[route])

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        # What the lifespan and the gateway give a request: one id, so answers can match.
        scope["state"] = {"resources": resources, "principal": ANONYMOUS, "request_id": "r-1"}
        await routes(scope, receive, send)

    transport = httpx.ASGITransport(app=with_state)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield App(client, view)


@pytest.fixture
async def app(engine: AsyncEngine) -> AsyncIterator[App]:
    async for made in _app(engine, Settings(env="production")):
        yield made


def _transact(user: uuid.UUID, amount: Any, kind: str = "SPEND") -> dict[str, Any]:
    return {
        "query": TRANSACT,
        "variables": {
            "input": {
                "userId": str(user),
                "amount": amount,
                "assetSlug": "gold_coins",
                "type": kind,
                "idempotencyKey": str(uuid.uuid4()),
            }
        },
    }


async def test_an_accepted_document_answers_the_same_the_second_time(
    app: App, factory: Factory
) -> None:
    """Data, a null, variables graphql-core refuses, a resolver's error with its path, a
    mutation's refusal and invalid input: the first goes the full way, the second the known."""
    user = await factory.user(gold=5)
    await factory.user(gold=1)
    unknown = str(uuid.uuid4())
    # (body, expected): the first of a document goes the full way, the next ones known.
    cases: list[tuple[Any, tuple[int, int]]] = [
        ({"query": WALLET, "variables": {"id": str(user)}}, (0, 1)),
        ({"query": WALLET, "variables": {"id": unknown}}, (1, 1)),  # a null
        ({"query": SHAPES, "variables": {"id": str(user)}}, (0, 1)),
        ({"query": TWO, "variables": {"id": str(user)}, "operationName": "B"}, (0, 1)),
        ({"query": PAGE, "variables": {"id": str(user), "n": 0}}, (0, 1)),  # a resolver's error
    ]
    for body, expected in cases:
        assert await app.twice(body) == expected, body
    # Variables graphql-core refuses: the document was accepted above, so both go known.
    for variables in ({"id": "not-a-uuid"}, {}, {"id": str(user), "n": "x"}, None):
        assert await app.twice({"query": PAGE, "variables": variables}) == (1, 1), variables
    # Refused, then invalid: each under a key of its own, so the answers can match.
    assert await app.twice(_transact(user, "9"), _transact(user, "9")) == (0, 1)
    assert await app.twice(_transact(user, "-1"), _transact(user, "-1")) == (1, 1)
    assert await factory.balance(user) == 5


async def test_a_mutation_the_known_way_posts_once_and_answers_as_the_full_way(
    app: App, factory: Factory
) -> None:
    user = await factory.user(gold=5)
    full = await app.client.post("/graphql", json=_transact(user, "2"))
    before = app.view.schema.known_runs
    known = await app.client.post("/graphql", json=_transact(user, "2"))
    assert app.view.schema.known_runs == before + 1
    assert full.json()["data"]["transact"] == {
        "__typename": "TransactSuccess",
        "replayed": False,
        "balance": {"amount": "3"},
    }
    assert known.json()["data"]["transact"]["balance"] == {"amount": "1"}
    refused = await app.client.post("/graphql", json=_transact(user, "2"))
    assert refused.json()["data"]["transact"]["__typename"] == "InsufficientFunds"
    replay = _transact(user, "1")
    answers = [(await app.client.post("/graphql", json=replay)).json() for _ in range(2)]
    assert answers[1]["data"]["transact"]["replayed"] is True
    assert await factory.balance(user) == 0


async def test_what_the_full_pipeline_decides_never_goes_the_known_way(
    app: App, factory: Factory
) -> None:
    """Refused documents, a subscription over POST, an operation to pick or not found, the
    disabled introspection, operation extensions, another content type: the same answer
    twice, both from the full pipeline."""
    user = str(await factory.user(gold=5))
    assert await app.twice({"query": TWO, "variables": {"id": user}, "operationName": "B"}) == (
        0,
        1,
    )
    bodies: list[Any] = [
        {"query": TWO, "variables": {"id": user}},  # several operations, none named
        {"query": TWO, "variables": {"id": user}, "operationName": "C"},
        {"query": SUBSCRIBE, "variables": {"id": user}},
        {"query": INTROSPECT},
        {"query": "{ wallet(userId: 1) { nope } }"},
        {"query": "{ assets { slug } "},
        {"query": WALLET, "variables": {"id": user}, "extensions": {"trace": True}},
        {"query": WALLET, "variables": {"id": user}, "operationName": 7},
        {"query": WALLET, "variables": [user]},
        {"query": None},
        [{"query": WALLET, "variables": {"id": user}}],
    ]
    for body in bodies:
        assert await app.twice(body) == (0, 0), body
    # The request with extensions ran WALLET the full way, which accepted the document.
    assert await app.twice({"query": WALLET, "variables": {"id": user}}) == (1, 1)
    # Strawberry's content-type check is its own (case-sensitive, a substring): only the exact
    # application/json goes the known way; anything else gets Strawberry's answer.
    body = json.dumps({"query": WALLET, "variables": {"id": user}}).encode()
    for content_type, status, runs in [
        ("application/json; charset=utf-8", 200, (1, 1)),
        ("APPLICATION/JSON", 400, (0, 0)),
        ("Application/Json", 400, (0, 0)),
        ("application/graphql+json", 400, (0, 0)),
        ("text/plain", 400, (0, 0)),
    ]:
        answers, counted = [], []
        for _ in range(2):
            before = app.view.schema.known_runs
            answer = await app.client.post(
                "/graphql", content=body, headers={"content-type": content_type}
            )
            counted.append(app.view.schema.known_runs - before)
            answers.append((answer.status_code, answer.content))
        assert answers[0] == answers[1], content_type
        assert (answers[0][0], tuple(counted)) == (status, runs), content_type
