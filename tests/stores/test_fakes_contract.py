"""The in-memory fakes the domain tests rely on honour the same contracts as the adapters."""

from __future__ import annotations

import pytest

from tests.fakes import InMemoryCatalog, InMemoryImageStore, InMemoryVectorIndex
from tests.stores.contracts import CatalogContract, ImageStoreContract, VectorIndexContract


class TestInMemoryVectorIndex(VectorIndexContract):
    @pytest.fixture
    def vector_index(self) -> InMemoryVectorIndex:
        return InMemoryVectorIndex()


class TestInMemoryCatalog(CatalogContract):
    @pytest.fixture
    def catalog(self) -> InMemoryCatalog:
        return InMemoryCatalog()


class TestInMemoryImageStore(ImageStoreContract):
    @pytest.fixture
    def image_store(self) -> InMemoryImageStore:
        return InMemoryImageStore()
