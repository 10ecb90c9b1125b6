"""REST and GraphQL agree: dates are written alike, UUIDs are read alike, an end user sees the
same `principal` on both, and may read its own transactions (and cannot tell another's from
one that does not exist)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import create_database, drop_database, start_server
from tests.factories import Factory
from tests.graphql_client import TRANSACT, gql, transact
from tests.test_auth import SECRET, token
from wallet import auth
from wallet.cli import _run, migrate
from wallet.seed import ALICE, BOB, seed

LEDGER = """
query Ledger($id: UUID!) {
  wallet(userId: $id) {
    ledger(first: 100) { edges { node { createdAt transaction { id principal createdAt } } } }
  }
}
"""
TRANSACTION = "query T($id: UUID!) { transaction(id: $id) { id type amount principal } }"


async def test_dates_are_written_as_rest_writes_them(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=20)
    spent = await transact(client, user, 3)
    assert spent["transaction"]["createdAt"].endswith("Z")
    rest = (await client.get(f"/api/wallet/transactions/{user}")).json()["data"]
    body = await gql(client, LEDGER, {"id": str(user)})
    nodes = [e["node"] for e in body["data"]["wallet"]["ledger"]["edges"]]
    assert [n["createdAt"] for n in nodes] == [item["createdAt"] for item in rest]
    assert [n["transaction"]["createdAt"] for n in nodes] == [item["createdAt"] for item in rest]
    assert all(item["createdAt"].endswith("Z") for item in rest)
    assert spent["transaction"]["createdAt"] == rest[0]["createdAt"]


SPELLINGS = [
    ("canonical", lambda u: str(u), True),
    ("upper case", lambda u: str(u).upper(), True),
    ("braced", lambda u: "{" + str(u) + "}", False),
    ("urn", lambda u: f"urn:uuid:{u}", False),
    ("unhyphenated", lambda u: u.hex, False),
    ("padded", lambda u: f" {u}", False),
    ("short", lambda u: str(u)[:-1], False),
]


@pytest.mark.parametrize(
    ("spelling", "accepted"),
    [(spell, ok) for _, spell, ok in SPELLINGS],
    ids=[name for name, _, _ in SPELLINGS],
)
async def test_uuids_are_read_as_rest_reads_them(
    client: httpx.AsyncClient, factory: Factory, spelling: Any, accepted: bool
) -> None:
    user = await factory.user(gold=1)
    written = spelling(user)
    rest = await client.get(f"/api/wallet/balance/{httpx.URL(path=written).path}")
    as_variable = await gql(
        client, "query W($id: UUID!) { wallet(userId: $id) { userId } }", {"id": written}
    )
    literal = written.replace("\\", "\\\\").replace('"', '\\"')
    as_literal = await gql(client, f'{{ wallet(userId: "{literal}") {{ userId }} }}')
    if accepted:
        assert rest.status_code == 200
        for body in (as_variable, as_literal):
            assert body == {"data": {"wallet": {"userId": str(user)}}}
    else:
        assert rest.status_code == 400
        assert rest.json()["code"] == "VALIDATION_ERROR"
        for body in (as_variable, as_literal):
            assert body["data"] is None
            assert [e["extensions"]["code"] for e in body["errors"]] == ["VALIDATION_ERROR"]


@dataclass(frozen=True)
class Closed:
    base: str
    shop: str  # the key's Authorization header: read and transact
    payments: str  # transact only

    def user(self, user_id: uuid.UUID) -> str:
        return f"Bearer {token(user_id)}"


@pytest.fixture(scope="module")
def closed(server_url: str) -> Iterator[Closed]:
    """Its own database (a key closes a database for good), keys, and end-user tokens that
    may SPEND."""
    url = create_database(server_url, "wallet_consistency")
    migrate(url)
    _run(url, seed)

    async def make_keys(conn: AsyncConnection) -> tuple[str, str]:
        shop = await auth.create_key(conn, name="shop-backend", scopes=["read", "transact"])
        payments = await auth.create_key(conn, name="payments", scopes=["transact"])
        return shop, payments

    shop, payments = _run(url, make_keys)
    proc, base = start_server(
        url,
        WALLET_JWT_SECRET=SECRET,
        WALLET_USER_CAN_SPEND="true",
        WALLET_AUTH_CACHE_SECONDS="0",
    )
    try:
        yield Closed(base, f"Bearer {shop}", f"Bearer {payments}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


@pytest.fixture
async def http(closed: Closed) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=closed.base, timeout=30) as client:
        yield client


async def post(
    http: httpx.AsyncClient, header: str, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    response = await http.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": header},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def posting(
    http: httpx.AsyncClient, header: str, user: uuid.UUID, kind: str, amount: int = 1
) -> str:
    body = await post(
        http,
        header,
        TRANSACT,
        {
            "input": {
                "userId": str(user),
                "amount": amount,
                "assetSlug": "gold_coins",
                "type": kind,
                "idempotencyKey": str(uuid.uuid4()),
            }
        },
    )
    assert body["data"]["transact"]["__typename"] == "TransactSuccess", body
    transaction_id: str = body["data"]["transact"]["transaction"]["id"]
    return transaction_id


async def test_end_users_see_service_where_a_key_acted(
    closed: Closed, http: httpx.AsyncClient
) -> None:
    """A key's name describes our back ends; an end user sees `service` in its place, on
    REST and GraphQL alike, and its own `user:<id>` where it acted itself."""
    topup = await posting(http, closed.shop, ALICE, "TOPUP", 5)
    spend = await posting(http, closed.user(ALICE), ALICE, "SPEND")
    mine = f"user:{ALICE}"
    for viewer, expected in [
        (closed.user(ALICE), {topup: "service", spend: mine}),
        (closed.shop, {topup: "shop-backend", spend: mine}),
    ]:
        history = await http.get(
            f"/api/wallet/transactions/{ALICE}", headers={"Authorization": viewer}
        )
        rest = {i["transactionId"]: i["principal"] for i in history.json()["data"]}
        body = await post(http, viewer, LEDGER, {"id": str(ALICE)})
        edges = body["data"]["wallet"]["ledger"]["edges"]
        graphql = {
            e["node"]["transaction"]["id"]: e["node"]["transaction"]["principal"] for e in edges
        }
        one = await post(http, viewer, TRANSACTION, {"id": topup})
        assert {t: rest[t] for t in expected} == expected
        assert {t: graphql[t] for t in expected} == expected
        assert one["data"]["transaction"]["principal"] == expected[topup]
        assert "shop-backend" not in history.text or viewer == closed.shop


async def test_end_users_read_their_own_transactions_and_no_one_elses(
    closed: Closed, http: httpx.AsyncClient
) -> None:
    alices = await posting(http, closed.user(ALICE), ALICE, "SPEND")
    bobs = await posting(http, closed.shop, BOB, "TOPUP", 2)
    own = await post(http, closed.user(ALICE), TRANSACTION, {"id": alices})
    assert own == {
        "data": {
            "transaction": {
                "id": alices,
                "type": "SPEND",
                "amount": "1",
                "principal": f"user:{ALICE}",
            }
        }
    }
    someone_elses = await post(http, closed.user(ALICE), TRANSACTION, {"id": bobs})
    unknown = await post(http, closed.user(ALICE), TRANSACTION, {"id": str(uuid.uuid4())})
    assert someone_elses == unknown == {"data": {"transaction": None}}
    assert (await post(http, closed.user(BOB), TRANSACTION, {"id": alices})) == unknown
    # A key still needs the read scope; with it, every transaction is visible.
    as_shop = await post(http, closed.shop, TRANSACTION, {"id": alices})
    assert as_shop["data"]["transaction"]["id"] == alices
    refused = await post(http, closed.payments, TRANSACTION, {"id": alices})
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
