"""Assemble the schema with its protections: depth, token and alias limits, masked errors."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import structlog
from graphql import GraphQLError
from strawberry import Schema
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from wallet.errors import WalletError
from wallet.http import map_database_error
from wallet.schema.scalars import SCALARS
from wallet.schema.types import Mutation, Query, Subscription
from wallet.settings import Settings

log = structlog.get_logger("wallet.graphql")


def _is_unexpected(error: GraphQLError) -> bool:
    """A resolver's failure that is not a WalletError. Errors without a path come from parsing,
    validation or variable coercion: they describe the client's document and stay visible."""
    original = error.original_error
    return original is not None and error.path is not None and not isinstance(original, WalletError)


class MaskUnexpectedErrors(MaskErrors):
    """`Unexpected error` plus the request id for clients; the details go to the log only."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=_is_unexpected)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        context = self.execution_context.context
        request_id = getattr(context, "request_id", "-")
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


class WalletSchema(Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors in a client's document are the client's business, not the log's; unexpected
        ones were logged, with their request id, by MaskUnexpectedErrors."""


def build_schema(settings: Settings) -> Schema:
    # The limiters' rule classes are made once: the validation cache is keyed by them, so a
    # fresh class per request would make every request validate its document again.
    rules = [
        *QueryDepthLimiter(max_depth=settings.graphql_max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.graphql_max_aliases).validation_rules,
    ]
    # Factories, not instances: Strawberry makes fresh extensions for every operation.
    extensions: list[Callable[[], SchemaExtension]] = [
        partial(AddValidationRules, rules),
        partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        partial(ParserCache, maxsize=256),
        partial(ValidationCache, maxsize=256),
        MaskUnexpectedErrors,
    ]
    if settings.env == "production":
        extensions.append(DisableIntrospection)
    return WalletSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(scalar_map=SCALARS),
    )


if __name__ == "__main__":
    print(build_schema(Settings()).as_str())  # noqa: T201 (regenerates schema.graphql)
