"""Hostile input, generated: Schemathesis against the OpenAPI document and the GraphQL schema,
Hypothesis against the parsers. No input may cause a 5xx, a hang, or money moving outside the
ledger's rules (the audit must still pass afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.routing import Route

from tests.conftest import ROOT, create_database, drop_database, start_server
from wallet import auth
from wallet.app import create_app
from wallet.audit import audit
from wallet.cli import _run, migrate
from wallet.errors import ValidationError
from wallet.http import read_json_object
from wallet.inputs import (
    MAX_AMOUNT,
    parse_amount,
    parse_asset_slug,
    parse_idempotency_key,
    parse_user_id,
    parse_username,
)
from wallet.openapi import DOCUMENT
from wallet.seed import seed
from wallet.settings import Settings

SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")
EXAMPLES = os.environ.get("WALLET_FUZZ_EXAMPLES", "40")
# No 5xx, and every answer matches the document: its status, content type and body schema.
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


def test_openapi_document_lists_exactly_the_rest_routes() -> None:
    app = create_app(Settings(database_url="postgresql://unused"))
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        and route.methods
        and route.path.startswith(("/api", "/h", "/r"))
        for method in route.methods - {"HEAD"}
    }
    documented = {(path, method) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert served == documented


@dataclass(frozen=True)
class Target:
    base: str
    database_url: str
    header: str


@pytest.fixture(scope="module")
def target(server_url: str) -> Iterator[Target]:
    """A server on a database of its own (fuzzing creates users and keys), with a key that may
    do everything, so that every operation is reachable."""
    url = create_database(server_url, "wallet_fuzz")
    migrate(url)
    _run(url, seed)
    secret = _run(
        url, lambda conn: auth.create_key(conn, name="fuzzer", scopes=["read", "transact", "admin"])
    )
    proc, base = start_server(url)
    try:
        yield Target(base, url, f"Authorization: Bearer {secret}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_database(server_url, url)


def run_schemathesis(location: str, header: str) -> str:
    result = subprocess.run(
        [
            SCHEMATHESIS, "run", location,
            "--checks", CHECKS,
            "--max-examples", EXAMPLES,
            "--header", header,
            "--exclude-operation-id", "revokeKey",  # would revoke the fuzzer's own key
            "--seed", "20261124",
            "--request-timeout", "20",
        ],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}, cwd=ROOT,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def audit_passes(url: str) -> bool:
    async def check(conn: AsyncConnection) -> bool:
        return (await audit(conn)).ok

    return _run(url, check, isolation_level="REPEATABLE READ")


@pytest.mark.slow
def test_schemathesis_rest(target: Target) -> None:
    output = run_schemathesis(f"{target.base}/openapi.json", target.header)
    cases = re.search(r"(\d+) generated", output)
    print(f"REST fuzz: {cases.group(0) if cases else output[-300:]}")  # noqa: T201 (reported)
    assert audit_passes(target.database_url)


@pytest.mark.slow
def test_schemathesis_graphql(target: Target) -> None:
    output = run_schemathesis(f"{target.base}/graphql", target.header)
    cases = re.search(r"(\d+) generated", output)
    print(f"GraphQL fuzz: {cases.group(0) if cases else output[-300:]}")  # noqa: T201
    assert audit_passes(target.database_url)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(json_values)
@settings(max_examples=400)
def test_parse_amount_accepts_exactly_safe_positive_integers(value: object) -> None:
    try:
        amount = parse_amount(value)
    except ValidationError as error:
        assert error.details["field"] == "amount"
        return
    assert 1 <= amount <= MAX_AMOUNT
    assert not isinstance(value, bool | float)
    assert value == amount or (isinstance(value, str) and int(value) == amount)


@given(st.integers(min_value=1, max_value=MAX_AMOUNT))
def test_every_safe_amount_round_trips(amount: int) -> None:
    assert parse_amount(amount) == parse_amount(str(amount)) == parse_amount("00" + str(amount))


@given(json_values)
@settings(max_examples=300)
def test_other_parsers_only_raise_validation_errors(value: object) -> None:
    for parse in (parse_user_id, parse_asset_slug, parse_username):
        with contextlib.suppress(ValidationError):
            parse(value)


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_idempotency_keys_are_printable_ascii_up_to_255(key: str) -> None:
    try:
        assert parse_idempotency_key(key) == key
    except ValidationError:
        assert not (1 <= len(key) <= 255 and all(" " <= c <= "~" for c in key))
    else:
        assert 1 <= len(key) <= 255
        assert all(" " <= c <= "~" for c in key)


@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_body_parser_returns_an_object_or_a_validation_error(raw: bytes) -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": raw, "more_body": False}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    try:
        body = asyncio.run(read_json_object(request))
    except ValidationError:
        return
    assert isinstance(body, dict)
