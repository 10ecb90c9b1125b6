"""GraphQL execution with one shortcut: a selection made only of stored values is copied, not run.

graphql-core runs every field of a response through the same machinery (a resolve info, the
resolver Strawberry wraps around it, awaitable checks, completion by type), which is most of a
ledger page's cost: a 20-entry page is about 200 fields, each an attribute already in memory.

When an object's selection (fragments and aliases resolved by graphql-core's own field
collection) holds only fields Strawberry reads straight from the object (no resolver, no
arguments, no field extension, no schema extension wrapping resolvers) down to its leaves,
`PlannedExecutor` completes it with a plan of that selection: each field read as Strawberry
reads it, leaves through the serializers graphql-core calls, objects and lists as graphql-core
completes them. A value the plan does not take (a null in a non-null field, an exception, a
serializer refusing a value, a list that is not a list) abandons the plan for that object, and
graphql-core completes the object from the start: reading attributes twice changes nothing, and
errors keep their exact shape and path.

Plans are made once per document: an operation without directives selects the same fields
whatever its variables, so its plans are kept (with the nodes they were made from, so that no
id is reused) and shared by every execution of the document; an operation with directives
(`@skip`, `@include`) plans per execution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final

from graphql import (
    FieldNode,
    GraphQLEnumType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.pyutils import AwaitableOrValue, Path, Undefined
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

Complete = Callable[[Any], Any]  # a value -> its response value; raises _Abandon
Plan = Callable[[Any], dict[str, Any]]  # an object -> its response object
_Key = tuple[GraphQLObjectType, tuple[int, ...]]

_SHARED_MAX: Final = 1024  # plans kept across executions; more empties the cache


class _Abandon(Exception):
    """A value the plan does not complete: graphql-core completes the whole object instead."""


class PlannedExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, completing plannable objects by their plan (see the module)."""

    # Across executions: the plan (None: not plannable) and the nodes it was made from.
    _shared: ClassVar[dict[_Key, tuple[tuple[FieldNode, ...], Plan | None]]] = {}
    _directive_free: ClassVar[dict[int, tuple[OperationDefinitionNode, bool]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # This execution's plans by selection, as graphql-core memoizes collected fields (the
        # list is kept with its plan so that its id stays its own).
        self._plans: dict[tuple[GraphQLObjectType, int], tuple[FieldDetailsList, Plan | None]]
        self._plans = {}
        self._share = self._without_directives()

    def complete_object_value(
        self,
        return_type: GraphQLObjectType,
        field_details_list: FieldDetailsList,
        info: GraphQLResolveInfo[Any],
        path: Path,
        result: Any,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        plan = self._plan(return_type, field_details_list)
        if plan is not None:
            try:
                return plan(result)
            except Exception:  # noqa: S110 (graphql-core completes it, errors included)
                pass
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _plan(self, object_type: GraphQLObjectType, fields: FieldDetailsList) -> Plan | None:
        if self._resolvers_wrapped():
            return None
        if not self._share:
            key = (object_type, id(fields))
            known = self._plans.get(key)
            if known is None:
                known = self._plans[key] = (fields, self._make_plan(object_type, fields))
            return known[1]
        nodes = tuple(details.node for details in fields)
        shared_key = (object_type, tuple(map(id, nodes)))
        shared = self._shared.get(shared_key)
        if shared is None:
            if len(self._shared) >= _SHARED_MAX:
                self._shared.clear()
            shared = self._shared[shared_key] = (nodes, self._make_plan(object_type, fields))
        return shared[1]

    def _make_plan(self, object_type: GraphQLObjectType, fields: FieldDetailsList) -> Plan | None:
        if object_type.is_type_of is not None:
            return None  # graphql-core asks it whether the value is of the type
        grouped, defer_usages, _ = self.collect_subfields(object_type, fields)
        if defer_usages:
            return None
        steps: list[tuple[str, Complete]] = []
        for response_name, details in grouped.items():
            step = self._step(object_type, details)
            if step is None:
                return None
            steps.append((response_name, step))
        return _object_plan(steps)

    def _step(self, parent: GraphQLObjectType, details: FieldDetailsList) -> Complete | None:
        """How a field is read from its parent and completed, or None."""
        if any(d.fragment_variable_values is not None or d.defer_usage for d in details):
            return None
        node = details[0].node
        name = node.name.value
        if name == "__typename":
            typename = parent.name
            return lambda _parent: typename
        field_def = parent.fields.get(name)
        if field_def is None or field_def.args or node.arguments:
            return None
        definition = field_def.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
        if not isinstance(definition, StrawberryField) or not definition.is_basic_field:
            return None
        if not getattr(field_def.resolve, "_is_default", False):
            return None
        complete = self._completion(field_def.type, details)
        if complete is None:
            return None
        read, attribute = definition.default_resolver, definition.python_name
        return lambda parent_value: complete(read(parent_value, attribute))

    def _completion(self, of: GraphQLOutputType, details: FieldDetailsList) -> Complete | None:
        """How a field's (or a list item's) value is completed, or None."""
        if isinstance(of, GraphQLNonNull):
            bare = self._bare(of.of_type, details)
            return None if bare is None else _non_null(bare)
        bare = self._bare(of, details)
        return None if bare is None else _nullable(bare)

    def _bare(self, of: GraphQLOutputType, details: FieldDetailsList) -> Complete | None:
        """The completion of a value that is not null."""
        if isinstance(of, GraphQLScalarType | GraphQLEnumType):
            return _leaf(of)
        if isinstance(of, GraphQLObjectType):
            return self._plan(of, details)
        if isinstance(of, GraphQLList):
            item = self._completion(of.of_type, details)
            return None if item is None else _list(item)
        return None  # an interface or a union: graphql-core resolves its type

    def _resolvers_wrapped(self) -> bool:
        """A schema extension that wraps resolvers must see every field: no plans then."""
        manager = self.middleware_manager
        return manager is not None and bool(manager.middlewares)

    def _without_directives(self) -> bool:
        """No directive anywhere in the operation or its fragments (remembered per operation)."""
        operation = self.operation
        known = self._directive_free.get(id(operation))
        if known is not None and known[0] is operation:
            return known[1]
        sets = [
            operation.selection_set,
            *(f.definition.selection_set for f in self.fragments.values()),
        ]
        free = not operation.directives and not any(
            f.definition.directives for f in self.fragments.values()
        )
        free = free and not any(_has_directives(s) for s in sets)
        if len(self._directive_free) >= _SHARED_MAX:
            self._directive_free.clear()
        self._directive_free[id(operation)] = (operation, free)
        return free


def _has_directives(selection_set: SelectionSetNode | None) -> bool:
    if selection_set is None:
        return False
    for selection in selection_set.selections:
        if selection.directives or _has_directives(getattr(selection, "selection_set", None)):
            return True
    return False


def _object_plan(steps: Iterable[tuple[str, Complete]]) -> Plan:
    fields = tuple(steps)

    def fill(value: Any) -> dict[str, Any]:
        if isinstance(value, Exception):
            raise _Abandon
        return {name: complete(value) for name, complete in fields}

    return fill


def _leaf(of: GraphQLScalarType | GraphQLEnumType) -> Complete:
    coerce = of.coerce_output_value

    def leaf(value: Any) -> Any:
        if isinstance(value, Exception):
            raise _Abandon
        coerced = coerce(value)
        if coerced is None or coerced is Undefined:
            raise _Abandon
        return coerced

    return leaf


def _list(item: Complete) -> Complete:
    def each(value: Any) -> list[Any]:
        if type(value) is not list and type(value) is not tuple:
            raise _Abandon  # graphql-core takes any iterable, and reports what is not one
        return [item(v) for v in value]

    return each


def _nullable(complete: Complete) -> Complete:
    return lambda value: None if value is None else complete(value)


def _non_null(complete: Complete) -> Complete:
    def non_null(value: Any) -> Any:
        if value is None:
            raise _Abandon
        return complete(value)

    return non_null
