"""API-key protection for mutations."""

from __future__ import annotations

import hmac
from typing import Any

import strawberry
from graphql import GraphQLErrorExtensions
from strawberry.permission import BasePermission

from api.graphql.context import GraphQLContext
from domain.errors import Unauthenticated


def key_is_valid(given: str | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every configured key."""
    if not given:
        return False
    candidate = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


class ApiKeyRequired(BasePermission):
    message = "a valid X-API-Key header is required"
    error_extensions: GraphQLErrorExtensions | None = {"code": "UNAUTHENTICATED"}  # noqa: RUF012

    def has_permission(
        self, source: Any, info: strawberry.Info[GraphQLContext, None], **kwargs: Any
    ) -> bool:
        context = info.context
        keys = tuple(k.encode() for k in context.state.config.api_keys if k)
        if not keys:
            raise Unauthenticated("mutations are disabled: no API key is configured")
        if not key_is_valid(context.api_key, keys):
            raise Unauthenticated(self.message)
        return True
