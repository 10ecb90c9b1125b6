"""Assemble the schema with its protections: cost and token limits, coded and masked errors."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Final, TypeGuard, cast

import structlog
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSyntaxError,
    OperationDefinitionNode,
    OperationType,
    execute,
)
from graphql.validation.validate import ValidationAbortedError
from strawberry import Schema
from strawberry.execution import optimized_is_awaitable
from strawberry.extensions import (
    DisableIntrospection,
    MaskErrors,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import CannotGetOperationTypeError
from strawberry.schema.name_converter import NameConverter
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType as StrawberryOperationType

from wallet.errors import WalletError
from wallet.http import map_database_error
from wallet.schema.conversion import compile_inputs
from wallet.schema.execution import PlannedExecutor
from wallet.schema.limits import TOO_COMPLEX, Limits, limits_rule
from wallet.schema.root import Mutation, Query, Subscription
from wallet.schema.scalars import SCALARS
from wallet.schema.validation import DocumentValidator, ValidateDocuments
from wallet.settings import Settings

log = structlog.get_logger("wallet.graphql")

# graphql-core's suggestions (" Did you mean 'wallet'?"); names never contain "?".
_SUGGESTION: Final = re.compile(r" Did you mean [^?]*\?")
# Strawberry's own check, as its execute passes it to graphql-core.
_IS_AWAITABLE: Final = cast("Callable[[Any], TypeGuard[Awaitable[Any]]]", optimized_is_awaitable)
_EVERY_OPERATION: Final = frozenset(StrawberryOperationType)


def is_unexpected(error: GraphQLError) -> bool:
    """A failure that is not the client's: a resolver's exception that is not a WalletError, or
    any exception that escaped parsing or validation (no node to point at). A ValueError with a
    node and no path is a scalar refusing a client's value, in words written for clients. An
    operationName the document lacks is the client's too (over WebSocket, Strawberry closes
    the socket with 4400 when it sees that error)."""
    original = error.original_error
    if original is None or isinstance(
        original, WalletError | GraphQLError | CannotGetOperationTypeError
    ):
        return False
    return error.path is not None or not error.nodes or not isinstance(original, ValueError)


def _masked(error: GraphQLError, request_id: str) -> GraphQLError:
    """`Unexpected error` plus the request id for clients; the details go to the log only."""
    original = error.original_error
    mapped = map_database_error(original) if isinstance(original, Exception) else None
    if mapped is not None:  # transient database trouble: say so, with its stable code
        message, extensions = mapped.message, mapped.extensions
    else:
        log.error("unexpected_error", request_id=request_id, exc_info=original)
        message = f"Unexpected error (request id {request_id})."
        extensions = {"code": "INTERNAL_ERROR", "requestId": request_id}
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=extensions,
    )


# graphql-core's MaxIntrospectionDepthRule (a specified rule) reports this, without a code.
_INTROSPECTION_TOO_DEEP: Final = "Maximum introspection depth exceeded"


def _aborted(error: GraphQLError) -> bool:
    """Parsing or validation stopped at one of graphql-core's own limits: tokens, nesting (of
    selections or of fragment spreads), the number of errors, or introspection's depth."""
    if isinstance(error, GraphQLSyntaxError):
        return error.message.endswith("Parsing aborted.")
    return isinstance(error, ValidationAbortedError) or error.message == _INTROSPECTION_TOO_DEEP


def shape_error(error: GraphQLError, *, request_id: str, hide_suggestions: bool) -> GraphQLError:
    """Every error leaves with a stable `extensions.code`: a resolver's WalletError keeps its
    own; the cost rules and graphql-core's own limits say QUERY_TOO_COMPLEX; any
    other fault in the client's document or variables is a VALIDATION_ERROR; the rest is masked
    as INTERNAL_ERROR. With `hide_suggestions`, no "Did you mean …" survives (variable coercion
    at execution makes them too, where Strawberry passes no such option to graphql-core)."""
    if is_unexpected(error):
        return _masked(error, request_id)
    extensions = error.extensions or {}
    message = _SUGGESTION.sub("", error.message) if hide_suggestions else error.message
    if "code" in extensions and message == error.message:
        return error
    code = extensions.get("code") or (TOO_COMPLEX if _aborted(error) else "VALIDATION_ERROR")
    # In place: the error keeps its class, which the WebSocket transport looks at (it answers
    # a GraphQLSyntaxError with an `error` message), and shaping an error twice changes nothing.
    error.message = message
    error.extensions = {**extensions, "code": code}
    return error


class ShapeErrors(MaskErrors):
    """Applies `shape_error` to every error of every operation, with the request's id."""

    def __init__(self, *, hide_suggestions: bool) -> None:
        super().__init__(should_mask_error=lambda _: True)
        self.hide_suggestions = hide_suggestions

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        request_id = getattr(self.execution_context.context, "request_id", "-")
        return shape_error(error, request_id=request_id, hide_suggestions=self.hide_suggestions)


class CachedNames(NameConverter):
    """Strawberry's names, each worked out once: Strawberry asks for every argument's GraphQL
    name at every call of its field (to find it among the values given), and camel-cases the
    Python name each time (the wallet's ledger field has eight arguments)."""

    def __init__(self) -> None:
        super().__init__(auto_camel_case=True)
        self._names: dict[str, str] = {}

    def apply_naming_config(self, name: str) -> str:
        found = self._names.get(name)
        if found is None:
            found = self._names[name] = super().apply_naming_config(name)
        return found


class WalletSchema(Schema):
    hide_suggestions: bool = False
    validator: DocumentValidator | None = None  # set by build_schema; its counts help tests
    known_runs = 0  # operations execute_known ran (a count for tests, as the validator's)

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[StrawberryOperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Never a subscription (they stream over WebSocket: a POST gets a 400); and errors
        raised past the extensions (Strawberry turns them into results) are shaped too."""
        allowed = set(allowed_operation_types or _EVERY_OPERATION) - {
            StrawberryOperationType.SUBSCRIPTION
        }
        result = await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed,
            operation_extensions,
        )
        if result.errors:
            request_id = getattr(context_value, "request_id", "-")
            result.errors = [
                shape_error(e, request_id=request_id, hide_suggestions=self.hide_suggestions)
                for e in result.errors
            ]
        return result

    async def execute_known(
        self,
        query: str,
        variable_values: dict[str, Any] | None,
        context_value: Any,
        operation_name: str | None,
    ) -> ExecutionResult | None:
        """A query or mutation of a document `execute` accepted before, run straight on
        graphql-core, past Strawberry's per-operation pipeline; None when `execute` must run it.

        What that pipeline would do for such a document is done here or was done once: the
        token limit, parsing and every validation rule gave this document (the validator keeps
        it only then), no schema extension wraps resolvers (`build_schema` adds none), and every
        error is shaped as `ShapeErrors` and `execute` shape it. Anything else (a document not
        seen or refused, an operation to pick or not found, a subscription) returns None.
        """
        document = self.validator.accepted(query) if self.validator is not None else None
        if document is None:
            return None
        operation = _operation(document, operation_name)
        if operation is None or operation.operation is OperationType.SUBSCRIPTION:
            return None
        self.known_runs += 1
        try:
            result = execute(
                self._schema,
                document,
                context_value=context_value,
                variable_values=variable_values,
                operation_name=operation_name,
                executor_class=self.execution_context_class,
                is_awaitable=_IS_AWAITABLE,
            )
            done = await result if isinstance(result, Awaitable) else result
            data, errors = done.data, done.errors
        except Exception as exc:  # as Strawberry's execute: an error, then masked
            data, errors = None, [GraphQLError(str(exc), original_error=exc)]
        if errors:
            request_id = getattr(context_value, "request_id", "-")
            errors = [
                shape_error(e, request_id=request_id, hide_suggestions=self.hide_suggestions)
                for e in errors
            ]
        return ExecutionResult(data=data, errors=errors or None)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors in a client's document are the client's business, not the log's; unexpected
        ones were logged, with their request id, by ShapeErrors."""


def _operation(
    document: DocumentNode, operation_name: str | None
) -> OperationDefinitionNode | None:
    """The operation to run: the one named, or the only one when none is named."""
    found = None
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            if operation_name is None:
                if found is not None:
                    return None  # several: ValidateDocuments refuses the document unnamed
                found = definition
            elif definition.name is not None and definition.name.value == operation_name:
                return definition
    return found if operation_name is None else None


def build_schema(settings: Settings) -> WalletSchema:
    production = settings.env == "production"
    # Made once: the validator remembers verdicts by rule classes, so a fresh class per
    # request would make every request validate its document again.
    limits = limits_rule(
        Limits(
            max_depth=settings.graphql_max_depth,
            max_aliases=settings.graphql_max_aliases,
            max_fields=settings.graphql_max_fields,
            max_fragments=settings.graphql_max_fragments,
            max_fragment_spreads=settings.graphql_max_fragment_spreads,
        )
    )
    validator = DocumentValidator(limits, hide_suggestions=production)
    # Factories, not instances: Strawberry makes fresh extensions for every operation.
    extensions: list[Callable[[], SchemaExtension]] = [
        partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        partial(ParserCache, maxsize=256),
        partial(ValidateDocuments, validator),
        partial(ShapeErrors, hide_suggestions=production),
    ]
    if production:
        extensions.append(DisableIntrospection)
    schema = WalletSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        execution_context_class=PlannedExecutor,
        config=StrawberryConfig(scalar_map=SCALARS, name_converter=CachedNames()),
    )
    schema.hide_suggestions = production
    compile_inputs(schema)
    schema.validator = validator
    return schema


if __name__ == "__main__":
    print(build_schema(Settings()).as_str())  # noqa: T201 (regenerates schema.graphql)
