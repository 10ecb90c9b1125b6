"""A real server in production writes one JSON access line per request, and no secret sent to
it (API keys, tokens, a password in a URL or a query string) ever reaches its log."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import create_database, drop_database, start_server
from wallet import auth
from wallet.cli import _run, migrate
from wallet.logging import redact
from wallet.seed import seed

pytestmark = pytest.mark.slow

ALICE = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
DB_PASSWORD = "Db-pw-" + secrets.token_hex(8)  # the local server trusts loopback: any works
JWT_SECRET = "jwt-secret-" + secrets.token_hex(16)


@pytest.fixture
def secret_db(server_url: str) -> Iterator[str]:
    url = create_database(server_url, "wallet_logs")
    migrate(url)
    _run(url, seed)
    yield url
    drop_database(server_url, url)


def test_one_json_line_per_request_and_no_secret_in_the_log(secret_db: str, tmp_path: Path) -> None:
    async def mint(conn: AsyncConnection) -> str:
        return await auth.create_key(conn, name="shop", scopes=["read", "transact"])

    key = _run(secret_db, mint)
    with_password = make_url(secret_db).set(password=DB_PASSWORD)
    log = tmp_path / "server.log"
    proc, base = start_server(
        with_password.render_as_string(hide_password=False),
        log=log,
        WALLET_ENV="production",
        WALLET_JWT_SECRET=JWT_SECRET,
        WALLET_LOG_LEVEL="DEBUG",
    )
    now = int(time.time())
    good_jwt = jwt.encode({"sub": ALICE, "exp": now + 600}, JWT_SECRET, algorithm="HS256")
    forged_jwt = jwt.encode(
        {"sub": ALICE, "exp": now + 600},
        "not-the-secret-but-as-long-as-one-0123456789",
        algorithm="HS256",
    )
    unknown_key = f"wk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)[:43]}"
    basic = base64.b64encode(b"admin:Basic-pw-123").decode()
    query_secret = "q-" + secrets.token_hex(8)
    idempotency = f"log-{uuid.uuid4()}"
    sent: dict[str, tuple[str, str, int]] = {}  # request id -> (route, principal, status)

    def call(
        method: str,
        path: str,
        credential: str | None,
        *,
        json: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        request_id = uuid.uuid4().hex
        sending = {"x-request-id": request_id, **(headers or {})}
        if credential is not None:
            sending["authorization"] = credential
        answer = httpx.request(method, f"{base}{path}", headers=sending, json=json, timeout=30)
        sent[request_id] = (path, credential or "", answer.status_code)
        return answer

    topup = {"userId": ALICE, "amount": 7, "assetSlug": "gold_coins", "type": "TOPUP"}
    try:
        balance = f"/api/wallet/balance/{ALICE}"
        assert call("GET", balance, f"Bearer {key}").status_code == 200
        first = call(
            "POST",
            "/api/wallet/transact",
            f"Bearer {key}",
            json=topup,
            headers={"idempotency-key": idempotency},
        )
        assert first.status_code == 200
        again = call(
            "POST",
            "/api/wallet/transact",
            f"Bearer {key}",
            json=topup,
            headers={"idempotency-key": idempotency},
        )
        assert again.headers["idempotent-replayed"] == "true"
        assert call("GET", balance, f"Bearer {good_jwt}").status_code == 200
        assert call("GET", balance, f"Bearer {forged_jwt}").status_code == 401
        assert call("GET", balance, f"Bearer {unknown_key}").status_code == 401
        assert call("GET", balance, f"Basic {basic}").status_code == 401
        assert (
            call(
                "GET", f"{balance}?token={query_secret}&password={query_secret}", f"Bearer {key}"
            ).status_code
            == 200
        )
        assert call("GET", "/no/such/route", None).status_code in (401, 404)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    text = log.read_text(encoding="utf-8")
    for secret in (
        key,
        key.split("_")[-1],
        good_jwt,
        forged_jwt,
        unknown_key,
        basic,
        "Basic-pw-123",
        query_secret,
        DB_PASSWORD,
        JWT_SECRET,
    ):
        assert secret not in text, f"a secret reached the log: {secret[:12]}..."

    access = {}
    for line in text.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "request":
                assert event["request_id"] not in access, "two access lines for one request"
                access[event["request_id"]] = event
    assert set(sent) <= set(access)
    assert {access[r]["route"] for r in set(access) - set(sent)} <= {"/readyz"}  # start-up probes
    for request_id, (path, credential, status) in sent.items():
        line = access[request_id]
        assert line["status"] == status
        assert line["method"] in ("GET", "POST")
        assert isinstance(line["duration_ms"], float)
        assert "?" not in line["route"]
        if path.startswith("/api/wallet/balance/"):
            assert line["route"] == "/api/wallet/balance/{userId}"
        if status == 200 and credential == f"Bearer {key}":
            assert line["principal"] == "shop"
    replays = [line for line in access.values() if line["replayed"]]
    assert len(replays) == 1
    assert replays[0]["route"] == "/api/wallet/transact"
    assert (
        access[next(r for r, v in sent.items() if v[1] == f"Bearer {good_jwt}")]["principal"]
        == f"user:{ALICE}"
    )


def test_redaction_of_anything_shaped_like_a_credential() -> None:
    key = f"wk_0123456789ab_{'x' * 43}"
    assert redact(f"key {key} refused") == "key wk_0123456789ab_[REDACTED] refused"
    assert "s3cret" not in redact("postgresql://wallet:s3cret@db:5432/wallet")
    assert "wallet@db" not in redact("postgresql://wallet:s3cret@db:5432/wallet")
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [REDACTED]"
    assert "eyJ" not in redact("token eyJhbGciOi.eyJzdWIiOi.sig")
    assert redact("GET /x?password=hunter2&limit=2") == "GET /x?password=[REDACTED]&limit=2"
    assert redact("nothing to hide here") == "nothing to hide here"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("ae743eed2a26461588549c61cf43b457", "ae743eed2a26461588549c61cf43b457"),
        ("/api/wallet/balance/{userId}", "/api/wallet/balance/{userId}"),
        ("BASIC abc", "BASIC [REDACTED]"),
        ("bEaReR abc", "bEaReR [REDACTED]"),
        ("Ba\u017fic abc", "Ba\u017fic [REDACTED]"),  # a long s: the patterns' case folding
        ("wk_0123456789ab_secret", "wk_0123456789ab_[REDACTED]"),
        ("token=abc", "token=[REDACTED]"),
        ("x://u:p@h", "x://u:[REDACTED]@h"),
        ("eyJa.b.c", "[REDACTED-JWT]"),
        ("", ""),
    ],
)
def test_redaction_skips_only_what_no_pattern_matches(text: str, redacted: str) -> None:
    """Lines with nothing to hide skip the patterns; anything a pattern matches is still caught."""
    assert redact(text) == redacted
