"""Every GraphQL error is the client's to read: a 4xx or a GraphQL error, always with a stable
`extensions.code`, never a 500 for what a client sent, never a traceback in the log, never raw
exception text, and in production no field or type names the disabled introspection would hide.

The server here runs with WALLET_ENV=production and its output in a file the tests read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import GraphQLError, parse
from strawberry.extensions import SchemaExtension

from tests.conftest import start_server
from tests.factories import Factory
from wallet.errors import Forbidden
from wallet.schema.build import build_schema, is_unexpected
from wallet.seed import ALICE
from wallet.settings import Settings

CODES = {"VALIDATION_ERROR", "QUERY_TOO_COMPLEX"}
SPEND = "mutation T($input: TransactInput!) { transact(input: $input) { __typename } }"
FIRST = f'query P($n: Int) {{ wallet(userId: "{ALICE}") {{ ledger(first: $n) {{ edges {{ cursor }} }} }} }}'  # noqa: E501
HUGE = "9" * 5000
AT = f'query B($at: DateTime) {{ wallet(userId: "{ALICE}") {{ balances(at: $at) {{ amount }} }} }}'


class Server:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log
        self.seen = 0

    def new_output(self) -> str:
        """What the server wrote since the last call."""
        text = self.log.read_bytes()[self.seen :].decode("utf-8", "replace")
        self.seen += len(text.encode("utf-8", "replace"))
        return text


@pytest.fixture(scope="module")
def production(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("graphql-errors") / "server.log"
    proc, base = start_server(database_url, log=log, WALLET_ENV="production", PYTHONUNBUFFERED="1")
    try:
        yield Server(base, log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def raw(query: str, variables: str = "{}") -> bytes:
    return f'{{"query": {json.dumps(query)}, "variables": {variables}}}'.encode()


# What clients have sent that used to answer 500 (or be read ambiguously): name, body bytes.
MALFORMED: list[tuple[str, bytes]] = [
    ("body null", b"null"),
    ("body string", b'"x"'),
    ("body number", b"5"),
    ("body true", b"true"),
    ("body array", b"[]"),
    ("body empty", b""),
    ("body not JSON", b"{query"),
    ("invalid UTF-8", b'{"query": "{ assets { slug } }", "x": "\xff\xfe"}'),
    ("5000-digit number in an Int variable", raw(FIRST, f'{{"n": {HUGE}}}')),
    ("5000-digit number as an Amount", raw(SPEND, f'{{"input": {{"userId": "{ALICE}", "amount": {HUGE}, "assetSlug": "gold_coins", "type": "SPEND", "idempotencyKey": "k"}}}}')),  # noqa: E501
    ("NaN in a variable", raw(FIRST, '{"n": NaN}')),
    ("JSON nested 20000 deep", b'{"query": "{ __typename }", "x": ' + b"[" * 20000 + b"]" * 20000 + b"}"),  # noqa: E501
    ("variables nested 20000 deep", raw("{ __typename }", "[" * 20000 + "]" * 20000)),
    ("duplicate key in the body", b'{"query": "{ __typename }", "query": "{ assets { slug } }"}'),
    ("duplicate key in variables", raw(FIRST, '{"n": 1, "n": 3}')),
    ("subscription over POST", raw(f'subscription {{ balanceChanged(userId: "{ALICE}") {{ amount }} }}')),  # noqa: E501
    ("variables a list", raw("{ __typename }", "[1]")),
    ("variables a string", raw("{ __typename }", '"{}"')),
    ("variables a number", raw("{ __typename }", "5")),
    ("query a number", b'{"query": 5}'),
    ("query a list", b'{"query": ["{ __typename }"]}'),
    ("query an object", b'{"query": {"a": 1}}'),
    ("query missing", b"{}"),
    ("query empty", b'{"query": ""}'),
    ("operationName a number", b'{"query": "{ __typename }", "operationName": 5}'),
    ("operationName an object", b'{"query": "{ __typename }", "operationName": {"a": 1}}'),
    ("operationName a list", b'{"query": "{ __typename }", "operationName": ["A"]}'),
    ("operationName unknown", b'{"query": "query A { __typename }", "operationName": "B"}'),
    ("operationName a lone surrogate", b'{"query": "query A { __typename }", "operationName": "\\ud800"}'),  # noqa: E501
    ("operationName a lone surrogate, extensions too", b'{"query": "{ __typename }", "operationName": "\\udfff", "extensions": {}}'),  # noqa: E501
    ("extensions a number", b'{"query": "{ __typename }", "extensions": 5}'),
    ("UUID of another spelling", raw('{ wallet(userId: "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}") { username } }')),  # noqa: E501
    ("UUID variable a number", raw("query W($id: UUID!) { wallet(userId: $id) { username } }", '{"id": 5}')),  # noqa: E501
    ("unknown fragment", raw("{ ...Nope }")),
    *[
        (f"DateTime {spelling!r}", raw(AT, json.dumps({"at": spelling})))
        for spelling in (
            "2020-01-01T00:00:00\u0000Z",
            "20200101T000000Z",
            "2020-W01-1T00:00:00Z",
            "2020-01-01T00:00:00+00:00:00.5",
            "2020-01-01T00:00:00.1234567Z",
            "2020-01-01 00:00:00Z",
            "2020-01-01T00:00Z",
        )
    ],
    ("syntax error", raw("{ assets { slug }")),
    ("nested too deeply", raw("{" + "a {" * 300 + "}" * 301)),
]  # fmt: skip


class TestMalformedRequests:
    """Each of these is the client's fault: the answer says so, and the server stays calm."""

    @pytest.mark.parametrize(("name", "body"), MALFORMED, ids=[name for name, _ in MALFORMED])
    async def test_is_a_client_error_with_a_code(
        self, production: Server, name: str, body: bytes
    ) -> None:
        production.new_output()
        async with httpx.AsyncClient(base_url=production.base, timeout=30) as client:
            response = await client.post(
                "/graphql", content=body, headers={"content-type": "application/json"}
            )
        assert response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/json")
        errors = response.json()["errors"]
        assert errors, response.text
        for error in errors:
            assert error["extensions"]["code"] in CODES, error
        output = production.new_output()
        assert "Traceback" not in output, output
        assert "unexpected_error" not in output, output

    @pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
    async def test_a_method_graphql_does_not_take_is_405_as_a_graphql_response(
        self, production: Server, method: str
    ) -> None:
        async with httpx.AsyncClient(base_url=production.base, timeout=30) as client:
            response = await client.request(method, "/graphql")
        assert response.status_code == 405
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {
            "errors": [
                {
                    "message": f"{method} is not allowed here.",
                    "extensions": {"code": "METHOD_NOT_ALLOWED"},
                }
            ]
        }

    async def test_instants_graphql_takes_are_the_ones_rest_takes(self, production: Server) -> None:
        async with httpx.AsyncClient(base_url=production.base, timeout=30) as client:
            for spelling in ("2020-01-01T00:00:00Z", "2020-01-01t00:00:00.5+02:00"):
                response = await client.post(
                    "/graphql",
                    content=raw(AT, json.dumps({"at": spelling})),
                    headers={"content-type": "application/json"},
                )
                assert "errors" not in response.json(), response.text
                rest = await client.get(f"/api/wallet/balance/{ALICE}", params={"at": spelling})
                assert rest.status_code == 200, rest.text

    async def test_unsupported_content_type(self, production: Server) -> None:
        async with httpx.AsyncClient(base_url=production.base, timeout=30) as client:
            response = await client.post(
                "/graphql", content=raw("{ __typename }"), headers={"content-type": "text/plain"}
            )
        assert response.status_code == 400
        assert response.json()["errors"][0]["extensions"]["code"] == "VALIDATION_ERROR"


async def test_a_repeated_key_is_refused_never_last_wins(
    production: Server, factory: Factory
) -> None:
    """`{"amount": 1, "amount": 3}`: a proxy reading the first value and we reading the last
    would disagree on what was asked. Refused, and nothing moves."""
    user = await factory.user(gold=10)
    variables = (
        f'{{"input": {{"userId": "{user}", "amount": 1, "amount": 3, "assetSlug": "gold_coins",'
        f' "type": "SPEND", "idempotencyKey": "{uuid.uuid4()}"}}}}'
    )
    async with httpx.AsyncClient(base_url=production.base, timeout=30) as client:
        response = await client.post(
            "/graphql",
            content=raw(SPEND, variables),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "VALIDATION_ERROR"
    assert "'amount'" in error["message"]
    assert await factory.balance(user) == 10


# Documents whose errors graphql-core words with suggestions: each names something the
# schema has. Variables make the last two fail while executing, not while validating.
SUGGESTING: list[tuple[str, dict[str, Any]]] = [
    (f'{{ walet(userId: "{ALICE}") {{ username }} }}', {}),
    (f'{{ wallet(userId: "{ALICE}") {{ usernam }} }}', {}),
    (f'{{ wallet(userID: "{ALICE}") {{ username }} }}', {}),
    ("query Q($t: TransactionTyp) { __typename }", {}),
    (f'{{ wallet(userId: "{ALICE}") {{ ledger(type: SPNED) {{ edges {{ cursor }} }} }} }}', {}),
    (
        "query Q($t: TransactionType) { wallet(userId: "
        f'"{ALICE}") {{ ledger(type: $t) {{ edges {{ cursor }} }} }} }}',
        {"t": "SPNED"},
    ),
    (
        SPEND,
        {
            "input": {
                "userId": str(ALICE),
                "amout": "1",
                "amount": "1",
                "assetSlug": "gold_coins",
                "type": "SPEND",
                "idempotencyKey": "k",
            }
        },
    ),
]


@pytest.mark.parametrize(("query", "variables"), SUGGESTING)
async def test_production_suggests_no_names(
    production: Server, base_url: str, query: str, variables: dict[str, Any]
) -> None:
    body = {"query": query, "variables": variables}
    async with httpx.AsyncClient(timeout=30) as client:
        prod = (await client.post(f"{production.base}/graphql", json=body)).json()
        dev = (await client.post(f"{base_url}/graphql", json=body)).json()
    assert {e["extensions"]["code"] for e in prod["errors"]} == {"VALIDATION_ERROR"}
    assert not any("Did you mean" in e["message"] for e in prod["errors"]), prod
    # Outside production the same document is answered alike, hint included.
    assert any("Did you mean" in e["message"] for e in dev["errors"]), dev
    assert len(dev["errors"]) == len(prod["errors"])


async def test_production_has_no_introspection(production: Server) -> None:
    async with httpx.AsyncClient(base_url=production.base, timeout=30) as client:
        response = await client.post("/graphql", json={"query": "{ __schema { types { name } } }"})
    errors = response.json()["errors"]
    assert errors
    assert {e["extensions"]["code"] for e in errors} == {"VALIDATION_ERROR"}
    assert "data" not in response.json() or response.json()["data"] is None


async def test_an_unknown_fragment_is_named_with_a_code(production: Server) -> None:
    """It used to answer the KeyError's text, `'Nope'`, with no code at all."""
    async with httpx.AsyncClient(base_url=production.base, timeout=30) as client:
        response = await client.post("/graphql", json={"query": "{ ...Nope }"})
    assert response.json()["errors"] == [
        {
            "message": "Unknown fragment 'Nope'.",
            "locations": [{"line": 1, "column": 6}],
            "extensions": {"code": "VALIDATION_ERROR"},
        }
    ]


class Crash(SchemaExtension):
    def on_validate(self) -> Iterator[None]:
        raise KeyError("Nope")


async def test_an_exception_escaping_validation_is_masked() -> None:
    """Whatever raises while a document is parsed or validated (a bug, not the client's
    doing) reaches the client as INTERNAL_ERROR with a request id, never as its own text."""
    schema = build_schema(Settings(env="production"))
    schema.extensions = (*schema.extensions, Crash)
    result = await schema.execute("{ __typename }")
    assert result.errors is not None
    (error,) = [e.formatted for e in result.errors]
    assert error["extensions"]["code"] == "INTERNAL_ERROR"
    assert "Nope" not in json.dumps(error)
    assert error["message"].startswith("Unexpected error (request id")


def test_only_a_client_value_refused_by_a_scalar_keeps_its_exception_words() -> None:
    """A ValueError at a node of the document and outside any resolver is a scalar refusing
    what a client sent, in words written for clients. Anything else is masked."""
    node = parse("{ __typename }").definitions[0]
    assert not is_unexpected(GraphQLError("x", node, original_error=ValueError("A UUID is …")))
    assert not is_unexpected(GraphQLError("x", path=["a"], original_error=Forbidden("No.")))
    assert is_unexpected(GraphQLError("x", original_error=ValueError("escaped")))
    assert is_unexpected(GraphQLError("x", node, original_error=KeyError("Nope")))
    assert is_unexpected(GraphQLError("x", node, path=["a"], original_error=ValueError("bug")))
