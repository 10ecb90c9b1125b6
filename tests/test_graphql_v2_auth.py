"""Who may do what in Ledger v2 over GraphQL, through real servers with keys and JWT users:
transfers (an end user from its own wallet, only when WALLET_USER_CAN_TRANSFER allows it),
reversals, assets and holds (keys only), batches (what each operation needs), and what a
transaction shows an end user (its own only; no other wallet)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import create_database, drop_database, start_server
from tests.graphql_client import (
    BATCH,
    CAPTURE_HOLD,
    CREATE_ASSET,
    CREATE_HOLD,
    REVERSE,
    TRANSACT,
    TRANSFER,
    VOID_HOLD,
    gql,
    mutate,
)
from tests.test_auth import SECRET, token
from wallet import auth, ledger
from wallet.cli import _run, migrate
from wallet.seed import seed

GOLD = "gold_coins"
TRANSACTION = """
query T($id: UUID!) {
  transaction(id: $id) {
    id counterparty { userId }
    entries { userId balanceAfter user { userId } }
  }
}
"""
HOLDS = "query H($id: UUID!) { wallet(userId: $id) { holds { nodes { id } } } }"


@dataclass(frozen=True)
class Users:
    alice: uuid.UUID
    bob: uuid.UUID
    carol: uuid.UUID


@dataclass(frozen=True)
class Servers:
    strict: str  # end users may not transfer (the default)
    lenient: str  # WALLET_USER_CAN_TRANSFER=true
    keys: dict[str, str]  # caller -> Authorization header
    users: Users

    def user(self, user_id: uuid.UUID) -> str:
        return f"Bearer {token(user_id)}"


@pytest.fixture(scope="module")
def servers(server_url: str) -> Iterator[Servers]:
    """Their own database (keys close it for good), three funded users, and two servers."""
    url = create_database(server_url, "wallet_v2_auth")
    migrate(url)
    _run(url, seed)  # the assets
    users = Users(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())

    async def prepare(conn: AsyncConnection) -> dict[str, str]:
        for user_id in (users.alice, users.bob, users.carol):
            await ledger.create_user(conn, user_id=user_id, username=f"u-{user_id.hex[:12]}")
            request = ledger.TransactRequest(user_id, GOLD, 1000, "TOPUP")
            await ledger.transact(conn, request, key=f"fund-{user_id}", principal="setup")
        return {
            name: "Bearer " + await auth.create_key(conn, name=name, scopes=scopes)
            for name, scopes in [
                ("reader", ["read"]),
                ("payments", ["transact"]),
                ("ops", ["admin"]),
                ("shop", ["read", "transact"]),
            ]
        }

    keys = _run(url, prepare)
    strict, strict_base = start_server(url, WALLET_JWT_SECRET=SECRET, WALLET_AUTH_CACHE_SECONDS="0")
    lenient, lenient_base = start_server(
        url,
        WALLET_JWT_SECRET=SECRET,
        WALLET_AUTH_CACHE_SECONDS="0",
        WALLET_USER_CAN_TRANSFER="true",
    )
    try:
        yield Servers(strict_base, lenient_base, keys, users)
    finally:
        for proc in (strict, lenient):
            proc.terminate()
            proc.wait(timeout=30)
        drop_database(server_url, url)


@pytest.fixture
async def strict(servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=servers.strict, timeout=30) as client:
        yield client


@pytest.fixture
async def lenient(servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=servers.lenient, timeout=30) as client:
        yield client


def key() -> str:
    return str(uuid.uuid4())


def transfer(sender: uuid.UUID, recipient: uuid.UUID, amount: int = 1) -> dict[str, Any]:
    return {
        "fromUserId": str(sender),
        "toUserId": str(recipient),
        "amount": amount,
        "assetSlug": GOLD,
        "idempotencyKey": key(),
    }


async def run(client: httpx.AsyncClient, document: str, input: dict[str, Any], header: str) -> str:
    """The result's __typename (and FORBIDDEN's code, checked)."""
    result = await mutate(client, document, input, headers={"Authorization": header})
    if result["__typename"] == "Forbidden":
        assert result["code"] == "FORBIDDEN"
    typename: str = result["__typename"]
    return typename


async def test_transfer_needs_transact_or_an_own_wallet_where_allowed(
    servers: Servers, strict: httpx.AsyncClient, lenient: httpx.AsyncClient
) -> None:
    u, k = servers.users, servers.keys
    for header, expected in [
        (k["payments"], "TransferSuccess"),
        (k["shop"], "TransferSuccess"),
        (k["reader"], "Forbidden"),
        (k["ops"], "Forbidden"),
        (servers.user(u.alice), "Forbidden"),  # WALLET_USER_CAN_TRANSFER is false by default
    ]:
        assert await run(strict, TRANSFER, transfer(u.alice, u.bob), header) == expected, header
    alice = servers.user(u.alice)
    assert await run(lenient, TRANSFER, transfer(u.alice, u.bob), alice) == "TransferSuccess"
    assert await run(lenient, TRANSFER, transfer(u.bob, u.alice), alice) == "Forbidden"
    assert await run(lenient, TRANSFER, transfer(u.bob, u.carol), alice) == "Forbidden"
    # Allowed to transfer is not allowed to TOPUP, SPEND (WALLET_USER_CAN_SPEND is off) or hold.
    for kind in ("TOPUP", "SPEND"):
        sent = {"userId": str(u.alice), "amount": 1, "assetSlug": GOLD, "type": kind,
                "idempotencyKey": key()}  # fmt: skip
        assert await run(lenient, TRANSACT, sent, alice) == "Forbidden"


async def test_reverse_assets_and_holds_are_for_keys_only(
    servers: Servers, strict: httpx.AsyncClient, lenient: httpx.AsyncClient
) -> None:
    u, k = servers.users, servers.keys
    sent = await mutate(
        strict, TRANSFER, transfer(u.alice, u.bob, 5), headers={"Authorization": k["payments"]}
    )
    original = sent["transaction"]["id"]
    alice = servers.user(u.alice)
    for client, header, expected in [
        (strict, k["reader"], "Forbidden"),
        (strict, k["ops"], "Forbidden"),
        (strict, alice, "Forbidden"),
        (lenient, alice, "Forbidden"),  # being allowed to transfer does not let it reverse
        (lenient, servers.user(u.bob), "Forbidden"),
        (strict, k["payments"], "ReverseSuccess"),
    ]:
        reverse = {"transactionId": original, "amount": 1, "idempotencyKey": key()}
        assert await run(client, REVERSE, reverse, header) == expected, header

    slug = f"gems_{uuid.uuid4().hex[:8]}"
    asset = {"slug": slug, "name": "Gems", "decimals": 0}
    for header, expected in [
        (k["payments"], "Forbidden"),
        (k["shop"], "Forbidden"),
        (alice, "Forbidden"),
        (k["ops"], "CreateAssetSuccess"),
    ]:
        assert await run(strict, CREATE_ASSET, asset, header) == expected, header
    listed = await gql(strict, "{ assets { slug } }", headers={"Authorization": k["reader"]})
    assert {"slug": slug} in listed["data"]["assets"]

    hold = {"userId": str(u.alice), "amount": 1, "assetSlug": GOLD}
    for client, header in [
        (strict, k["reader"]),
        (strict, k["ops"]),
        (strict, alice),
        (lenient, alice),
    ]:
        assert (
            await run(client, CREATE_HOLD, {**hold, "idempotencyKey": key()}, header) == "Forbidden"
        )
    made = await mutate(
        strict,
        CREATE_HOLD,
        {**hold, "idempotencyKey": key()},
        headers={"Authorization": k["payments"]},
    )
    hold_id = made["hold"]["id"]
    for document in (CAPTURE_HOLD, VOID_HOLD):
        sent_hold = {"holdId": hold_id, "idempotencyKey": key()}
        assert await run(strict, document, sent_hold, alice) == "Forbidden"
        assert await run(strict, document, sent_hold, k["reader"]) == "Forbidden"
    voided = {"holdId": hold_id, "idempotencyKey": key()}
    assert await run(strict, VOID_HOLD, voided, k["payments"]) == "HoldSuccess"
    # Listing holds needs the read scope: an end user does not see them, even its own.
    own = await gql(strict, HOLDS, {"id": str(u.alice)}, headers={"Authorization": alice})
    assert own["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    listed = await gql(strict, HOLDS, {"id": str(u.alice)}, headers={"Authorization": k["reader"]})
    assert hold_id in [n["id"] for n in listed["data"]["wallet"]["holds"]["nodes"]]


async def test_a_batch_needs_what_each_operation_needs(
    servers: Servers, strict: httpx.AsyncClient, lenient: httpx.AsyncClient
) -> None:
    u, k = servers.users, servers.keys
    alice = servers.user(u.alice)
    own_transfer = {"op": "TRANSFER", "fromUserId": str(u.alice), "toUserId": str(u.bob),
                    "amount": 1, "assetSlug": GOLD}  # fmt: skip
    their_transfer = {**own_transfer, "fromUserId": str(u.bob), "toUserId": str(u.alice)}
    spend = {"op": "SPEND", "userId": str(u.alice), "amount": 1, "assetSlug": GOLD}

    def batch(*operations: dict[str, Any]) -> dict[str, Any]:
        return {"atomic": True, "operations": list(operations), "idempotencyKey": key()}

    for client, header, operations, expected in [
        (strict, k["payments"], [own_transfer, spend], "BatchSuccess"),
        (strict, k["reader"], [own_transfer], "Forbidden"),
        (strict, alice, [own_transfer], "Forbidden"),
        (lenient, alice, [own_transfer], "BatchSuccess"),
        (lenient, alice, [own_transfer, their_transfer], "Forbidden"),
        (lenient, alice, [own_transfer, spend], "Forbidden"),  # SPEND is not allowed here
    ]:
        got = await run(client, BATCH, batch(*operations), header)
        assert got == expected, (header, operations)


async def test_an_end_user_reads_its_own_transactions_and_no_other_wallet(
    servers: Servers, strict: httpx.AsyncClient
) -> None:
    u, k = servers.users, servers.keys
    sent = await mutate(
        strict, TRANSFER, transfer(u.alice, u.bob, 3), headers={"Authorization": k["payments"]}
    )
    variables = {"id": sent["transaction"]["id"]}

    async def view(header: str) -> dict[str, Any] | None:
        body = await gql(strict, TRANSACTION, variables, headers={"Authorization": header})
        assert "errors" not in body, body
        found: dict[str, Any] | None = body["data"]["transaction"]
        return found

    as_alice, as_bob = await view(servers.user(u.alice)), await view(servers.user(u.bob))
    assert as_alice is not None
    assert as_bob is not None  # the recipient reads it too
    assert await view(servers.user(u.carol)) is None  # like an unknown id
    # An end user sees the other side's id but neither that wallet nor its balance.
    assert as_alice["counterparty"] is None
    assert [(e["userId"], e["user"]) for e in as_alice["entries"]] == [
        (str(u.alice), {"userId": str(u.alice)}),
        (str(u.bob), None),
    ]
    assert as_alice["entries"][0]["balanceAfter"] is not None
    assert as_alice["entries"][1]["balanceAfter"] is None
    assert as_bob["entries"][0]["balanceAfter"] is None
    as_reader = await view(k["reader"])
    assert as_reader is not None
    assert as_reader["counterparty"] == {"userId": str(u.bob)}
    assert all(e["balanceAfter"] is not None for e in as_reader["entries"])
    refused = await gql(strict, TRANSACTION, variables, headers={"Authorization": k["payments"]})
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
