"""Holds and batches over GraphQL, through a real server; and balanceChanged for transfers,
reversals and holds (a hold changes what is held without a new version)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Factory
from tests.graphql_client import (
    BATCH,
    CAPTURE_HOLD,
    CREATE_HOLD,
    REVERSE,
    TRANSACT,
    TRANSFER,
    VOID_HOLD,
    Subscription,
    gql,
    mutate,
    subscribe,
    transact,
)
from tests.test_subscriptions import drop_feed_listeners
from wallet import ledger

GOLD = "gold_coins"
HOLDS = """
query H($id: UUID!, $status: HoldStatus, $first: Int, $after: String) {
  wallet(userId: $id) {
    holds(status: $status, first: $first, after: $after) {
      nodes { id status amount }
      pageInfo { hasNextPage endCursor }
    }
    balances { amount held available }
  }
}
"""


def key() -> str:
    return str(uuid.uuid4())


def hold_input(user: uuid.UUID, amount: int | str, **extra: Any) -> dict[str, Any]:
    return {
        "userId": str(user),
        "amount": amount,
        "assetSlug": GOLD,
        "idempotencyKey": key(),
        **extra,
    }


def balance(amount: int, held: int) -> dict[str, str | dict[str, str]]:
    return {
        "asset": {"slug": GOLD},
        "amount": str(amount),
        "held": str(held),
        "available": str(amount - held),
    }


# --- holds


async def test_hold_then_capture_part_of_it(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user(gold=100)
    sent = hold_input(user, "30", reference="order-9", metadata={"sku": "X1"}, expiresInSeconds=60)
    made = await mutate(client, CREATE_HOLD, sent)
    assert made["__typename"] == "HoldSuccess"
    hold = made["hold"]
    assert (hold["status"], hold["amount"], hold["capturedAmount"]) == ("HELD", "30", "0")
    assert (hold["userId"], hold["user"], hold["asset"]) == (
        str(user),
        {"userId": str(user)},
        {"slug": GOLD},
    )
    assert (hold["reference"], hold["metadata"], hold["transaction"]) == (
        "order-9",
        {"sku": "X1"},
        None,
    )
    assert hold["expiresAt"] > hold["createdAt"]
    assert made["balance"] == balance(100, 30)
    assert made["replayed"] is False
    again = await mutate(client, CREATE_HOLD, sent)
    assert (again["replayed"], again["hold"]["id"]) == (True, hold["id"])
    poor = await mutate(client, CREATE_HOLD, hold_input(user, 71))
    assert poor["__typename"] == "InsufficientFunds"
    assert (poor["available"], poor["requested"], poor["balance"]) == ("70", "71", balance(100, 30))
    spend = await transact(client, user, 71)  # a SPEND is checked against what is available
    assert spend["__typename"] == "InsufficientFunds"

    capture = {"holdId": hold["id"], "amount": "20", "idempotencyKey": key()}
    captured = await mutate(client, CAPTURE_HOLD, capture)
    assert captured["__typename"] == "HoldSuccess"
    assert (captured["hold"]["status"], captured["hold"]["capturedAmount"]) == ("CAPTURED", "20")
    assert captured["hold"]["transaction"]["type"] == "SPEND"
    assert captured["hold"]["transaction"]["amount"] == "20"
    assert captured["balance"] == balance(80, 0)  # the rest is released at once
    replay = await mutate(client, CAPTURE_HOLD, capture)
    assert (replay["__typename"], replay["replayed"]) == ("HoldSuccess", True)
    finishing: list[tuple[str, dict[str, Any]]] = [
        (CAPTURE_HOLD, {"holdId": hold["id"], "idempotencyKey": key()}),
        (VOID_HOLD, {"holdId": hold["id"], "idempotencyKey": key()}),
    ]
    for document, sent_again in finishing:
        finished = await mutate(client, document, sent_again)
        assert finished["__typename"] == "HoldNotActive"
        assert (finished["code"], finished["status"]) == ("HOLD_NOT_ACTIVE", "CAPTURED")
    reused = await mutate(client, CAPTURE_HOLD, {**capture, "amount": "21"})
    assert reused["__typename"] == "IdempotencyKeyReused"
    assert await factory.balance(user) == 80


async def test_void_capture_to_a_user_expiry_and_refusals(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, seller = await factory.user(gold=50), await factory.user()
    first = (await mutate(client, CREATE_HOLD, hold_input(user, 10)))["hold"]
    voided = await mutate(client, VOID_HOLD, {"holdId": first["id"], "idempotencyKey": key()})
    assert (voided["hold"]["status"], voided["balance"]) == ("VOIDED", balance(50, 0))

    second = (await mutate(client, CREATE_HOLD, hold_input(user, 10)))["hold"]
    bad_captures: list[tuple[dict[str, Any], str]] = [
        ({"amount": "11"}, "amount"),
        ({"amount": 0}, "amount"),
        ({"toUserId": str(user)}, "toUserId"),
        ({"metadata": {"x": [1]}}, "metadata"),
        ({"idempotencyKey": ""}, "idempotencyKey"),
    ]
    for extra, field in bad_captures:
        refused = await mutate(
            client, CAPTURE_HOLD, {"holdId": second["id"], "idempotencyKey": key(), **extra}
        )
        assert (refused["__typename"], refused["field"]) == ("InvalidInput", field), extra
    to_seller = await mutate(
        client,
        CAPTURE_HOLD,
        {"holdId": second["id"], "toUserId": str(seller), "idempotencyKey": key()},
    )
    assert to_seller["hold"]["transaction"]["type"] == "TRANSFER"
    assert to_seller["balance"] == balance(40, 0)
    assert await factory.balance(seller) == 10
    nobody = await mutate(
        client,
        CAPTURE_HOLD,
        {"holdId": (await mutate(client, CREATE_HOLD, hold_input(user, 1)))["hold"]["id"],
         "toUserId": str(uuid.uuid4()), "idempotencyKey": key()},
    )  # fmt: skip
    assert (nobody["__typename"], nobody["code"]) == ("NotFound", "USER_NOT_FOUND")

    for document in (CAPTURE_HOLD, VOID_HOLD):
        unknown = await mutate(
            client, document, {"holdId": str(uuid.uuid4()), "idempotencyKey": key()}
        )
        assert (unknown["__typename"], unknown["code"]) == ("NotFound", "HOLD_NOT_FOUND")
    bad_holds: list[tuple[dict[str, Any], str]] = [
        ({"expiresInSeconds": 0}, "expiresInSeconds"),
        ({"expiresInSeconds": 604_801}, "expiresInSeconds"),
        ({"amount": 0}, "amount"),
        ({"reference": ""}, "reference"),
    ]
    for extra, field in bad_holds:
        refused = await mutate(client, CREATE_HOLD, {**hold_input(user, 1), **extra})
        assert (refused["__typename"], refused["field"]) == ("InvalidInput", field), extra
    missing = await mutate(client, CREATE_HOLD, hold_input(uuid.uuid4(), 1))
    assert (missing["__typename"], missing["code"]) == ("NotFound", "USER_NOT_FOUND")
    no_asset = await mutate(client, CREATE_HOLD, hold_input(user, 1, assetSlug="rubies"))
    assert (no_asset["__typename"], no_asset["code"]) == ("NotFound", "ASSET_NOT_FOUND")

    brief = (await mutate(client, CREATE_HOLD, hold_input(user, 5, expiresInSeconds=1)))["hold"]
    await asyncio.sleep(1.2)
    late = await mutate(client, CAPTURE_HOLD, {"holdId": brief["id"], "idempotencyKey": key()})
    assert (late["__typename"], late["code"]) == ("HoldExpired", "HOLD_EXPIRED")
    listed = await gql(client, HOLDS, {"id": str(user), "status": "EXPIRED"})
    assert [n["id"] for n in listed["data"]["wallet"]["holds"]["nodes"]] == [brief["id"]]


async def test_a_wallets_holds_page_by_status(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user(gold=100)
    made = [(await mutate(client, CREATE_HOLD, hold_input(user, i)))["hold"] for i in (1, 2, 3)]
    await mutate(client, VOID_HOLD, {"holdId": made[0]["id"], "idempotencyKey": key()})
    page = await gql(client, HOLDS, {"id": str(user), "first": 2})
    holds = page["data"]["wallet"]["holds"]
    assert [n["amount"] for n in holds["nodes"]] == ["3", "2"]
    assert holds["pageInfo"]["hasNextPage"] is True
    rest = await gql(
        client, HOLDS, {"id": str(user), "first": 2, "after": holds["pageInfo"]["endCursor"]}
    )
    assert rest["data"]["wallet"]["holds"] == {
        "nodes": [{"id": made[0]["id"], "status": "VOIDED", "amount": "1"}],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    }
    held = await gql(client, HOLDS, {"id": str(user), "status": "HELD"})
    assert [n["amount"] for n in held["data"]["wallet"]["holds"]["nodes"]] == ["3", "2"]
    assert held["data"]["wallet"]["balances"] == [{"amount": "100", "held": "5", "available": "95"}]
    bad_pages: list[dict[str, Any]] = [
        {"first": 0},
        {"first": 101},
        {"after": "e:1"},
        {"status": "NOPE"},
    ]
    for bad in bad_pages:
        refused = await gql(client, HOLDS, {"id": str(user), **bad})
        assert refused["errors"][0]["extensions"]["code"] == "VALIDATION_ERROR", bad


async def test_a_hold_key_used_by_the_core_replays_over_graphql(
    client: httpx.AsyncClient, factory: Factory, engine: AsyncEngine
) -> None:
    user = await factory.user(gold=10)
    sent = hold_input(user, 4)
    async with engine.begin() as conn:
        request = ledger.HoldRequest(user, GOLD, 4)
        made = await ledger.create_hold(conn, request, key=sent["idempotencyKey"], principal="")
    assert isinstance(made, ledger.HoldView)
    replay = await mutate(client, CREATE_HOLD, sent)
    assert (replay["replayed"], replay["hold"]["id"]) == (True, str(made.hold_id))


async def test_a_finished_hold_answers_its_status_whatever_the_capture_asks(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """The hold's status comes before the checks its body is made against (more than it held,
    its own user as recipient), as over REST: HoldNotActive, or HoldExpired."""
    user = await factory.user(gold=50)
    voided, captured, expiring = [
        (await mutate(client, CREATE_HOLD, hold_input(user, 10, **extra)))["hold"]
        for extra in ({}, {}, {"expiresInSeconds": 1})
    ]
    await mutate(client, VOID_HOLD, {"holdId": voided["id"], "idempotencyKey": key()})
    await mutate(client, CAPTURE_HOLD, {"holdId": captured["id"], "idempotencyKey": key()})
    await asyncio.sleep(1.2)
    expected = [
        (voided, ("HoldNotActive", "HOLD_NOT_ACTIVE")),
        (captured, ("HoldNotActive", "HOLD_NOT_ACTIVE")),
        (expiring, ("HoldExpired", "HOLD_EXPIRED")),
    ]
    for hold, answer in expected:
        for body in ({"amount": "11"}, {"toUserId": str(user)}):
            sent = {"holdId": hold["id"], "idempotencyKey": key(), **body}
            found = await mutate(client, CAPTURE_HOLD, sent)
            assert (found["__typename"], found["code"]) == answer, (hold["status"], body)
    assert await factory.balance(user) == 40


async def test_a_key_a_posting_used_names_its_transaction_on_every_hold_mutation(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=50)
    same_key = key()
    original = (await transact(client, user, 1, "TOPUP", key=same_key))["transaction"]["id"]
    hold_id = (await mutate(client, CREATE_HOLD, hold_input(user, 10)))["hold"]["id"]
    for document, sent in [
        (CREATE_HOLD, {**hold_input(user, 10), "idempotencyKey": same_key}),
        (CAPTURE_HOLD, {"holdId": hold_id, "idempotencyKey": same_key}),
        (VOID_HOLD, {"holdId": hold_id, "idempotencyKey": same_key}),
    ]:
        reused = await mutate(client, document, sent)
        assert reused["__typename"] == "IdempotencyKeyReused", reused
        assert reused["originalTransactionId"] == original
    assert await factory.balance(user) == 51


# --- batches


def op(kind: str, user: uuid.UUID, amount: int, **extra: Any) -> dict[str, Any]:
    return {"op": kind, "userId": str(user), "amount": amount, "assetSlug": GOLD, **extra}


def transfer_op(
    sender: uuid.UUID, recipient: uuid.UUID, amount: int, **extra: Any
) -> dict[str, Any]:
    return {"op": "TRANSFER", "fromUserId": str(sender), "toUserId": str(recipient),
            "amount": amount, "assetSlug": GOLD, **extra}  # fmt: skip


async def test_an_atomic_batch_is_all_or_nothing(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    a, b = await factory.user(gold=10), await factory.user(gold=10)
    operations = [
        op("BONUS", a, 5, reference="daily"),
        op("SPEND", b, 3),
        transfer_op(a, b, 4, metadata={"why": "gift"}),
        op("TOPUP", b, 1),
    ]
    sent = {"atomic": True, "operations": operations, "idempotencyKey": key()}
    done = await mutate(client, BATCH, sent)
    assert done["__typename"] == "BatchSuccess"
    assert done["replayed"] is False
    results = done["results"]
    assert [r["__typename"] for r in results] == [
        "TransactSuccess",
        "TransactSuccess",
        "TransferSuccess",
        "TransactSuccess",
    ]
    assert results[0]["transaction"]["reference"] == "daily"
    assert results[0]["balance"] == balance(15, 0)
    assert (results[2]["from"]["amount"], results[2]["to"]["amount"]) == ("11", "11")
    assert results[2]["transaction"]["metadata"] == {"why": "gift"}
    assert (await factory.balance(a), await factory.balance(b)) == (11, 12)
    again = await mutate(client, BATCH, sent)
    assert again["replayed"] is True
    assert [r["transaction"]["id"] for r in again["results"]] == [
        r["transaction"]["id"] for r in results
    ]

    failing = {
        "atomic": True,
        "operations": [op("BONUS", a, 5), op("SPEND", b, 1_000), op("BONUS", b, 5)],
        "idempotencyKey": key(),
    }
    failed = await mutate(client, BATCH, failing)
    assert failed["__typename"] == "BatchFailed"
    assert (failed["code"], failed["index"], failed["operationCode"]) == (
        "BATCH_FAILED",
        1,
        "INSUFFICIENT_FUNDS",
    )
    assert await mutate(client, BATCH, failing) == failed  # stored, and replayed as a refusal
    nobody = await mutate(
        client,
        BATCH,
        {"atomic": True, "operations": [op("BONUS", uuid.uuid4(), 1)], "idempotencyKey": key()},
    )
    assert (nobody["index"], nobody["operationCode"]) == (0, "USER_NOT_FOUND")
    assert (await factory.balance(a), await factory.balance(b)) == (11, 12)
    reused = await mutate(client, BATCH, {**failing, "operations": [op("BONUS", a, 6)]})
    assert (reused["__typename"], reused["code"]) == (
        "IdempotencyKeyReused",
        "IDEMPOTENCY_KEY_REUSED",
    )


async def test_a_batch_that_is_not_atomic_runs_each_operation_under_its_own_key(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    a, b = await factory.user(gold=10), await factory.user()
    keys = [key() for _ in range(5)]
    operations = [
        op("BONUS", a, 5, idempotencyKey=keys[0]),
        op("SPEND", b, 3, idempotencyKey=keys[1]),
        transfer_op(a, b, 4, idempotencyKey=keys[2]),
        op("TOPUP", uuid.uuid4(), 1, idempotencyKey=keys[3]),
        transfer_op(b, a, 100, idempotencyKey=keys[4]),
    ]
    sent = {"atomic": False, "operations": operations, "idempotencyKey": key()}
    done = await mutate(client, BATCH, sent)
    results = done["results"]
    assert [r["__typename"] for r in results] == [
        "TransactSuccess",
        "InsufficientFunds",
        "TransferSuccess",
        "NotFound",
        "InsufficientFunds",
    ]
    assert (results[1]["code"], results[1]["requested"]) == ("INSUFFICIENT_FUNDS", "3")
    assert results[1]["balance"] == balance(4, 0)  # read after the batch: the TRANSFER came
    assert (results[3]["code"], results[4]["available"]) == ("USER_NOT_FOUND", "4")
    assert (await factory.balance(a), await factory.balance(b)) == (11, 4)
    # An operation's own key replays through its own mutation, and in a retried batch.
    single = await mutate(
        client,
        TRANSFER,
        {"fromUserId": str(a), "toUserId": str(b), "amount": 4, "assetSlug": GOLD,
         "idempotencyKey": keys[2]},
    )  # fmt: skip
    assert (single["replayed"], single["transaction"]["id"]) == (
        True,
        results[2]["transaction"]["id"],
    )
    retry = await mutate(client, BATCH, {**sent, "idempotencyKey": key()})
    assert [r.get("replayed") for r in retry["results"]] == [True, None, True, None, None]
    assert (await factory.balance(a), await factory.balance(b)) == (11, 4)


async def test_a_refused_credit_of_a_batch_that_is_not_atomic_leaves_no_wallet(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """The batch opens the wallets its credits name before running them; a TRANSFER the sender
    cannot pay takes its recipient's new wallet away again, as the TRANSFER mutation opens none."""
    poor, newcomer = await factory.user(gold=1), await factory.user()
    sent = {
        "atomic": False,
        "operations": [transfer_op(poor, newcomer, 5, assetSlug="diamonds", idempotencyKey=key())],
        "idempotencyKey": key(),
    }
    done = await mutate(client, BATCH, sent)
    assert [r["__typename"] for r in done["results"]] == ["InsufficientFunds"]
    body = await gql(
        client,
        "query($id: UUID!) { wallet(userId: $id) { balances { asset { slug } amount } } }",
        {"id": str(newcomer)},
    )
    assert body == {"data": {"wallet": {"balances": []}}}


async def test_an_operations_reused_key_names_the_transaction_its_first_request_made(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """An operation's key is its route's key: used before for another request (by a TOPUP,
    which keeps its transaction apart, or by a TRANSFER), the operation's IdempotencyKeyReused
    names that request's transaction, as its own mutation would."""
    a, b = await factory.user(gold=10), await factory.user()
    topup_key, transfer_key = key(), key()
    topup = (await transact(client, a, 1, "TOPUP", key=topup_key))["transaction"]["id"]
    sent = {"fromUserId": str(a), "toUserId": str(b), "amount": 2, "assetSlug": GOLD,
            "idempotencyKey": transfer_key}  # fmt: skip
    moved = (await mutate(client, TRANSFER, sent))["transaction"]["id"]
    operations = [
        transfer_op(a, b, 1, idempotencyKey=topup_key),
        op("BONUS", a, 1, idempotencyKey=transfer_key),
    ]
    done = await mutate(
        client, BATCH, {"atomic": False, "operations": operations, "idempotencyKey": key()}
    )
    found = [(r["__typename"], r["originalTransactionId"]) for r in done["results"]]
    assert found == [("IdempotencyKeyReused", topup), ("IdempotencyKeyReused", moved)]
    assert (await factory.balance(a), await factory.balance(b)) == (9, 2)


async def test_a_malformed_batch_names_the_operation_and_runs_nothing(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    a, b = await factory.user(gold=10), await factory.user()
    good = op("BONUS", a, 1, idempotencyKey=key())
    cases: list[tuple[list[dict[str, Any]], bool, str]] = [
        ([], True, "operations"),
        ([good, op("BONUS", b, 1)], False, "operations[1].idempotencyKey"),
        ([good, op("SPEND", b, 0)], True, "operations[1].amount"),
        ([good, op("SPEND", b, 1, assetSlug="")], True, "operations[1].assetSlug"),
        ([good, {**transfer_op(a, b, 1), "toUserId": None}], True, "operations[1].toUserId"),
        ([good, {**transfer_op(a, b, 1), "fromUserId": None}], True, "operations[1].fromUserId"),
        ([good, transfer_op(a, a, 1)], True, "operations[1].toUserId"),
        ([good, {**transfer_op(a, b, 1), "userId": str(a)}], True, "operations[1].userId"),
        ([good, op("TOPUP", b, 1, toUserId=str(a))], True, "operations[1].toUserId"),
        ([good, {**op("TOPUP", b, 1), "userId": None}], True, "operations[1].userId"),
        ([good, op("TOPUP", b, 1, metadata={"a": {}})], True, "operations[1].metadata"),
        ([good, op("TOPUP", b, 1, reference="")], True, "operations[1].reference"),
        ([good, op("TOPUP", b, 1, idempotencyKey="")], True, "operations[1].idempotencyKey"),
    ]
    for operations, atomic, field in cases:
        sent = {"atomic": atomic, "operations": operations, "idempotencyKey": key()}
        refused = await mutate(client, BATCH, sent)
        assert (refused["__typename"], refused["field"]) == ("InvalidInput", field), field
        assert refused["code"] == "VALIDATION_ERROR"
    no_key = await mutate(
        client, BATCH, {"atomic": True, "operations": [good], "idempotencyKey": ""}
    )
    assert no_key["field"] == "idempotencyKey"
    assert (await factory.balance(a), await factory.balance(b)) == (10, 0)


# --- balanceChanged


BALANCE_CHANGED = """
subscription Changes($id: UUID!) {
  balanceChanged(userId: $id) { asset { slug } amount held available }
}
"""


async def live(client: httpx.AsyncClient, sub: Subscription, user: uuid.UUID) -> None:
    """TOPUP 1 until one is pushed: from then on the subscription is registered."""
    for _ in range(50):
        assert (await transact(client, user, 1, "TOPUP"))["__typename"] == "TransactSuccess"
        try:
            await sub.next(wait=0.5)
        except TimeoutError:
            continue
        while not await sub.nothing_within(0.3):  # drain probes still in flight
            pass
        return
    raise AssertionError("the subscription never went live")


def pushed(payload: dict[str, Any]) -> tuple[str, str, str]:
    change = payload["data"]["balanceChanged"]
    return change["amount"], change["held"], change["available"]


async def test_transfers_and_reversals_are_pushed_to_both_wallets(
    base_url: str, client: httpx.AsyncClient, factory: Factory
) -> None:
    a, b = await factory.user(gold=20), await factory.user(gold=5)
    async with (
        subscribe(base_url, BALANCE_CHANGED, {"id": str(a)}) as to_a,
        subscribe(base_url, BALANCE_CHANGED, {"id": str(b)}) as to_b,
    ):
        await live(client, to_a, a)
        await live(client, to_b, b)
        at_a, at_b = await factory.balance(a), await factory.balance(b)
        sent = await mutate(
            client,
            TRANSFER,
            {"fromUserId": str(a), "toUserId": str(b), "amount": 7, "assetSlug": GOLD,
             "idempotencyKey": key()},
        )  # fmt: skip
        assert pushed(await to_a.next()) == (str(at_a - 7), "0", str(at_a - 7))
        assert pushed(await to_b.next()) == (str(at_b + 7), "0", str(at_b + 7))
        back = await mutate(
            client,
            REVERSE,
            {"transactionId": sent["transaction"]["id"], "amount": 2, "idempotencyKey": key()},
        )
        assert back["__typename"] == "ReverseSuccess"
        assert pushed(await to_a.next()) == (str(at_a - 5), "0", str(at_a - 5))
        assert pushed(await to_b.next()) == (str(at_b + 5), "0", str(at_b + 5))
        assert await to_a.nothing_within(0.5)
        assert await to_b.nothing_within(0.5)


async def test_holds_are_pushed_though_the_balance_stays(
    base_url: str, client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=50)
    async with subscribe(base_url, BALANCE_CHANGED, {"id": str(user)}) as sub:
        await live(client, sub, user)
        n = await factory.balance(user)

        def state(amount: int, held: int) -> tuple[str, str, str]:
            return str(amount), str(held), str(amount - held)

        first = (await mutate(client, CREATE_HOLD, hold_input(user, 20)))["hold"]
        assert pushed(await sub.next()) == state(n, 20)
        second = (await mutate(client, CREATE_HOLD, hold_input(user, 11)))["hold"]
        assert pushed(await sub.next()) == state(n, 31)
        await mutate(client, VOID_HOLD, {"holdId": first["id"], "idempotencyKey": key()})
        assert pushed(await sub.next()) == state(n, 11)
        await mutate(
            client, CAPTURE_HOLD, {"holdId": second["id"], "amount": 6, "idempotencyKey": key()}
        )
        assert pushed(await sub.next()) == state(n - 6, 0)
        refused = await mutate(client, CREATE_HOLD, hold_input(user, n - 5))
        assert refused["__typename"] == "InsufficientFunds"
        spent = await mutate(
            client, TRANSACT, {"userId": str(user), "amount": 5, "assetSlug": GOLD,
                               "type": "SPEND", "idempotencyKey": key()}
        )  # fmt: skip
        assert spent["__typename"] == "TransactSuccess"
        assert pushed(await sub.next()) == state(n - 11, 0)  # the refusal pushed nothing
        brief = await mutate(client, CREATE_HOLD, hold_input(user, 3, expiresInSeconds=1))
        assert pushed(await sub.next()) == state(n - 11, 3)
        await asyncio.sleep(1.2)
        late = {"holdId": brief["hold"]["id"], "idempotencyKey": key()}
        assert (await mutate(client, CAPTURE_HOLD, late))["__typename"] == "HoldExpired"
        # Released once, by whoever came first: this capture, or the sweeper.
        assert pushed(await sub.next()) == state(n - 11, 0)
        assert await sub.nothing_within(0.5)


async def test_a_hold_made_while_the_listener_is_away_is_pushed_after_the_resync(
    base_url: str, client: httpx.AsyncClient, factory: Factory, engine: AsyncEngine
) -> None:
    """Entries do not record holds, so a resync compares what each account holds now with what
    was pushed, and pushes the account once more if only that changed."""
    user = await factory.user(gold=30)
    async with subscribe(base_url, BALANCE_CHANGED, {"id": str(user)}) as sub:
        await live(client, sub, user)
        n = await factory.balance(user)
        async with engine.begin() as conn:  # commits while no listener listens: unheard
            request = ledger.HoldRequest(user, GOLD, 10)
            made = await ledger.create_hold(conn, request, key=key(), principal="t")
            assert isinstance(made, ledger.HoldView)
            assert await drop_feed_listeners(engine)
        assert pushed(await sub.next(wait=20)) == (str(n), "10", str(n - 10))
        assert await sub.nothing_within(1.5)


async def test_a_capture_after_the_sweep_is_hold_expired_as_before_it(
    client: httpx.AsyncClient, factory: Factory, engine: AsyncEngine
) -> None:
    """The same answer as before the sweeper released the hold (and as REST's); a void of an
    expired hold is HOLD_NOT_ACTIVE: it is no longer HELD."""
    user = await factory.user(gold=20)
    made = await mutate(client, CREATE_HOLD, hold_input(user, 5, expiresInSeconds=1))
    hold_id = made["hold"]["id"]
    await asyncio.sleep(1.2)
    async with engine.begin() as conn:  # what `wallet serve`'s sweeper does (if not done yet)
        await conn.execute(text("SELECT wallet_expire_holds(1000)"))
    async with engine.connect() as conn:
        found = await ledger.holds_by_id(conn, [uuid.UUID(hold_id)])
    assert found[uuid.UUID(hold_id)].status == "EXPIRED"
    late = await mutate(client, CAPTURE_HOLD, {"holdId": hold_id, "idempotencyKey": key()})
    assert (late["__typename"], late["code"]) == ("HoldExpired", "HOLD_EXPIRED")
    void = await mutate(client, VOID_HOLD, {"holdId": hold_id, "idempotencyKey": key()})
    assert (void["__typename"], void["status"]) == ("HoldNotActive", "EXPIRED")
    assert await factory.balance(user) == 20
