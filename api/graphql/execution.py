"""A faster completion of plain result objects.

A searchByText page of 10 hits selects about 235 fields (hits, products, their tags), and
graphql-core completes each one through its general machinery: a resolve-info object, a
response path, a resolver call through Strawberry, an awaitable check, then the value's
completion. Profiled in-process (bench/api_overhead.py), that was about two thirds of the
GraphQL layer's CPU time per request.

Most of those fields are *plain*: a Strawberry field without a resolver, permission or
extension, read as an attribute of the parent object, of a scalar or enum type, or a list
of or an object made of such fields. For an object whose selected fields are all plain,
``FastExecutionContext`` computes the response by reading the attributes and coercing the
leaves directly, with the field grouping (aliases, fragments, ``@skip``/``@include``) that
graphql-core itself collected. Anything else (a resolver, arguments, ``@defer``,
middleware, ``is_type_of``, abstract types) goes the general way, and so does any object
where something is not as expected (a null for a non-null field, a leaf that does not
coerce): the general path then produces the value or the located error exactly as before.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    Node,
    Visitor,
    visit,
)
from graphql.pyutils import Undefined
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter

Completer = Callable[[Any], Any]
"""Turns one source value into its response value; raises _Fallback when it cannot."""


class _Fallback(Exception):
    """This object (or something in it) needs graphql-core's general completion."""


_NOT_PLAIN = object()

PLAN_CACHE_SIZE = 512

_shared_plans: dict[tuple[Any, ...], tuple[Any, Any]] = {}
"""Plans of documents without directives, shared by the requests that send the same
document (the DocumentCache hands them the same AST nodes): (object type, ids of the field
nodes) -> (the nodes, kept alive so their ids stay theirs; the plan)."""

_directive_free: dict[int, tuple[Any, bool]] = {}
"""id(operation node) -> (the node, whether it and its fragments have no directive)."""


class _DirectiveFinder(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def enter_directive(self, *_: Any) -> None:
        self.found = True


def _has_directives(nodes: list[Node]) -> bool:
    finder = _DirectiveFinder()
    for node in nodes:
        visit(node, finder)
    return finder.found


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= PLAN_CACHE_SIZE:
        cache.clear()  # rare: more distinct documents than the document cache holds
    cache[key] = value


def _plain_getter(field_def: Any) -> Callable[[Any], Any] | None:
    """``getattr(source, python_name)`` when the field is a plain Strawberry attribute."""
    if field_def.args or not getattr(field_def.resolve, "_is_default", False):
        return None
    definition = (field_def.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if definition is None or not getattr(definition, "is_basic_field", False):
        return None
    if getattr(definition, "default_resolver", None) is not getattr:
        return None
    return operator.attrgetter(definition.python_name)


class FastExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context, completing plain objects without per-field
    machinery (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (object type, id of the field group) -> completer, or _NOT_PLAIN; the field
        # group is kept alive with it so that its id is not reused during this execution
        self._plans: dict[tuple[GraphQLObjectType, int], tuple[Any, Any]] = {}
        middleware = self.middleware_manager
        self._fast = middleware is None or not getattr(middleware, "middlewares", ())
        # Without directives, the fields collected for an object depend on the document
        # only (not on the variables), so plans can be shared between requests.
        self._share = self._fast and self._directive_free()

    def _directive_free(self) -> bool:
        operation = self.operation
        known = _directive_free.get(id(operation))
        if known is not None and known[0] is operation:
            return bool(known[1])
        nodes: list[Node] = [operation]
        nodes += [details.definition for details in self.fragments.values()]
        free = not _has_directives(nodes)
        _remember(_directive_free, id(operation), (operation, free))
        return free

    def complete_object_value(
        self,
        return_type: GraphQLObjectType,
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        if self._fast:
            plan = self._object_plan(return_type, field_details_list)
            if plan is not _NOT_PLAIN:
                try:
                    return plan(result)
                except _Fallback:
                    pass
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _object_plan(self, object_type: GraphQLObjectType, field_details_list: Any) -> Any:
        key = (object_type, id(field_details_list))
        cached = self._plans.get(key)
        if cached is not None:
            return cached[1]
        nodes = tuple(details.node for details in field_details_list)
        shared_key = (object_type, *map(id, nodes))
        if self._share:
            shared = _shared_plans.get(shared_key)
            if shared is not None and all(a is b for a, b in zip(shared[0], nodes, strict=True)):
                self._plans[key] = (field_details_list, shared[1])
                return shared[1]
        self._plans[key] = (field_details_list, _NOT_PLAIN)  # a recursive type stays general
        try:
            plan = self._make_object_plan(object_type, field_details_list)
        except (AttributeError, KeyError, TypeError, ValueError):  # an unexpected shape
            plan = _NOT_PLAIN
        self._plans[key] = (field_details_list, plan)
        if self._share:
            _remember(_shared_plans, shared_key, (nodes, plan))
        return plan

    def _make_object_plan(self, object_type: GraphQLObjectType, field_details_list: Any) -> Any:
        if object_type.is_type_of is not None:
            return _NOT_PLAIN
        grouped_field_set, new_defer_usages, *_ = self.collect_subfields(
            object_type, field_details_list
        )
        if new_defer_usages:
            return _NOT_PLAIN
        steps: list[tuple[str, Callable[[Any], Any], Completer]] = []
        for response_name, sub_details in grouped_field_set.items():
            node = sub_details[0].node
            name = node.name.value
            if name == "__typename":
                steps.append((response_name, _none, _constant(object_type.name)))
                continue
            if node.arguments:
                return _NOT_PLAIN
            field_def = object_type.fields.get(name)
            if field_def is None:
                return _NOT_PLAIN
            getter = _plain_getter(field_def)
            if getter is None:
                return _NOT_PLAIN
            complete = self._value_plan(field_def.type, sub_details)
            if complete is _NOT_PLAIN:
                return _NOT_PLAIN
            steps.append((response_name, getter, complete))

        def complete_object(source: Any) -> dict[str, Any]:
            try:
                return {name: complete(get(source)) for name, get, complete in steps}
            except AttributeError as exc:  # not the object the type describes
                raise _Fallback from exc

        return complete_object

    def _value_plan(self, type_: GraphQLOutputType, field_details_list: Any) -> Any:
        """A completer of values of this type, or _NOT_PLAIN."""
        if isinstance(type_, GraphQLNonNull | GraphQLList):
            inner = self._value_plan(type_.of_type, field_details_list)
            if inner is _NOT_PLAIN:
                return _NOT_PLAIN
            return _non_null(inner) if isinstance(type_, GraphQLNonNull) else _list_of(inner)
        if isinstance(type_, GraphQLScalarType | GraphQLEnumType):
            coerce = type_.coerce_output_value

            def complete_leaf(value: Any) -> Any:
                if value is None:
                    return None
                try:
                    coerced = coerce(value)
                except Exception as exc:
                    raise _Fallback from exc
                if coerced is None or coerced is Undefined:
                    raise _Fallback
                return coerced

            return complete_leaf
        if isinstance(type_, GraphQLObjectType):
            plan = self._object_plan(type_, field_details_list)
            if plan is _NOT_PLAIN:
                return _NOT_PLAIN

            def complete_nullable_object(value: Any) -> Any:
                return None if value is None else plan(value)

            return complete_nullable_object
        return _NOT_PLAIN  # interfaces and unions


def _non_null(inner: Completer) -> Completer:
    def complete_non_null(value: Any) -> Any:
        if value is None:
            raise _Fallback  # graphql-core reports the error, located
        return inner(value)

    return complete_non_null


def _list_of(item: Completer) -> Completer:
    def complete_list(value: Any) -> Any:
        if value is None:
            return None
        if type(value) not in (list, tuple):
            raise _Fallback  # other iterables (and non-iterables) the general way
        return [item(v) for v in value]

    return complete_list


def _none(_source: Any) -> None:
    return None


def _constant(value: str) -> Completer:
    def complete(_value: Any) -> str:
        return value

    return complete
