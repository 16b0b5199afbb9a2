"""Per-request GraphQL context: the API state, the caller's API key and a product DataLoader
(one catalog round trip for every product looked up while resolving one request)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from strawberry.dataloader import DataLoader
from strawberry.fastapi import BaseContext

from api.limits import ImageBudget
from api.services import ApiState
from domain.model import Product


class GraphQLContext(BaseContext):
    def __init__(self, state: ApiState) -> None:
        super().__init__()
        self.state = state
        self.products: DataLoader[str, Product | None] = DataLoader(load_fn=self._load_products)
        self._image_budget: ImageBudget | None = None

    async def _load_products(self, ids: Sequence[str]) -> Sequence[Product | None]:
        found = await self.state.services.catalog.get_many(list(ids))
        return [found.get(pid) for pid in ids]

    def remember(self, *products: Product) -> None:
        """Prime the loader with products already in hand (search hits, listings)."""
        self.products.prime_many({p.id: p for p in products})

    def forget(self, product_id: str) -> None:
        with contextlib.suppress(KeyError):  # DataLoader.clear raises for unknown keys
            self.products.clear(product_id)

    @property
    def image_budget(self) -> ImageBudget:
        """The images this request may still send, name or fetch (made on first use, once
        the request, and so its method, is known)."""
        if self._image_budget is None:
            self._image_budget = self.state.image_budget(self.request)
        return self._image_budget

    @property
    def api_key(self) -> str | None:
        if self.request is None:
            return None
        return self.request.headers.get("x-api-key")

    def absolute_url(self, url: str | None) -> str:
        base = str(self.request.base_url) if self.request is not None else None
        return self.state.absolute_url(url, base)
