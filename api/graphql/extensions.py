"""Schema extensions: every error gets an ``extensions.code`` (and unexpected ones a generic
message, their traceback going to the log only), and every operation is counted and timed."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence, Set
from typing import Any, Generic, TypeVar

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    SelectionSetNode,
    Visitor,
    parse,
    visit,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types.execution import ExecutionResult

from api.errors import BAD_USER_INPUT, INTERNAL_MESSAGE, INTERNAL_SERVER_ERROR, code_of
from api.metrics import Metrics
from domain.errors import FashionSearchError

logger = logging.getLogger("api.graphql")


def public_error(error: GraphQLError) -> GraphQLError:
    """The error as a client may see it."""
    original = error.original_error
    extensions: dict[str, Any] = dict(error.extensions or {})
    message = error.message
    if isinstance(original, FashionSearchError):
        code = code_of(original)
        if code == INTERNAL_SERVER_ERROR:
            logger.error("unexpected domain error at %s", error.path, exc_info=original)
            message, extensions = INTERNAL_MESSAGE, {}
    elif isinstance(original, GraphQLError) or (original is None and error.path is None):
        # Parse, validation and variable errors (and GraphQLErrors raised on purpose).
        code = str(extensions.get("code") or BAD_USER_INPUT)
    else:
        # An exception nobody expected, or an execution error without a cause (a bug).
        logger.error("unexpected error at %s: %s", error.path, error.message, exc_info=original)
        code, message, extensions = INTERNAL_SERVER_ERROR, INTERNAL_MESSAGE, {}
    extensions["code"] = code
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


class ErrorCodes(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if isinstance(result, ExecutionResult | GraphQLExecutionResult) and result.errors:
            result.errors = [public_error(e) for e in result.errors]


class _EmptySelectionSetFinder(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found: SelectionSetNode | None = None

    def enter_selection_set(self, node: SelectionSetNode, *_: Any) -> None:
        if not node.selections and self.found is None:
            self.found = node


def empty_selection_set(document: DocumentNode) -> SelectionSetNode | None:
    finder = _EmptySelectionSetFinder()
    visit(document, finder)
    return finder.found


DOCUMENT_CACHE_SIZE = 128

_T = TypeVar("_T")


class IdentityMemo(Generic[_T]):
    """Results computed from AST documents (and other objects), remembered by the identity
    of those objects: hashing or comparing a DocumentNode walks its whole tree (about as
    long as validating it again from the cache). The objects are kept alive with their
    result, so their ids stay theirs while remembered."""

    def __init__(self, size: int = DOCUMENT_CACHE_SIZE) -> None:
        self._size = size
        self._entries: dict[tuple[int, ...], tuple[tuple[object, ...], _T]] = {}

    def get(self, objects: tuple[object, ...], compute: Callable[[], _T]) -> _T:
        key = tuple(map(id, objects))
        entry = self._entries.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], objects, strict=True)):
            return entry[1]
        value = compute()
        if len(self._entries) >= self._size:
            self._entries.pop(next(iter(self._entries)))  # the oldest
        self._entries[key] = (objects, value)
        return value


_empty_selections: IdentityMemo[SelectionSetNode | None] = IdentityMemo()


class RejectEmptySelectionSets(SchemaExtension):
    """graphql-core parses ``{}`` (the spec requires at least one selection) and Strawberry's
    depth limiter then fails on it with a bare ValueError: refuse such documents as a syntax
    error before any validation rule runs."""

    def on_validate(self) -> Iterator[None]:
        document = self.execution_context.graphql_document
        empty = None
        if document is not None:
            empty = _empty_selections.get((document,), lambda: empty_selection_set(document))
        if empty is not None:
            self.execution_context.pre_execution_errors = [
                GraphQLError(
                    "Syntax Error: a selection set must select at least one field.",
                    nodes=[empty],
                    extensions={"code": BAD_USER_INPUT},
                )
            ]
        yield


_NOT_KNOWN = object()


class RequireOperationName(SchemaExtension):
    """GraphQL spec (GetOperation): a document with several operations needs an
    ``operationName``. Strawberry runs the first one instead; refuse, as graphql-core does.
    (Strawberry keeps the name the client gave in a private attribute: if that ever goes,
    nothing is refused, rather than every request naming its operation.)"""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        provided = getattr(context, "_provided_operation_name", _NOT_KNOWN)
        if document is not None and provided is None and context.pre_execution_errors is None:
            operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            if len(operations) > 1:
                context.pre_execution_errors = [
                    GraphQLError(
                        "Must provide operation name if query contains multiple operations.",
                        extensions={"code": BAD_USER_INPUT},
                    )
                ]
        yield


@functools.lru_cache(maxsize=DOCUMENT_CACHE_SIZE)
def _parse(query: str, options: tuple[tuple[str, Any], ...]) -> DocumentNode:
    return parse(query, **dict(options))


_validations: IdentityMemo[Sequence[GraphQLError]] = IdentityMemo()


def _validate(
    schema: GraphQLSchema, document: DocumentNode, rules: tuple[type[ASTValidationRule], ...]
) -> Sequence[GraphQLError]:
    return _validations.get(
        (schema, document, *rules),
        lambda: tuple(validate_document(schema, document, rules)),
    )


class DocumentCache(SchemaExtension):
    """Remembers the parsed documents and their validation errors (usually none) for the last
    query texts seen. Clients send the same few documents with new variables, and parsing
    and validating one, limiter rules included, cost about half of the GraphQL layer's
    time per searchByText on the 2-core machine (see bench/).

    A document that does not parse is left to Strawberry, which parses it again and reports
    the error as usual. Needs validation rules that are the same objects on every request
    (build_schema makes the limiters' rules once). Must come after RejectEmptySelectionSets:
    a document that one refused is not validated."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and context.graphql_document is None:
            options = tuple(sorted(context.parse_options.items()))
            with contextlib.suppress(Exception):
                context.graphql_document = _parse(context.query, options)
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if (
            context.pre_execution_errors is None
            and context.graphql_document is not None
            and context.validation_rules
        ):
            errors = _validate(
                context.schema._schema, context.graphql_document, tuple(context.validation_rules)
            )
            context.pre_execution_errors = list(errors)
        yield


class OperationMetrics(SchemaExtension):
    """Labels operations by their root fields, never by the client-chosen operation name; names
    outside ``known_fields`` count as ``unknown`` so the label set stays bounded."""

    def __init__(self, metrics: Metrics, known_fields: Set[str]) -> None:
        self.metrics = metrics
        self.known_fields = known_fields

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        result = self.execution_context.result
        errors = getattr(result, "errors", None) or self.execution_context.pre_execution_errors
        operation, op_type = self._describe()
        self.metrics.observe_graphql(
            operation, op_type, ok=not errors, seconds=time.perf_counter() - started
        )

    def _describe(self) -> tuple[str, str]:
        context = self.execution_context
        document = context.graphql_document
        if document is None:
            return "invalid", "unknown"
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if context.operation_name:
            operations = [
                o
                for o in operations
                if o.name is not None and o.name.value == context.operation_name
            ]
        if len(operations) != 1:
            return "invalid", "unknown"
        operation = operations[0]
        names = set()
        for selection in operation.selection_set.selections:
            if not isinstance(selection, FieldNode):
                names.add("fragment")
            elif selection.name.value.startswith("__"):
                names.add("introspection")
            elif selection.name.value in self.known_fields:
                names.add(selection.name.value)
            else:
                names.add("unknown")
        return ",".join(sorted(names)) or "empty", operation.operation.value
