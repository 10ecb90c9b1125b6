"""The planned executor (wallet/schema/execution.py) answers exactly what graphql-core answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import strawberry
from graphql import ExecutionResult as CoreResult
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from tests.factories import Factory, in_process_resources
from wallet.auth import ANONYMOUS
from wallet.resolvers.context import build_context
from wallet.schema.build import WalletSchema, build_schema
from wallet.schema.execution import PlannedExecutor
from wallet.settings import Settings

SETTINGS = Settings(database_url="postgresql://unused")

# Aliases, fragments (named and inline), __typename, a field selected twice with different
# sub-selections, fields with arguments beside stored ones, and directives fed by variables.
DOCUMENTS = {
    "wallet": """
        query W($id: UUID!) { wallet(userId: $id) { username
          balances { asset { slug name decimals } amount }
          ledger(first: 20) { edges { cursor node { direction amount balanceAfter createdAt
            transaction { id type } } } pageInfo { hasNextPage endCursor } } } }""",
    "shapes": """
        query S($id: UUID!, $with: Boolean!, $without: Boolean!) {
          wallet(userId: $id) {
            __typename
            coins: balances { ...B kind: __typename }
            page: ledger(first: 5) {
              edges { node { id ...N } node { amount t: transaction { __typename id } } }
              edges @include(if: $with) { cursor }
              pageInfo { ... on PageInfo { hasNextPage } endCursor @skip(if: $without) }
            }
            gold: balance(assetSlug: "gold_coins") { amount held available formatted }
          }
        }
        fragment B on Balance { asset { slug decimals } amount }
        fragment N on LedgerEntry { direction createdAt asset { name } balanceAfter }""",
    "transaction": """
        query T($id: UUID!) { wallet(userId: $id) { ledger(first: 3) { edges { node {
          transaction { id type amount reference metadata principal createdAt
            asset { slug } reversedAmount
            entries { accountKind direction amount balanceAfter user { username } } } } } } } }""",
}
VARIABLES = [{"with": True, "without": False}, {"with": False, "without": True}]


async def _execute(schema: WalletSchema, engine: AsyncEngine, query: str, variables: Any) -> Any:
    context = build_context(in_process_resources(SETTINGS, engine), principal=ANONYMOUS)
    result = await schema.execute(query, variables, context)
    return result.data, [error.formatted for error in result.errors or []]


def _schemas() -> tuple[WalletSchema, WalletSchema]:
    planned, stock = build_schema(SETTINGS), build_schema(SETTINGS)
    assert planned.execution_context_class is PlannedExecutor
    stock.execution_context_class = StrawberryGraphQLCoreExecutionContext
    return planned, stock


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
@pytest.mark.parametrize("flags", VARIABLES, ids=["included", "skipped"])
async def test_planned_answers_equal_graphql_cores(
    engine: AsyncEngine, factory: Factory, name: str, flags: dict[str, bool]
) -> None:
    user = await factory.user(gold=500, diamonds=7)
    for amount, kind in [(20, "SPEND"), (5, "BONUS"), (30, "TOPUP"), (1, "SPEND")] * 3:
        await factory.transact(user, amount, kind)  # type: ignore[arg-type]
    planned, stock = _schemas()
    variables = {"id": str(user), **(flags if name == "shapes" else {})}
    for _ in range(2):  # the second run uses the plans the first one kept
        expected = await _execute(stock, engine, DOCUMENTS[name], variables)
        assert expected[1] == []
        assert await _execute(planned, engine, DOCUMENTS[name], variables) == expected


async def test_a_ledger_page_is_filled_by_its_plan(
    engine: AsyncEngine, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """graphql-core builds a resolve info for every field it runs: about 200 for a 20-entry page
    and its balances; with the plans, only for the fields that have resolvers."""
    user = await factory.user(gold=100)
    for _ in range(20):
        await factory.transact(user, 1, "SPEND")
    infos = 0
    build = StrawberryGraphQLCoreExecutionContext.build_resolve_info

    def counted(self: Any, *args: Any) -> Any:
        nonlocal infos
        infos += 1
        return build(self, *args)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "build_resolve_info", counted)
    planned, stock = _schemas()
    seen = {}
    for label, schema in (("stock", stock), ("planned", planned)):
        infos = 0
        data, errors = await _execute(schema, engine, DOCUMENTS["wallet"], {"id": str(user)})
        assert errors == []
        assert len(data["wallet"]["ledger"]["edges"]) == 20
        seen[label] = infos
    assert seen["stock"] > 180
    assert seen["planned"] < 10


# A schema of its own for what the ledger never returns: values a plan must hand back.
@strawberry.type
class Item:
    name: str
    size: int | None
    tags: list[str]
    child: Item | None = None


def _items() -> list[Any]:
    return [
        Item(name="plain", size=1, tags=["a"], child=Item(name="kid", size=None, tags=[])),
        Item(name=None, size=2, tags=["b"]),  # type: ignore[arg-type]  # null in a non-null
        Item(name="big", size=2**40, tags=["c"]),  # an Int beyond 32 bits
        Item(name="tuple", size=3, tags=("d", "e")),  # type: ignore[arg-type]
        Item(name="generator", size=4, tags=(t for t in ["f"])),  # type: ignore[arg-type]
        Item(name="null item", size=5, tags=["g", None]),  # type: ignore[list-item]
        Item(name="error", size=ValueError("boom"), tags=[]),  # type: ignore[arg-type]
        Item(name="deep", size=6, tags=[], child=Item(name=None, size=7, tags=[])),  # type: ignore[arg-type]
    ]


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item | None]:  # an error nulls its item, not the list
        return _items()

    @strawberry.field
    def first(self) -> Item | None:
        first: Item = _items()[1]
        return first


class Counting(SchemaExtension):
    seen = 0

    def resolve(
        self, _next: Callable[..., Any], root: Any, info: Any, *args: str, **kwargs: Any
    ) -> object:
        Counting.seen += 1
        return _next(root, info, *args, **kwargs)


ITEMS = "{ items { name size tags child { name size tags } n: __typename } first { name } }"


def _run(executor: type[StrawberryGraphQLCoreExecutionContext], **options: Any) -> CoreResult:
    schema = strawberry.Schema(query=Query, execution_context_class=executor, **options)
    result = schema.execute_sync(ITEMS)
    return result.data, [e.formatted for e in result.errors or []]  # type: ignore[return-value]


def test_values_a_plan_does_not_take_get_graphql_cores_answer() -> None:
    expected = _run(StrawberryGraphQLCoreExecutionContext)
    data, errors = expected
    assert data is not None
    assert len(errors) >= 5
    assert _run(PlannedExecutor) == expected
    assert _run(PlannedExecutor) == expected  # with the plans kept by the first run


def test_an_extension_that_wraps_resolvers_sees_every_field() -> None:
    Counting.seen = 0
    stock = _run(StrawberryGraphQLCoreExecutionContext, extensions=[Counting])
    expected = Counting.seen
    Counting.seen = 0
    assert _run(PlannedExecutor, extensions=[Counting]) == stock
    assert Counting.seen == expected > 30


def test_a_plan_is_not_shared_by_two_executions_that_select_differently() -> None:
    """@include decides per execution; the document's plans are never kept across them."""
    schema = strawberry.Schema(query=Query, execution_context_class=PlannedExecutor)
    query = "query Q($c: Boolean!) { items { name child @include(if: $c) { name } } }"
    with_child = schema.execute_sync(query, {"c": True})
    without = schema.execute_sync(query, {"c": False})
    assert with_child.data is not None
    assert without.data is not None
    assert "child" in with_child.data["items"][0]
    assert "child" not in without.data["items"][0]
