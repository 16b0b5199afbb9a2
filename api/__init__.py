"""How programs ask: the FastAPI app with the GraphQL schema, the REST shims, limits, errors,
health and metrics. Depends on the domain only; the composition root passes in the services
(ApiServices) and the settings (ApiConfig)."""

from __future__ import annotations

from api.app import create_app
from api.config import ApiConfig, ApiServices
from api.graphql.schema import build_schema, schema_sdl

__all__ = ["ApiConfig", "ApiServices", "build_schema", "create_app", "schema_sdl"]
