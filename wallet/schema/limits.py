"""What a GraphQL document may cost: depth, aliases, fields, fragments and spreads.

A fragment may spread another fragment twice, and that one the next twice: a 1 KB document then
stands for 2^20 fields. Walking every spread afresh (as Strawberry's depth and alias limiters do)
costs as much as the expansion. Here each definition is read once, iteratively: its own fields,
aliases and depth, and the fragments it spreads with the level of each spread. Fragments are then
totalled in dependency order, each from the memoised totals of those it spreads, so the whole
check is linear in the document while its counts are those of the fully expanded document.

`check` caps the fragment definitions and spreads first (counted in the text), then, per
operation, the depth and the expanded aliases and fields. Unknown fragments and cycles count for
nothing here; the specification's rules report them. Every error carries
`extensions.code = "QUERY_TOO_COMPLEX"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from graphql import (
    BREAK,
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VisitorAction,
)

TOO_COMPLEX: Final = "QUERY_TOO_COMPLEX"


@dataclass(frozen=True, slots=True)
class Limits:
    max_depth: int
    max_aliases: int
    max_fields: int
    max_fragments: int
    max_fragment_spreads: int


@dataclass(slots=True)
class _Cost:
    fields: int = 0
    aliases: int = 0
    depth: int = 0  # the deepest field's level; root fields are at level 0


@dataclass(slots=True)
class _Outline:
    """One definition's own selections, and the fragments it spreads at which level."""

    own: _Cost = field(default_factory=_Cost)
    # (fragment name, level of the spread); None under an introspection field, which adds no
    # depth (as in Strawberry's limiter: GraphiQL's schema query nests 14 levels of types).
    spreads: list[tuple[str, int | None]] = field(default_factory=list)


def _outline(selection_set: SelectionSetNode) -> _Outline:
    outline = _Outline()
    own = outline.own
    stack: list[tuple[SelectionSetNode, int | None]] = [(selection_set, 0)]
    while stack:
        current, level = stack.pop()
        for selection in current.selections:
            if isinstance(selection, FieldNode):
                own.fields += 1
                own.aliases += selection.alias is not None
                if level is not None:
                    own.depth = max(own.depth, level)
                if selection.selection_set is not None:
                    introspection = selection.name.value.startswith("__")
                    below = None if level is None or introspection else level + 1
                    stack.append((selection.selection_set, below))
            elif isinstance(selection, InlineFragmentNode):
                stack.append((selection.selection_set, level))
            elif isinstance(selection, FragmentSpreadNode):
                outline.spreads.append((selection.name.value, level))
    return outline


def _total(outline: _Outline, done: dict[str, _Cost]) -> _Cost:
    total = _Cost(outline.own.fields, outline.own.aliases, outline.own.depth)
    for name, level in outline.spreads:
        spread = done.get(name)
        if spread is None:  # unknown, or closing a cycle: the specification's rules say so
            continue
        total.fields += spread.fields
        total.aliases += spread.aliases
        if level is not None:
            total.depth = max(total.depth, level + spread.depth)
    return total


def _fragment_costs(outlines: dict[str, _Outline]) -> dict[str, _Cost]:
    """Each fragment's expanded cost, every fragment totalled once, without recursion."""
    done: dict[str, _Cost] = {}
    for root in outlines:
        if root in done:
            continue
        path = [(root, iter(outlines[root].spreads))]
        on_path = {root}
        while path:
            name, pending = path[-1]
            for spread, _level in pending:
                if spread in outlines and spread not in done and spread not in on_path:
                    path.append((spread, iter(outlines[spread].spreads)))
                    on_path.add(spread)
                    break
            else:
                path.pop()
                on_path.discard(name)
                done[name] = _total(outlines[name], done)
    return done


def _shown(count: int) -> str:
    return str(count) if count < 1_000_000 else "more than a million"


def _error(message: str, node: OperationDefinitionNode | None = None) -> GraphQLError:
    return GraphQLError(message, node, extensions={"code": TOO_COMPLEX})


def check(document: DocumentNode, limits: Limits) -> list[GraphQLError]:
    """Every limit the document exceeds, in time linear in its size."""
    fragments = [d for d in document.definitions if isinstance(d, FragmentDefinitionNode)]
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    outlines = {f.name.value: _outline(f.selection_set) for f in fragments}
    spreads = sum(len(o.spreads) for o in outlines.values())
    operation_outlines = [(op, _outline(op.selection_set)) for op in operations]
    spreads += sum(len(o.spreads) for _, o in operation_outlines)
    errors = []
    if len(fragments) > limits.max_fragments:
        errors.append(
            _error(
                f"The document defines {len(fragments)} fragments;"
                f" at most {limits.max_fragments} are allowed."
            )
        )
    if spreads > limits.max_fragment_spreads:
        errors.append(
            _error(
                f"The document spreads fragments {spreads} times;"
                f" at most {limits.max_fragment_spreads} spreads are allowed."
            )
        )
    if errors:
        return errors
    done = _fragment_costs(outlines)
    aliases = fields = 0
    for operation, outline in operation_outlines:
        cost = _total(outline, done)
        aliases += cost.aliases
        fields += cost.fields
        if cost.depth > limits.max_depth:
            name = operation.name.value if operation.name else "anonymous"
            errors.append(
                _error(
                    f"'{name}' exceeds maximum operation depth of {limits.max_depth}.", operation
                )
            )
    if aliases > limits.max_aliases:
        errors.append(
            _error(
                f"The document uses {_shown(aliases)} aliases once its fragments are expanded;"
                f" at most {limits.max_aliases} are allowed."
            )
        )
    if fields > limits.max_fields:
        errors.append(
            _error(
                f"The document selects {_shown(fields)} fields once its fragments are expanded;"
                f" at most {limits.max_fields} are allowed."
            )
        )
    return errors


def limits_rule(limits: Limits) -> type[ASTValidationRule]:
    """A validation rule class enforcing `limits`. Make it once per schema: validation caches
    are keyed by rule classes, so a class made per request would defeat them."""

    class QueryCostRule(ASTValidationRule):
        def enter_document(self, node: DocumentNode, *_args: Any) -> VisitorAction:
            for error in check(node, limits):
                self.report_error(error)
            return BREAK  # the whole document was read above

    return QueryCostRule
