"""Holds over real HTTP, line by line of the contract: create, capture, void, expiry, reads, auth,
and the races (real parallel connections against a real server and PostgreSQL).

Every test that moves money uses its own factory users; Alice and Bob are only read.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from tests.conftest import create_database, drop_database, start_server
from tests.factories import Factory
from tests.test_auth import KeyedServer, keyed_server
from tests.test_rest_contract import (
    ALICE,
    MAX_AMOUNT,
    MISSING,
    TRANSACT,
    assert_error,
    assert_iso_timestamp,
    assert_ok,
    assert_replayed,
    history_ids,
    is_uuid,
    new_key,
    with_field,
)
from wallet import ledger
from wallet.cli import _run, migrate
from wallet.db.engine import create_engine
from wallet.seed import seed
from wallet.sweeper import HoldSweeper

HOLDS = "/api/wallet/holds"
GOLD = "gold_coins"
VIEW_KEYS = {
    "holdId",
    "status",
    "userId",
    "assetSlug",
    "amount",
    "capturedAmount",
    "expiresAt",
    "reference",
    "metadata",
    "createdAt",
}
WRITE_KEYS = VIEW_KEYS | {"balance", "available"}  # a write adds the user's balance after it
Json = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def hold_body(user: uuid.UUID | str, amount: object = 10, **extra: object) -> dict[str, object]:
    return {"userId": str(user), "amount": amount, "assetSlug": GOLD, **extra}


async def post_json(
    client: httpx.AsyncClient,
    path: str,
    body: Mapping[str, object] | bytes | None = None,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST with an Idempotency-Key (a fresh one unless given); `body` None sends no body."""
    all_headers = {"Idempotency-Key": key or new_key(), **(headers or {})}
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return await client.post(path, content=content, headers=all_headers)


async def create(
    client: httpx.AsyncClient, body: Mapping[str, object] | bytes, *, key: str | None = None
) -> httpx.Response:
    return await post_json(client, HOLDS, body, key=key)


async def held(client: httpx.AsyncClient, user: uuid.UUID, amount: int, **extra: object) -> Json:
    """A new HELD hold's answer."""
    data: Json = assert_ok(await create(client, hold_body(user, amount, **extra)))
    assert data["status"] == "HELD"
    return data


async def capture(
    client: httpx.AsyncClient,
    hold_id: str,
    body: Mapping[str, object] | bytes | None = None,
    *,
    key: str | None = None,
) -> httpx.Response:
    return await post_json(client, f"{HOLDS}/{hold_id}/capture", body, key=key)


async def void(
    client: httpx.AsyncClient, hold_id: str, *, key: str | None = None
) -> httpx.Response:
    return await post_json(client, f"{HOLDS}/{hold_id}/void", key=key)


async def gold_row(client: httpx.AsyncClient, user: uuid.UUID | str) -> Json:
    """The user's gold row of GET /api/wallet/balance (balance, available, held)."""
    rows = assert_ok(await client.get(f"/api/wallet/balance/{user}"))
    found: list[Json] = [row for row in rows if row["slug"] == GOLD]
    return found[0] if found else {"balance": "0", "available": "0", "held": "0"}


async def amounts(client: httpx.AsyncClient, user: uuid.UUID | str) -> tuple[int, int, int]:
    """(balance, available, held) of the user's gold."""
    row = await gold_row(client, user)
    balance, available, held_ = int(row["balance"]), int(row["available"]), int(row["held"])
    assert balance == available + held_
    assert available >= 0
    return balance, available, held_


async def get_hold(client: httpx.AsyncClient, hold_id: str) -> Json:
    data: Json = assert_ok(await client.get(f"{HOLDS}/{hold_id}"))
    return data


async def audit_ok(client: httpx.AsyncClient) -> None:
    report = assert_ok(await client.get("/api/admin/audit"))
    assert report["ok"] is True, report["breaches"]


def parse_instant(value: object) -> datetime:
    return assert_iso_timestamp(value)


def assert_lasts(created: datetime, expires: datetime, seconds: int) -> None:
    """The database stamps createdAt a few microseconds after it computed expiresAt."""
    assert abs(expires - created - timedelta(seconds=seconds)) < timedelta(milliseconds=10)


# --------------------------------------------------------------------------------------------
# POST /api/wallet/holds
# --------------------------------------------------------------------------------------------


async def test_a_hold_reserves_coins_and_answers_the_hold_with_the_users_balance(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    body = hold_body(user, 30, reference="order-17", metadata={"sku": "A-1", "qty": 2})
    response = await create(client, body)
    data = assert_ok(response)
    assert set(data) == WRITE_KEYS
    assert is_uuid(data["holdId"])
    assert data["status"] == "HELD"
    assert data["userId"] == str(user)
    assert data["assetSlug"] == GOLD
    assert type(data["amount"]) is int
    assert data["amount"] == 30
    assert data["capturedAmount"] == 0
    assert (data["balance"], data["available"]) == ("100", "70")
    assert data["reference"] == "order-17"
    assert data["metadata"] == {"sku": "A-1", "qty": 2}
    created, expires = parse_instant(data["createdAt"]), parse_instant(data["expiresAt"])
    assert_lasts(created, expires, 900)  # the default
    assert response.headers.get("Idempotent-Replayed") is None
    # `balance` stays the whole balance; the hold counts in held and against available.
    row = await gold_row(client, user)
    assert (row["balance"], row["available"], row["held"]) == ("100", "70", "30")
    assert await get_hold(client, data["holdId"]) == {
        k: v for k, v in data.items() if k not in {"balance", "available"}
    }


async def test_a_hold_moves_nothing_in_the_history(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=50)
    before = await history_ids(client, user)
    await held(client, user, 20)
    assert await history_ids(client, user) == before


@pytest.mark.parametrize("seconds", [1, 60, 604_800])
async def test_expires_in_seconds_sets_expires_at(
    client: httpx.AsyncClient, factory: Factory, seconds: int
) -> None:
    user = await factory.user(gold=10)
    data = await held(client, user, 1, expiresInSeconds=seconds)
    assert_lasts(parse_instant(data["createdAt"]), parse_instant(data["expiresAt"]), seconds)


async def test_expires_in_seconds_null_is_the_default(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    data = await held(client, user, 1, expiresInSeconds=None)
    assert_lasts(parse_instant(data["createdAt"]), parse_instant(data["expiresAt"]), 900)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expiresInSeconds", 0),
        ("expiresInSeconds", -1),
        ("expiresInSeconds", 604_801),
        ("expiresInSeconds", 2**63),
        ("expiresInSeconds", 1.5),
        ("expiresInSeconds", "60"),
        ("expiresInSeconds", True),
        ("expiresInSeconds", [60]),
        ("userId", MISSING),
        ("userId", "not-a-uuid"),
        ("userId", None),
        ("userId", 7),
        ("amount", MISSING),
        ("amount", 0),
        ("amount", -5),
        ("amount", 1.5),
        ("amount", "1e3"),
        ("amount", " 5"),
        ("amount", True),
        ("amount", None),
        ("amount", MAX_AMOUNT + 1),
        ("assetSlug", MISSING),
        ("assetSlug", ""),
        ("assetSlug", 5),
        ("assetSlug", "x" * 65),
        ("reference", ""),
        ("reference", "r" * 129),
        ("reference", "caf\u00e9"),
        ("reference", 17),
        ("metadata", []),
        ("metadata", "x"),
        ("metadata", {"nested": {"a": 1}}),
        ("metadata", {"bad key!": 1}),
        ("metadata", {"f": 1.5}),
        ("metadata", {f"k{i}": i for i in range(33)}),
    ],
)
async def test_a_malformed_hold_is_400_naming_the_field_and_holds_nothing(
    client: httpx.AsyncClient, factory: Factory, field: str, value: object
) -> None:
    user = await factory.user(gold=100)
    body = with_field(hold_body(user, 10, expiresInSeconds=60), field, value)
    error = assert_error(await create(client, body), 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == field
    assert field in error["message"]
    assert await amounts(client, user) == (100, 100, 0)


@pytest.mark.parametrize(
    "raw",
    [b"", b"null", b"[]", b'"x"', b"{", b'{"userId": 1, "userId": 2}', b"\xff\xfe", b"NaN"],
)
async def test_a_hold_body_that_is_not_a_json_object_is_400(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    assert_error(await create(client, raw), 400, "VALIDATION_ERROR")


async def test_unknown_user_or_asset_is_404_and_not_stored(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    ghost = uuid.uuid4()
    key = new_key()
    assert_error(await create(client, hold_body(ghost, 5), key=key), 404, "USER_NOT_FOUND")
    assert_error(
        await create(client, {**hold_body(ALICE, 5), "assetSlug": "no_such_asset"}),
        404,
        "ASSET_NOT_FOUND",
    )
    # Not stored: once the user exists, a retry with the same key runs.
    created = await client.post("/api/users", json={"id": str(ghost), "username": f"g-{ghost}"})
    assert_ok(created, 201)
    await factory.transact(ghost, 5, "TOPUP")
    assert assert_ok(await create(client, hold_body(ghost, 5), key=key))["status"] == "HELD"


async def test_a_hold_over_available_is_insufficient_funds_stored_and_replayed(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    await held(client, user, 60)
    key = new_key()
    first = await create(client, hold_body(user, 50), key=key)  # balance 100, available 40
    error = assert_error(first, 422, "INSUFFICIENT_FUNDS")
    assert "40" in error["message"]
    assert await amounts(client, user) == (100, 40, 60)
    await factory.transact(user, 100, "TOPUP")  # now affordable, yet the key keeps its answer
    again = await create(client, hold_body(user, 50), key=key)
    assert_replayed(first, again)
    assert await amounts(client, user) == (200, 140, 60)
    assert (await held(client, user, 50))["available"] == "90"  # a new key runs


async def test_a_user_without_an_account_in_the_asset_has_nothing_to_hold(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=5)
    response = await create(client, {**hold_body(user, 1), "assetSlug": "diamonds"})
    assert_error(response, 422, "INSUFFICIENT_FUNDS")


async def test_held_coins_cannot_be_spent_or_transferred(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, other = await factory.user(gold=100), await factory.user()
    await held(client, user, 70)
    spend = {"userId": str(user), "amount": 31, "assetSlug": GOLD, "type": "SPEND"}
    refused = assert_error(
        await post_json(client, "/api/wallet/transact", spend), 422, "INSUFFICIENT_FUNDS"
    )
    assert refused["message"] == (  # the balance alone would pay: the message says why not
        "Insufficient funds: the balance is 100, but holds keep part of it unavailable;"
        " the SPEND needs 31 available."
    )
    transfer = {"fromUserId": str(user), "toUserId": str(other), "amount": 31, "assetSlug": GOLD}
    response = await post_json(client, "/api/wallet/transfer", transfer)
    if response.status_code != 404:  # the transfer route (REST v2) is there
        assert_error(response, 422, "INSUFFICIENT_FUNDS")
    assert_ok(await post_json(client, "/api/wallet/transact", {**spend, "amount": 30}))
    assert await amounts(client, user) == (70, 0, 70)


# --------------------------------------------------------------------------------------------
# Idempotency-Key on every hold write
# --------------------------------------------------------------------------------------------


async def test_every_hold_write_needs_an_idempotency_key(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    hold_id = (await held(client, user, 10))["holdId"]
    for path, body in [
        (HOLDS, hold_body(user, 5)),
        (f"{HOLDS}/{hold_id}/capture", {}),
        (f"{HOLDS}/{hold_id}/void", {}),
    ]:
        assert_error(await client.post(path, json=body), 400, "IDEMPOTENCY_KEY_MISSING")
    assert await amounts(client, user) == (100, 90, 10)
    assert (await get_hold(client, hold_id))["status"] == "HELD"


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\u00e9", "a\tb", "a\x7fb"])
async def test_a_malformed_idempotency_key_is_400(
    client: httpx.AsyncClient, factory: Factory, key: str
) -> None:
    user = await factory.user(gold=10)
    response = await client.post(
        HOLDS,
        json=hold_body(user, 5),
        headers=[(b"Idempotency-Key", key.encode())],
    )
    assert_error(response, 400, "VALIDATION_ERROR")
    assert await amounts(client, user) == (10, 10, 0)


async def test_hold_writes_replay_their_stored_answer(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    body = hold_body(user, 40, expiresInSeconds=120, metadata={"b": 1, "a": "x"})
    key = new_key()
    first = await create(client, body, key=key)
    data = assert_ok(first)
    again = await create(client, body, key=key)
    assert_replayed(first, again)
    assert await amounts(client, user) == (100, 60, 40)  # held once

    capture_key = new_key()
    captured = await capture(client, data["holdId"], {"amount": 15}, key=capture_key)
    assert_ok(captured)
    assert_replayed(
        captured, await capture(client, data["holdId"], {"amount": 15}, key=capture_key)
    )

    other = (await held(client, user, 5))["holdId"]
    void_key = new_key()
    voided = await void(client, other, key=void_key)
    assert_ok(voided)
    assert_replayed(voided, await void(client, other, key=void_key))
    assert await amounts(client, user) == (85, 85, 0)


async def test_a_key_reused_for_another_hold_request_is_422(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    key = new_key()
    assert_ok(await create(client, hold_body(user, 10), key=key))
    for changed in [
        hold_body(user, 11),
        hold_body(user, 10, expiresInSeconds=60),
        hold_body(user, 10, reference="r"),
        hold_body(user, 10, metadata={"a": 1}),
        {**hold_body(user, 10), "assetSlug": "diamonds"},
    ]:
        assert_error(await create(client, changed, key=key), 422, "IDEMPOTENCY_KEY_REUSED")
    hold_id = (await held(client, user, 10))["holdId"]
    # A key is one request on one route: the hold's key cannot capture or void.
    assert_error(await capture(client, hold_id, key=key), 422, "IDEMPOTENCY_KEY_REUSED")
    assert_error(await void(client, hold_id, key=key), 422, "IDEMPOTENCY_KEY_REUSED")
    capture_key = new_key()
    assert_ok(await capture(client, hold_id, {"amount": 3}, key=capture_key))
    changes: list[dict[str, object]] = [{"amount": 4}, {}, {"amount": 3, "reference": "x"}]
    for body in changes:
        again = await capture(client, hold_id, body, key=capture_key)
        assert_error(again, 422, "IDEMPOTENCY_KEY_REUSED")
    assert await amounts(client, user) == (97, 87, 10)


@pytest.mark.parametrize("kind", ["TOPUP", "BONUS", "SPEND"])
async def test_a_key_a_posting_used_names_its_transaction_on_every_hold_route(
    client: httpx.AsyncClient, factory: Factory, kind: str
) -> None:
    """A TOPUP, BONUS or SPEND keeps its transaction with its key differently from the other
    routes: a hold route finding that key used for another request still names it."""
    user = await factory.user(gold=100)
    key = new_key()
    posted = assert_ok(
        await post_json(client, TRANSACT, {**hold_body(user, 1), "type": kind}, key=key)
    )
    hold_id = (await held(client, user, 10))["holdId"]
    for response in (
        await create(client, hold_body(user, 10), key=key),
        await capture(client, hold_id, key=key),
        await void(client, hold_id, key=key),
    ):
        error = assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
        assert error["details"]["originalTransactionId"] == posted["transactionId"]
    assert (await get_hold(client, hold_id))["status"] == "HELD"


@pytest.mark.parametrize("refused", ["capture", "void"])
async def test_a_key_whose_first_request_was_refused_names_no_transaction_when_reused(
    client: httpx.AsyncClient, factory: Factory, refused: str
) -> None:
    """A capture or void refused HOLD_NOT_ACTIVE stores the hold, which names the capture
    another key made: reused, its key names no transaction (it named that capture before), on a
    hold route, a posting route and in a batch."""
    user, other = await factory.user(gold=100), await factory.user(gold=0)
    hold_id = (await held(client, user, 10))["holdId"]
    assert_ok(await capture(client, hold_id, {"amount": 4}))
    key = new_key()
    first = await (
        capture(client, hold_id, key=key)
        if refused == "capture"
        else void(client, hold_id, key=key)
    )
    assert_error(first, 422, "HOLD_NOT_ACTIVE")
    transfer = {"fromUserId": str(user), "toUserId": str(other), "assetSlug": GOLD, "amount": 1}
    batch = {"atomic": False, "operations": [{"op": "TRANSFER", "idempotencyKey": key, **transfer}]}
    reuses = [
        await capture(client, hold_id, {"amount": 2}, key=key),
        await post_json(
            client, "/api/wallet/transact", {**hold_body(user, 1), "type": "BONUS"}, key=key
        ),
        await post_json(client, "/api/wallet/transfer", transfer, key=key),
    ]
    for response in reuses:
        error = assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
        assert error["details"]["originalTransactionId"] is None, error
    answered = assert_ok(await post_json(client, "/api/wallet/batch", batch))
    operation = answered["results"][0]
    assert operation["code"] == "IDEMPOTENCY_KEY_REUSED", operation
    assert operation["details"]["originalTransactionId"] is None, operation
    assert await amounts(client, user) == (96, 96, 0)


# --------------------------------------------------------------------------------------------
# POST /api/wallet/holds/{holdId}/capture
# --------------------------------------------------------------------------------------------


async def test_capture_of_all_is_a_purchase_paid_to_the_treasury(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    hold = await held(client, user, 30, reference="order-1", metadata={"sku": "A"})
    response = await capture(client, hold["holdId"])  # no body at all
    data = assert_ok(response)
    assert set(data) == WRITE_KEYS | {"transactionId"}
    assert data["status"] == "CAPTURED"
    assert data["capturedAmount"] == 30
    assert data["amount"] == 30
    assert is_uuid(data["transactionId"])
    assert (data["balance"], data["available"]) == ("70", "70")
    assert data["holdId"] == hold["holdId"]
    assert (data["reference"], data["metadata"]) == ("order-1", {"sku": "A"})  # the hold's
    assert await amounts(client, user) == (70, 70, 0)
    newest = assert_ok(await client.get(f"/api/wallet/transactions/{user}", params={"limit": 1}))
    assert newest[0]["transactionId"] == data["transactionId"]
    assert (newest[0]["type"], newest[0]["amount"], newest[0]["direction"]) == (
        "SPEND",
        30,
        "DEBIT",
    )
    assert await get_hold(client, hold["holdId"]) == {
        k: v for k, v in data.items() if k not in {"balance", "available"}
    }


async def test_a_partial_capture_to_a_user_transfers_and_releases_the_rest_at_once(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    buyer, seller = await factory.user(gold=100), await factory.user()
    hold = await held(client, buyer, 60)
    body = {"amount": "25", "toUserId": str(seller), "reference": "del-9", "metadata": {"n": 1}}
    data = assert_ok(await capture(client, hold["holdId"], body))
    assert (data["status"], data["amount"], data["capturedAmount"]) == ("CAPTURED", 60, 25)
    assert (data["balance"], data["available"]) == ("75", "75")
    assert await amounts(client, buyer) == (75, 75, 0)
    assert await amounts(client, seller) == (25, 25, 0)
    history = assert_ok(await client.get(f"/api/wallet/transactions/{seller}"))
    assert history[0]["transactionId"] == data["transactionId"]
    assert (history[0]["type"], history[0]["amount"]) == ("TRANSFER", 25)
    assert history[0]["reference"] == "del-9"


async def test_a_capture_over_the_holds_amount_is_400_and_not_stored(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    hold_id = (await held(client, user, 30))["holdId"]
    key = new_key()
    error = assert_error(
        await capture(client, hold_id, {"amount": 31}, key=key), 400, "VALIDATION_ERROR"
    )
    assert error["details"]["field"] == "amount"
    assert (await get_hold(client, hold_id))["status"] == "HELD"
    assert await amounts(client, user) == (100, 70, 30)
    data = assert_ok(await capture(client, hold_id, {"amount": 30}, key=key))  # corrected retry
    assert data["capturedAmount"] == 30


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", 0),
        ("amount", -1),
        ("amount", 1.5),
        ("amount", "ten"),
        ("amount", True),
        ("amount", MAX_AMOUNT + 1),
        ("toUserId", "nope"),
        ("toUserId", 5),
        ("reference", ""),
        ("reference", "r" * 129),
        ("metadata", [1]),
        ("metadata", {"x": {"y": 1}}),
    ],
)
async def test_a_malformed_capture_is_400_naming_the_field(
    client: httpx.AsyncClient, factory: Factory, field: str, value: object
) -> None:
    user = await factory.user(gold=100)
    hold_id = (await held(client, user, 30))["holdId"]
    error = assert_error(await capture(client, hold_id, {field: value}), 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == field
    assert (await get_hold(client, hold_id))["status"] == "HELD"


async def test_capture_to_an_unknown_user_is_404_and_to_the_holds_own_user_400(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    hold_id = (await held(client, user, 30))["holdId"]
    assert_error(
        await capture(client, hold_id, {"toUserId": str(uuid.uuid4())}), 404, "USER_NOT_FOUND"
    )
    error = assert_error(
        await capture(client, hold_id, {"toUserId": str(user)}), 400, "VALIDATION_ERROR"
    )
    assert error["details"]["field"] == "toUserId"
    assert (await get_hold(client, hold_id))["status"] == "HELD"
    assert await amounts(client, user) == (100, 70, 30)


async def test_a_hold_is_captured_at_most_once(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user(gold=100)
    hold_id = (await held(client, user, 30))["holdId"]
    first = assert_ok(await capture(client, hold_id, {"amount": 10}))
    error = assert_error(await capture(client, hold_id, {"amount": 10}), 422, "HOLD_NOT_ACTIVE")
    assert "CAPTURED" in error["message"]
    assert_error(await void(client, hold_id), 422, "HOLD_NOT_ACTIVE")
    assert await amounts(client, user) == (90, 90, 0)
    assert (await get_hold(client, hold_id))["transactionId"] == first["transactionId"]


@pytest.mark.parametrize("finish", ["void", "capture"])
async def test_a_finished_hold_answers_hold_not_active_whatever_the_capture_asks(
    client: httpx.AsyncClient, factory: Factory, finish: str
) -> None:
    """The hold's status comes first: a capture of a finished hold asking for more than it held,
    or for its own user as recipient, is told the hold is finished, not that its body is wrong."""
    user = await factory.user(gold=100)
    hold_id = (await held(client, user, 30))["holdId"]
    assert_ok(await (void(client, hold_id) if finish == "void" else capture(client, hold_id)))
    for body in ({"amount": 31}, {"toUserId": str(user)}, {"toUserId": str(uuid.uuid4())}):
        error = assert_error(await capture(client, hold_id, body), 422, "HOLD_NOT_ACTIVE")
        assert error["details"]["status"] == ("VOIDED" if finish == "void" else "CAPTURED")


async def test_a_refused_capture_or_void_is_stored_and_replayed(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    hold_id = (await held(client, user, 30))["holdId"]
    assert_ok(await void(client, hold_id))
    key = new_key()
    first = await capture(client, hold_id, key=key)
    assert_error(first, 422, "HOLD_NOT_ACTIVE")
    assert_replayed(first, await capture(client, hold_id, key=key))
    key = new_key()
    first = await void(client, hold_id, key=key)
    assert_error(first, 422, "HOLD_NOT_ACTIVE")
    assert_replayed(first, await void(client, hold_id, key=key))


@pytest.mark.parametrize("body", [b"", b"{}", b"  \n"])
async def test_capture_and_void_take_an_empty_body_or_an_empty_object(
    client: httpx.AsyncClient, factory: Factory, body: bytes
) -> None:
    user = await factory.user(gold=100)
    first, second = (
        (await held(client, user, 10))["holdId"],
        (await held(client, user, 20))["holdId"],
    )
    assert assert_ok(await capture(client, first, body))["status"] == "CAPTURED"
    voided = await post_json(client, f"{HOLDS}/{second}/void", body)
    assert assert_ok(voided)["status"] == "VOIDED"


@pytest.mark.parametrize("body", [b"[]", b"{", b"null", b'"x"'])
async def test_capture_and_void_refuse_a_body_that_is_not_a_json_object(
    client: httpx.AsyncClient, factory: Factory, body: bytes
) -> None:
    user = await factory.user(gold=100)
    hold_id = (await held(client, user, 10))["holdId"]
    for path in (f"{HOLDS}/{hold_id}/capture", f"{HOLDS}/{hold_id}/void"):
        assert_error(await post_json(client, path, body), 400, "VALIDATION_ERROR")
    assert (await get_hold(client, hold_id))["status"] == "HELD"


# --------------------------------------------------------------------------------------------
# POST /api/wallet/holds/{holdId}/void
# --------------------------------------------------------------------------------------------


async def test_void_releases_everything(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user(gold=100)
    hold = await held(client, user, 45)
    data = assert_ok(await void(client, hold["holdId"]))
    assert set(data) == WRITE_KEYS
    assert (data["status"], data["capturedAmount"], data["amount"]) == ("VOIDED", 0, 45)
    assert (data["balance"], data["available"]) == ("100", "100")
    assert await amounts(client, user) == (100, 100, 0)
    assert_error(await void(client, hold["holdId"]), 422, "HOLD_NOT_ACTIVE")
    assert_error(await capture(client, hold["holdId"]), 422, "HOLD_NOT_ACTIVE")
    assert (await get_hold(client, hold["holdId"]))["status"] == "VOIDED"


# --------------------------------------------------------------------------------------------
# Unknown and malformed hold ids
# --------------------------------------------------------------------------------------------


async def test_an_unknown_hold_is_404_hold_not_found(client: httpx.AsyncClient) -> None:
    ghost = str(uuid.uuid4())
    assert_error(await client.get(f"{HOLDS}/{ghost}"), 404, "HOLD_NOT_FOUND")
    assert_error(await capture(client, ghost), 404, "HOLD_NOT_FOUND")
    assert_error(await void(client, ghost), 404, "HOLD_NOT_FOUND")


@pytest.mark.parametrize(
    "hold_id", ["nope", "123", ALICE[:-1], ALICE + "0", "%00", "%20" + ALICE, "null"]
)
async def test_a_malformed_hold_id_is_400(client: httpx.AsyncClient, hold_id: str) -> None:
    assert_error(await client.get(f"{HOLDS}/{hold_id}"), 400, "VALIDATION_ERROR")
    assert_error(await capture(client, hold_id), 400, "VALIDATION_ERROR")
    assert_error(await void(client, hold_id), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", HOLDS),
        ("DELETE", HOLDS),
        ("POST", f"{HOLDS}/{ALICE}"),
        ("DELETE", f"{HOLDS}/{ALICE}"),
        ("GET", f"{HOLDS}/{ALICE}/capture"),
        ("GET", f"{HOLDS}/{ALICE}/void"),
    ],
)
async def test_wrong_methods_on_hold_routes_are_405(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_error(await client.request(method, path), 405, "METHOD_NOT_ALLOWED")


# --------------------------------------------------------------------------------------------
# Expiry
# --------------------------------------------------------------------------------------------


async def sleep_until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


async def test_a_capture_after_expiry_is_hold_expired_swept_or_not(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    early, late = (
        await held(client, user, 10, expiresInSeconds=1),
        await held(client, user, 20, expiresInSeconds=1),
    )
    await sleep_until(parse_instant(early["expiresAt"]) + timedelta(milliseconds=20))
    key = new_key()
    first = await capture(client, early["holdId"], key=key)  # most likely before any sweep
    error = assert_error(first, 422, "HOLD_EXPIRED")
    assert_replayed(first, await capture(client, early["holdId"], key=key))
    await asyncio.sleep(2.5)  # the sweeper (every second) has certainly been by
    assert_error(await capture(client, late["holdId"]), 422, "HOLD_EXPIRED")
    assert_error(await void(client, late["holdId"]), 422, "HOLD_NOT_ACTIVE")
    assert "expired" in error["message"]
    assert await amounts(client, user) == (100, 100, 0)
    for hold in (early, late):
        assert (await get_hold(client, hold["holdId"]))["status"] == "EXPIRED"


async def test_an_expired_hold_answers_hold_expired_whatever_the_capture_asks(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """Expiry comes before the body, as HOLD_NOT_ACTIVE does: more than the hold held, or its
    own user as recipient, is still HOLD_EXPIRED, swept or not."""
    user = await factory.user(gold=100)
    hold = await held(client, user, 10, expiresInSeconds=1)
    await sleep_until(parse_instant(hold["expiresAt"]) + timedelta(milliseconds=20))
    for body in ({"amount": 11}, {"toUserId": str(user)}, {"amount": 11, "toUserId": str(user)}):
        assert_error(await capture(client, hold["holdId"], body), 422, "HOLD_EXPIRED")
    assert await amounts(client, user) == (100, 100, 0)


async def test_a_hold_past_expiry_reads_as_expired_before_any_sweep(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    hold = await held(client, user, 10, expiresInSeconds=1)
    await sleep_until(parse_instant(hold["expiresAt"]))
    assert (await get_hold(client, hold["holdId"]))["status"] == "EXPIRED"
    listed = assert_ok(await client.get(HOLDS, params={"userId": str(user), "status": "EXPIRED"}))
    assert [h["holdId"] for h in listed] == [hold["holdId"]]
    assert assert_ok(await client.get(HOLDS, params={"userId": str(user), "status": "HELD"})) == []


async def test_the_sweeper_releases_an_expired_hold_within_five_seconds(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """No capture, no void: only the sweeper inside `wallet serve` releases it."""
    user = await factory.user(gold=100)
    hold = await held(client, user, 40, expiresInSeconds=1)
    deadline = parse_instant(hold["expiresAt"]) + timedelta(seconds=5)
    while await amounts(client, user) != (100, 100, 0):
        assert datetime.now(UTC) < deadline, "the hold was not released within 5 s of expiry"
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class TwoServers:
    url: str
    bases: tuple[str, str]
    logs: tuple[Path, Path]
    procs: tuple[Any, Any]


@pytest.fixture(scope="module")
def two_servers(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoServers]:
    """Two `wallet serve` processes on a database of their own: two sweepers, nothing else."""
    url = create_database(server_url, "wallet_sweep")
    migrate(url)
    _run(url, seed)
    logs = (tmp_path_factory.mktemp("sweep") / "a.log", tmp_path_factory.mktemp("sweep") / "b.log")
    first = start_server(url, log=logs[0])
    try:
        second = start_server(url, log=logs[1])
    except BaseException:
        first[0].kill()
        raise
    try:
        yield TwoServers(url, (first[1], second[1]), logs, (first[0], second[0]))
    finally:
        for proc in (first[0], second[0]):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        drop_database(server_url, url)


async def new_user(client: httpx.AsyncClient, gold: int) -> uuid.UUID:
    user = uuid.uuid4()
    assert_ok(await client.post("/api/users", json={"id": str(user), "username": f"u-{user}"}), 201)
    body = {"userId": str(user), "amount": gold, "assetSlug": GOLD, "type": "TOPUP"}
    assert_ok(await post_json(client, "/api/wallet/transact", body))
    return user


async def test_with_two_server_processes_expired_holds_are_released_within_six_seconds(
    two_servers: TwoServers,
) -> None:
    async with (
        httpx.AsyncClient(base_url=two_servers.bases[0], timeout=30) as a,
        httpx.AsyncClient(base_url=two_servers.bases[1], timeout=30) as b,
    ):
        users = [await new_user(a, 100) for _ in range(4)]
        started = time.monotonic()
        holds = [
            await held(client, user, 10 * (n + 1), expiresInSeconds=1)
            for n, (client, user) in enumerate(zip([a, b, a, b], users, strict=True))
        ]
        pending = set(users)
        while pending:
            assert time.monotonic() - started < 6, f"not released in 6 s: {pending}"
            for user in list(pending):
                if await amounts(random.choice([a, b]), user) == (100, 100, 0):
                    pending.discard(user)
            await asyncio.sleep(0.1)
        for hold in holds:
            assert (await get_hold(b, hold["holdId"]))["status"] == "EXPIRED"
        await audit_ok(a)


async def test_the_sweepers_survive_database_trouble(two_servers: TwoServers) -> None:
    """Every server connection is killed (as by a restart or a failover): the sweepers log,
    retry, and go on releasing holds."""
    conn = await asyncpg.connect(two_servers.url)
    try:
        for _ in range(3):
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(0.4)
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=two_servers.bases[1], timeout=30) as client:
        user = None
        for _ in range(20):  # the first requests may meet dead pooled connections
            try:
                user = await new_user(client, 50)
                break
            except AssertionError:
                await asyncio.sleep(0.2)
        assert user is not None
        await held(client, user, 50, expiresInSeconds=1)
        started = time.monotonic()
        while await amounts(client, user) != (50, 50, 0):
            assert time.monotonic() - started < 6
            await asyncio.sleep(0.1)
    for proc in two_servers.procs:
        assert proc.poll() is None  # still serving


async def test_the_sweeper_stops_cleanly_at_shutdown(two_servers: TwoServers) -> None:
    for proc in two_servers.procs:
        proc.send_signal(signal.SIGTERM)
    for proc, log in zip(two_servers.procs, two_servers.logs, strict=True):
        assert proc.wait(timeout=15) == 0
        output = log.read_text()
        assert "Traceback" not in output
        assert "Application shutdown complete" in output


async def test_a_sweeper_on_a_database_that_is_down_keeps_trying_and_closes_promptly() -> None:
    dead = create_engine("postgresql://nobody@127.0.0.1:1/none", pool_size=1)
    sweeper = HoldSweeper(dead.execution_options(isolation_level="AUTOCOMMIT"), period_s=0.05)
    with capture_logs() as logs:
        sweeper.start()
        await asyncio.sleep(0.5)  # about ten failed sweeps
        started = time.monotonic()
        await sweeper.close()
    assert time.monotonic() - started < 1
    await dead.dispose()
    assert [e["event"] for e in logs] == ["hold_sweep_failed"]  # logged once, not every tick


@pytest.fixture(scope="module")
def quiet_db(server_url: str) -> Iterator[str]:
    """A database no server runs on: only a test's own sweeper releases holds there."""
    url = create_database(server_url, "wallet_quiet")
    migrate(url)
    _run(url, seed)
    yield url
    drop_database(server_url, url)


async def test_a_sweeper_whose_connections_are_killed_logs_retries_and_releases(
    quiet_db: str,
) -> None:
    engine = create_engine(quiet_db, pool_size=2, application_name="sweeper-test")
    user = uuid.uuid4()
    async with engine.begin() as conn:
        await ledger.create_user(conn, user_id=user, username=f"s-{user}")
        await ledger.transact(
            conn, ledger.TransactRequest(user, GOLD, 100, "TOPUP"), key=new_key(), principal="t"
        )

    async def hold(amount: int) -> ledger.HoldView:
        async with engine.begin() as conn:
            request = ledger.HoldRequest(user, GOLD, amount, expires_in_seconds=1)
            return ledger.settled(
                await ledger.create_hold(conn, request, key=new_key(), principal="t")
            )

    async def kill_sweeper_connections() -> None:
        conn = await asyncpg.connect(quiet_db)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'sweeper-test'"
            )
        finally:
            await conn.close()

    sweeper = HoldSweeper(engine.execution_options(isolation_level="AUTOCOMMIT"), period_s=0.05)
    try:
        first = await hold(30)
        assert await held_of(engine, user) == 30
        with capture_logs() as logs:
            sweeper.start()
            await sleep_until(first.expires_at + timedelta(milliseconds=500))
            assert await held_of(engine, user) == 0  # nobody but this sweeper could release it
            for _ in range(3):
                await kill_sweeper_connections()
                await asyncio.sleep(0.3)
            second = await hold(40)  # the sweeper is still there after all that
            await sleep_until(second.expires_at + timedelta(milliseconds=500))
            assert await held_of(engine, user) == 0
        events = [e["event"] for e in logs]
        assert "hold_sweep_failed" in events
        assert events[events.index("hold_sweep_failed") + 1] == "hold_sweep_recovered"
        found = await holds_of(engine, [first.hold_id, second.hold_id])
        assert found == ["EXPIRED", "EXPIRED"]
    finally:
        started = time.monotonic()
        await sweeper.close()
        assert time.monotonic() - started < 1
        await engine.dispose()


async def held_of(engine: AsyncEngine, user: uuid.UUID) -> int:
    async with engine.connect() as conn:
        for found in await ledger.balances(conn, user):
            if found.asset.slug == GOLD:
                return int(found.held)
    return 0


async def holds_of(engine: AsyncEngine, ids: list[uuid.UUID]) -> list[str]:
    async with engine.connect() as conn:
        found = await ledger.holds_by_id(conn, ids)
    return [found[i].status for i in ids]


# --------------------------------------------------------------------------------------------
# GET /api/wallet/holds/{holdId} and GET /api/wallet/holds
# --------------------------------------------------------------------------------------------


async def test_list_holds_newest_first_filtered_and_paged(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, other = await factory.user(gold=100), await factory.user(gold=100)
    ids = [(await held(client, user, n + 1))["holdId"] for n in range(5)]
    await held(client, other, 1)
    assert_ok(await void(client, ids[1]))
    assert_ok(await capture(client, ids[3]))

    body = (await client.get(HOLDS, params={"userId": str(user)})).json()
    assert set(body) == {"success", "data", "nextCursor"}
    assert body["success"] is True
    assert body["nextCursor"] is None
    assert [h["holdId"] for h in body["data"]] == ids[::-1]
    for h in body["data"]:
        assert VIEW_KEYS <= set(h) <= VIEW_KEYS | {"transactionId"}
        assert h["userId"] == str(user)

    def by_status(status: str) -> list[str]:
        return [h["holdId"] for h in body["data"] if h["status"] == status]

    for status, expected in [
        ("HELD", [ids[4], ids[2], ids[0]]),
        ("VOIDED", [ids[1]]),
        ("CAPTURED", [ids[3]]),
        ("EXPIRED", []),
    ]:
        found = assert_ok(await client.get(HOLDS, params={"userId": str(user), "status": status}))
        assert [h["holdId"] for h in found] == expected == by_status(status)

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params = {"userId": str(user), "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get(HOLDS, params=params)).json()
        pages.append([h["holdId"] for h in page["data"]])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]

    everyone = assert_ok(await client.get(HOLDS, params={"limit": "100"}))  # no userId: all
    assert {ids[0], ids[4]} <= {h["holdId"] for h in everyone}
    assert any(h["userId"] == str(other) for h in everyone)


@pytest.mark.parametrize(
    "params",
    [
        {"userId": "nope"},
        {"userId": ""},
        {"status": "held"},
        {"status": "DONE"},
        {"status": ""},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": "x"},
        {"limit": ""},
        {"cursor": "garbage"},
        {"cursor": "ZTo1"},  # a history cursor is not a holds cursor
    ],
)
async def test_list_holds_refuses_malformed_parameters(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    error = assert_error(await client.get(HOLDS, params=params), 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == next(iter(params))


async def test_list_holds_refuses_a_repeated_parameter(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{HOLDS}?status=HELD&status=VOIDED")
    assert_error(response, 400, "VALIDATION_ERROR")


async def test_list_holds_of_an_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(HOLDS, params={"userId": str(uuid.uuid4())})
    assert_error(response, 404, "USER_NOT_FOUND")


async def test_list_holds_of_a_user_without_holds_is_empty(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=1)
    body = (await client.get(HOLDS, params={"userId": str(user)})).json()
    assert body == {"success": True, "data": [], "nextCursor": None}


# --------------------------------------------------------------------------------------------
# Auth: holds need `transact` (reads `read`); end-user tokens never
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(server_url: str) -> Iterator[KeyedServer]:
    """Keys and JWTs on a database of their own; end users may even SPEND and TRANSFER from
    their own wallets, and still never hold."""
    with keyed_server(
        server_url,
        "wallet_holds_auth",
        {
            "reader": ["read"],
            "payments": ["transact"],
            "ops": ["admin"],
            "all": ["read", "transact", "admin"],
        },
        WALLET_USER_CAN_SPEND="true",
        WALLET_USER_CAN_TRANSFER="true",
    ) as server:
        yield server


@pytest.fixture
async def secure_client(secured: KeyedServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secured.base, timeout=30) as c:
        yield c


async def test_hold_writes_need_transact_and_never_an_end_user_token(
    secured: KeyedServer, secure_client: httpx.AsyncClient
) -> None:
    h = secured.headers

    async def write(caller: str, path: str, body: Mapping[str, object] | None) -> httpx.Response:
        return await post_json(secure_client, path, body, headers=h[caller])

    hold_id = assert_ok(await write("payments", HOLDS, hold_body(ALICE, 5)))["holdId"]
    for caller, status, code in [
        ("none", 401, "UNAUTHENTICATED"),
        ("reader", 403, "FORBIDDEN"),
        ("ops", 403, "FORBIDDEN"),
        ("alice", 403, "FORBIDDEN"),  # her own wallet, and she may SPEND: still never holds
    ]:
        for path, body in [
            (HOLDS, hold_body(ALICE, 5)),
            (f"{HOLDS}/{hold_id}/capture", {}),
            (f"{HOLDS}/{hold_id}/void", None),
        ]:
            assert_error(await write(caller, path, body), status, code)
    own_spend = {"userId": ALICE, "amount": 1, "assetSlug": GOLD, "type": "SPEND"}
    assert_ok(await write("alice", "/api/wallet/transact", own_spend))  # she may spend
    balance = await secure_client.get(f"/api/wallet/balance/{ALICE}", headers=h["reader"])
    assert [r["held"] for r in assert_ok(balance) if r["slug"] == GOLD] == ["5"]
    assert assert_ok(await write("all", f"{HOLDS}/{hold_id}/void", None))["status"] == "VOIDED"


async def test_hold_reads_need_read_and_never_an_end_user_token(
    secured: KeyedServer, secure_client: httpx.AsyncClient
) -> None:
    h = secured.headers
    hold = assert_ok(
        await post_json(secure_client, HOLDS, hold_body(ALICE, 1), headers=h["payments"])
    )
    one, listing = f"{HOLDS}/{hold['holdId']}", f"{HOLDS}?userId={ALICE}"
    for path in (one, listing):
        assert_ok(await secure_client.get(path, headers=h["reader"]))
        assert_error(await secure_client.get(path, headers=h["none"]), 401, "UNAUTHENTICATED")
        for caller in ("payments", "ops", "alice"):
            assert_error(await secure_client.get(path, headers=h[caller]), 403, "FORBIDDEN")
    # Forbidden before anything is looked up: an end user cannot probe which holds exist.
    ghost = f"{HOLDS}/{uuid.uuid4()}"
    assert_error(await secure_client.get(ghost, headers=h["alice"]), 403, "FORBIDDEN")


# --------------------------------------------------------------------------------------------
# Races, on real parallel connections
# --------------------------------------------------------------------------------------------


async def test_twenty_concurrent_holds_of_ten_on_a_balance_of_100_exactly_ten_held(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=100)
    responses = await asyncio.gather(*(create(client, hold_body(user, 10)) for _ in range(20)))
    outcomes = Counter(
        r.json()["data"]["status"] if r.status_code == 200 else r.json()["code"] for r in responses
    )
    assert outcomes == {"HELD": 10, "INSUFFICIENT_FUNDS": 10}
    assert {r.status_code for r in responses} == {200, 422}
    assert await amounts(client, user) == (100, 0, 100)
    listed = assert_ok(await client.get(HOLDS, params={"userId": str(user), "status": "HELD"}))
    assert len(listed) == 10
    await audit_ok(client)


async def test_capture_and_void_of_one_hold_at_the_same_moment_exactly_one_wins(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    for _ in range(10):
        user, shop = await factory.user(gold=50), await factory.user()
        hold_id = (await held(client, user, 40))["holdId"]
        captured, voided = await asyncio.gather(
            capture(client, hold_id, {"amount": 25, "toUserId": str(shop)}), void(client, hold_id)
        )
        statuses = sorted([captured.status_code, voided.status_code])
        assert statuses == [200, 422], (captured.text, voided.text)
        loser = captured if captured.status_code == 422 else voided
        assert_error(loser, 422, "HOLD_NOT_ACTIVE")
        final = (await get_hold(client, hold_id))["status"]
        if captured.status_code == 200:
            assert final == "CAPTURED"
            assert await amounts(client, user) == (25, 25, 0)
            assert await amounts(client, shop) == (25, 25, 0)
        else:
            assert final == "VOIDED"
            assert await amounts(client, user) == (50, 50, 0)
            assert await amounts(client, shop) == (0, 0, 0)
    await audit_ok(client)


async def test_holds_racing_spends_and_transfers_never_take_available_below_zero(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, friend = await factory.user(gold=100), await factory.user()
    spend = {"userId": str(user), "amount": 10, "assetSlug": GOLD, "type": "SPEND"}
    transfer = {"fromUserId": str(user), "toUserId": str(friend), "amount": 10, "assetSlug": GOLD}
    has_transfer = (
        await client.post("/api/wallet/transfer", json={}, headers={"Idempotency-Key": new_key()})
    ).status_code != 404
    kinds = [("hold", "spend", "transfer" if has_transfer else "spend")[n % 3] for n in range(60)]
    random.shuffle(kinds)

    async def one(kind: str) -> tuple[str, int]:
        if kind == "hold":
            response = await create(client, hold_body(user, 10))
        elif kind == "spend":
            response = await post_json(client, "/api/wallet/transact", spend)
        else:
            response = await post_json(client, "/api/wallet/transfer", transfer)
        if response.status_code != 200:
            assert_error(response, 422, "INSUFFICIENT_FUNDS")
        return kind, response.status_code

    async def watch(stop: asyncio.Event) -> int:
        """Read the balance throughout: available never below zero, balance = available + held."""
        reads = 0
        while not stop.is_set():
            await amounts(client, user)
            reads += 1
        return reads

    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(stop))
    results = await asyncio.gather(*(one(kind) for kind in kinds))
    stop.set()
    assert await watcher > 0
    done = Counter(kind for kind, status in results if status == 200)
    assert sum(done.values()) == 10  # 100 of coins, 10 each: exactly ten of anything
    balance, available, held_ = await amounts(client, user)
    assert held_ == 10 * done["hold"]
    assert balance == 100 - 10 * (done["spend"] + done["transfer"])
    assert available == 0
    assert await amounts(client, friend) == (10 * done["transfer"],) * 2 + (0,)
    await audit_ok(client)


async def test_a_capture_racing_expiry_ends_captured_or_expired_never_both_never_neither(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=1_000)
    holds = [await held(client, user, 10, expiresInSeconds=1) for _ in range(16)]

    async def capture_near_expiry(hold: Json) -> httpx.Response:
        offset = timedelta(milliseconds=random.uniform(-60, 60))
        await sleep_until(parse_instant(hold["expiresAt"]) + offset)
        return await capture(client, hold["holdId"])

    answers = await asyncio.gather(*(capture_near_expiry(h) for h in holds))
    await asyncio.sleep(2.5)  # every hold has expired or been captured, and been swept
    captured = 0
    for hold, answer in zip(holds, answers, strict=True):
        final = await get_hold(client, hold["holdId"])
        if answer.status_code == 200:
            captured += 1
            assert answer.json()["data"]["status"] == final["status"] == "CAPTURED"
            assert final["capturedAmount"] == 10
        else:
            assert_error(answer, 422, "HOLD_EXPIRED")
            assert final["status"] == "EXPIRED"
            assert final["capturedAmount"] == 0
            assert "transactionId" not in final
    assert await amounts(client, user) == (1_000 - 10 * captured, 1_000 - 10 * captured, 0)
    spends = assert_ok(
        await client.get(f"/api/wallet/transactions/{user}", params={"type": "SPEND"})
    )
    assert len(spends) == captured  # one posting per capture, none for an expiry
    await audit_ok(client)
