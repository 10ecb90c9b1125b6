"""Input objects built by a converter made once per type, not by Strawberry's generic walk.

For every input object of every request, Strawberry converts each field's name, resolves each
field's type annotation and dispatches on that type: a TOPUP's input is 7 such fields, a batch
of 1,000 operations 9,000. `compile_inputs` gives each input type of the schema (but one with a
`Maybe` field) its own converter, made once, through `from_input` (Strawberry's hook for a type
that builds its own value). It does what Strawberry does, in the same order: a field the client
omitted that has no default is None, one that has a default is left to it; a scalar or an enum
is taken as graphql-core coerced it (Strawberry passes those on unchanged); anything else (a
nested input, a list) is converted by Strawberry, which finds the nested type's own converter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLNonNull,
    GraphQLScalarType,
)
from strawberry import Schema
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.arguments import InputContext
from strawberry.types.base import StrawberryMaybe, StrawberryObjectDefinition

FromInput = Callable[[type, Mapping[str, Any], InputContext], Any]
# (GraphQL name, Python name, the field's Strawberry type, taken as it is)
_Field = tuple[str, str, Any, bool]


def compile_inputs(schema: Schema) -> None:
    """Sets `from_input` on every input type of `schema` that has none."""
    for named in schema._schema.type_map.values():
        if not isinstance(named, GraphQLInputObjectType):
            continue
        definition = named.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
        if (
            isinstance(definition, StrawberryObjectDefinition)
            and definition.from_input is None
            # A Maybe field is Strawberry's to convert (it wraps the value, and its validation
            # rule skips every type that has a from_input).
            and not any(isinstance(f.type, StrawberryMaybe) for f in definition.fields)
        ):
            definition.from_input = _converter(schema, definition, named)


def _converter(
    schema: Schema, definition: StrawberryObjectDefinition, graphql_type: GraphQLInputObjectType
) -> FromInput:
    fields: list[_Field] = []
    unset: dict[str, None] = {}
    for field in definition.fields:
        name = schema.config.name_converter.from_field(field)
        as_is = _is_leaf(graphql_type.fields[name].type)
        fields.append(
            (name, field.python_name, field.resolve_type(type_definition=definition), as_is)
        )
        if field.default_value is MISSING and field.default_factory is MISSING:
            unset[field.python_name] = None

    def from_input(cls: type, value: Mapping[str, Any], context: InputContext) -> Any:
        kwargs: dict[str, Any] = dict(unset)
        for name, python_name, type_, as_is in fields:
            if name in value:
                given = value[name]
                kwargs[python_name] = (
                    given if as_is or given is None else context.convert(given, type_, name)
                )
        return cls(**kwargs)

    return from_input


def _is_leaf(of: GraphQLInputType) -> bool:
    """A scalar or an enum, but not the ID scalar (relay's GlobalID converts it)."""
    bare = of.of_type if isinstance(of, GraphQLNonNull) else of
    if isinstance(bare, GraphQLScalarType):
        return bare.name != "ID"
    return isinstance(bare, GraphQLEnumType)
