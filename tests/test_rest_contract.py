"""The REST contract, line by line, over real HTTP: what careful, careless and hostile clients see.

Every test that moves money uses its own factory user; Alice and Bob are only read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.factories import Factory
from wallet.http import JSONResponse
from wallet.inputs import TxType

ALICE = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
BOB = "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380b22"
MAX_AMOUNT = 9_007_199_254_740_991
MAX_BODY = 64 * 1024
TRANSACT = "/api/wallet/transact"
DIGITS = re.compile(r"[0-9]+")
MISSING = object()  # marks a field to leave out of a request body

TRANSACT_KEYS = {
    "transactionId",
    "status",
    "type",
    "userId",
    "assetSlug",
    "amount",
    "balanceBefore",
    "balanceAfter",
    "createdAt",
    "reference",  # added by Ledger v2: null and {} when not given
    "metadata",
}
HISTORY_KEYS = {
    "transactionId",
    "type",
    "assetSlug",
    "amount",
    "direction",
    "balanceAfter",
    "createdAt",
    "principal",  # added by the security issue: who made the transaction ("" when open)
    "reference",  # added by Ledger v2
    "metadata",
    "counterpartyUserId",
    "reversesTransactionId",
}
BALANCE_KEYS = {"id", "slug", "name", "balance", "decimals", "available", "held"}

Json = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def new_key() -> str:
    return f"contract-{uuid.uuid4()}"


def tx_body(
    user: uuid.UUID | str, amount: object = 10, *, kind: str = "TOPUP", slug: str = "gold_coins"
) -> dict[str, object]:
    return {"userId": str(user), "amount": amount, "assetSlug": slug, "type": kind}


def with_field(body: Mapping[str, object], name: str, value: object) -> dict[str, object]:
    """The body with one field replaced, or removed when `value` is MISSING."""
    changed = dict(body)
    if value is MISSING:
        del changed[name]
    else:
        changed[name] = value
    return changed


def raw_amount_body(user: uuid.UUID, amount_json: str) -> bytes:
    """A TOPUP body whose amount is spliced in as raw JSON text (NaN, 1.0, 1e3 survive as is)."""
    return (
        f'{{"userId": "{user}", "amount": {amount_json},'
        ' "assetSlug": "gold_coins", "type": "TOPUP"}'
    ).encode()


def padded_body(body: Mapping[str, object], size: int) -> bytes:
    """`body` as JSON padded with whitespace to exactly `size` bytes (still valid JSON)."""
    encoded = json.dumps(body).encode()
    assert len(encoded) <= size
    return encoded[:-1] + b" " * (size - len(encoded)) + b"}"


async def post_transact(
    client: httpx.AsyncClient,
    body: Mapping[str, object] | bytes,
    *,
    key: str | bytes | None = None,
    content_type: str | None = "application/json",
) -> httpx.Response:
    """POST /api/wallet/transact with an Idempotency-Key (a fresh one unless given)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    raw_key = key if isinstance(key, bytes) else (key or new_key()).encode()
    headers: list[tuple[bytes, bytes]] = [(b"Idempotency-Key", raw_key)]
    if content_type is not None:
        headers.append((b"Content-Type", content_type.encode()))
    return await client.post(TRANSACT, content=content, headers=headers)


def assert_no_trace(response: httpx.Response) -> None:
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    assert not response.text.lstrip().startswith("<")


def assert_error(response: httpx.Response, status: int, code: str) -> Json:
    """An error in the envelope: JSON, exactly success/code/message (+ details), no trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert_no_trace(response)
    body: Json = response.json()
    assert set(body) - {"details"} == {"success", "code", "message"}, body
    assert body["success"] is False
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"].strip()
    if "details" in body:
        assert isinstance(body["details"], dict)
    return body


def assert_ok(response: httpx.Response, status: int = 200) -> Any:
    """A success in the envelope; returns `data`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: Json = response.json()
    assert body["success"] is True
    assert "data" in body
    return body["data"]


def is_digits(value: object) -> bool:
    return isinstance(value, str) and DIGITS.fullmatch(value) is not None


def assert_iso_timestamp(value: object) -> datetime:
    assert isinstance(value, str)
    moment = datetime.fromisoformat(value)
    assert moment.tzinfo is not None
    return moment


def is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def assert_replayed(first: httpx.Response, again: httpx.Response) -> None:
    assert first.headers.get("Idempotent-Replayed") is None
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.status_code == first.status_code
    assert again.content == first.content


async def balances(client: httpx.AsyncClient, user: uuid.UUID | str) -> dict[str, str]:
    """slug -> balance string, from GET /api/wallet/balance."""
    rows = assert_ok(await client.get(f"/api/wallet/balance/{user}"))
    return {row["slug"]: row["balance"] for row in rows}


async def history_pages(
    client: httpx.AsyncClient,
    user: uuid.UUID | str,
    *,
    limit: int | None = None,
    asset_slug: str | None = None,
    cursor: str | None = None,
) -> list[list[Json]]:
    """Every page from `cursor` on; asserts nextCursor is a string until the last page's null."""
    pages: list[list[Json]] = []
    while True:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if asset_slug is not None:
            params["assetSlug"] = asset_slug
        if cursor is not None:
            params["cursor"] = cursor
        body = (await client.get(f"/api/wallet/transactions/{user}", params=params)).json()
        assert body["success"] is True, body
        pages.append(body["data"])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str)
        assert cursor
        assert len(pages) < 1000, "pagination does not terminate"


async def history_ids(client: httpx.AsyncClient, user: uuid.UUID | str) -> list[str]:
    pages = await history_pages(client, user, limit=100)
    return [item["transactionId"] for page in pages for item in page]


async def snapshot(
    client: httpx.AsyncClient, user: uuid.UUID | str
) -> tuple[dict[str, str], list[str]]:
    """Balances and history: equal snapshots before and after mean nothing moved."""
    return await balances(client, user), await history_ids(client, user)


async def make_history(factory: Factory, user: uuid.UUID, count: int) -> list[str]:
    """`count` postings on `user` (gold and diamonds mixed); transaction ids, oldest first."""
    kinds: tuple[TxType, ...] = ("TOPUP", "BONUS", "TOPUP", "SPEND")
    ids: list[str] = []
    for n in range(count):
        slug = "diamonds" if n % 3 == 2 else "gold_coins"
        kind = kinds[n % 4] if n >= 4 else "TOPUP"  # early credits keep every SPEND affordable
        amount = 1 if kind == "SPEND" else 1 + n % 5
        outcome = await factory.transact(user, amount, kind, slug=slug)
        assert outcome.outcome == "COMPLETED"
        ids.append(str(outcome.transaction_id))
    return ids


# --------------------------------------------------------------------------------------------
# Envelope, unknown routes, wrong methods, health
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/api"),
        ("GET", "/api/wallet"),
        ("GET", "/api/wallet/balance"),
        ("GET", f"/api/wallet/balance/{ALICE}/extra"),
        ("POST", "/api/wallet/transact/extra"),
        ("GET", "/api/wallet/transactions"),
        ("DELETE", "/api/nothing/here"),
        ("GET", "/static/../../etc/passwd"),
    ],
)
async def test_unknown_route_is_a_json_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_error(await client.request(method, path), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", TRANSACT),
        ("PUT", TRANSACT),
        ("DELETE", f"/api/wallet/balance/{ALICE}"),
        ("POST", f"/api/wallet/balance/{ALICE}"),
        ("PATCH", f"/api/wallet/transactions/{ALICE}"),
        ("GET", "/api/users"),
        ("PUT", "/api/users"),
        ("OPTIONS", "/api/users"),
        ("POST", "/healthz"),
        ("DELETE", "/readyz"),
    ],
)
async def test_wrong_method_is_a_json_405(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_error(await client.request(method, path), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/wallet/balance/{ALICE}/"),
        ("POST", f"{TRANSACT}/"),
        ("GET", "/healthz/"),
        ("POST", "/graphql/"),
    ],
)
async def test_a_path_with_a_trailing_slash_is_a_json_404_not_a_redirect(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    """No redirect to the path without the slash (it was built from the client's own Host
    header); nothing runs."""
    response = await client.request(
        method,
        path,
        json={"userId": ALICE, "type": "TOPUP", "amount": 1, "assetSlug": "gold_coins"},
        headers={"Idempotency-Key": new_key()},
    )
    assert_error(response, 404, "NOT_FOUND")
    assert "location" not in response.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_endpoints_answer_200(client: httpx.AsyncClient, path: str) -> None:
    assert_ok(await client.get(path))


# --------------------------------------------------------------------------------------------
# GET /api/wallet/balance/{userId}
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "gold"), [(ALICE, "100"), (BOB, "50")])
async def test_balance_of_seeded_users(client: httpx.AsyncClient, user: str, gold: str) -> None:
    rows = assert_ok(await client.get(f"/api/wallet/balance/{user}"))
    assert isinstance(rows, list)
    gold_rows = [row for row in rows if row["slug"] == "gold_coins"]
    assert gold_rows == [
        {
            "id": gold_rows[0]["id"],
            "slug": "gold_coins",
            "name": "Gold Coins",
            "decimals": 0,
            "balance": gold,
            "available": gold,
            "held": "0",
        }
    ]
    for row in rows:
        assert set(row) == BALANCE_KEYS
        assert type(row["id"]) is int
        assert is_digits(row["balance"])


async def test_balance_has_one_row_per_asset_held(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=3, diamonds=4)
    rows = assert_ok(await client.get(f"/api/wallet/balance/{user}"))
    assert sorted((row["slug"], row["name"], row["balance"]) for row in rows) == [
        ("diamonds", "Diamonds", "4"),
        ("gold_coins", "Gold Coins", "3"),
    ]
    ids = [row["id"] for row in rows]
    assert all(type(account_id) is int for account_id in ids)
    assert len(set(ids)) == 2


async def test_balance_of_a_user_holding_nothing_is_empty(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    assert assert_ok(await client.get(f"/api/wallet/balance/{user}")) == []


@pytest.mark.parametrize(
    "user",
    [
        "not-a-uuid",
        "123",
        ALICE[:-1],
        ALICE + "0",
        ALICE[:-1] + "g",
        "%20" + ALICE,
        ALICE + "%0A",
        "null",
        "%00",
    ],
)
async def test_balance_of_a_non_uuid_is_400(client: httpx.AsyncClient, user: str) -> None:
    assert_error(await client.get(f"/api/wallet/balance/{user}"), 400, "VALIDATION_ERROR")


async def test_balance_of_an_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(f"/api/wallet/balance/{uuid.uuid4()}"), 404, "USER_NOT_FOUND")


# --------------------------------------------------------------------------------------------
# POST /api/wallet/transact: successes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "amount", "before", "after"),
    [("TOPUP", 7, 20, 27), ("BONUS", 5, 20, 25), ("SPEND", 8, 20, 12), ("SPEND", 20, 20, 0)],
)
async def test_transact_moves_the_users_balance(
    client: httpx.AsyncClient, factory: Factory, kind: str, amount: int, before: int, after: int
) -> None:
    user = await factory.user(gold=before)
    response = await post_transact(client, tx_body(user, amount, kind=kind))
    data = assert_ok(response)
    assert set(data) == TRANSACT_KEYS
    assert is_uuid(data["transactionId"])
    assert data["status"] == "COMPLETED"
    assert data["type"] == kind
    assert data["userId"] == str(user)
    assert data["assetSlug"] == "gold_coins"
    assert type(data["amount"]) is int
    assert data["amount"] == amount
    assert data["balanceBefore"] == str(before)
    assert data["balanceAfter"] == str(after)
    assert_iso_timestamp(data["createdAt"])
    assert "treasury" not in response.text.lower()
    assert response.headers.get("Idempotent-Replayed") is None
    assert await balances(client, user) == {"gold_coins": str(after)}
    newest = (await history_pages(client, user, limit=1))[0][0]
    assert newest["transactionId"] == data["transactionId"]


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        pytest.param(1, 1, id="int-1"),
        pytest.param("1", 1, id="string-1"),
        pytest.param(10, 10, id="int-10"),
        pytest.param("10", 10, id="string-10"),
        pytest.param(MAX_AMOUNT, MAX_AMOUNT, id="int-max"),
        pytest.param(str(MAX_AMOUNT), MAX_AMOUNT, id="string-max"),
        pytest.param("05", 5, id="string-of-digits-with-leading-zero"),
    ],
)
async def test_transact_accepts_integer_and_digit_string_amounts(
    client: httpx.AsyncClient, factory: Factory, amount: object, expected: int
) -> None:
    user = await factory.user()
    data = assert_ok(await post_transact(client, tx_body(user, amount)))
    assert type(data["amount"]) is int
    assert data["amount"] == expected
    assert data["balanceBefore"] == "0"
    assert data["balanceAfter"] == str(expected)
    assert await balances(client, user) == {"gold_coins": str(expected)}


@pytest.mark.parametrize("kind", ["TOPUP", "BONUS"])
async def test_a_credit_opens_an_account_for_a_new_asset(
    client: httpx.AsyncClient, factory: Factory, kind: str
) -> None:
    user = await factory.user(gold=5)
    data = assert_ok(await post_transact(client, tx_body(user, 3, kind=kind, slug="diamonds")))
    assert (data["assetSlug"], data["balanceBefore"], data["balanceAfter"]) == (
        "diamonds",
        "0",
        "3",
    )
    rows = assert_ok(await client.get(f"/api/wallet/balance/{user}"))
    assert sorted((row["slug"], row["name"], row["balance"]) for row in rows) == [
        ("diamonds", "Diamonds", "3"),
        ("gold_coins", "Gold Coins", "5"),
    ]


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
async def test_transact_reads_json_whatever_the_content_type(
    client: httpx.AsyncClient, factory: Factory, content_type: str | None
) -> None:
    user = await factory.user()
    request = client.build_request(
        "POST",
        TRANSACT,
        content=json.dumps(tx_body(user, 4)).encode(),
        headers={
            "Idempotency-Key": new_key(),
            **({"Content-Type": content_type} if content_type else {}),
        },
    )
    if content_type is None:
        assert "content-type" not in request.headers
    assert assert_ok(await client.send(request))["balanceAfter"] == "4"


async def test_a_255_character_printable_key_works(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    printable = "".join(chr(c) for c in range(0x21, 0x7F)) + " "
    key = (uuid.uuid4().hex + printable * 3)[:254] + "~"
    assert len(key) == 255
    first = await post_transact(client, tx_body(user, 6), key=key)
    assert assert_ok(first)["balanceAfter"] == "6"
    again = await post_transact(client, tx_body(user, 6), key=key)
    assert_replayed(first, again)
    assert await balances(client, user) == {"gold_coins": "6"}


# --------------------------------------------------------------------------------------------
# POST /api/wallet/transact: refusals
# --------------------------------------------------------------------------------------------

BAD_AMOUNTS = [
    pytest.param("0", id="zero"),
    pytest.param("-0", id="minus-zero"),
    pytest.param("-1", id="negative"),
    pytest.param("-5", id="negative-5"),
    pytest.param("1.5", id="fraction"),
    pytest.param("1.0", id="integral-float"),
    pytest.param("1e3", id="exponent"),
    pytest.param("1E3", id="exponent-upper"),
    pytest.param("1e400", id="float-overflow"),
    pytest.param('"NaN"', id="string-NaN"),
    pytest.param("NaN", id="NaN-literal"),
    pytest.param("Infinity", id="Infinity-literal"),
    pytest.param("-Infinity", id="minus-Infinity-literal"),
    pytest.param("true", id="true"),
    pytest.param("false", id="false"),
    pytest.param("null", id="null"),
    pytest.param("[5]", id="array"),
    pytest.param("[]", id="empty-array"),
    pytest.param('{"value": 5}', id="object"),
    pytest.param('" 5"', id="leading-space"),
    pytest.param('"5 "', id="trailing-space"),
    pytest.param('"5\\n"', id="trailing-newline"),
    pytest.param('"+5"', id="leading-plus"),
    pytest.param('"-5"', id="string-negative"),
    pytest.param('"0x10"', id="hex"),
    pytest.param('"1_000"', id="underscore"),
    pytest.param('"1.5"', id="string-fraction"),
    pytest.param('"1e3"', id="string-exponent"),
    pytest.param('""', id="empty-string"),
    pytest.param('"0"', id="string-zero"),
    pytest.param('"\uff15"', id="fullwidth-digit"),
    pytest.param('"\u0663"', id="arabic-indic-digit"),
    pytest.param('"\\u0663"', id="escaped-arabic-indic-digit"),
    pytest.param(str(MAX_AMOUNT + 1), id="max-plus-one"),
    pytest.param(f'"{MAX_AMOUNT + 1}"', id="string-max-plus-one"),
    pytest.param("1" + "0" * 400, id="huge-integer"),
    pytest.param('"1' + "0" * 400 + '"', id="huge-digit-string"),
    pytest.param("9" * 5000, id="integer-longer-than-python-parses"),
]


@pytest.mark.parametrize("amount_json", BAD_AMOUNTS)
async def test_bad_amount_is_400_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, factory: Factory, amount_json: str
) -> None:
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    key = new_key()
    body = assert_error(
        await post_transact(client, raw_amount_body(user, amount_json), key=key),
        400,
        "VALIDATION_ERROR",
    )
    assert "amount" in body["message"], body
    assert await snapshot(client, user) == before
    # Validation errors are not stored: the same key with a corrected body goes through.
    fixed = await post_transact(client, tx_body(user, 5), key=key)
    assert assert_ok(fixed)["balanceAfter"] == "15"
    assert fixed.headers.get("Idempotent-Replayed") is None


BAD_FIELDS = [
    pytest.param("userId", "not-a-uuid", id="userId-not-uuid"),
    pytest.param("userId", "", id="userId-empty"),
    pytest.param("userId", 42, id="userId-number"),
    pytest.param("userId", None, id="userId-null"),
    pytest.param("userId", MISSING, id="userId-missing"),
    pytest.param("userId", [ALICE], id="userId-array"),
    pytest.param("userId", ALICE + "0", id="userId-too-long"),
    pytest.param("userId", " " + ALICE, id="userId-padded"),
    pytest.param("amount", MISSING, id="amount-missing"),
    pytest.param("assetSlug", "", id="assetSlug-empty"),
    pytest.param("assetSlug", None, id="assetSlug-null"),
    pytest.param("assetSlug", 5, id="assetSlug-number"),
    pytest.param("assetSlug", ["gold_coins"], id="assetSlug-array"),
    pytest.param("assetSlug", MISSING, id="assetSlug-missing"),
    pytest.param("type", "topup", id="type-lowercase"),
    pytest.param("type", "Topup", id="type-mixed-case"),
    pytest.param("type", "REFUND", id="type-unknown"),
    pytest.param("type", "TOPUP ", id="type-padded"),
    pytest.param("type", "", id="type-empty"),
    pytest.param("type", None, id="type-null"),
    pytest.param("type", 1, id="type-number"),
    pytest.param("type", ["TOPUP"], id="type-array"),
    pytest.param("type", MISSING, id="type-missing"),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
async def test_bad_field_is_400_and_changes_nothing(
    client: httpx.AsyncClient, factory: Factory, field: str, value: object
) -> None:
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    key = new_key()
    good = tx_body(user, 5)
    assert_error(
        await post_transact(client, with_field(good, field, value), key=key),
        400,
        "VALIDATION_ERROR",
    )
    assert await snapshot(client, user) == before
    assert assert_ok(await post_transact(client, good, key=key))["balanceAfter"] == "15"


BAD_BODIES = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"{'userId': 1}", id="single-quotes"),
    pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    pytest.param(b"[]", id="array"),
    pytest.param(b"null", id="null"),
    pytest.param(b"5", id="number"),
    pytest.param(b'"TOPUP"', id="string"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b"[" * 50_000, id="deeply-nested"),
    pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="deeply-nested-objects"),
]


@pytest.mark.parametrize("raw", BAD_BODIES)
async def test_bad_body_is_400_and_changes_nothing(
    client: httpx.AsyncClient, factory: Factory, raw: bytes
) -> None:
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    key = new_key()
    assert_error(await post_transact(client, raw, key=key), 400, "VALIDATION_ERROR")
    assert await snapshot(client, user) == before
    assert assert_ok(await post_transact(client, tx_body(user, 5), key=key))["balanceAfter"] == "15"


async def test_valid_json_followed_by_garbage_is_400(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=10)
    raw = json.dumps(tx_body(user, 5)).encode() + b" trailing"
    assert_error(await post_transact(client, raw), 400, "VALIDATION_ERROR")
    assert await balances(client, user) == {"gold_coins": "10"}


async def test_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    response = await post_transact(client, tx_body(uuid.uuid4(), 5))
    assert_error(response, 404, "USER_NOT_FOUND")


@pytest.mark.parametrize("slug", ["platinum", "Gold_Coins", "gold_coins_x", "x" * 64])
async def test_unknown_asset_is_404(client: httpx.AsyncClient, factory: Factory, slug: str) -> None:
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    assert_error(await post_transact(client, tx_body(user, 5, slug=slug)), 404, "ASSET_NOT_FOUND")
    assert await snapshot(client, user) == before


@pytest.mark.parametrize(
    "slug",
    [
        pytest.param("gold\u0000coins", id="nul-byte"),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
async def test_hostile_asset_slug_is_a_client_error_not_a_500(
    client: httpx.AsyncClient, factory: Factory, slug: str
) -> None:
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    response = await post_transact(client, json.dumps(tx_body(user, 5, slug=slug)).encode())
    expected = {400: "VALIDATION_ERROR", 404: "ASSET_NOT_FOUND"}
    assert response.status_code in expected, response.text
    assert_error(response, response.status_code, expected[response.status_code])
    assert await snapshot(client, user) == before


@pytest.mark.parametrize(("kind", "spend"), [("gold_coins", 11), ("diamonds", 1)])
async def test_spend_above_balance_is_422_and_nothing_moves(
    client: httpx.AsyncClient, factory: Factory, kind: str, spend: int
) -> None:
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    response = await post_transact(client, tx_body(user, spend, kind="SPEND", slug=kind))
    assert_error(response, 422, "INSUFFICIENT_FUNDS")
    assert response.headers.get("Idempotent-Replayed") is None
    assert await snapshot(client, user) == before
    assert await balances(client, user) == {"gold_coins": "10"}  # no diamonds account opened


async def test_missing_idempotency_key_is_400(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    response = await client.post(TRANSACT, json=tx_body(user, 5))
    assert_error(response, 400, "IDEMPOTENCY_KEY_MISSING")
    assert await snapshot(client, user) == before


@pytest.mark.parametrize("second", ["another-key", "same"])
async def test_two_idempotency_keys_are_400_and_nothing_moves(
    client: httpx.AsyncClient, factory: Factory, second: str
) -> None:
    """Ambiguous: a retry could name either key. Refused, as a repeated query parameter is."""
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    key = new_key()
    response = await client.post(
        TRANSACT,
        json=tx_body(user, 5),
        headers=[
            ("Idempotency-Key", key),
            ("Idempotency-Key", key if second == "same" else second),
        ],
    )
    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert body["details"] == {"field": "Idempotency-Key"}
    assert await snapshot(client, user) == before


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"k" * 256, id="256-chars"),
        pytest.param("caf\u00e9".encode(), id="non-ascii-utf8"),
        pytest.param(b"\xff", id="non-ascii-byte"),
        pytest.param(b"a\tb", id="control-tab"),
        pytest.param(b"a\x01b", id="control-soh"),
        pytest.param(b"a\x1bb", id="control-esc"),
        pytest.param(b"a\x7fb", id="control-del"),
    ],
)
async def test_bad_idempotency_key_is_400(
    client: httpx.AsyncClient, factory: Factory, key: bytes
) -> None:
    user = await factory.user(gold=10)
    before = await snapshot(client, user)
    assert_error(await post_transact(client, tx_body(user, 5), key=key), 400, "VALIDATION_ERROR")
    assert await snapshot(client, user) == before


async def _chunks(payload: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


async def send_body(
    client: httpx.AsyncClient, path: str, payload: bytes, *, chunked: bool
) -> httpx.Response:
    """POST `payload` with a Content-Length, or chunked without one."""
    headers = {"Idempotency-Key": new_key(), "Content-Type": "application/json"}
    if not chunked:
        return await client.post(path, content=payload, headers=headers)
    request = client.build_request("POST", path, content=_chunks(payload), headers=headers)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    return await client.send(request)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [MAX_BODY + 1, 1024 * 1024])
@pytest.mark.parametrize("path", [TRANSACT, "/api/users"])
async def test_body_over_64_kib_is_413(
    client: httpx.AsyncClient, factory: Factory, path: str, size: int, chunked: bool
) -> None:
    user = await factory.user(gold=10)
    body = tx_body(user, 5) if path == TRANSACT else {"username": f"big-{uuid.uuid4().hex}"}
    response = await send_body(client, path, padded_body(body, size), chunked=chunked)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await balances(client, user) == {"gold_coins": "10"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_of_exactly_64_kib_is_accepted(
    client: httpx.AsyncClient, factory: Factory, chunked: bool
) -> None:
    user = await factory.user()
    payload = padded_body(tx_body(user, 5), MAX_BODY)
    assert len(payload) == MAX_BODY
    response = await send_body(client, TRANSACT, payload, chunked=chunked)
    assert assert_ok(response)["balanceAfter"] == "5"


# --------------------------------------------------------------------------------------------
# Idempotency
# --------------------------------------------------------------------------------------------


async def test_same_key_same_request_replays_byte_for_byte(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    key = new_key()
    first = await post_transact(client, tx_body(user, 10), key=key)
    assert assert_ok(first)["balanceAfter"] == "10"
    # Something else happens to the wallet in between; the replay still says what was decided.
    assert_ok(await post_transact(client, tx_body(user, 1, kind="BONUS")))
    after_first = await snapshot(client, user)
    for same in (
        tx_body(user, 10),
        tx_body(user, "10"),
        {"type": "TOPUP", "assetSlug": "gold_coins", "amount": 10, "userId": str(user)},
    ):
        again = await post_transact(client, same, key=key)
        assert_replayed(first, again)
    assert await snapshot(client, user) == after_first
    assert await balances(client, user) == {"gold_coins": "11"}


async def test_replay_is_the_same_when_first_sent_as_a_string(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=30)
    key = new_key()
    first = await post_transact(client, tx_body(user, "10", kind="SPEND"), key=key)
    assert assert_ok(first)["amount"] == 10
    again = await post_transact(client, tx_body(user, 10, kind="SPEND"), key=key)
    assert_replayed(first, again)
    assert await balances(client, user) == {"gold_coins": "20"}


async def test_concurrent_duplicates_post_once(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user(gold=100)
    key = new_key()
    responses = await asyncio.gather(
        *(post_transact(client, tx_body(user, 7, kind="SPEND"), key=key) for _ in range(12))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    fresh = [r for r in responses if r.headers.get("Idempotent-Replayed") is None]
    assert len(fresh) == 1
    assert all(r.headers.get("Idempotent-Replayed") == "true" for r in responses if r not in fresh)
    assert await balances(client, user) == {"gold_coins": "93"}
    assert len(await history_ids(client, user)) == 2


@pytest.mark.parametrize("change", ["amount", "amount-as-string", "type", "assetSlug", "userId"])
async def test_same_key_different_request_is_422_reused(
    client: httpx.AsyncClient, factory: Factory, change: str
) -> None:
    user = await factory.user(gold=50)
    other = await factory.user(gold=50)
    key = new_key()
    original = tx_body(user, 10, kind="SPEND")
    first = assert_ok(await post_transact(client, original, key=key))
    before = (await snapshot(client, user), await snapshot(client, other))
    different = {
        "amount": with_field(original, "amount", 11),
        "amount-as-string": with_field(original, "amount", "11"),
        "type": with_field(original, "type", "TOPUP"),
        "assetSlug": with_field(original, "assetSlug", "diamonds"),
        "userId": with_field(original, "userId", str(other)),
    }[change]
    response = await post_transact(client, different, key=key)
    body = assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
    assert body["details"]["originalTransactionId"] == first["transactionId"]
    assert (await snapshot(client, user), await snapshot(client, other)) == before


async def test_reusing_the_key_of_a_refused_spend_is_422_reused(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=5)
    key = new_key()
    assert_error(
        await post_transact(client, tx_body(user, 10, kind="SPEND"), key=key),
        422,
        "INSUFFICIENT_FUNDS",
    )
    body = assert_error(
        await post_transact(client, tx_body(user, 3, kind="SPEND"), key=key),
        422,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert "originalTransactionId" in body["details"]
    assert await balances(client, user) == {"gold_coins": "5"}


async def test_insufficient_funds_is_stored_and_replayed(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=5)
    key = new_key()
    spend = tx_body(user, 10, kind="SPEND")
    refused = await post_transact(client, spend, key=key)
    assert_error(refused, 422, "INSUFFICIENT_FUNDS")
    assert_ok(await post_transact(client, tx_body(user, 100)))
    again = await post_transact(client, spend, key=key)
    assert_error(again, 422, "INSUFFICIENT_FUNDS")
    assert_replayed(refused, again)
    assert await balances(client, user) == {"gold_coins": "105"}
    assert len(await history_ids(client, user)) == 2


async def test_user_not_found_is_not_stored(client: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    key = new_key()
    assert_error(await post_transact(client, tx_body(user, 7), key=key), 404, "USER_NOT_FOUND")
    created = await client.post(
        "/api/users", json={"id": str(user), "username": f"late-{user.hex[:12]}"}
    )
    assert assert_ok(created, 201)["id"] == str(user)
    retried = await post_transact(client, tx_body(user, 7), key=key)
    assert assert_ok(retried)["balanceAfter"] == "7"
    assert retried.headers.get("Idempotent-Replayed") is None
    assert await balances(client, user) == {"gold_coins": "7"}


# --------------------------------------------------------------------------------------------
# GET /api/wallet/transactions/{userId}
# --------------------------------------------------------------------------------------------


async def test_history_items_have_the_contract_shape(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    sent = [
        tx_body(user, 40),
        tx_body(user, 5, kind="BONUS"),
        tx_body(user, 12, kind="SPEND"),
        tx_body(user, 2, kind="TOPUP", slug="diamonds"),
    ]
    answers = [assert_ok(await post_transact(client, body)) for body in sent]
    response = await client.get(f"/api/wallet/transactions/{user}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "data", "nextCursor"}
    assert body["success"] is True
    assert body["nextCursor"] is None
    items = body["data"]
    for item in items:
        assert set(item) == HISTORY_KEYS
        assert is_digits(item["balanceAfter"])
        assert_iso_timestamp(item["createdAt"])
    summary = [
        (i["transactionId"], i["type"], i["assetSlug"], int(i["amount"]), i["direction"])
        for i in items
    ]
    assert summary == [
        (answers[3]["transactionId"], "TOPUP", "diamonds", 2, "CREDIT"),
        (answers[2]["transactionId"], "SPEND", "gold_coins", 12, "DEBIT"),
        (answers[1]["transactionId"], "BONUS", "gold_coins", 5, "CREDIT"),
        (answers[0]["transactionId"], "TOPUP", "gold_coins", 40, "CREDIT"),
    ]
    assert [i["balanceAfter"] for i in items] == ["2", "33", "45", "40"]
    moments = [assert_iso_timestamp(i["createdAt"]) for i in items]
    assert moments == sorted(moments, reverse=True)


async def test_history_defaults_to_20_and_accepts_1_and_100(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    ids = await make_history(factory, user, 105)
    newest_first = ids[::-1]
    url = f"/api/wallet/transactions/{user}"

    default = (await client.get(url)).json()
    assert [i["transactionId"] for i in default["data"]] == newest_first[:20]
    assert isinstance(default["nextCursor"], str)

    one = (await client.get(url, params={"limit": 1})).json()
    assert [i["transactionId"] for i in one["data"]] == newest_first[:1]
    assert isinstance(one["nextCursor"], str)

    hundred = (await client.get(url, params={"limit": 100})).json()
    assert [i["transactionId"] for i in hundred["data"]] == newest_first[:100]
    assert isinstance(hundred["nextCursor"], str)
    rest = (await client.get(url, params={"limit": 100, "cursor": hundred["nextCursor"]})).json()
    assert [i["transactionId"] for i in rest["data"]] == newest_first[100:]
    assert rest["nextCursor"] is None


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("0", id="zero"),
        pytest.param("101", id="101"),
        pytest.param("-1", id="negative"),
        pytest.param("abc", id="letters"),
        pytest.param("1.5", id="fraction"),
        pytest.param("1e1", id="exponent"),
        pytest.param(" 5", id="padded"),
        pytest.param("+5", id="plus"),
        pytest.param("\uff15", id="fullwidth-digit"),
        pytest.param("99999999999999999999", id="twenty-nines"),
        pytest.param("9" * 5000, id="5000-digits"),
    ],
)
async def test_history_limit_out_of_range_is_400(
    client: httpx.AsyncClient, factory: Factory, limit: str
) -> None:
    user = await factory.user(gold=1)
    response = await client.get(f"/api/wallet/transactions/{user}", params={"limit": limit})
    assert_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(("count", "limit"), [(23, 5), (21, 7), (3, 1), (4, 20)])
async def test_walking_all_pages_gives_every_entry_once_newest_first(
    client: httpx.AsyncClient, factory: Factory, count: int, limit: int
) -> None:
    user = await factory.user()
    ids = await make_history(factory, user, count)
    pages = await history_pages(client, user, limit=limit)
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit
    walked = [item["transactionId"] for page in pages for item in page]
    assert walked == ids[::-1]


async def test_empty_history_is_an_empty_list_and_null_cursor(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    response = await client.get(f"/api/wallet/transactions/{user}")
    assert response.status_code == 200
    assert response.json() == {"success": True, "data": [], "nextCursor": None}


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("garbage", id="word"),
        pytest.param("!!!", id="punctuation"),
        pytest.param("A" * 2000, id="long"),
        pytest.param("%", id="percent"),
        pytest.param("\u00e9t\u00e9", id="non-ascii"),
        pytest.param(b64("x:5"), id="wrong-prefix"),
        pytest.param(b64("e:-1"), id="negative"),
        pytest.param(b64("e:abc"), id="not-a-number"),
        pytest.param(b64("e:"), id="no-number"),
        pytest.param(b64("e:9223372036854775808"), id="beyond-bigint"),
        pytest.param(b64("e:9999999999999999999"), id="nineteen-nines"),
        # What the base64 decoder would skip or take: only the cursor as issued is one.
        pytest.param("Z!T@o#1", id="stray-characters"),
        pytest.param("ZTo1====", id="padded"),
        pytest.param(" ZTo1", id="leading-space"),
        pytest.param("Z\nT\to1", id="whitespace-inside"),
        pytest.param(b64("e:05"), id="leading-zero"),
    ],
)
async def test_garbage_cursor_is_400(
    client: httpx.AsyncClient, factory: Factory, cursor: str
) -> None:
    user = await factory.user(gold=1)
    response = await client.get(f"/api/wallet/transactions/{user}", params={"cursor": cursor})
    assert_error(response, 400, "VALIDATION_ERROR")


async def test_history_filters_by_asset(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user()
    ids = await make_history(factory, user, 15)
    everything = [item for page in await history_pages(client, user, limit=100) for item in page]
    assert [item["transactionId"] for item in everything] == ids[::-1]
    for slug in ("gold_coins", "diamonds"):
        pages = await history_pages(client, user, limit=2, asset_slug=slug)
        filtered = [item for page in pages for item in page]
        assert filtered
        assert {item["assetSlug"] for item in filtered} == {slug}
        assert filtered == [item for item in everything if item["assetSlug"] == slug]


@pytest.mark.parametrize("slug", ["platinum", "Gold_Coins"])
async def test_history_of_an_unknown_asset_is_404(
    client: httpx.AsyncClient, factory: Factory, slug: str
) -> None:
    user = await factory.user(gold=1)
    response = await client.get(f"/api/wallet/transactions/{user}", params={"assetSlug": slug})
    assert_error(response, 404, "ASSET_NOT_FOUND")


async def test_history_with_a_nul_byte_asset_is_a_client_error_not_a_500(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(gold=1)
    response = await client.get(
        f"/api/wallet/transactions/{user}", params={"assetSlug": "gold\u0000coins"}
    )
    expected = {400: "VALIDATION_ERROR", 404: "ASSET_NOT_FOUND"}
    assert response.status_code in expected, response.text
    assert_error(response, response.status_code, expected[response.status_code])


async def test_history_of_an_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/wallet/transactions/{uuid.uuid4()}")
    assert_error(response, 404, "USER_NOT_FOUND")


@pytest.mark.parametrize("user", ["not-a-uuid", ALICE[:-1], ALICE + "0"])
async def test_history_of_a_non_uuid_is_400(client: httpx.AsyncClient, user: str) -> None:
    response = await client.get(f"/api/wallet/transactions/{user}")
    assert_error(response, 400, "VALIDATION_ERROR")


async def test_pages_are_stable_while_new_transactions_arrive(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    existing = (await make_history(factory, user, 12))[::-1]
    url = f"/api/wallet/transactions/{user}"
    first = (await client.get(url, params={"limit": 5})).json()
    newer = [
        assert_ok(await post_transact(client, tx_body(user, 1, kind=kind)))["transactionId"]
        for kind in ("TOPUP", "BONUS", "SPEND")
    ]
    rest = await history_pages(client, user, limit=5, cursor=first["nextCursor"])
    walked = [i["transactionId"] for page in [first["data"], *rest] for i in page]
    assert walked == existing
    assert not set(newer) & set(walked)


# --------------------------------------------------------------------------------------------
# POST /api/users
# --------------------------------------------------------------------------------------------


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


async def test_create_user_with_id_is_201_then_idempotent_200(client: httpx.AsyncClient) -> None:
    user_id = str(uuid.uuid4())
    name = unique_name()
    created = await client.post("/api/users", json={"id": user_id, "username": name})
    data = assert_ok(created, 201)
    assert set(data) == {"id", "username", "createdAt"}
    assert (data["id"], data["username"]) == (user_id, name)
    assert_iso_timestamp(data["createdAt"])
    again = await client.post("/api/users", json={"id": user_id, "username": name})
    assert assert_ok(again, 200) == data
    assert assert_ok(await client.get(f"/api/wallet/balance/{user_id}")) == []


async def test_create_user_without_id_generates_one(client: httpx.AsyncClient) -> None:
    name = unique_name()
    data = assert_ok(await client.post("/api/users", json={"username": name}), 201)
    assert set(data) == {"id", "username", "createdAt"}
    assert is_uuid(data["id"])
    assert data["username"] == name
    assert_ok(await client.get(f"/api/wallet/balance/{data['id']}"))


@pytest.mark.parametrize("second_id", ["other", "none"])
async def test_taken_username_is_409(client: httpx.AsyncClient, second_id: str) -> None:
    name = unique_name()
    assert_ok(
        await client.post("/api/users", json={"id": str(uuid.uuid4()), "username": name}), 201
    )
    body: dict[str, object] = {"username": name}
    if second_id == "other":
        body["id"] = str(uuid.uuid4())
    assert_error(await client.post("/api/users", json=body), 409, "USER_ALREADY_EXISTS")


async def test_taken_username_of_a_seeded_user_is_409(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/users", json={"username": "alice"})
    assert_error(response, 409, "USER_ALREADY_EXISTS")


async def test_existing_id_with_another_username_is_409(client: httpx.AsyncClient) -> None:
    user_id = str(uuid.uuid4())
    assert_ok(await client.post("/api/users", json={"id": user_id, "username": unique_name()}), 201)
    response = await client.post("/api/users", json={"id": user_id, "username": unique_name()})
    assert_error(response, 409, "USER_ALREADY_EXISTS")


@pytest.mark.parametrize(
    "username",
    [
        pytest.param("", id="empty"),
        pytest.param(" padded", id="leading-space"),
        pytest.param("padded ", id="trailing-space"),
        pytest.param("x" * 65, id="too-long"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\u0000b", id="nul"),
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param(5, id="number"),
        pytest.param(True, id="boolean"),
        pytest.param(None, id="null"),
        pytest.param(["bob"], id="array"),
        pytest.param({"name": "bob"}, id="object"),
        pytest.param(MISSING, id="missing"),
    ],
)
async def test_bad_username_is_400(client: httpx.AsyncClient, username: object) -> None:
    body = with_field({"username": ""}, "username", username)
    response = await client.post("/api/users", content=json.dumps(body).encode())
    assert_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "user_id",
    ["not-a-uuid", "", 5, True, [], {}, ALICE + "0", ALICE[:-1], "{" + ALICE + "}"],
)
async def test_bad_user_id_is_400(client: httpx.AsyncClient, user_id: object) -> None:
    response = await client.post("/api/users", json={"id": user_id, "username": unique_name()})
    assert_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'"alice"'])
async def test_create_user_with_a_bad_body_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    assert_error(await client.post("/api/users", content=raw), 400, "VALIDATION_ERROR")


def test_an_answer_orjson_cannot_write_is_written_as_orjson_would_otherwise() -> None:
    """A lone surrogate (from a client's text echoed in an error) or an integer past 64 bits
    makes orjson refuse the body: the standard library writes it, with the values orjson writes
    natively written as orjson writes them."""
    body = {
        "name": "A\ud800",
        "id": uuid.UUID(ALICE),
        "at": datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
        "big": 2**70,
    }
    written = json.loads(bytes(JSONResponse(body).body))
    assert written == {
        "name": "A\ud800",
        "id": ALICE,
        "at": "2026-11-28T12:00:00+00:00",
        "big": 2**70,
    }
