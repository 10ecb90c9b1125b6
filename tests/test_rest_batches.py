"""POST /api/wallet/batch over real HTTP, line by line of the contract: validation before
anything runs, atomic and non-atomic semantics, keys, body size, auth, and concurrent batches
over overlapping wallets (real parallel connections against a real server and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import create_database, drop_database, start_server
from tests.factories import Factory
from tests.test_auth import SECRET, KeyedServer, keyed_server, token
from tests.test_rest_contract import (
    ALICE,
    BOB,
    MAX_AMOUNT,
    MAX_BODY,
    MISSING,
    TRANSACT,
    TRANSACT_KEYS,
    assert_error,
    assert_ok,
    assert_replayed,
    history_ids,
    history_pages,
    is_uuid,
    new_key,
    send_body,
    with_field,
)
from wallet import auth, ledger
from wallet.cli import _run, migrate
from wallet.seed import seed

BATCH = "/api/wallet/batch"
GOLD = "gold_coins"
MAX_OPERATIONS = 1000
MAX_BATCH_BODY = 1024 * 1024
TRANSFER_KEYS = {
    "transactionId",
    "status",
    "type",
    "fromUserId",
    "toUserId",
    "assetSlug",
    "amount",
    "fromBalanceAfter",
    "toBalanceAfter",
    "reference",
    "metadata",
    "createdAt",
}
Json = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def op(kind: str, user: uuid.UUID | str, amount: object = 10, **extra: object) -> Json:
    return {"op": kind, "userId": str(user), "amount": amount, "assetSlug": GOLD, **extra}


def transfer_op(
    sender: uuid.UUID | str, recipient: uuid.UUID | str, amount: object = 10, **extra: object
) -> Json:
    return {
        "op": "TRANSFER",
        "fromUserId": str(sender),
        "toUserId": str(recipient),
        "amount": amount,
        "assetSlug": GOLD,
        **extra,
    }


def keyed(*ops: Json) -> list[Json]:
    """The operations, each under a fresh idempotencyKey (what a non-atomic batch needs)."""
    return [{**o, "idempotencyKey": new_key()} for o in ops]


async def post_batch(
    client: httpx.AsyncClient,
    body: Mapping[str, object] | bytes,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Idempotency-Key": key or new_key(), **(headers or {})}
    return await client.post(BATCH, content=content, headers=all_headers)


def batch(atomic: bool, operations: list[Json]) -> Json:
    return {"atomic": atomic, "operations": operations}


async def gold(client: httpx.AsyncClient, user: uuid.UUID | str) -> int:
    return await balance_in(client, user, GOLD)


async def balance_in(client: httpx.AsyncClient, user: uuid.UUID | str, slug: str) -> int:
    rows = assert_ok(await client.get(f"/api/wallet/balance/{user}"))
    return next((int(r["balance"]) for r in rows if r["slug"] == slug), 0)


async def golds(client: httpx.AsyncClient, users: list[uuid.UUID]) -> list[int]:
    return [await gold(client, u) for u in users]


async def audit_ok(client: httpx.AsyncClient) -> None:
    report = assert_ok(await client.get("/api/admin/audit"))
    assert report["ok"] is True, report["breaches"]


def results(response: httpx.Response) -> list[Json]:
    data = assert_ok(response)
    assert set(data) == {"results"}
    found: list[Json] = data["results"]
    return found


# --------------------------------------------------------------------------------------------
# Atomic batches
# --------------------------------------------------------------------------------------------


async def test_an_atomic_batch_answers_each_operation_as_its_own_route(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    a, b, c = await factory.user(gold=50), await factory.user(gold=5), await factory.user()
    operations = [
        op("TOPUP", a, 10, reference="r-1"),
        op("BONUS", b, 5, metadata={"campaign": "midnight", "day": 3}),
        op("SPEND", a, 20),
        transfer_op(a, c, 15, reference="gift", metadata={"note": "hi"}),
        op("SPEND", c, "5"),
    ]
    response = await post_batch(client, batch(True, operations))
    found = results(response)
    assert response.headers.get("Idempotent-Replayed") is None
    assert len(found) == 5
    for item in found[:3] + found[4:]:
        assert set(item) == TRANSACT_KEYS | {"reference", "metadata"}
        assert is_uuid(item["transactionId"])
        assert item["status"] == "COMPLETED"
    topup, bonus, spend, transfer, spend_c = found
    assert (topup["type"], topup["userId"], topup["amount"]) == ("TOPUP", str(a), 10)
    assert (topup["balanceBefore"], topup["balanceAfter"], topup["reference"]) == (
        "50",
        "60",
        "r-1",
    )
    assert (bonus["balanceBefore"], bonus["balanceAfter"]) == ("5", "10")
    assert bonus["metadata"] == {"day": 3, "campaign": "midnight"}
    assert (spend["type"], spend["balanceBefore"], spend["balanceAfter"]) == ("SPEND", "60", "40")
    assert set(transfer) == TRANSFER_KEYS
    assert (transfer["type"], transfer["status"], transfer["amount"]) == (
        "TRANSFER",
        "COMPLETED",
        15,
    )
    assert (transfer["fromUserId"], transfer["toUserId"]) == (str(a), str(c))
    assert (transfer["fromBalanceAfter"], transfer["toBalanceAfter"]) == ("25", "15")
    assert (transfer["reference"], transfer["metadata"]) == ("gift", {"note": "hi"})
    assert (spend_c["amount"], spend_c["balanceAfter"]) == (5, "10")
    assert await golds(client, [a, b, c]) == [25, 10, 10]
    assert len({item["transactionId"] for item in found}) == 5
    assert set(await history_ids(client, a)) >= {topup["transactionId"], transfer["transactionId"]}
    await audit_ok(client)


async def test_an_atomic_batch_is_replayed_under_its_key_and_moves_nothing_again(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    body = batch(True, [op("BONUS", user, 3), op("SPEND", user, 4)])
    key = new_key()
    first = await post_batch(client, body, key=key)
    assert_ok(first)
    again = await post_batch(client, body, key=key)
    assert_replayed(first, again)
    assert await gold(client, user) == 9


@pytest.mark.parametrize(
    ("failing", "code"),
    [
        ("spend", "INSUFFICIENT_FUNDS"),
        ("transfer", "INSUFFICIENT_FUNDS"),
        ("user", "USER_NOT_FOUND"),
        ("asset", "ASSET_NOT_FOUND"),
        ("recipient", "USER_NOT_FOUND"),
    ],
)
async def test_an_atomic_batch_fails_whole_naming_the_first_failure_stored_and_replayed(
    client: httpx.AsyncClient, factory: Factory, failing: str, code: str
) -> None:
    a, b = await factory.user(gold=20), await factory.user(gold=20)
    bad = {
        "spend": op("SPEND", a, 1_000),
        "transfer": transfer_op(b, a, 1_000),
        "user": op("BONUS", uuid.uuid4(), 1),
        "asset": {**op("TOPUP", a, 1), "assetSlug": "no_such_asset"},
        "recipient": transfer_op(a, uuid.uuid4(), 1),
    }[failing]
    operations = [op("TOPUP", a, 5), transfer_op(a, b, 7), bad, op("SPEND", b, 10_000)]
    before = (
        await golds(client, [a, b]),
        await history_ids(client, a),
        await history_ids(client, b),
    )
    key = new_key()
    first = await post_batch(client, batch(True, operations), key=key)
    error = assert_error(first, 422, "BATCH_FAILED")
    assert error["details"] == {"index": 2, "code": code}
    after = (
        await golds(client, [a, b]),
        await history_ids(client, a),
        await history_ids(client, b),
    )
    assert after == before  # nothing moved, not even the operations before the failure
    again = await post_batch(client, batch(True, operations), key=key)
    assert_replayed(first, again)
    # Stored: even once the batch could succeed, its key keeps answering the failure.
    await factory.transact(a, 5_000, "TOPUP")
    await factory.transact(b, 5_000, "TOPUP")
    assert_replayed(first, await post_batch(client, batch(True, operations), key=key))
    await audit_ok(client)


async def test_an_atomic_batch_with_operation_keys_keeps_them_only_if_it_succeeds(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    op_key = new_key()
    failing = [op("BONUS", user, 5, idempotencyKey=op_key), op("SPEND", user, 1_000)]
    assert_error(await post_batch(client, batch(True, failing)), 422, "BATCH_FAILED")
    # The failed batch rolled its operation's key back with everything else: the route runs it.
    single = {"userId": str(user), "amount": 5, "assetSlug": GOLD, "type": "BONUS"}
    response = await client.post(
        "/api/wallet/transact", json=single, headers={"Idempotency-Key": op_key}
    )
    assert_ok(response)
    assert response.headers.get("Idempotent-Replayed") is None
    # In a batch now, that key replays the route's posting: the batch succeeds, moves nothing new.
    replayed = results(
        await post_batch(client, batch(True, [op("BONUS", user, 5, idempotencyKey=op_key)]))
    )
    assert replayed[0] == assert_ok(response)
    assert await gold(client, user) == 15


async def test_an_atomic_operation_key_used_for_another_request_fails_the_batch(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    op_key = new_key()
    assert_ok(await post_batch(client, batch(True, [op("BONUS", user, 5, idempotencyKey=op_key)])))
    reused = batch(True, [op("TOPUP", user, 1), op("BONUS", user, 6, idempotencyKey=op_key)])
    error = assert_error(await post_batch(client, reused), 422, "BATCH_FAILED")
    assert error["details"] == {"index": 1, "code": "IDEMPOTENCY_KEY_REUSED"}
    assert await gold(client, user) == 15


# --------------------------------------------------------------------------------------------
# Non-atomic batches
# --------------------------------------------------------------------------------------------


async def test_a_non_atomic_batch_runs_each_operation_on_its_own_in_input_order(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    a, b = await factory.user(gold=30), await factory.user(gold=1)
    operations = keyed(
        op("BONUS", a, 10),
        op("SPEND", b, 100),
        transfer_op(a, b, 15),
        op("TOPUP", uuid.uuid4(), 1),
        {**op("TOPUP", a, 1), "assetSlug": "no_such_asset"},
        transfer_op(b, a, 1_000),
        transfer_op(a, uuid.uuid4(), 1),
        op("SPEND", a, 25),
    )
    response = await post_batch(client, batch(False, operations))
    found = results(response)
    assert [r["status"] for r in found] == [200, 422, 200, 404, 404, 422, 404, 200]
    for item in found:
        if item["status"] == 200:
            assert set(item) == {"status", "data"}
        else:
            assert (
                {"status", "code", "message"}
                <= set(item)
                <= {
                    "status",
                    "code",
                    "message",
                    "details",
                }
            )
            assert isinstance(item["message"], str)
            assert item["message"]
    details = [sorted(r.get("details", {})) for r in found]  # as their routes give them
    assert details == [[], [], [], [], [], ["available"], [], []]
    assert [r.get("code") for r in found] == [
        None,
        "INSUFFICIENT_FUNDS",
        None,
        "USER_NOT_FOUND",
        "ASSET_NOT_FOUND",
        "INSUFFICIENT_FUNDS",
        "USER_NOT_FOUND",
        None,
    ]
    # Each names what it could not find, as its own route does (a TRANSFER has two users).
    assert found[3]["message"] == f"User {operations[3]['userId']} not found."
    assert found[4]["message"] == "Asset 'no_such_asset' not found."
    assert found[6]["message"] == f"User {operations[6]['toUserId']} not found."
    bonus, transfer, spend = found[0]["data"], found[2]["data"], found[7]["data"]
    assert set(bonus) == TRANSACT_KEYS | {"reference", "metadata"}
    assert (bonus["type"], bonus["balanceAfter"]) == ("BONUS", "40")
    assert set(transfer) == TRANSFER_KEYS
    assert (transfer["fromBalanceAfter"], transfer["toBalanceAfter"]) == ("25", "16")
    assert (spend["balanceBefore"], spend["balanceAfter"]) == ("25", "0")
    assert await golds(client, [a, b]) == [0, 16]
    await audit_ok(client)


async def test_each_operation_answers_exactly_as_its_own_route_under_its_key(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """An operation's key is its route's key: the route replays the batch's posting, and the
    batch's data for it is the route's answer, byte for byte."""
    a, b = await factory.user(gold=50), await factory.user()
    topup = op("TOPUP", a, 7, reference="x-1", metadata={"zeta": 1, "a": True, "mid": "m"})
    transfer = transfer_op(a, b, 9, metadata={"long_key": 1, "k": 2})
    operations = keyed(topup, transfer)
    found = results(await post_batch(client, batch(False, operations)))

    route_topup = {k: v for k, v in topup.items() if k != "op"} | {"type": "TOPUP"}
    replay = await client.post(
        "/api/wallet/transact",
        content=json.dumps(route_topup).encode(),
        headers={"Idempotency-Key": operations[0]["idempotencyKey"]},
    )
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert (
        replay.content
        == json.dumps({"success": True, "data": found[0]["data"]}, separators=(",", ":")).encode()
    )

    route_transfer = {k: v for k, v in transfer.items() if k != "op"}
    replay = await client.post(
        "/api/wallet/transfer",
        content=json.dumps(route_transfer).encode(),
        headers={"Idempotency-Key": operations[1]["idempotencyKey"]},
    )
    if replay.status_code != 404:  # the transfer route (REST v2) is there
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert (
            replay.content
            == json.dumps(
                {"success": True, "data": found[1]["data"]}, separators=(",", ":")
            ).encode()
        )
    assert await golds(client, [a, b]) == [48, 9]


async def test_a_refused_operation_answers_its_routes_code_message_and_details(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """Replayed under its key, the route answers the batch's refusal: the operation's error is
    the route's, `details` included (an INSUFFICIENT_FUNDS says what is available)."""
    a, b = await factory.user(gold=5), await factory.user()
    spend, transfer = op("SPEND", a, 8), transfer_op(a, b, 9)
    operations = keyed(spend, transfer)
    found = results(await post_batch(client, batch(False, operations)))
    routes = [
        ("/api/wallet/transact", {k: v for k, v in spend.items() if k != "op"} | {"type": "SPEND"}),
        ("/api/wallet/transfer", {k: v for k, v in transfer.items() if k != "op"}),
    ]
    for (path, body), operation, result in zip(routes, operations, found, strict=True):
        alone = await client.post(
            path, json=body, headers={"Idempotency-Key": operation["idempotencyKey"]}
        )
        assert alone.status_code == result["status"] == 422
        assert alone.json() == {"success": False} | {
            k: v for k, v in result.items() if k != "status"
        }
    assert found[1]["details"]["available"] == "5"
    assert await golds(client, [a, b]) == [5, 0]


async def test_a_retried_non_atomic_batch_replays_what_was_done_and_runs_the_rest(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    a = await factory.user(gold=10)
    late = uuid.uuid4()  # not a user yet: its operation fails without being stored
    operations = keyed(op("BONUS", a, 5), op("SPEND", a, 100), op("BONUS", late, 3))
    first = results(await post_batch(client, batch(False, operations)))
    assert [r["status"] for r in first] == [200, 422, 404]
    created = await client.post("/api/users", json={"id": str(late), "username": f"l-{late}"})
    assert_ok(created, 201)
    await factory.transact(a, 1_000, "TOPUP")

    retry = results(await post_batch(client, batch(False, operations)))  # a new batch key
    assert retry[0] == first[0]  # replayed: the same posting, nothing moved again
    assert retry[1] == first[1]  # the stored refusal, though the SPEND is affordable now
    assert retry[2]["status"] == 200  # the not-found was not stored: it runs now
    assert retry[2]["data"]["balanceAfter"] == "3"
    assert await golds(client, [a, late]) == [1_015, 3]


async def test_a_non_atomic_batch_is_replayed_under_its_own_key(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    body = batch(False, keyed(op("BONUS", user, 5), op("SPEND", user, 100)))
    key = new_key()
    first = await post_batch(client, body, key=key)
    assert_ok(first)
    assert_replayed(first, await post_batch(client, body, key=key))
    assert await gold(client, user) == 15


async def test_an_operation_key_reused_for_another_request_fails_that_operation_alone(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    op_key = new_key()
    assert_ok(await post_batch(client, batch(False, [op("BONUS", user, 5, idempotencyKey=op_key)])))
    operations = [op("BONUS", user, 6, idempotencyKey=op_key), *keyed(op("TOPUP", user, 1))]
    found = results(await post_batch(client, batch(False, operations)))
    assert (found[0]["status"], found[0]["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert found[1]["status"] == 200
    assert await gold(client, user) == 16


async def test_the_same_operation_key_twice_in_one_batch_runs_once(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    op_key = new_key()
    twice = [op("BONUS", user, 5, idempotencyKey=op_key)] * 2
    found = results(await post_batch(client, batch(False, twice)))
    assert found[0] == found[1]
    assert await gold(client, user) == 15


@pytest.mark.parametrize("atomic", [False, True])
async def test_an_operation_under_the_batchs_own_key_finds_it_used(
    client: httpx.AsyncClient, factory: Factory, atomic: bool
) -> None:
    """The batch's key and its operations' are claimed in one pass: the batch's comes first, and
    an operation under it finds it used by another request (the batch), as on its route. The
    answer is stored and replayed under the batch's key, and nothing moved."""
    user = await factory.user(gold=10)
    key = new_key()
    body = batch(atomic, [*keyed(op("BONUS", user, 5)), op("BONUS", user, 6, idempotencyKey=key)])
    first = await post_batch(client, body, key=key)
    if atomic:
        error = assert_error(first, 422, "BATCH_FAILED")
        assert error["details"] == {"index": 1, "code": "IDEMPOTENCY_KEY_REUSED"}
    else:
        found = results(first)
        assert found[0]["status"] == 200
        assert (found[1]["status"], found[1]["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert_replayed(first, await post_batch(client, body, key=key))
    assert await gold(client, user) == (10 if atomic else 15)


@pytest.mark.parametrize("fails", [False, True])
async def test_one_atomic_batch_sent_at_once_many_times_runs_once(
    client: httpx.AsyncClient, factory: Factory, fails: bool
) -> None:
    """A failed atomic batch rolls back its key with the rest, then claims it again to store the
    failure: the copies that waited for it get one stored answer, as when it succeeds."""
    user = await factory.user(gold=10)
    key = new_key()
    body = batch(True, keyed(op("BONUS", user, 5), op("SPEND", user, 100 if fails else 1)))
    answers = await asyncio.gather(*(post_batch(client, body, key=key) for _ in range(12)))
    first = [a for a in answers if a.headers.get("Idempotent-Replayed") is None]
    assert len(first) == 1
    for again in answers:
        assert (again.status_code, again.content) == (first[0].status_code, first[0].content)
    assert first[0].status_code == (422 if fails else 200)
    assert await gold(client, user) == (10 if fails else 14)


@pytest.mark.parametrize("second", ["TOPUP", "TRANSFER"])
async def test_a_key_whose_first_operation_names_no_one_is_the_next_operations(
    client: httpx.AsyncClient, factory: Factory, second: str
) -> None:
    """Run in order, the first operation under the key fails (an unknown user) and leaves it
    free, so the next one under it runs, as the two sent one after the other to their routes.
    The key was claimed for the first, whose failure then left the second half a claim: a TRANSFER
    answered 500 and kept a key without an outcome, a TOPUP failed its commit."""
    user, other = await factory.user(gold=10), await factory.user()
    key = new_key()
    then = op("TOPUP", user, 4) if second == "TOPUP" else transfer_op(user, other, 4)
    operations = [
        op("TOPUP", uuid.uuid4(), 5, idempotencyKey=key),
        {**then, "idempotencyKey": key},
        *keyed(op("BONUS", user, 1)),
    ]
    body = batch(False, operations)
    batch_key = new_key()
    first = await post_batch(client, body, key=batch_key)
    found = results(first)
    assert [r["status"] for r in found] == [404, 200, 200]
    assert found[0]["code"] == "USER_NOT_FOUND"
    assert_replayed(first, await post_batch(client, body, key=batch_key))
    route = "/api/wallet/transact" if second == "TOPUP" else "/api/wallet/transfer"
    alone = {k: v for k, v in then.items() if k != "op"} | (
        {"type": "TOPUP"} if second == "TOPUP" else {}
    )
    replay = await client.post(route, json=alone, headers={"Idempotency-Key": key})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["data"] == found[1]["data"]
    assert await golds(client, [user, other]) == ([15, 0] if second == "TOPUP" else [7, 4])
    await audit_ok(client)


# --------------------------------------------------------------------------------------------
# The batch's own key, and validation before anything runs
# --------------------------------------------------------------------------------------------


async def test_a_batch_needs_an_idempotency_key(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    response = await client.post(BATCH, json=batch(True, [op("BONUS", user, 1)]))
    assert_error(response, 400, "IDEMPOTENCY_KEY_MISSING")
    bad_key = await client.post(
        BATCH, json=batch(True, [op("BONUS", user, 1)]), headers={"Idempotency-Key": "k" * 256}
    )
    assert_error(bad_key, 400, "VALIDATION_ERROR")
    assert await gold(client, user) == 10


async def test_a_batch_key_reused_for_another_batch_is_422(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    key = new_key()
    assert_ok(await post_batch(client, batch(True, [op("BONUS", user, 1)]), key=key))
    for other in [
        batch(True, [op("BONUS", user, 2)]),
        batch(False, keyed(op("BONUS", user, 1))),
        batch(True, [op("BONUS", user, 1), op("BONUS", user, 1)]),
        batch(True, [op("BONUS", user, 1, idempotencyKey="x")]),
    ]:
        assert_error(await post_batch(client, other, key=key), 422, "IDEMPOTENCY_KEY_REUSED")
    assert await gold(client, user) == 11


@pytest.mark.parametrize("kind", ["TOPUP", "BONUS", "SPEND"])
async def test_a_batch_key_a_posting_used_names_its_transaction(
    client: httpx.AsyncClient, factory: Factory, kind: str
) -> None:
    """A key is one request whatever the route, and the refusal names the transaction its first
    request made, also when that was a TOPUP, BONUS or SPEND (which keep it apart)."""
    user = await factory.user(gold=10)
    key = new_key()
    sent = {"userId": str(user), "amount": 1, "assetSlug": GOLD, "type": kind}
    response = await client.post(TRANSACT, json=sent, headers={"Idempotency-Key": key})
    posted = assert_ok(response)
    for atomic in (True, False):
        reused = await post_batch(client, batch(atomic, keyed(op("BONUS", user, 1))), key=key)
        error = assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED")
        assert error["details"]["originalTransactionId"] == posted["transactionId"]
    assert await gold(client, user) == (9 if kind == "SPEND" else 11)


@pytest.mark.parametrize("atomic", [True, False])
@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("op", MISSING), "op"),
        (("op", "REFUND"), "op"),
        (("op", "topup"), "op"),
        (("op", 1), "op"),
        (("userId", MISSING), "userId"),
        (("userId", "nope"), "userId"),
        (("amount", MISSING), "amount"),
        (("amount", 0), "amount"),
        (("amount", -1), "amount"),
        (("amount", 1.5), "amount"),
        (("amount", "1e3"), "amount"),
        (("amount", True), "amount"),
        (("amount", MAX_AMOUNT + 1), "amount"),
        (("assetSlug", MISSING), "assetSlug"),
        (("assetSlug", ""), "assetSlug"),
        (("reference", "r" * 129), "reference"),
        (("metadata", {"a": {"b": 1}}), "metadata"),
        (("metadata", [1]), "metadata"),
        (("idempotencyKey", ""), "idempotencyKey"),
        (("idempotencyKey", 5), "idempotencyKey"),
        (("idempotencyKey", "k" * 256), "idempotencyKey"),
        (("fromUserId", ALICE), "fromUserId"),
        (("toUserId", ALICE), "toUserId"),
        (("type", "TOPUP"), "type"),  # the route's name for op, if sent, must agree
    ],
)
async def test_a_malformed_operation_is_400_naming_it_and_nothing_runs(
    client: httpx.AsyncClient,
    factory: Factory,
    atomic: bool,
    change: tuple[str, object],
    field: str,
) -> None:
    user = await factory.user(gold=10)
    good = keyed(op("BONUS", user, 1), op("TOPUP", user, 2), op("SPEND", user, 3))
    bad = with_field(good[2], *change)
    response = await post_batch(client, batch(atomic, [*good[:2], bad, good[0]]))
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == f"operations[2].{field}"
    assert f"operations[2].{field}" in error["message"]
    assert await gold(client, user) == 10


@pytest.mark.parametrize("atomic", [True, False])
@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("fromUserId", MISSING), "fromUserId"),
        (("fromUserId", "x"), "fromUserId"),
        (("toUserId", MISSING), "toUserId"),
        (("toUserId", 3), "toUserId"),
        (("toUserId", BOB), "toUserId"),  # the sender itself
        (("userId", BOB), "userId"),
        (("amount", "-1"), "amount"),
    ],
)
async def test_a_malformed_transfer_operation_is_400_naming_it(
    client: httpx.AsyncClient,
    factory: Factory,
    atomic: bool,
    change: tuple[str, object],
    field: str,
) -> None:
    user = await factory.user(gold=10)
    bad = with_field({**transfer_op(BOB, ALICE, 1), "idempotencyKey": new_key()}, *change)
    response = await post_batch(client, batch(atomic, [*keyed(op("BONUS", user, 1)), bad]))
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == f"operations[1].{field}"
    assert await gold(client, user) == 10


async def test_null_fields_of_the_other_kind_of_operation_are_as_good_as_absent(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    a, b = await factory.user(gold=10), await factory.user()
    operations = [
        op("BONUS", a, 1, fromUserId=None, toUserId=None, type="BONUS"),
        {**transfer_op(a, b, 2), "userId": None, "type": None},
    ]
    assert len(results(await post_batch(client, batch(True, operations)))) == 2
    assert await golds(client, [a, b]) == [9, 2]


async def test_a_non_atomic_batch_needs_every_operations_key(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    operations = [*keyed(op("BONUS", user, 1), op("BONUS", user, 1)), op("BONUS", user, 1)]
    error = assert_error(
        await post_batch(client, batch(False, operations)), 400, "VALIDATION_ERROR"
    )
    assert error["details"]["field"] == "operations[2].idempotencyKey"
    assert_ok(await post_batch(client, batch(True, operations)))  # optional when atomic
    assert await gold(client, user) == 13


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"operations": [op("BONUS", ALICE, 1)]}, "atomic"),
        ({"atomic": None, "operations": [op("BONUS", ALICE, 1)]}, "atomic"),
        ({"atomic": "true", "operations": [op("BONUS", ALICE, 1)]}, "atomic"),
        ({"atomic": 1, "operations": [op("BONUS", ALICE, 1)]}, "atomic"),
        ({"atomic": True}, "operations"),
        ({"atomic": True, "operations": []}, "operations"),
        ({"atomic": True, "operations": {"0": op("BONUS", ALICE, 1)}}, "operations"),
        ({"atomic": True, "operations": None}, "operations"),
        ({"atomic": True, "operations": [op("BONUS", ALICE, 1), 7]}, "operations[1]"),
        ({"atomic": True, "operations": [[op("BONUS", ALICE, 1)]]}, "operations[0]"),
        ({"atomic": True, "operations": [None]}, "operations[0]"),
    ],
)
async def test_a_malformed_batch_is_400_naming_the_field(
    client: httpx.AsyncClient, body: Json, field: str
) -> None:
    error = assert_error(await post_batch(client, body), 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == field


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b"{", b'{"atomic": true, "atomic": false}'])
async def test_a_batch_body_that_is_not_a_json_object_is_400(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    assert_error(await post_batch(client, raw), 400, "VALIDATION_ERROR")


async def test_a_thousand_operations_run_and_a_thousand_and_one_are_refused(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    users = [await factory.user() for _ in range(10)]
    operations = [op("BONUS", users[n % 10], 1) for n in range(MAX_OPERATIONS)]
    too_many = await post_batch(client, batch(True, [*operations, op("BONUS", users[0], 1)]))
    error = assert_error(too_many, 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == "operations"
    assert await golds(client, users) == [0] * 10
    found = results(await post_batch(client, batch(True, operations)))
    assert len(found) == MAX_OPERATIONS
    assert [int(r["balanceAfter"]) for r in found[:20]] == [1] * 10 + [2] * 10
    assert await golds(client, users) == [100] * 10
    await audit_ok(client)


# --------------------------------------------------------------------------------------------
# Body size: up to 1 MiB on the batch route, other routes keep 64 KiB
# --------------------------------------------------------------------------------------------


def padded(body: Json, size: int) -> bytes:
    encoded = json.dumps(body).encode()
    assert len(encoded) <= size
    return encoded[:-1] + b" " * (size - len(encoded)) + b"}"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_batch_route_takes_bodies_up_to_one_mib(
    client: httpx.AsyncClient, factory: Factory, chunked: bool
) -> None:
    user = await factory.user()
    body = batch(True, [op("BONUS", user, 1, metadata={"pad": "p" * 500}) for _ in range(900)])
    payload = padded(body, MAX_BATCH_BODY)
    assert len(payload) == MAX_BATCH_BODY
    assert len(payload) > MAX_BODY
    assert len(results(await send_body(client, BATCH, payload, chunked=chunked))) == 900
    assert await gold(client, user) == 900


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [MAX_BATCH_BODY + 1, 4 * MAX_BATCH_BODY])
async def test_a_batch_body_over_one_mib_is_413(
    client: httpx.AsyncClient, factory: Factory, chunked: bool, size: int
) -> None:
    user = await factory.user()
    payload = padded(batch(True, [op("BONUS", user, 1)]), size)
    assert_error(await send_body(client, BATCH, payload, chunked=chunked), 413, "PAYLOAD_TOO_LARGE")
    assert await gold(client, user) == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/api/wallet/transact", "/api/wallet/holds", "/api/users"])
async def test_other_routes_keep_their_64_kib_cap(
    client: httpx.AsyncClient, factory: Factory, path: str, chunked: bool
) -> None:
    user = await factory.user(gold=10)
    body = {"userId": str(user), "amount": 1, "assetSlug": GOLD, "type": "SPEND"}
    response = await send_body(client, path, padded(body, MAX_BODY + 1), chunked=chunked)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await gold(client, user) == 10


async def test_the_batch_cap_is_for_the_batch_path_exactly(client: httpx.AsyncClient) -> None:
    payload = padded(batch(True, [op("BONUS", ALICE, 1)]), MAX_BODY + 1)
    for path in (f"{BATCH}/", f"{BATCH}x", "/api/wallet/batch/../transact"):
        response = await send_body(client, path, payload, chunked=False)
        assert_error(response, 413, "PAYLOAD_TOO_LARGE")


# --------------------------------------------------------------------------------------------
# Auth: the batch needs what each of its operations needs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(server_url: str) -> Iterator[KeyedServer]:
    """Keys and JWTs on a database of their own; end users may SPEND and TRANSFER from their
    own wallets (and only those)."""
    with keyed_server(
        server_url,
        "wallet_batch_auth",
        {"reader": ["read"], "payments": ["transact"]},
        WALLET_USER_CAN_SPEND="true",
        WALLET_USER_CAN_TRANSFER="true",
    ) as server:
        yield server


@pytest.fixture
async def secure_client(secured: KeyedServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secured.base, timeout=30) as c:
        yield c


async def test_a_batch_needs_what_each_of_its_operations_needs(
    secured: KeyedServer, secure_client: httpx.AsyncClient
) -> None:
    h = secured.headers

    async def run(caller: str, *operations: Json) -> httpx.Response:
        return await post_batch(secure_client, batch(True, list(operations)), headers=h[caller])

    async def alice_gold() -> int:
        rows = assert_ok(
            await secure_client.get(f"/api/wallet/balance/{ALICE}", headers=h["reader"])
        )
        return next(int(r["balance"]) for r in rows if r["slug"] == GOLD)

    start = await alice_gold()
    assert_error(await run("none", op("SPEND", ALICE, 1)), 401, "UNAUTHENTICATED")
    assert_error(await run("reader", op("BONUS", ALICE, 1)), 403, "FORBIDDEN")
    # Alice may SPEND and TRANSFER from her own wallet: a batch of those is hers to send...
    own = await run("alice", op("SPEND", ALICE, 1), transfer_op(ALICE, BOB, 1))
    assert len(results(own)) == 2
    # ...but one operation she may not do refuses the whole batch, before anything runs.
    for forbidden in [
        op("TOPUP", ALICE, 1),
        op("BONUS", ALICE, 1),
        op("SPEND", BOB, 1),
        transfer_op(BOB, ALICE, 1),
    ]:
        response = await run("alice", op("SPEND", ALICE, 1), forbidden)
        assert_error(response, 403, "FORBIDDEN")
    assert await alice_gold() == start - 2
    payments = await run("payments", op("BONUS", ALICE, 2), transfer_op(BOB, ALICE, 1))
    assert len(results(payments)) == 2
    assert await alice_gold() == start + 1


@pytest.fixture(scope="module")
def strict(server_url: str) -> Iterator[str]:
    """A server whose end users may neither SPEND nor TRANSFER (the default settings)."""
    url = create_database(server_url, "wallet_batch_user")
    migrate(url)
    _run(url, seed)
    _run(url, lambda conn: auth.create_key(conn, name="k", scopes=["read"]))
    proc, base = start_server(url, WALLET_JWT_SECRET=SECRET)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


async def test_end_users_batches_follow_the_settings_that_limit_them(strict: str) -> None:
    """Without WALLET_USER_CAN_SPEND / _TRANSFER, an end user's own SPEND or TRANSFER is
    refused in a batch as on its route."""
    async with httpx.AsyncClient(base_url=strict, timeout=30) as client:
        alice = {"Authorization": f"Bearer {token(ALICE)}"}
        for operation in (op("SPEND", ALICE, 1), transfer_op(ALICE, BOB, 1)):
            response = await post_batch(client, batch(True, [operation]), headers=alice)
            assert_error(response, 403, "FORBIDDEN")
            single = {k: v for k, v in operation.items() if k != "op"}
            route = (
                "/api/wallet/transfer" if operation["op"] == "TRANSFER" else "/api/wallet/transact"
            )
            alone = await post_route(client, route, {**single, "type": operation["op"]}, alice)
            assert_error(alone, 403, "FORBIDDEN")


async def post_route(
    client: httpx.AsyncClient, path: str, body: Json, headers: Mapping[str, str]
) -> httpx.Response:
    return await client.post(path, json=body, headers={"Idempotency-Key": new_key(), **headers})


# --------------------------------------------------------------------------------------------
# Concurrency: batches over overlapping wallets
# --------------------------------------------------------------------------------------------


async def test_concurrent_batches_over_overlapping_wallets_never_deadlock(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    wallets = [await factory.user(gold=1_000) for _ in range(8)]
    rng = random.Random(20261127)

    def operations(count: int) -> list[Json]:
        made: list[Json] = []
        for _ in range(count):
            a, b = rng.sample(wallets, 2)
            made.append(transfer_op(a, b, rng.randint(1, 5)))
        return keyed(*made)

    bodies = [batch(n % 2 == 0, operations(rng.randint(5, 40))) for n in range(32)]
    responses = await asyncio.gather(*(post_batch(client, body) for body in bodies))
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text  # no 5xx, no BUSY, no deadlock
        found = results(response)
        assert len(found) == len(body["operations"])
        if not body["atomic"]:
            assert {r["status"] for r in found} == {200}
    assert sum(await golds(client, wallets)) == 8_000
    await audit_ok(client)


async def test_concurrent_mixed_batches_and_single_postings_conserve_and_audit(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    wallets = [await factory.user(gold=100) for _ in range(6)]
    rng = random.Random(7)

    def random_op() -> Json:
        kind = rng.choice(["TOPUP", "BONUS", "SPEND", "TRANSFER", "TRANSFER"])
        if kind == "TRANSFER":
            a, b = rng.sample(wallets, 2)
            return transfer_op(a, b, rng.randint(1, 60))
        return op(kind, rng.choice(wallets), rng.randint(1, 60))

    bodies = [batch(n % 3 == 0, keyed(*(random_op() for _ in range(15)))) for n in range(24)]
    singles = [
        {"userId": str(rng.choice(wallets)), "amount": 5, "assetSlug": GOLD, "type": "SPEND"}
        for _ in range(24)
    ]
    answers = await asyncio.gather(
        *(post_batch(client, body) for body in bodies),
        *(
            client.post("/api/wallet/transact", json=s, headers={"Idempotency-Key": new_key()})
            for s in singles
        ),
    )
    minted = 0  # TOPUP and BONUS add coins, SPEND removes them, TRANSFER moves them
    for body, response in zip(bodies, answers[: len(bodies)], strict=True):
        if response.status_code == 422:
            assert_error(response, 422, "BATCH_FAILED")
            assert body["atomic"]
            continue
        for operation, outcome in zip(body["operations"], results(response), strict=True):
            data = outcome if body["atomic"] else outcome.get("data")
            if data is None:
                assert outcome["code"] == "INSUFFICIENT_FUNDS"
                continue
            sign = {"TOPUP": 1, "BONUS": 1, "SPEND": -1, "TRANSFER": 0}[operation["op"]]
            minted += sign * int(operation["amount"])
    for response in answers[len(bodies) :]:
        if response.status_code == 200:
            minted -= 5
        else:
            assert_error(response, 422, "INSUFFICIENT_FUNDS")
    assert sum(await golds(client, wallets)) == 600 + minted
    await audit_ok(client)


async def test_a_keyless_atomic_batch_answers_exactly_as_one_run_operation_by_operation(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """Without operation keys an atomic batch is posted set-based; with them, operation by
    operation. The same operations on two mirrored sets of wallets answer the same, leave the
    same balances and the same history, in input order."""

    async def run(*, with_keys: bool) -> tuple[list[Json], list[int], list[list[str]]]:
        a, b, c = await factory.user(gold=50), await factory.user(), await factory.user(gold=7)
        names = {str(a): "a", str(b): "b", str(c): "c"}
        operations = [
            op("TOPUP", b, 30),  # b starts empty: its spend below needs this credit first
            op("SPEND", b, 25),
            transfer_op(a, b, 40, reference="r"),
            transfer_op(b, c, 45),  # needs both credits to b before it
            op("BONUS", c, 3, metadata={"k": 1}),
            op("SPEND", c, 55),  # c's whole balance, to the last coin
            op("SPEND", a, 10),
        ]
        body = batch(True, keyed(*operations) if with_keys else operations)
        found = results(await post_batch(client, body))
        for item in found:  # what differs between two runs by nature: ids, instants, users
            for field in ("transactionId", "createdAt"):
                item.pop(field)
            for field in ("userId", "fromUserId", "toUserId"):
                if field in item:
                    item[field] = names[item[field]]
        histories = []
        for user in (a, b, c):
            pages = await history_pages(client, user, limit=100)
            histories.append(
                [f"{i['type']} {i['amount']} {i['balanceAfter']}" for p in pages for i in p]
            )
        return found, await golds(client, [a, b, c]), histories

    assert await run(with_keys=False) == await run(with_keys=True)
    await audit_ok(client)


async def test_a_keyless_atomic_batch_checks_each_operation_on_the_balance_before_it(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=5)
    operations = [op("TOPUP", user, 10), op("SPEND", user, 15), op("SPEND", user, 1)]
    response = await post_batch(client, batch(True, operations))
    error = assert_error(response, 422, "BATCH_FAILED")
    assert error["details"] == {"index": 2, "code": "INSUFFICIENT_FUNDS"}
    assert await gold(client, user) == 5
    await audit_ok(client)


async def test_concurrent_batches_over_separate_wallets_never_deadlock_on_the_treasury(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """Batches over disjoint wallets share only the Treasury: each pins one shard per asset, so
    they cannot take shard locks in opposite orders (operation by operation they did)."""
    groups = [[await factory.user() for _ in range(60)] for _ in range(8)]
    bodies = [
        batch(n % 2 == 0, keyed(*(op("BONUS", u, 1 + n) for u in users)))
        if n % 4 < 2
        else batch(True, [op("BONUS", u, 1 + n) for u in users])
        for n, users in enumerate(groups)
    ]
    responses = await asyncio.gather(*(post_batch(client, body) for body in bodies))
    for response in responses:
        assert response.status_code == 200, response.text  # no 503 BUSY from a deadlock
    for n, users in enumerate(groups):
        assert await golds(client, users) == [1 + n] * len(users)
    await audit_ok(client)


# --------------------------------------------------------------------------------------------
# A Treasury without room
# --------------------------------------------------------------------------------------------

# The most one request moves (2^53 - 1): 1,024 of them fill a Treasury shard to 1,024 coins
# short of its floor, -2^63, and fill a wallet to 1,024 short of its ceiling.
PER_SHARD = 1024
ROOM = 2**63 - PER_SHARD * MAX_AMOUNT
FILL = text(
    "SELECT count(*) FILTER (WHERE t.outcome = 'COMPLETED') FROM generate_series(1, :n) g,"
    " LATERAL wallet_transact('', 'fill-' || gen_random_uuid(), sha256(g::text::bytea), :user,"
    " :slug, 'TOPUP', :amount, gen_random_uuid(), '', NULL, '{}'::jsonb) t"
)


async def nearly_full_treasury(engine: AsyncEngine, factory: Factory) -> str:
    """A new asset whose two Treasury shards have room for 1,024 coins each: two wallets were
    given 1,024 of the largest TOPUPs each, in one statement."""
    slug = f"full_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        await ledger.ensure_asset(conn, slug=slug, name="Nearly issued", shards=2)
    for _ in range(2):
        holder = await factory.user()
        async with engine.begin() as conn:
            params = {"n": PER_SHARD, "user": holder, "slug": slug, "amount": MAX_AMOUNT}
            assert await conn.scalar(FILL, params) == PER_SHARD
    return slug


async def test_a_batch_that_fills_its_treasury_shard_goes_on_to_another_then_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, factory: Factory
) -> None:
    """A batch pins one Treasury shard; once a move fills it to -2^63, the next move takes the
    shard with the most room (the order once negated that balance: bigint out of range, a 500).
    With no room anywhere, the atomic batch fails naming the operation, and nothing moves."""
    slug = await nearly_full_treasury(engine, factory)
    user = await factory.user()
    operations = [op("TOPUP", user, ROOM, assetSlug=slug), op("TOPUP", user, 1, assetSlug=slug)]
    filled = results(await post_batch(client, batch(True, operations)))
    assert [item["balanceAfter"] for item in filled] == [str(ROOM), str(ROOM + 1)]
    refused = assert_error(
        await post_batch(client, batch(True, [op("TOPUP", user, ROOM, assetSlug=slug)])),
        422,
        "BATCH_FAILED",
    )
    assert refused["details"] == {"index": 0, "code": "BALANCE_LIMIT_EXCEEDED"}
    assert await balance_in(client, user, slug) == ROOM + 1
    await audit_ok(client)


async def test_an_operation_without_treasury_room_is_refused_alone_in_a_non_atomic_batch(
    client: httpx.AsyncClient, engine: AsyncEngine, factory: Factory
) -> None:
    """Each operation runs under its own route's rules: the one the Treasury has no room for is
    that operation's 422 BALANCE_LIMIT_EXCEEDED, stored (the same key sent alone replays it),
    the others complete."""
    slug = await nearly_full_treasury(engine, factory)
    user, newcomer = await factory.user(), await factory.user()
    operations = keyed(
        *[op("TOPUP", user, ROOM, assetSlug=slug)] * 3, op("BONUS", newcomer, 1, assetSlug=slug)
    )
    found = results(await post_batch(client, batch(False, operations)))
    assert [item["status"] for item in found] == [200, 200, 422, 422]
    assert [item["data"]["balanceAfter"] for item in found[:2]] == [str(ROOM), str(2 * ROOM)]
    for refused in found[2:]:
        assert refused["code"] == "BALANCE_LIMIT_EXCEEDED"
        assert refused["message"] == "The asset's Treasury has no room left for this amount."
    # The batch opened the newcomer's wallet for the BONUS; refused, it is taken away again.
    assert assert_ok(await client.get(f"/api/wallet/balance/{newcomer}")) == []
    alone = await client.post(
        "/api/wallet/transact",
        json={"userId": str(user), "type": "TOPUP", "amount": ROOM, "assetSlug": slug},
        headers={"Idempotency-Key": operations[2]["idempotencyKey"]},
    )
    assert_error(alone, 422, "BALANCE_LIMIT_EXCEEDED")
    assert alone.headers.get("Idempotent-Replayed") == "true"
    assert await balance_in(client, user, slug) == 2 * ROOM
    await audit_ok(client)


async def test_a_posting_the_treasury_has_no_room_for_is_refused_once_and_for_all(
    client: httpx.AsyncClient, engine: AsyncEngine, factory: Factory
) -> None:
    """A TOPUP that no Treasury shard has room for is 422 BALANCE_LIMIT_EXCEEDED, stored: once
    the Treasury has room again (a SPEND), the same key replays the refusal instead of posting
    (it rolled back unstored, and a retry posted). The wallet the TOPUP moved is put back."""
    slug = await nearly_full_treasury(engine, factory)
    user = await factory.user()
    for _ in range(2):  # both shards down to their floor, one batch each
        results(await post_batch(client, batch(True, [op("TOPUP", user, ROOM, assetSlug=slug)])))
    key = str(uuid.uuid4())
    body = {"userId": str(user), "type": "TOPUP", "assetSlug": slug, "amount": 5}
    first = await client.post("/api/wallet/transact", json=body, headers={"Idempotency-Key": key})
    refused = assert_error(first, 422, "BALANCE_LIMIT_EXCEEDED")
    assert refused["message"] == "The asset's Treasury has no room left for this amount."
    assert first.headers.get("Idempotent-Replayed") is None
    spend = {"userId": str(user), "type": "SPEND", "assetSlug": slug, "amount": 10}
    spent = await client.post(
        "/api/wallet/transact", json=spend, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert spent.status_code == 200, spent.text
    again = await client.post("/api/wallet/transact", json=body, headers={"Idempotency-Key": key})
    assert again.content == first.content
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await balance_in(client, user, slug) == 2 * ROOM - 10
    # A TOPUP refused so opens no wallet for a user who had none in the asset (it left one at 0).
    newcomer, more = await factory.user(), {**body, "amount": ROOM}
    more["userId"] = str(newcomer)
    refused_new = await client.post(
        "/api/wallet/transact", json=more, headers={"Idempotency-Key": new_key()}
    )
    assert_error(refused_new, 422, "BALANCE_LIMIT_EXCEEDED")
    assert assert_ok(await client.get(f"/api/wallet/balance/{newcomer}")) == []
    await audit_ok(client)


async def test_a_refused_operation_of_a_non_atomic_batch_leaves_no_wallet(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """A non-atomic batch opens the wallets its credits name before it runs them (one order of
    locks for every batch). Those whose coins did not arrive are taken away again: a TRANSFER
    the sender cannot pay, a BONUS under a key another request used. A credit that arrives keeps
    its new wallet."""
    poor, newcomer, other = await factory.user(gold=5), await factory.user(), await factory.user()
    used = new_key()
    bonus = {"userId": str(poor), "type": "BONUS", "amount": 1, "assetSlug": GOLD}
    assert_ok(await client.post(TRANSACT, json=bonus, headers={"Idempotency-Key": used}))
    operations = [
        {**transfer_op(poor, newcomer, 999, assetSlug="diamonds"), "idempotencyKey": new_key()},
        {**op("BONUS", other, 7, assetSlug="diamonds"), "idempotencyKey": used},
        {**op("TOPUP", newcomer, 3), "idempotencyKey": new_key()},
    ]
    found = results(await post_batch(client, batch(False, operations)))
    assert [item.get("code") for item in found] == [
        "INSUFFICIENT_FUNDS",
        "IDEMPOTENCY_KEY_REUSED",
        None,
    ]
    rows = assert_ok(await client.get(f"/api/wallet/balance/{newcomer}"))
    assert [(r["slug"], r["balance"]) for r in rows] == [(GOLD, "3")]
    assert assert_ok(await client.get(f"/api/wallet/balance/{other}")) == []
    await audit_ok(client)


async def test_a_failed_atomic_batch_opens_no_wallet(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """All or nothing: the wallets an atomic batch opens for its credits go with it when it
    fails (a BONUS in an asset the user had no wallet in, then a SPEND that cannot be paid)."""
    newcomer, poor = await factory.user(), await factory.user(gold=5)
    operations = [op("BONUS", newcomer, 1, assetSlug="diamonds"), op("SPEND", poor, 999)]
    refused = assert_error(await post_batch(client, batch(True, operations)), 422, "BATCH_FAILED")
    assert refused["details"] == {"index": 1, "code": "INSUFFICIENT_FUNDS"}
    answer = await client.get(f"/api/wallet/balance/{newcomer}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == []
    await audit_ok(client)
