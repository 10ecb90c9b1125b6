"""Ledger v2 over GraphQL, through a real server: references and metadata, transfer, reverse,
assets, what a Transaction shows, balances at an instant, ledger filters, the overflow member,
a constant number of SQL statements per page, and two request rules (several operations need an
operationName; a number JSON cannot carry is named clearly)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Factory
from tests.graphql_client import (
    BATCH,
    CAPTURE_HOLD,
    CREATE_ASSET,
    CREATE_HOLD,
    REVERSE,
    TRANSACT,
    TRANSFER,
    count_statements,
    gql,
    mutate,
)
from wallet import ledger
from wallet.schema.types import formatted

GOLD = "gold_coins"
MAX_AMOUNT = 2**53 - 1

TRANSACT_V2 = """
mutation T($input: TransactInput!) {
  transact(input: $input) {
    __typename
    ... on TransactSuccess { replayed transaction { id reference metadata } }
    ... on Error { code message }
    ... on InvalidInput { field }
  }
}
"""
TRANSACTION = """
query T($id: UUID!) {
  transaction(id: $id) {
    id type amount reference metadata reason reversedAmount
    reverses { id } reversals { id amount }
    entries { userId accountKind direction amount balanceAfter user { userId } }
    counterparty { userId username }
  }
}
"""
LEDGER = """
query L($id: UUID!, $first: Int, $after: String, $type: TransactionType, $reference: String,
        $metadata: JSON, $from: DateTime, $to: DateTime) {
  wallet(userId: $id) {
    ledger(first: $first, after: $after, type: $type, reference: $reference,
           metadata: $metadata, from: $from, to: $to) {
      edges { node { amount direction createdAt
        transaction { id type reference metadata reverses { id } counterparty { userId } } } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""
BALANCES_AT = """
query B($id: UUID!, $at: DateTime) {
  wallet(userId: $id) {
    balances(at: $at) { asset { slug } amount held available formatted }
    gold: balance(assetSlug: "gold_coins", at: $at) { amount }
  }
}
"""


async def test_a_balance_of_a_slug_no_asset_could_have_is_a_validation_error(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """As `ledger(assetSlug:)` and REST refuse it; a well-formed slug of no asset is null."""
    user = await factory.user(gold=10)
    query = (
        "query B($id: UUID!, $slug: String!)"
        " { wallet(userId: $id) { balance(assetSlug: $slug) { amount } } }"
    )
    for slug in ("", "x" * 65, "gold_coins\x00"):
        body = await gql(client, query, {"id": str(user), "slug": slug})
        assert [e["extensions"]["code"] for e in body["errors"]] == ["VALIDATION_ERROR"], body
    body = await gql(client, query, {"id": str(user), "slug": "no_such_asset"})
    assert body == {"data": {"wallet": {"balance": None}}}


def key() -> str:
    return str(uuid.uuid4())


def transfer_input(
    sender: uuid.UUID, recipient: uuid.UUID, amount: int | str, **extra: Any
) -> dict[str, Any]:
    return {
        "fromUserId": str(sender),
        "toUserId": str(recipient),
        "amount": amount,
        "assetSlug": GOLD,
        "idempotencyKey": key(),
        **extra,
    }


def transact_input(user: uuid.UUID, amount: int | str, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "userId": str(user),
        "amount": amount,
        "assetSlug": GOLD,
        "type": kind,
        "idempotencyKey": key(),
        **extra,
    }


# --- references and metadata


async def test_transact_takes_a_reference_and_metadata(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    metadata = {"orderId": "A-17", "level": 3, "vip": True, "note": None}
    sent = transact_input(user, 4, "SPEND", reference="order-17", metadata=metadata)
    done = await mutate(client, TRANSACT_V2, sent)
    assert done["__typename"] == "TransactSuccess"
    assert done["transaction"]["reference"] == "order-17"
    assert done["transaction"]["metadata"] == metadata
    again = await mutate(client, TRANSACT_V2, sent)
    assert (again["replayed"], again["transaction"]) == (True, done["transaction"])
    other = await mutate(client, TRANSACT_V2, {**sent, "metadata": {"orderId": "A-18"}})
    assert (other["__typename"], other["code"]) == (
        "IdempotencyKeyReused",
        "IDEMPOTENCY_KEY_REUSED",
    )
    plain = await mutate(client, TRANSACT_V2, transact_input(user, 1, "SPEND"))
    assert (plain["transaction"]["reference"], plain["transaction"]["metadata"]) == (None, {})
    invalid: list[tuple[dict[str, Any], str]] = [
        ({"metadata": {"nested": {"a": 1}}}, "metadata"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"metadata": {"bad key": 1}}, "metadata"),
        ({"metadata": {"n": 2**53}}, "metadata"),
        ({"metadata": {f"k{i}": i for i in range(33)}}, "metadata"),
        ({"reference": ""}, "reference"),
        ({"reference": "x" * 129}, "reference"),
        ({"reference": "caf\u00e9"}, "reference"),
        ({"type": "TRANSFER"}, "type"),
        ({"type": "REVERSAL"}, "type"),
    ]
    for extra, field in invalid:
        refused = await mutate(client, TRANSACT_V2, {**transact_input(user, 1, "SPEND"), **extra})
        assert (refused["__typename"], refused["field"]) == ("InvalidInput", field), extra
        assert refused["code"] == "VALIDATION_ERROR"
    assert await factory.balance(user) == 5


# --- transfer


async def test_transfer_moves_coins_and_replays(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    sender = await factory.user(gold=50)
    recipient = await factory.user(diamonds=1)  # no gold account yet: the transfer opens one
    sent = transfer_input(sender, recipient, "20", reference="gift-1", metadata={"why": "bday"})
    done = await mutate(client, TRANSFER, sent)
    assert done["__typename"] == "TransferSuccess"
    assert done["replayed"] is False
    assert done["from"] == {"asset": {"slug": GOLD}, "amount": "30", "held": "0", "available": "30"}
    assert done["to"] == {"asset": {"slug": GOLD}, "amount": "20", "held": "0", "available": "20"}
    transaction = done["transaction"]
    assert (transaction["type"], transaction["amount"]) == ("TRANSFER", "20")
    assert (transaction["reference"], transaction["metadata"]) == ("gift-1", {"why": "bday"})
    assert (transaction["principal"], transaction["reverses"]) == ("", None)
    again = await mutate(client, TRANSFER, sent)
    assert again["replayed"] is True
    assert again["transaction"] == transaction
    assert (again["from"]["amount"], again["to"]["amount"]) == ("30", "20")
    assert (await factory.balance(sender), await factory.balance(recipient)) == (30, 20)


async def test_transfer_refusals_are_union_members(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    sender = await factory.user(gold=10)
    recipient = await factory.user()
    short = transfer_input(sender, recipient, 11)
    poor = await mutate(client, TRANSFER, short)
    assert poor == {
        "__typename": "InsufficientFunds",
        "code": "INSUFFICIENT_FUNDS",
        "message": "Insufficient funds: 10 available, the TRANSFER needs 11.",
        "balance": {"asset": {"slug": GOLD}, "amount": "10", "held": "0", "available": "10"},
        "requested": "11",
        "available": "10",
    }
    await factory.transact(sender, 5, "TOPUP")  # now it would fit, but the refusal is stored
    assert await mutate(client, TRANSFER, short) == {
        **poor,
        "balance": {**poor["balance"], "amount": "15", "available": "15"},
    }
    cases: list[tuple[dict[str, Any], str, str]] = [
        (transfer_input(sender, sender, 1), "InvalidInput", "VALIDATION_ERROR"),
        (transfer_input(sender, uuid.uuid4(), 1), "NotFound", "USER_NOT_FOUND"),
        (transfer_input(uuid.uuid4(), recipient, 1), "NotFound", "USER_NOT_FOUND"),
        ({**transfer_input(sender, recipient, 1), "assetSlug": "rubies"}, "NotFound", "ASSET_NOT_FOUND"),  # noqa: E501
        (transfer_input(sender, recipient, 0), "InvalidInput", "VALIDATION_ERROR"),
        (transfer_input(sender, recipient, MAX_AMOUNT + 1), "InvalidInput", "VALIDATION_ERROR"),
        ({**transfer_input(sender, recipient, 1), "idempotencyKey": ""}, "InvalidInput", "VALIDATION_ERROR"),  # noqa: E501
        ({**short, "amount": 2}, "IdempotencyKeyReused", "IDEMPOTENCY_KEY_REUSED"),
    ]  # fmt: skip
    for sent, typename, code in cases:
        result = await mutate(client, TRANSFER, sent)
        assert (result["__typename"], result["code"]) == (typename, code), sent
    same = await mutate(client, TRANSFER, transfer_input(sender, sender, 1))
    assert same["field"] == "toUserId"
    nobody = uuid.uuid4()  # a NotFound names which of the two users is unknown
    for sent in (transfer_input(sender, nobody, 1), transfer_input(nobody, recipient, 1)):
        assert (await mutate(client, TRANSFER, sent))["message"] == f"User {nobody} not found."
    assert (await factory.balance(sender), await factory.balance(recipient)) == (15, 0)


async def test_a_key_used_by_the_core_replays_over_graphql(
    client: httpx.AsyncClient, factory: Factory, engine: AsyncEngine
) -> None:
    """REST and GraphQL call one core: a transfer posted under a key (here by the core itself,
    as REST does, for the open service's principal) replays over GraphQL."""
    sender, recipient = await factory.user(gold=9), await factory.user()
    sent = transfer_input(sender, recipient, 4, reference="r-1")
    request = ledger.TransferRequest(sender, recipient, GOLD, 4, reference="r-1")
    async with engine.begin() as conn:
        posted = await ledger.transfer(conn, request, key=sent["idempotencyKey"], principal="")
    assert isinstance(posted, ledger.TransferDone)
    replay = await mutate(client, TRANSFER, sent)
    assert replay["replayed"] is True
    assert replay["transaction"]["id"] == str(posted.transaction_id)
    assert await factory.balance(sender) == 5


@pytest.mark.parametrize("kind", ["TOPUP", "BONUS", "SPEND"])
async def test_a_key_a_posting_used_names_its_transaction_on_transfer_and_reverse(
    client: httpx.AsyncClient, factory: Factory, kind: str
) -> None:
    """A TOPUP, BONUS or SPEND keeps its transaction with its key differently from the other
    mutations: one finding that key used for another request still names it."""
    sender, recipient = await factory.user(gold=10), await factory.user()
    first = transact_input(sender, 1, kind)
    original = (await mutate(client, TRANSACT, first))["transaction"]["id"]
    same_key = first["idempotencyKey"]
    for document, sent in [
        (TRANSFER, {**transfer_input(sender, recipient, 1), "idempotencyKey": same_key}),
        (REVERSE, {"transactionId": original, "idempotencyKey": same_key}),
    ]:
        reused = await mutate(client, document, sent)
        assert reused["__typename"] == "IdempotencyKeyReused", reused
        assert reused["originalTransactionId"] == original
    assert await factory.balance(recipient) == 0


# --- reverse


async def test_reverse_in_parts_then_every_refusal(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    spend = await factory.transact(user, 30, "SPEND")
    original = str(spend.transaction_id)
    first = {
        "transactionId": original,
        "amount": "10",
        "reason": "damaged",
        "idempotencyKey": key(),
    }
    part = await mutate(client, REVERSE, {**first, "metadata": {"ticket": 7}})
    assert part["__typename"] == "ReverseSuccess"
    assert (part["replayed"], part["remainingReversible"]) == (False, "20")
    reversal = part["transaction"]
    assert (reversal["type"], reversal["amount"], reversal["reason"]) == (
        "REVERSAL",
        "10",
        "damaged",
    )
    assert (reversal["metadata"], reversal["reverses"]) == ({"ticket": 7}, {"id": original})
    assert part["reverses"] == {
        "id": original,
        "reversedAmount": "10",
        "reversals": [{"id": reversal["id"]}],
    }
    assert await factory.balance(user) == 80
    replay = await mutate(client, REVERSE, {**first, "metadata": {"ticket": 7}})
    assert (replay["replayed"], replay["transaction"]["id"]) == (True, reversal["id"])
    rest = await mutate(client, REVERSE, {"transactionId": original, "idempotencyKey": key()})
    assert (rest["transaction"]["amount"], rest["remainingReversible"]) == ("20", "0")
    assert await factory.balance(user) == 100
    over = await mutate(client, REVERSE, {"transactionId": original, "idempotencyKey": key()})
    assert over["__typename"] == "ReversalExceedsOriginal"
    assert (over["code"], over["remainingReversible"]) == ("REVERSAL_EXCEEDS_ORIGINAL", "0")
    twice = await mutate(
        client, REVERSE, {"transactionId": reversal["id"], "idempotencyKey": key()}
    )
    assert (twice["__typename"], twice["code"]) == ("NotReversible", "NOT_REVERSIBLE")
    unknown = await mutate(
        client, REVERSE, {"transactionId": str(uuid.uuid4()), "idempotencyKey": key()}
    )
    assert (unknown["__typename"], unknown["code"]) == ("NotFound", "TRANSACTION_NOT_FOUND")
    invalid: list[tuple[dict[str, Any], str]] = [
        ({"amount": 0}, "amount"),
        ({"reason": "x" * 257}, "reason"),
        ({"metadata": {"a": {"b": 1}}}, "metadata"),
        ({"idempotencyKey": ""}, "idempotencyKey"),
    ]
    for sent, field in invalid:
        bad = await mutate(client, REVERSE, {**first, "idempotencyKey": key(), **sent})
        assert (bad["__typename"], bad["field"]) == ("InvalidInput", field)
    reused = await mutate(client, REVERSE, {**first, "amount": "11"})
    assert reused["__typename"] == "IdempotencyKeyReused"


async def test_reversing_a_transfer_takes_the_coins_back_from_the_recipient(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    sender, recipient = await factory.user(gold=40), await factory.user()
    sent = await mutate(client, TRANSFER, transfer_input(sender, recipient, 25))
    original = sent["transaction"]["id"]
    await factory.transact(recipient, 20, "SPEND")  # 5 left: a full reversal cannot be paid
    poor = await mutate(client, REVERSE, {"transactionId": original, "idempotencyKey": key()})
    assert poor["__typename"] == "InsufficientFunds"
    assert (poor["requested"], poor["available"]) == ("25", "5")
    assert poor["balance"]["amount"] == "5"  # the recipient's, who must pay it back
    back = await mutate(
        client, REVERSE, {"transactionId": original, "amount": 5, "idempotencyKey": key()}
    )
    assert (back["__typename"], back["remainingReversible"]) == ("ReverseSuccess", "20")
    assert (await factory.balance(sender), await factory.balance(recipient)) == (20, 0)


# --- a transaction's view


async def test_transaction_shows_entries_reversals_and_counterparty(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    sender, recipient = await factory.user(gold=30), await factory.user()
    sent = await mutate(client, TRANSFER, transfer_input(sender, recipient, 12))
    original = sent["transaction"]["id"]
    part = await mutate(
        client, REVERSE, {"transactionId": original, "amount": 2, "idempotencyKey": key()}
    )
    body = await gql(client, TRANSACTION, {"id": original})
    transaction = body["data"]["transaction"]
    assert transaction["reversedAmount"] == "2"
    assert transaction["reversals"] == [{"id": part["transaction"]["id"], "amount": "2"}]
    assert transaction["reverses"] is None
    assert transaction["entries"] == [
        {
            "userId": str(sender),
            "accountKind": "USER",
            "direction": "DEBIT",
            "amount": "12",
            "balanceAfter": "18",
            "user": {"userId": str(sender)},
        },
        {
            "userId": str(recipient),
            "accountKind": "USER",
            "direction": "CREDIT",
            "amount": "12",
            "balanceAfter": "12",
            "user": {"userId": str(recipient)},
        },
    ]
    assert transaction["counterparty"]["userId"] == str(recipient)  # seen from the sender
    reversal = await gql(client, TRANSACTION, {"id": part["transaction"]["id"]})
    assert reversal["data"]["transaction"]["reverses"] == {"id": original}
    assert reversal["data"]["transaction"]["reason"] is None
    spend = await factory.transact(sender, 3, "SPEND")
    body = await gql(client, TRANSACTION, {"id": str(spend.transaction_id)})
    spent = body["data"]["transaction"]
    assert (spent["counterparty"], spent["metadata"], spent["reference"]) == (None, {}, None)
    treasury = [e for e in spent["entries"] if e["accountKind"] == "TREASURY"]
    assert treasury == [
        {
            "userId": None,
            "accountKind": "TREASURY",
            "direction": "CREDIT",
            "amount": "3",
            "balanceAfter": None,
            "user": None,
        }
    ]


# --- assets and formatted balances


async def test_create_asset_then_hold_it_with_decimals(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    slug = f"euro_{uuid.uuid4().hex[:8]}"
    sent = {"slug": slug, "name": "Euro cents", "decimals": 2}
    made = await mutate(client, CREATE_ASSET, sent)
    assert made == {
        "__typename": "CreateAssetSuccess",
        "created": True,
        "asset": {"slug": slug, "name": "Euro cents", "decimals": 2},
    }
    again = await mutate(client, CREATE_ASSET, sent)
    assert (again["__typename"], again["created"]) == ("CreateAssetSuccess", False)
    taken = await mutate(client, CREATE_ASSET, {**sent, "decimals": 3})
    assert (taken["__typename"], taken["code"]) == ("AssetAlreadyExists", "ASSET_ALREADY_EXISTS")
    invalid: list[tuple[dict[str, Any], str]] = [
        ({"slug": "Euro"}, "slug"),
        ({"slug": "1euro"}, "slug"),
        ({"name": ""}, "name"),
        ({"decimals": 19}, "decimals"),
        ({"decimals": -1}, "decimals"),
    ]
    for bad, field in invalid:
        refused = await mutate(client, CREATE_ASSET, {**sent, **bad})
        assert (refused["__typename"], refused["field"]) == ("InvalidInput", field)
    listed = await gql(client, "{ assets { slug decimals } }")
    assert {"slug": slug, "decimals": 2} in listed["data"]["assets"]
    user = await factory.user()
    topup = await mutate(
        client, TRANSACT, {**transact_input(user, 1250, "TOPUP"), "assetSlug": slug}
    )
    assert topup["__typename"] == "TransactSuccess"
    body = await gql(client, BALANCES_AT, {"id": str(user)})
    assert body["data"]["wallet"]["balances"] == [
        {
            "asset": {"slug": slug},
            "amount": "1250",
            "held": "0",
            "available": "1250",
            "formatted": "12.50",
        }
    ]


def test_formatted_amounts() -> None:
    assert [formatted(a, d) for a, d in [(1250, 2), (5, 2), (0, 2), (7, 0), (1, 18), (-5, 1)]] == [
        "12.50",
        "0.05",
        "0.00",
        "7",
        "0.000000000000000001",
        "-0.5",
    ]


# --- balances at an instant


async def test_balances_at_an_instant(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user()
    first = await factory.transact(user, 10, "TOPUP")
    await factory.transact(user, 3, "SPEND")
    then = first.created_at.astimezone(UTC).isoformat()
    body = await gql(client, BALANCES_AT, {"id": str(user), "at": then})
    wallet = body["data"]["wallet"]
    assert [(b["asset"]["slug"], b["amount"]) for b in wallet["balances"]] == [(GOLD, "10")]
    assert wallet["gold"] == {"amount": "10"}
    now = await gql(client, BALANCES_AT, {"id": str(user)})
    assert now["data"]["wallet"]["gold"] == {"amount": "7"}
    before = (first.created_at - timedelta(seconds=1)).astimezone(UTC).isoformat()
    empty = await gql(client, BALANCES_AT, {"id": str(user), "at": before})
    assert empty["data"]["wallet"] == {"balances": [], "gold": None}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    refused = await gql(client, BALANCES_AT, {"id": str(user), "at": future})
    assert refused["errors"][0]["extensions"]["code"] == "VALIDATION_ERROR"
    assert "future" in refused["errors"][0]["message"]


# --- ledger filters


async def test_ledger_filters_combine(client: httpx.AsyncClient, factory: Factory) -> None:
    user, friend = await factory.user(gold=100), await factory.user()
    await mutate(
        client,
        TRANSACT,
        transact_input(user, 5, "SPEND", reference="o-1", metadata={"orderId": "A-17", "level": 3}),
    )
    start = datetime.now(UTC).isoformat()
    await mutate(
        client,
        TRANSACT,
        transact_input(
            user, 6, "SPEND", reference="o-2", metadata={"orderId": "A-18", "vip": True}
        ),
    )
    gift = await mutate(
        client, TRANSFER, transfer_input(user, friend, 7, reference="o-2", metadata={"level": 3})
    )
    back = await mutate(
        client,
        REVERSE,
        {"transactionId": gift["transaction"]["id"], "amount": 1, "idempotencyKey": key()},
    )

    async def amounts(**filters: Any) -> list[str]:
        body = await gql(client, LEDGER, {"id": str(user), **filters})
        assert "errors" not in body, body
        return [e["node"]["amount"] for e in body["data"]["wallet"]["ledger"]["edges"]]

    assert await amounts() == ["1", "7", "6", "5", "100"]
    assert await amounts(type="TRANSFER") == ["7"]
    assert await amounts(reference="o-2") == ["7", "6"]
    assert await amounts(metadata={"level": 3}) == ["7", "5"]
    assert await amounts(metadata={"level": "3"}) == ["7", "5"]  # matched as text
    assert await amounts(metadata={"level": 3, "orderId": "A-17"}) == ["5"]  # every key
    assert await amounts(metadata={"vip": True}) == ["6"]
    assert await amounts(metadata={"orderId": "nope"}) == []
    assert await amounts(reference="o-2", type="SPEND") == ["6"]
    assert await amounts(**{"from": start}) == ["1", "7", "6"]
    assert await amounts(**{"to": start}) == ["5", "100"]
    body = await gql(client, LEDGER, {"id": str(user), "first": 2})
    nodes = [e["node"]["transaction"] for e in body["data"]["wallet"]["ledger"]["edges"]]
    assert nodes[0]["type"] == "REVERSAL"
    assert nodes[0]["reverses"] == {"id": gift["transaction"]["id"]}
    assert nodes[0]["id"] == back["transaction"]["id"]
    assert nodes[0]["counterparty"] == {"userId": str(friend)}
    assert nodes[1]["counterparty"] == {"userId": str(friend)}
    assert (nodes[1]["reference"], nodes[1]["metadata"]) == ("o-2", {"level": 3})
    friends = await gql(client, LEDGER, {"id": str(friend), "type": "TRANSFER"})
    (edge,) = friends["data"]["wallet"]["ledger"]["edges"]
    assert edge["node"]["transaction"]["counterparty"] == {"userId": str(user)}
    bad_filters: list[dict[str, Any]] = [
        {"metadata": {"a": {"b": 1}}},
        {"metadata": "orderId=A-17"},
        {"reference": ""},
        {"type": "NOPE"},
        {"from": "yesterday"},
        {"from": "9999-12-31T23:59:59-01:00"},
        {"to": "0001-01-01T00:00:00+01:00"},
    ]
    for bad in bad_filters:
        refused = await gql(client, LEDGER, {"id": str(user), **bad})
        assert refused["errors"][0]["extensions"]["code"] == "VALIDATION_ERROR", bad


# --- no N+1


PAGE = """
query P($id: UUID!, $first: Int) {
  wallet(userId: $id) {
    ledger(first: $first) {
      edges { node { amount transaction {
        reference metadata reverses { id } counterparty { userId }
      } } }
    }
  }
}
"""


async def test_a_ledger_page_costs_a_fixed_number_of_statements(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=10_000)
    friends = [await factory.user(gold=100) for _ in range(5)]
    for i in range(30):
        friend = friends[i % len(friends)]
        async with engine.begin() as conn:
            request = ledger.TransferRequest(user, friend, GOLD, 10, reference=f"r-{i}")
            if i % 2:
                request = ledger.TransferRequest(friend, user, GOLD, 3, metadata={"i": i})
            done = ledger.settled(await ledger.transfer(conn, request, key=key(), principal="t"))
            reverse = ledger.ReverseRequest(done.transaction_id, amount=1)
            ledger.settled(await ledger.reverse(conn, reverse, key=key(), principal="t"))
    small = await count_statements(engine, PAGE, {"id": str(user), "first": 5})
    large = await count_statements(engine, PAGE, {"id": str(user), "first": 50})
    # the user with its page (one statement: ledger.overview), the originals reversed, the
    # counterparties
    assert (small, large) == (3, 3)


async def test_a_transaction_view_costs_a_fixed_number_of_statements(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await factory.user(gold=1000)
    friend = await factory.user()
    query = """
    query T($id: UUID!) { transaction(id: $id) {
      reversedAmount entries { user { username } balanceAfter }
      reversals { reason reverses { id } entries { amount } counterparty { username } }
    } }"""
    counts = []
    for reversals in (2, 20):
        async with engine.begin() as conn:
            request = ledger.TransferRequest(user, friend, GOLD, 100)
            done = ledger.settled(await ledger.transfer(conn, request, key=key(), principal="t"))
            for _ in range(reversals):
                reverse = ledger.ReverseRequest(done.transaction_id, amount=1)
                ledger.settled(await ledger.reverse(conn, reverse, key=key(), principal="t"))
        counts.append(await count_statements(engine, query, {"id": str(done.transaction_id)}))
    # the transaction, its reversals, entries and users (a batch per level at most: sibling
    # batches that finish apart may split one level's loads in two, never in N)
    assert max(counts) <= 6, counts


# --- BALANCE_LIMIT_EXCEEDED is a member of every write's union


async def test_the_balance_ceiling_is_a_union_member_everywhere(
    client: httpx.AsyncClient, factory: Factory, engine: AsyncEngine
) -> None:
    full = await factory.user()
    async with engine.begin() as conn:  # 1024 x (2^53 - 1) = 2^63 - 1024
        await conn.execute(
            text(
                "SELECT wallet_transact('t', 'fill-' || u || n, '\\x00', u, 'gold_coins', 'TOPUP',"
                " CAST(:amount AS bigint), gen_random_uuid(), 't', NULL, '{}')"
                " FROM CAST(:u AS uuid) u, generate_series(1, 1024) n"
            ),
            {"u": full, "amount": MAX_AMOUNT},
        )
    rich = await factory.user(gold=MAX_AMOUNT)
    over = {"code": "BALANCE_LIMIT_EXCEEDED"}
    topup = await mutate(client, TRANSACT, transact_input(full, MAX_AMOUNT, "TOPUP"))
    assert (topup["__typename"], topup["code"]) == ("BalanceLimitExceeded", over["code"])
    sent = await mutate(client, TRANSFER, transfer_input(rich, full, MAX_AMOUNT))
    assert (sent["__typename"], sent["code"]) == ("BalanceLimitExceeded", over["code"])
    hold = await mutate(
        client,
        CREATE_HOLD,
        {"userId": str(rich), "amount": 5000, "assetSlug": GOLD, "idempotencyKey": key()},
    )
    capture = await mutate(
        client,
        CAPTURE_HOLD,
        {"holdId": hold["hold"]["id"], "toUserId": str(full), "idempotencyKey": key()},
    )
    assert (capture["__typename"], capture["code"]) == ("BalanceLimitExceeded", over["code"])
    spend = await factory.transact(full, 5000, "SPEND")  # its reversal would pass the ceiling
    await factory.transact(full, 5000, "TOPUP")
    back = await mutate(
        client, REVERSE, {"transactionId": str(spend.transaction_id), "idempotencyKey": key()}
    )
    assert (back["__typename"], back["code"]) == ("BalanceLimitExceeded", over["code"])
    operation = {"op": "BONUS", "userId": str(full), "amount": MAX_AMOUNT, "assetSlug": GOLD}
    atomic = await mutate(
        client, BATCH, {"atomic": True, "operations": [operation], "idempotencyKey": key()}
    )
    assert atomic["__typename"] == "BatchFailed"
    assert (atomic["code"], atomic["index"], atomic["operationCode"]) == (
        "BATCH_FAILED",
        0,
        "BALANCE_LIMIT_EXCEEDED",
    )
    single = await mutate(
        client,
        BATCH,
        {
            "atomic": False,
            "operations": [{**operation, "idempotencyKey": key()}],
            "idempotencyKey": key(),
        },
    )
    assert [r["__typename"] for r in single["results"]] == ["BalanceLimitExceeded"]
    assert await factory.balance(full) == 1024 * MAX_AMOUNT


# --- request rules


async def test_several_operations_need_an_operation_name(client: httpx.AsyncClient) -> None:
    document = "query A { assets { slug } } query B { __typename }"
    response = await client.post("/graphql", json={"query": document})
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "VALIDATION_ERROR"
    assert "operationName" in body["errors"][0]["message"]
    named = await client.post("/graphql", json={"query": document, "operationName": "B"})
    assert named.json() == {"data": {"__typename": "Query"}}
    first = await client.post("/graphql", json={"query": document, "operationName": "A"})
    assert "errors" not in first.json()
    one = await client.post("/graphql", json={"query": "query A { __typename }"})
    assert one.json() == {"data": {"__typename": "Query"}}


FIRST = f'query P($n: Int) {{ wallet(userId: "{uuid.uuid4()}") {{ ledger(first: $n) {{ edges {{ cursor }} }} }} }}'  # noqa: E501
SPEND = {
    "userId": str(uuid.uuid4()),
    "amount": "@",
    "assetSlug": GOLD,
    "type": "SPEND",
    "idempotencyKey": "k",
}


@pytest.mark.parametrize(
    ("query", "variables", "number"),
    [
        (FIRST, {"n": "@"}, "9" * 5000),
        (TRANSACT, {"input": SPEND}, "9" * 5000),
        (TRANSACT, {"input": SPEND}, "1e400"),
        (TRANSACT, {"input": SPEND}, "NaN"),
    ],
    ids=["Int", "Amount", "1e400", "NaN"],
)  # fmt: skip
async def test_a_number_json_cannot_carry_is_named_clearly(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], number: str
) -> None:
    """Such a number reaches the variable that holds it, which names it in words, not as
    `<NotANumber instance>`."""
    raw = json.dumps({"query": query, "variables": variables}).replace('"@"', number)
    body = raw.encode()
    response = await client.post(
        "/graphql", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "VALIDATION_ERROR"
    assert "a number JSON cannot carry exactly" in error["message"], error
    assert "instance" not in error["message"]
    assert len(error["message"]) < 400
