"""The GraphQL surface: schema contract, queries, every transact result, races, protections."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Factory, in_process_resources
from tests.graphql_client import count_statements, gql, transact
from wallet.auth import ANONYMOUS
from wallet.resolvers.context import build_context
from wallet.schema.build import build_schema
from wallet.seed import ALICE
from wallet.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

WALLET = """
query Wallet($id: UUID!, $first: Int, $after: String, $slug: String, $type: TransactionType) {
  wallet(userId: $id) {
    userId username
    balances { asset { slug name decimals } amount }
    gold: balance(assetSlug: "gold_coins") { amount }
    ledger(first: $first, after: $after, assetSlug: $slug, type: $type) {
      edges { cursor node { id direction amount balanceAfter createdAt
                            asset { slug } transaction { id type amount asset { slug } } } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""


def test_schema_matches_the_committed_sdl() -> None:
    """schema.graphql is the contract clients build against; regenerate it with `make schema`."""
    committed = (ROOT / "schema.graphql").read_text()
    assert build_schema(Settings()).as_str() + "\n" == committed


async def test_wallet_query_with_balances_and_ledger(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=40, diamonds=3)
    await factory.transact(user, 15, "SPEND")
    body = await gql(client, WALLET, {"id": str(user), "first": 10})
    wallet = body["data"]["wallet"]
    assert wallet["userId"] == str(user)
    assert wallet["balances"] == [
        {"asset": {"slug": "diamonds", "name": "Diamonds", "decimals": 0}, "amount": "3"},
        {"asset": {"slug": "gold_coins", "name": "Gold Coins", "decimals": 0}, "amount": "25"},
    ]
    assert wallet["gold"] == {"amount": "25"}
    nodes = [e["node"] for e in wallet["ledger"]["edges"]]
    assert [(n["direction"], n["amount"], n["balanceAfter"]) for n in nodes] == [
        ("DEBIT", "15", "25"),
        ("CREDIT", "3", "3"),
        ("CREDIT", "40", "40"),
    ]
    assert nodes[0]["transaction"]["type"] == "SPEND"
    assert nodes[0]["transaction"]["asset"] == {"slug": "gold_coins"}
    assert wallet["ledger"]["pageInfo"] == {
        "hasNextPage": False,
        "endCursor": wallet["ledger"]["edges"][-1]["cursor"],
    }


async def test_unknown_wallet_is_null_and_other_roots(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    body = await gql(client, WALLET, {"id": str(uuid.uuid4())})
    assert body == {"data": {"wallet": None}}
    assets = await gql(client, "{ assets { slug name decimals } }")
    slugs = [a["slug"] for a in assets["data"]["assets"]]
    assert {"gold_coins", "diamonds"} <= set(slugs)
    user = await factory.user(gold=9)
    outcome = await factory.transact(user, 4, "SPEND")
    found = await gql(
        client,
        "query T($id: UUID!) { transaction(id: $id) { id type amount asset { slug } } }",
        {"id": str(outcome.transaction_id)},
    )
    assert found["data"]["transaction"] == {
        "id": str(outcome.transaction_id),
        "type": "SPEND",
        "amount": "4",
        "asset": {"slug": "gold_coins"},
    }
    missing = await gql(
        client, "query T($id: UUID!) { transaction(id: $id) { id } }", {"id": str(uuid.uuid4())}
    )
    assert missing == {"data": {"transaction": None}}


async def test_ledger_pagination_edges(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user()
    empty = await gql(client, WALLET, {"id": str(user)})
    assert empty["data"]["wallet"]["ledger"] == {
        "edges": [],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    }
    for amount in range(1, 8):
        await factory.transact(user, amount, "TOPUP")
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        body = await gql(client, WALLET, {"id": str(user), "first": 3, "after": after})
        ledger = body["data"]["wallet"]["ledger"]
        seen += [e["node"]["amount"] for e in ledger["edges"]]
        pages += 1
        if not ledger["pageInfo"]["hasNextPage"]:
            assert len(ledger["edges"]) == 1  # 7 entries: 3 + 3 + 1, the last page is short
            break
        after = ledger["pageInfo"]["endCursor"]
    assert pages == 3
    assert seen == [str(a) for a in range(7, 0, -1)]
    only_spends = await gql(client, WALLET, {"id": str(user), "type": "SPEND"})
    assert only_spends["data"]["wallet"]["ledger"]["edges"] == []
    for first in (0, 101):
        bad = await gql(client, WALLET, {"id": str(user), "first": first})
        assert bad["errors"][0]["extensions"]["code"] == "VALIDATION_ERROR"
    forged = await gql(client, WALLET, {"id": str(user), "after": "not-a-cursor"})
    assert forged["errors"][0]["extensions"]["code"] == "VALIDATION_ERROR"


async def test_every_transact_result_member(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user(gold=10)
    ok = await transact(client, user, "7", "SPEND", key="k-success-" + str(user))
    assert ok["__typename"] == "TransactSuccess"
    assert ok["replayed"] is False
    assert ok["balance"] == {"asset": {"slug": "gold_coins"}, "amount": "3"}
    assert ok["transaction"]["type"] == "SPEND"
    assert ok["transaction"]["amount"] == "7"
    again = await transact(client, user, 7, "SPEND", key="k-success-" + str(user))
    assert again["replayed"] is True
    assert again["transaction"] == ok["transaction"]

    poor = await transact(client, user, 50, "SPEND")
    assert poor == {
        "__typename": "InsufficientFunds",
        "code": "INSUFFICIENT_FUNDS",
        "message": "Insufficient funds: the balance is 3, the SPEND needs 50.",
        "balance": {"asset": {"slug": "gold_coins"}, "amount": "3"},
        "requested": "50",
    }
    nobody = await transact(client, uuid.uuid4(), 1, "TOPUP")
    assert (nobody["__typename"], nobody["code"]) == ("NotFound", "USER_NOT_FOUND")
    no_asset = await transact(client, user, 1, "TOPUP", slug="rubies")
    assert (no_asset["__typename"], no_asset["code"]) == ("NotFound", "ASSET_NOT_FOUND")
    for amount, key, field in [
        (0, None, "amount"),
        (9007199254740992, None, "amount"),
        (-3, None, "amount"),
        (1, "", "idempotencyKey"),
        (1, "x" * 256, "idempotencyKey"),
        (1, "caf\u00e9", "idempotencyKey"),
    ]:
        invalid = await transact(client, user, amount, "TOPUP", key=key)
        assert invalid["__typename"] == "InvalidInput", (amount, key)
        assert (invalid["code"], invalid["field"]) == ("VALIDATION_ERROR", field)
    reused = await transact(client, user, 8, "SPEND", key="k-success-" + str(user))
    assert reused["__typename"] == "IdempotencyKeyReused"
    assert reused["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert reused["originalTransactionId"] == ok["transaction"]["id"]
    assert await factory.balance(user) == 3


async def test_amount_that_is_not_a_number_is_a_request_error(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    for amount in ("1.5", "abc", " 5", True, 1.5):
        body = await gql(
            client,
            "mutation T($input: TransactInput!) { transact(input: $input) { __typename } }",
            {
                "input": {
                    "userId": str(user),
                    "amount": amount,
                    "assetSlug": "gold_coins",
                    "type": "TOPUP",
                    "idempotencyKey": str(uuid.uuid4()),
                }
            },
        )
        assert body["data"] is None
        assert "Amount" in body["errors"][0]["message"]
    assert await factory.balance(user) == 10


async def test_rest_and_graphql_share_one_idempotency_core(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=20)
    key = f"shared-{uuid.uuid4()}"
    rest = await client.post(
        "/api/wallet/transact",
        json={"userId": str(user), "amount": 6, "assetSlug": "gold_coins", "type": "SPEND"},
        headers={"Idempotency-Key": key},
    )
    assert rest.status_code == 200
    replay = await transact(client, user, "6", "SPEND", key=key)
    assert replay["replayed"] is True
    assert replay["transaction"]["id"] == rest.json()["data"]["transactionId"]
    assert await factory.balance(user) == 14


async def test_concurrent_spends_through_graphql(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    results = await asyncio.gather(*(transact(client, user, 7, "SPEND") for _ in range(50)))
    assert Counter(r["__typename"] for r in results) == {
        "TransactSuccess": 14,
        "InsufficientFunds": 36,
    }
    assert await factory.balance(user) == 2


async def test_same_key_at_once_through_graphql(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    key = f"dup-{uuid.uuid4()}"
    results = await asyncio.gather(*(transact(client, user, 9, key=key) for _ in range(20)))
    assert {r["transaction"]["id"] for r in results} == {results[0]["transaction"]["id"]}
    assert Counter(r["replayed"] for r in results) == {True: 19, False: 1}
    assert await factory.balance(user) == 91


async def test_wallet_query_costs_a_constant_number_of_statements(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=1000, diamonds=5)
    for _ in range(60):
        await factory.transact(user, 1, "SPEND")
    small = await count_statements(engine, WALLET, {"id": str(user), "first": 5})
    large = await count_statements(engine, WALLET, {"id": str(user), "first": 50})
    assert large == small
    assert large <= 3  # the wallet (its user and balances), the page, the assets of the page


async def test_several_wallets_in_one_query_are_batched(
    engine: AsyncEngine, factory: Factory
) -> None:
    users = [await factory.user(gold=5) for _ in range(4)]
    fields = " ".join(
        f'w{i}: wallet(userId: "{u}") {{ username balances {{ amount }} }}'
        for i, u in enumerate(users)
    )
    assert await count_statements(engine, "{ " + fields + " }", {}) == 1  # users with balances


async def test_query_limits(client: httpx.AsyncClient) -> None:
    aliases = " ".join(f"a{i}: assets {{ slug }}" for i in range(25))
    too_many = await gql(client, "{ " + aliases + " }")
    assert "aliases" in too_many["errors"][0]["message"]
    huge = "{ " + " ".join("assets { slug name decimals }" for _ in range(600)) + " }"
    tokens = await gql(client, huge)
    assert "token" in tokens["errors"][0]["message"].lower()


async def test_depth_limit() -> None:
    schema = build_schema(Settings(graphql_max_depth=3))
    result = await schema.execute(
        f'{{ wallet(userId: "{ALICE}") {{ ledger {{ edges {{ node {{ id }} }} }} }} }}'
    )
    assert result.errors is not None
    assert "exceeds maximum operation depth" in result.errors[0].message


async def test_queries_are_post_only_and_errors_are_json(client: httpx.AsyncClient) -> None:
    get = await client.get("/graphql", params={"query": "{ assets { slug } }"})
    assert get.status_code in (400, 405)
    assert get.headers["content-type"].startswith("application/json")
    assert get.json()["errors"][0]["extensions"]["code"]
    broken = await client.post(
        "/graphql", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.headers["content-type"].startswith("application/json")
    big = await client.post("/graphql", content=b"x" * (65 * 1024))  # refused by the gateway
    assert big.status_code == 413
    assert big.json() == {
        "errors": [
            {
                "message": "The request body is larger than 65536 bytes.",
                "extensions": {"code": "PAYLOAD_TOO_LARGE"},
            }
        ]
    }


async def test_graphiql_page_is_served_in_development(client: httpx.AsyncClient) -> None:
    page = await client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/graphql/assets/graphiql.js" in sources
    assert all(s.startswith("/graphql/assets/") for s in sources), sources  # nothing remote
    for name in ("react.js", "react-dom.js", "graphiql.js", "graphiql.css"):
        asset = await client.get(f"/graphql/assets/{name}")
        assert asset.status_code == 200, name
    assert (await client.get("/graphql/assets/evil.js")).status_code == 404
    # The page takes a document to show from its URL (`q`), newlines and tabs included.
    linked = await client.get("/graphql?q=%7B%0A%09assets%20%7B%20slug%20%7D%0A%7D")
    assert linked.status_code == 200
    assert linked.headers["content-type"].startswith("text/html")


async def test_graphiql_can_be_switched_off() -> None:
    from wallet.graphql_app import graphql_routes

    off = graphql_routes(Settings(graphiql=False))
    prod = graphql_routes(Settings(env="production"))
    for routes in (off, prod):
        assert all("assets" not in getattr(r, "path", "") for r in routes)


async def test_unexpected_errors_are_masked(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wallet.resolvers import wallet as resolvers

    async def broken(*_: object) -> None:
        raise RuntimeError("secret detail: password=hunter2")

    monkeypatch.setattr(resolvers, "assets", broken)
    settings = Settings(database_url="postgresql://unused")
    resources = in_process_resources(settings, engine)
    context = build_context(resources, principal=ANONYMOUS, request_id="req-123")
    result = await build_schema(settings).execute("{ assets { slug } }", context_value=context)
    assert result.errors is not None
    error = result.errors[0]
    assert error.message == "Unexpected error (request id req-123)."
    assert error.extensions == {"code": "INTERNAL_ERROR", "requestId": "req-123"}
    assert "hunter2" not in str(error.formatted)


async def test_cors_allows_only_configured_origins(database_url: str) -> None:
    from wallet.app import create_app

    app = create_app(Settings(database_url=database_url, cors_origins="https://app.example.com"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        headers = {"access-control-request-method": "POST"}
        allowed = await c.options(
            "/graphql", headers={**headers, "origin": "https://app.example.com"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        denied = await c.options("/graphql", headers={**headers, "origin": "https://evil.test"})
        assert "access-control-allow-origin" not in denied.headers
