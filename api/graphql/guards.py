"""Cheap structural checks on a GraphQL request's variables, before graphql-core coerces
them: coercing a filter of 1.2 million values (13 MB of JSON) held a worker's event loop for
5 s, and an input object with a million unknown fields would produce a million errors. The
schema's own limits (filter keys and values, tags) are checked again, precisely, by the
domain; these bounds only keep the walk to them cheap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domain.errors import BadInput
from domain.model import MAX_FILTER_VALUES

MAX_VARIABLE_LIST_ITEMS = MAX_FILTER_VALUES
"""The longest list any argument takes (a filter's values for one key)."""
MAX_VARIABLE_VALUES = 20_000
"""List items and object fields in all of one request's variables together (a filter at
its limits is 32 keys of 256 values: 8,256 of them)."""


def check_variables(variables: Mapping[str, Any] | None) -> None:
    """BadInput when a list is longer than any argument takes or the variables hold more
    values than any request needs. Stops at the first container over a bound, so refusing
    costs no more than reading up to it."""
    pending: list[Any] = [variables]
    seen = 0
    while pending:
        value = pending.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list):
            if len(value) > MAX_VARIABLE_LIST_ITEMS:
                raise BadInput(
                    f"a list in the variables has {len(value):,} items;"
                    f" the limit is {MAX_VARIABLE_LIST_ITEMS}"
                )
            children = value
        else:
            continue
        seen += len(value)
        if seen > MAX_VARIABLE_VALUES:
            raise BadInput(
                f"the variables hold more than {MAX_VARIABLE_VALUES:,} values;"
                " no operation takes that many"
            )
        pending.extend(children)
