"""A wallet read with its first ledger page in one statement (ledger.overview) answers exactly
what the two reads answer: the same data, errors and authorization, page by page.

The two reads are the path a server with a read replica takes (pages may come from the replica,
current balances never do); here its replica is the primary itself, which is no standby, so
every read runs on the primary as it would without one. Both run on the same database."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Factory, in_process_resources
from tests.graphql_client import count_statements, gql
from wallet import ledger
from wallet.auth import ANONYMOUS, Principal
from wallet.replica import Replica
from wallet.resolvers.context import build_context
from wallet.schema.build import build_schema
from wallet.settings import Settings

SETTINGS = Settings(database_url="postgresql://unused")
GOLD = "gold_coins"
ENTRY = (
    "cursor node { id direction amount balanceAfter createdAt asset { slug name decimals }"
    " transaction { id type amount reference metadata principal reason asset { slug }"
    " reverses { id } counterparty { userId username } } }"
)
WALLET = f"""
query W($id: UUID!, $first: Int, $after: String) {{
  wallet(userId: $id) {{
    userId username
    balances {{ asset {{ slug name decimals }} amount held available formatted }}
    ledger(first: $first, after: $after) {{
      edges {{ {ENTRY} }}
      pageInfo {{ hasNextPage endCursor }}
    }}
  }}
}}
"""
# Aliases, named and inline fragments, directives fed by variables, a filtered page beside the
# unfiltered one, and `first: null` (the default size).
SHAPES = f"""
query S($id: UUID!, $with: Boolean!, $without: Boolean!) {{
  wallet(userId: $id) {{
    ...Head
    ... on Wallet {{ latest: ledger(first: null) @include(if: $with) {{ edges {{ cursor }} }} }}
    spends: ledger(first: 3, type: SPEND) @skip(if: $without) {{ edges {{ node {{ amount }} }} }}
    gold: balance(assetSlug: "gold_coins") {{ amount held }}
  }}
}}
fragment Head on Wallet {{
  username
  coins: balances {{ amount }}
  newest: ledger {{ edges {{ {ENTRY} }} pageInfo {{ hasNextPage }} }}
}}
"""
# The bench's wallet query (bench/scenarios.py), with a page size and a cursor.
LEAN = """
query W($id: UUID!, $first: Int, $after: String) { wallet(userId: $id) { username
  balances { asset { slug name decimals } amount }
  ledger(first: $first, after: $after) { edges { cursor node { direction amount balanceAfter
    createdAt transaction { id type } } } pageInfo { hasNextPage endCursor } } } }
"""
TWO_SIZES = """
query T($id: UUID!) { wallet(userId: $id) {
  small: ledger(first: 2) { edges { cursor node { amount } } pageInfo { hasNextPage } }
  large: ledger(first: 5) { edges { cursor node { amount } } pageInfo { hasNextPage } }
} }
"""
TWICE = """
query T($id: UUID!) { wallet(userId: $id) {
  a: ledger(first: 2) { edges { cursor } }
  b: ledger(first: 2) { pageInfo { hasNextPage endCursor } }
} }
"""


def key() -> str:
    return str(uuid.uuid4())


async def run(
    engine: AsyncEngine,
    query: str,
    variables: dict[str, Any],
    *,
    principal: Principal = ANONYMOUS,
    two_reads: bool = False,
) -> tuple[Any, list[Any]]:
    """The operation in process: one statement for the wallet and its page, or (`two_reads`)
    the wallet and the page each read on its own, as with a replica."""
    resources = in_process_resources(SETTINGS, engine)
    if two_reads:
        replica = Replica(
            engine.execution_options(isolation_level="AUTOCOMMIT"),
            engine,
            max_wait_s=0.1,
            retry_s=1,
        )
        resources = replace(resources, replica=replica)
    context = build_context(resources, principal=principal)
    result = await build_schema(SETTINGS).execute(query, variables, context)
    return result.data, [error.formatted for error in result.errors or []]


async def same_both_ways(
    engine: AsyncEngine,
    query: str,
    variables: dict[str, Any],
    *,
    principal: Principal = ANONYMOUS,
) -> tuple[Any, list[Any]]:
    one = await run(engine, query, variables, principal=principal)
    two = await run(engine, query, variables, principal=principal, two_reads=True)
    assert one == two
    return one


async def busy_user(engine: AsyncEngine, factory: Factory) -> uuid.UUID:
    """A wallet of two assets whose ledger has every kind of entry: TOPUPs, SPENDs, BONUSes,
    TRANSFERs both ways with references and metadata, and a REVERSAL."""
    user = await factory.user(gold=500, diamonds=7)
    friend = await factory.user(gold=100)
    for amount, kind in [(20, "SPEND"), (5, "BONUS"), (30, "TOPUP")]:
        await factory.transact(user, amount, kind)  # type: ignore[arg-type]
    async with engine.begin() as conn:
        sent = ledger.TransferRequest(user, friend, GOLD, 10, reference="r-1")
        done = ledger.settled(await ledger.transfer(conn, sent, key=key(), principal="t"))
        back = ledger.TransferRequest(friend, user, GOLD, 3, metadata={"i": 1})
        ledger.settled(await ledger.transfer(conn, back, key=key(), principal="t"))
        reverse = ledger.ReverseRequest(done.transaction_id, amount=1, reason="oops")
        ledger.settled(await ledger.reverse(conn, reverse, key=key(), principal="t"))
    await factory.transact(user, 2, "SPEND", slug="diamonds")
    return user


async def test_pages_with_cursors_answer_as_two_reads(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await busy_user(engine, factory)
    whole, errors = await same_both_ways(engine, WALLET, {"id": str(user), "first": 100})
    assert errors == []
    everything = whole["wallet"]["ledger"]["edges"]
    assert len(everything) == 9  # 2 TOPUPs, 3 postings, 2 TRANSFERs, a REVERSAL, a SPEND
    kinds = {e["node"]["transaction"]["type"] for e in everything}
    assert kinds == {"TOPUP", "SPEND", "BONUS", "TRANSFER", "REVERSAL"}
    assert any(e["node"]["transaction"]["counterparty"] for e in everything)
    seen: list[Any] = []
    after = None
    while True:
        variables = {"id": str(user), "first": 3, "after": after}
        data, errors = await same_both_ways(engine, WALLET, variables)
        assert errors == []
        page = data["wallet"]["ledger"]
        seen += page["edges"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == everything


async def test_one_statement_for_the_wallet_and_its_page(
    engine: AsyncEngine, factory: Factory
) -> None:
    user = await busy_user(engine, factory)
    cursor = ledger.encode_cursor(2**40)
    for variables in ({"first": 5}, {"first": 50}, {"first": 5, "after": cursor}):
        assert await count_statements(engine, LEAN, {"id": str(user), **variables}) == 1
    # Two pages: the wallet (with its balances), then each page on its own.
    assert await count_statements(engine, TWO_SIZES, {"id": str(user)}) == 3


@pytest.mark.parametrize("entries", [4, 5])
async def test_a_page_of_exactly_first_entries_and_one_more(
    engine: AsyncEngine, factory: Factory, entries: int
) -> None:
    user = await factory.user()
    for amount in range(1, entries + 1):
        await factory.transact(user, amount, "TOPUP")
    data, errors = await same_both_ways(engine, WALLET, {"id": str(user), "first": 4})
    assert errors == []
    page = data["wallet"]["ledger"]
    newest = [str(amount) for amount in range(entries, entries - 4, -1)]
    assert [e["node"]["amount"] for e in page["edges"]] == newest
    end = page["edges"][-1]["cursor"]
    assert page["pageInfo"] == {"hasNextPage": entries == 5, "endCursor": end}


async def test_an_empty_wallet_and_an_unknown_user(engine: AsyncEngine, factory: Factory) -> None:
    user = await factory.user()  # no account at all
    data, errors = await same_both_ways(engine, WALLET, {"id": str(user)})
    assert errors == []
    assert data["wallet"]["balances"] == []
    assert data["wallet"]["ledger"] == {
        "edges": [],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    }
    nobody = await same_both_ways(engine, WALLET, {"id": str(uuid.uuid4())})
    assert nobody == ({"wallet": None}, [])


async def test_who_may_read_the_wallet(engine: AsyncEngine, factory: Factory) -> None:
    user, other = await busy_user(engine, factory), await factory.user(gold=1)
    own = Principal(kind="user", name=f"user:{user}", user_id=user)
    data, errors = await same_both_ways(engine, WALLET, {"id": str(user)}, principal=own)
    assert errors == []
    principals = {e["node"]["transaction"]["principal"] for e in data["wallet"]["ledger"]["edges"]}
    assert principals == {"service"}  # nothing here was made by the user's own token
    someone = Principal(kind="user", name=f"user:{other}", user_id=other)
    no_read = Principal(kind="key", name="k", scopes=frozenset({"transact"}))
    for principal in (someone, no_read):
        data, errors = await same_both_ways(engine, WALLET, {"id": str(user)}, principal=principal)
        assert data == {"wallet": None}
        assert [(e["message"], e["path"], e["extensions"]["code"]) for e in errors] == [
            ("These credentials may not read this wallet.", ["wallet"], "FORBIDDEN")
        ]


@pytest.mark.parametrize("flags", [(True, False), (False, True)], ids=["included", "skipped"])
async def test_aliases_fragments_and_directives(
    engine: AsyncEngine, factory: Factory, flags: tuple[bool, bool]
) -> None:
    user = await busy_user(engine, factory)
    variables = {"id": str(user), "with": flags[0], "without": flags[1]}
    data, errors = await same_both_ways(engine, SHAPES, variables)
    assert errors == []
    assert len(data["wallet"]["newest"]["edges"]) == 9
    assert ("latest" in data["wallet"], "spends" in data["wallet"]) == (flags[0], flags[0])


async def test_a_ledger_selected_twice(engine: AsyncEngine, factory: Factory) -> None:
    user = await busy_user(engine, factory)
    sizes, errors = await same_both_ways(engine, TWO_SIZES, {"id": str(user)})
    assert errors == []
    small, large = sizes["wallet"]["small"], sizes["wallet"]["large"]
    assert small["edges"] == large["edges"][:2]
    assert (small["pageInfo"], large["pageInfo"]) == ({"hasNextPage": True},) * 2
    twice, errors = await same_both_ways(engine, TWICE, {"id": str(user)})
    assert errors == []
    assert (
        twice["wallet"]["b"]["pageInfo"]["endCursor"] == twice["wallet"]["a"]["edges"][1]["cursor"]
    )


@pytest.mark.parametrize(
    "arguments", [{"first": 0}, {"first": 101}, {"after": "not-a-cursor"}, {"after": ""}]
)
async def test_arguments_the_ledger_refuses(
    engine: AsyncEngine, factory: Factory, arguments: dict[str, Any]
) -> None:
    user = await busy_user(engine, factory)
    data, errors = await same_both_ways(engine, WALLET, {"id": str(user), **arguments})
    if arguments == {"after": ""}:  # an empty cursor is no cursor, as before
        assert errors == []
        return
    assert data == {"wallet": None}
    assert [(e["path"], e["extensions"]["code"]) for e in errors] == [
        (["wallet", "ledger"], "VALIDATION_ERROR")
    ]


async def test_the_wallet_query_over_http(client: httpx.AsyncClient, factory: Factory) -> None:
    """Through a real server: its hot asyncpg pool reads the wallet and its page."""
    user = await factory.user(gold=40, diamonds=3)
    for amount in (1, 2, 3):
        await factory.transact(user, amount, "SPEND")
    first = await gql(client, WALLET, {"id": str(user), "first": 2})
    wallet = first["data"]["wallet"]
    assert [b["amount"] for b in wallet["balances"]] == ["3", "34"]  # diamonds, gold_coins
    assert [e["node"]["amount"] for e in wallet["ledger"]["edges"]] == ["3", "2"]
    assert wallet["ledger"]["pageInfo"]["hasNextPage"] is True
    after = wallet["ledger"]["pageInfo"]["endCursor"]
    rest = await gql(client, WALLET, {"id": str(user), "first": 5, "after": after})
    edges = rest["data"]["wallet"]["ledger"]["edges"]
    assert [e["node"]["amount"] for e in edges] == ["1", "3", "40"]
    assert rest["data"]["wallet"]["ledger"]["pageInfo"]["hasNextPage"] is False
