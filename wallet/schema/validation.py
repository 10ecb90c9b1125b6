"""Document validation in two passes, remembered per query text.

The cost limits (`wallet.schema.limits`) run first and alone: a document over them is refused
before the specification's rules walk it (some of those are quadratic in the fields of a selection
set, and none of them needs to see a document we refuse anyway). Within the limits, every rule
runs; in production with graphql-core's `hide_suggestions`, so that a refused document learns no
field or type names ("Did you mean …") that the disabled introspection would have told it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    validate,
)
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

Rules = tuple[type[ASTValidationRule], ...]
# What Strawberry adds to every validation (strawberry.schema.schema.validate_document).
STRAWBERRY_RULES: Rules = (MaybeNullValidationRule, OneOfInputValidationRule)


class DocumentValidator:
    """Validates documents for one schema and remembers the verdicts (an LRU keyed by the query
    text and the rule classes: make the rules once, or nothing is ever found again), and the
    documents it accepted under the schema's rules (for `WalletSchema.execute_known`)."""

    def __init__(
        self, limits: type[ASTValidationRule], *, hide_suggestions: bool, maxsize: int = 256
    ) -> None:
        self.limits = limits
        self.hide_suggestions = hide_suggestions
        self.maxsize = maxsize
        self.hits = self.misses = 0
        self._verdicts: OrderedDict[tuple[str, Rules], list[GraphQLError]] = OrderedDict()
        self._accepted: OrderedDict[str, DocumentNode] = OrderedDict()

    def accepted(self, query: str) -> DocumentNode | None:
        """The document of `query` if the full pipeline parsed it (within the token limit) and
        found no error in it under every rule it runs; else None."""
        document = self._accepted.get(query)
        if document is not None:
            self._accepted.move_to_end(query)
        return document

    def accept(self, query: str, document: DocumentNode) -> None:
        self._accepted[query] = document
        if len(self._accepted) > self.maxsize:
            self._accepted.popitem(last=False)

    def validate(
        self, schema: GraphQLSchema, document: DocumentNode, rules: Rules, query: str | None
    ) -> list[GraphQLError]:
        key = (query, rules) if query is not None else None
        if key is not None and (known := self._verdicts.get(key)) is not None:
            self._verdicts.move_to_end(key)
            self.hits += 1
            return known
        self.misses += 1
        errors = validate(schema, document, (self.limits,))
        if not errors:
            errors = validate(
                schema,
                document,
                (*rules, *STRAWBERRY_RULES),
                hide_suggestions=self.hide_suggestions,
            )
        if key is not None:
            self._verdicts[key] = errors
            if len(self._verdicts) > self.maxsize:
                self._verdicts.popitem(last=False)
        return errors


class ValidateDocuments(SchemaExtension):
    """Replaces Strawberry's validation step (and its ValidationCache) with the validator's, and
    refuses a document of several operations that names none to run (Strawberry would run the
    first; the specification says it is an error)."""

    def __init__(self, validator: DocumentValidator) -> None:
        self.validator = validator

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        assert context.graphql_document is not None  # validation follows a successful parse
        errors = self.validator.validate(
            context.schema._schema,
            context.graphql_document,
            context.validation_rules,
            context.query,
        )
        if not errors and context.query is not None:
            self.validator.accept(context.query, context.graphql_document)
        # The name the client sent, not Strawberry's guess (the first operation's name).
        if not errors and context._provided_operation_name is None:
            operations = [
                d
                for d in context.graphql_document.definitions
                if isinstance(d, OperationDefinitionNode)
            ]
            if len(operations) > 1:
                errors = [
                    GraphQLError(
                        "The document holds several operations: operationName must name the"
                        " one to run.",
                        nodes=operations,
                        extensions={"code": "VALIDATION_ERROR"},
                    )
                ]
        context.pre_execution_errors = errors
        yield
