"""Typed spellings of ``strawberry.field(...)`` / ``strawberry.mutation(...)`` used as
decorators with arguments (strawberry types that form as ``Any``, which strict mypy rejects)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import strawberry
from strawberry.permission import BasePermission

F = TypeVar("F", bound=Callable[..., Any])


def field(
    description: str, permission_classes: Sequence[type[BasePermission]] = ()
) -> Callable[[F], F]:
    return cast(
        "Callable[[F], F]",
        strawberry.field(description=description, permission_classes=list(permission_classes)),
    )


def mutation(
    description: str, permission_classes: Sequence[type[BasePermission]] = ()
) -> Callable[[F], F]:
    return cast(
        "Callable[[F], F]",
        strawberry.mutation(description=description, permission_classes=list(permission_classes)),
    )
