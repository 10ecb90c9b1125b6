"""Every input type's converter (wallet/schema/conversion.py) builds what Strawberry's own
conversion builds, for every field given, omitted or null, nested inputs and lists included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import strawberry
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
)
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.arguments import convert_argument
from strawberry.types.base import StrawberryObjectDefinition

from wallet.schema.build import WalletSchema, build_schema
from wallet.schema.conversion import compile_inputs
from wallet.settings import Settings

SCHEMA = build_schema(Settings(database_url="postgresql://unused"))
SAMPLES: dict[str, Any] = {
    "UUID": uuid.UUID(int=7),
    "Amount": 12,
    "String": "x",
    "Boolean": True,
    "Int": 3,
    "JSON": {"a": 1},
    "DateTime": datetime(2026, 1, 2, tzinfo=UTC),
}


def _inputs(schema: WalletSchema) -> list[GraphQLInputObjectType]:
    types = schema._schema.type_map.values()
    return [t for t in types if isinstance(t, GraphQLInputObjectType)]


def _value(of: GraphQLInputType, *, nulls: bool, omit: bool) -> Any:
    """A coerced value of `of`, as graphql-core hands it to Strawberry."""
    required = isinstance(of, GraphQLNonNull)
    bare = of.of_type if isinstance(of, GraphQLNonNull) else of
    if not required and nulls:
        return None
    if isinstance(bare, GraphQLList):
        return [_value(bare.of_type, nulls=nulls, omit=omit) for _ in range(2)]
    if isinstance(bare, GraphQLEnumType):
        return next(iter(bare.values.values())).value
    if isinstance(bare, GraphQLScalarType):
        return SAMPLES[bare.name]
    assert isinstance(bare, GraphQLInputObjectType)
    return {
        name: _value(field.type, nulls=nulls, omit=omit)
        for name, field in bare.fields.items()
        if not (omit and not isinstance(field.type, GraphQLNonNull))
    }


def test_every_input_type_has_its_converter() -> None:
    for graphql_type in _inputs(SCHEMA):
        definition = graphql_type.extensions[GraphQLCoreConverter.DEFINITION_BACKREF]
        assert definition.from_input is not None, graphql_type.name


@pytest.mark.parametrize("variant", ["every field", "nulls", "required only"])
@pytest.mark.parametrize("graphql_type", _inputs(SCHEMA), ids=lambda t: t.name)
def test_a_converter_builds_what_strawberry_builds(
    graphql_type: GraphQLInputObjectType, variant: str
) -> None:
    definition = graphql_type.extensions[GraphQLCoreConverter.DEFINITION_BACKREF]
    assert isinstance(definition, StrawberryObjectDefinition)
    value = _value(
        GraphQLNonNull(graphql_type), nulls=variant == "nulls", omit=variant == "required only"
    )
    registry = SCHEMA.schema_converter.scalar_registry

    def convert() -> Any:
        return convert_argument(value, definition.origin, registry, SCHEMA.config)

    compiled = convert()
    saved = {d: d.from_input for d in _definitions()}
    try:
        for d in saved:
            d.from_input = None  # Strawberry's own conversion, nested types included
        generic = convert()
    finally:
        for d, from_input in saved.items():
            d.from_input = from_input
    assert compiled == generic
    assert type(compiled) is definition.origin


def _definitions() -> list[StrawberryObjectDefinition]:
    found = []
    for graphql_type in _inputs(SCHEMA):
        definition = graphql_type.extensions[GraphQLCoreConverter.DEFINITION_BACKREF]
        assert isinstance(definition, StrawberryObjectDefinition)
        found.append(definition)
    return found


@strawberry.input
class MaybePatch:
    name: strawberry.Maybe[str]
    note: str | None = None


@strawberry.input
class PlainPatch:
    note: str


@strawberry.type
class MaybeQuery:
    @strawberry.field
    def patch(self, patch: MaybePatch, plain: PlainPatch) -> str:
        return f"{patch.name!r} {plain.note}"


def test_an_input_with_a_maybe_field_is_left_to_strawberry() -> None:
    """Strawberry wraps a Maybe field's value, and its Maybe validation rule skips every type
    that has a from_input: such a type keeps Strawberry's own conversion."""
    schema = strawberry.Schema(query=MaybeQuery)
    compile_inputs(schema)
    assert MaybePatch.__strawberry_definition__.from_input is None  # type: ignore[attr-defined]
    assert PlainPatch.__strawberry_definition__.from_input is not None  # type: ignore[attr-defined]
    result = schema.execute_sync('{ patch(patch: {name: "a"}, plain: {note: "b"}) }')
    assert result.errors is None
    assert result.data == {"patch": "Some('a') b"}
    refused = schema.execute_sync('{ patch(patch: {name: null}, plain: {note: "b"}) }')
    assert refused.errors  # Maybe[str] cannot be null: the rule still runs
