"""Contract test suites of the store ports (domain/ports.py), run against every adapter.

An adapter's test module subclasses a contract and provides a fixture that yields a fresh,
empty store (sync or async fixture; pytest-asyncio runs in auto mode)::

    class TestFaissVectorIndex(VectorIndexContract):
        @pytest.fixture
        async def vector_index(self, tmp_path: Path) -> AsyncIterator[VectorIndex]:
            index = FaissVectorIndex(tmp_path / "vectors", hnsw_threshold=1000)
            yield index
            await index.close()

The contracts are small and fast on purpose: they also run against network services (Pinecone,
MongoDB, S3). Adapters whose vector dimension is fixed (one Pinecone index for every
namespace) may override ``dim`` (>= 4). Adapters that are only eventually consistent must
make reads after writes consistent in their test fixture (e.g. wait for freshness), not
weaken the contract.

Names do not start with ``Test`` so pytest only collects the subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest

from domain.colour import HISTOGRAM_BINS, histogram_bytes
from domain.errors import BadInput, NotFound
from domain.model import Cursor, LexicalHit, Product, ProductFilter
from domain.ports import (
    Catalog,
    ImageStore,
    LexicalIndex,
    ListableImageStore,
    RowReader,
    VectorIndex,
    Vectors,
)
from stores.synonyms import SYNONYM_CREDIT, SYNONYM_WEIGHT

# Encoder ids as the plugins spell them: they contain ':', '/', '@' and '.'.
ENC_A = "fashion-lite"
ENC_B = "open_clip:ViT-B-32@/models/ckpt-1.pt"
ENC_C = "open_clip:ViT-B-32/laion2b_s34b_b79k"

SCORE_TOL = 1e-4


def unit(*components: float, dim: int) -> Vectors:
    """A unit vector of ``dim`` whose first components are ``components`` before scaling."""
    vector = np.zeros(dim, dtype=np.float32)
    vector[: len(components)] = components
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def random_units(n: int, dim: int, seed: int) -> Vectors:
    rng = np.random.default_rng(seed)
    vectors: Vectors = rng.standard_normal((n, dim)).astype(np.float32)
    norms: Vectors = np.linalg.norm(vectors, axis=1, keepdims=True).astype(np.float32)
    return (vectors / norms).astype(np.float32)


def stack(vectors: Sequence[Vectors], dim: int) -> Vectors:
    if not vectors:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack(vectors).astype(np.float32)


def ids_of(results: Sequence[tuple[str, float]]) -> list[str]:
    return [pid for pid, _ in results]


class VectorIndexContract:
    """Semantics every VectorIndex honours. Fixture: ``vector_index`` (fresh and empty)."""

    dim: ClassVar[int] = 8

    def u(self, *components: float) -> Vectors:
        return unit(*components, dim=self.dim)

    async def put(
        self,
        index: VectorIndex,
        encoder_id: str,
        items: Mapping[str, tuple[Vectors, Mapping[str, str]]],
    ) -> None:
        ids = list(items)
        await index.upsert(
            encoder_id,
            ids,
            stack([items[i][0] for i in ids], self.dim),
            [items[i][1] for i in ids],
        )

    async def put_catalog(self, index: VectorIndex, encoder_id: str = ENC_A) -> None:
        """Six products with tags; the query ``u(1)`` ranks them p1 > p2 > ... > p6."""
        tags: dict[str, dict[str, str]] = {
            "p1": {"colour": "black", "type": "trousers", "gender": "women"},
            "p2": {"colour": "red", "type": "dress", "gender": "women"},
            "p3": {"colour": "black", "type": "dress", "gender": "women"},
            "p4": {"colour": "blue", "type": "trousers", "gender": "men"},
            "p5": {"colour": "black", "type": "dress", "gender": "men"},
            "p6": {"colour": "white", "type": "shirt"},
        }
        angles = {"p1": 0.0, "p2": 0.3, "p3": 0.6, "p4": 0.9, "p5": 1.2, "p6": 1.5}
        await self.put(
            index,
            encoder_id,
            {
                pid: (self.u(float(np.cos(a)), float(np.sin(a))), tags[pid])
                for pid, a in angles.items()
            },
        )

    # -- empty store ---------------------------------------------------------------------

    async def test_empty_index(self, vector_index: VectorIndex) -> None:
        assert await vector_index.count() == 0
        assert await vector_index.count(ENC_A) == 0
        assert await vector_index.encoder_ids() == []
        assert await vector_index.query(ENC_A, self.u(1), 10) == []
        assert await vector_index.fetch(ENC_A, ["p1"]) == {}
        await vector_index.delete(["p1"])  # deleting what is not there is fine
        await vector_index.delete(["p1"], ENC_A)
        await vector_index.flush()

    # -- upsert, count, encoder ids ------------------------------------------------------

    async def test_upsert_counts_per_encoder_and_in_total(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index, ENC_A)
        await self.put(vector_index, ENC_B, {"p1": (self.u(1), {}), "p9": (self.u(0, 1), {})})
        assert await vector_index.count(ENC_A) == 6
        assert await vector_index.count(ENC_B) == 2
        assert await vector_index.count(ENC_C) == 0
        assert await vector_index.count() == 8
        assert sorted(await vector_index.encoder_ids()) == sorted([ENC_A, ENC_B])

    async def test_empty_upsert_is_a_no_op(self, vector_index: VectorIndex) -> None:
        await vector_index.upsert(ENC_A, [], np.zeros((0, self.dim), dtype=np.float32), [])
        assert await vector_index.count() == 0
        assert await vector_index.encoder_ids() == []

    async def test_upsert_rejects_mismatched_lengths(self, vector_index: VectorIndex) -> None:
        with pytest.raises((BadInput, ValueError)):
            await vector_index.upsert(ENC_A, ["p1", "p2"], stack([self.u(1)], self.dim), [{}, {}])
        with pytest.raises((BadInput, ValueError)):
            await vector_index.upsert(
                ENC_A, ["p1", "p2"], stack([self.u(1), self.u(0, 1)], self.dim), [{}]
            )

    async def test_upsert_overwrites_vector_and_metadata(self, vector_index: VectorIndex) -> None:
        await self.put(
            vector_index,
            ENC_A,
            {"p1": (self.u(1), {"colour": "red"}), "p2": (self.u(0, 1), {"colour": "blue"})},
        )
        await self.put(vector_index, ENC_A, {"p1": (self.u(0, 0, 1), {"colour": "green"})})
        assert await vector_index.count(ENC_A) == 2

        fetched = await vector_index.fetch(ENC_A, ["p1"])
        np.testing.assert_allclose(fetched["p1"], self.u(0, 0, 1), atol=1e-5)

        best = await vector_index.query(ENC_A, self.u(0, 0, 1), 1)
        assert best[0][0] == "p1"
        assert best[0][1] == pytest.approx(1.0, abs=SCORE_TOL)
        # The old vector no longer answers: p1 now scores 0 against its former direction.
        old = dict(await vector_index.query(ENC_A, self.u(1), 10))
        assert old["p1"] == pytest.approx(0.0, abs=SCORE_TOL)
        # The old metadata is gone, the new one is used by filters.
        assert (
            await vector_index.query(ENC_A, self.u(1), 10, ProductFilter({"colour": "red"})) == []
        )
        green = await vector_index.query(ENC_A, self.u(1), 10, ProductFilter({"colour": "green"}))
        assert ids_of(green) == ["p1"]

    async def test_upsert_duplicate_ids_in_one_call_keeps_one(
        self, vector_index: VectorIndex
    ) -> None:
        await vector_index.upsert(
            ENC_A, ["p1", "p1"], stack([self.u(1), self.u(0, 1)], self.dim), [{}, {}]
        )
        assert await vector_index.count(ENC_A) == 1
        assert ids_of(await vector_index.query(ENC_A, self.u(1), 10)) == ["p1"]

    # -- query ---------------------------------------------------------------------------

    async def test_query_orders_best_first_with_cosine_scores(
        self, vector_index: VectorIndex
    ) -> None:
        await self.put_catalog(vector_index)
        results = await vector_index.query(ENC_A, self.u(1), 6)
        assert ids_of(results) == ["p1", "p2", "p3", "p4", "p5", "p6"]
        expected = [np.cos(a) for a in (0.0, 0.3, 0.6, 0.9, 1.2, 1.5)]
        for (_, score), want in zip(results, expected, strict=True):
            assert isinstance(score, float)
            assert score == pytest.approx(want, abs=SCORE_TOL)

    async def test_query_scores_can_be_negative(self, vector_index: VectorIndex) -> None:
        await self.put(
            vector_index,
            ENC_A,
            {"same": (self.u(1), {}), "orth": (self.u(0, 1), {}), "opp": (self.u(-1), {})},
        )
        results = await vector_index.query(ENC_A, self.u(1), 3)
        assert ids_of(results) == ["same", "orth", "opp"]
        assert [s for _, s in results] == pytest.approx([1.0, 0.0, -1.0], abs=SCORE_TOL)

    async def test_query_top_k_limits_results(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        assert ids_of(await vector_index.query(ENC_A, self.u(1), 2)) == ["p1", "p2"]
        assert ids_of(await vector_index.query(ENC_A, self.u(0, 1), 1)) == ["p6"]

    async def test_query_top_k_larger_than_count_returns_all(
        self, vector_index: VectorIndex
    ) -> None:
        await self.put_catalog(vector_index)
        results = await vector_index.query(ENC_A, self.u(1), 100)
        assert ids_of(results) == ["p1", "p2", "p3", "p4", "p5", "p6"]

    async def test_query_unknown_encoder_gives_nothing(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        assert await vector_index.query(ENC_C, self.u(1), 10) == []

    # -- filters -------------------------------------------------------------------------

    async def test_filter_equals(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        black = await vector_index.query(ENC_A, self.u(1), 10, ProductFilter({"colour": "black"}))
        assert ids_of(black) == ["p1", "p3", "p5"]
        both = await vector_index.query(
            ENC_A, self.u(1), 10, ProductFilter({"colour": "black", "type": "dress"})
        )
        assert ids_of(both) == ["p3", "p5"]

    async def test_filter_any_of(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        results = await vector_index.query(
            ENC_A, self.u(1), 10, ProductFilter(any_of={"colour": ("red", "blue", "pink")})
        )
        assert ids_of(results) == ["p2", "p4"]

    async def test_filter_equals_and_any_of_combined(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        results = await vector_index.query(
            ENC_A,
            self.u(1),
            10,
            ProductFilter(equals={"gender": "women"}, any_of={"type": ("dress", "shirt")}),
        )
        assert ids_of(results) == ["p2", "p3"]

    async def test_filter_respects_top_k_and_scores(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        results = await vector_index.query(ENC_A, self.u(1), 2, ProductFilter({"type": "dress"}))
        assert ids_of(results) == ["p2", "p3"]
        assert results[0][1] == pytest.approx(float(np.cos(0.3)), abs=SCORE_TOL)

    async def test_filter_without_matches_gives_nothing(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        for flt in (
            ProductFilter({"colour": "purple"}),
            ProductFilter({"no-such-key": "x"}),
            ProductFilter({"colour": "black", "type": "shirt"}),
        ):
            assert await vector_index.query(ENC_A, self.u(1), 10, flt) == []

    async def test_missing_tag_never_matches(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        # p6 has no gender tag: it matches neither an equals nor an any_of on gender.
        results = await vector_index.query(
            ENC_A, self.u(0, 1), 10, ProductFilter(any_of={"gender": ("men", "women")})
        )
        assert "p6" not in ids_of(results)
        assert len(results) == 5

    async def test_empty_filter_matches_everything(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        assert len(await vector_index.query(ENC_A, self.u(1), 10, ProductFilter())) == 6

    # -- encoders never mix --------------------------------------------------------------

    async def test_encoders_never_mix(self, vector_index: VectorIndex) -> None:
        await self.put(
            vector_index,
            ENC_A,
            {"p1": (self.u(1), {"colour": "red"}), "p2": (self.u(0, 1), {"colour": "red"})},
        )
        await self.put(
            vector_index,
            ENC_B,
            {"p1": (self.u(0, 1), {"colour": "blue"}), "p3": (self.u(1), {"colour": "blue"})},
        )
        a = await vector_index.query(ENC_A, self.u(1), 10)
        b = await vector_index.query(ENC_B, self.u(1), 10)
        assert ids_of(a) == ["p1", "p2"]
        assert ids_of(b) == ["p3", "p1"]
        assert dict(b)["p1"] == pytest.approx(0.0, abs=SCORE_TOL)
        # Metadata is per encoder too.
        assert (
            await vector_index.query(ENC_A, self.u(1), 10, ProductFilter({"colour": "blue"})) == []
        )
        np.testing.assert_allclose(
            (await vector_index.fetch(ENC_A, ["p1"]))["p1"], self.u(1), atol=1e-5
        )
        np.testing.assert_allclose(
            (await vector_index.fetch(ENC_B, ["p1"]))["p1"], self.u(0, 1), atol=1e-5
        )
        assert await vector_index.fetch(ENC_A, ["p3"]) == {}

    # -- fetch ---------------------------------------------------------------------------

    async def test_fetch_returns_stored_vectors_of_existing_ids(
        self, vector_index: VectorIndex
    ) -> None:
        vectors = random_units(3, self.dim, seed=1)
        await vector_index.upsert(ENC_A, ["a", "b", "c"], vectors, [{}, {}, {}])
        fetched = await vector_index.fetch(ENC_A, ["c", "missing", "a"])
        assert set(fetched) == {"a", "c"}
        np.testing.assert_allclose(fetched["a"], vectors[0], atol=1e-5)
        np.testing.assert_allclose(fetched["c"], vectors[2], atol=1e-5)
        assert np.asarray(fetched["a"]).reshape(-1).shape == (self.dim,)
        assert await vector_index.fetch(ENC_A, []) == {}

    # -- delete --------------------------------------------------------------------------

    async def test_delete_from_one_encoder(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index, ENC_A)
        await self.put_catalog(vector_index, ENC_B)
        await vector_index.delete(["p1", "p3", "unknown"], ENC_A)
        assert await vector_index.count(ENC_A) == 4
        assert await vector_index.count(ENC_B) == 6
        assert ids_of(await vector_index.query(ENC_A, self.u(1), 10)) == ["p2", "p4", "p5", "p6"]
        assert ids_of(await vector_index.query(ENC_B, self.u(1), 2)) == ["p1", "p2"]
        assert await vector_index.fetch(ENC_A, ["p1"]) == {}
        black = await vector_index.query(ENC_A, self.u(1), 10, ProductFilter({"colour": "black"}))
        assert ids_of(black) == ["p5"]

    async def test_delete_from_every_encoder(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index, ENC_A)
        await self.put_catalog(vector_index, ENC_B)
        await vector_index.delete(["p1", "p2"])
        assert await vector_index.count(ENC_A) == 4
        assert await vector_index.count(ENC_B) == 4
        assert await vector_index.count() == 8
        for encoder_id in (ENC_A, ENC_B):
            assert ids_of(await vector_index.query(encoder_id, self.u(1), 10)) == [
                "p3",
                "p4",
                "p5",
                "p6",
            ]

    async def test_deleting_everything_forgets_the_encoder(self, vector_index: VectorIndex) -> None:
        await self.put(vector_index, ENC_A, {"p1": (self.u(1), {})})
        await self.put(vector_index, ENC_B, {"p1": (self.u(1), {})})
        await vector_index.delete(["p1"], ENC_A)
        assert await vector_index.encoder_ids() == [ENC_B]
        assert await vector_index.query(ENC_A, self.u(1), 10) == []

    async def test_reinsert_after_delete(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        await vector_index.delete(["p1"])
        await self.put(vector_index, ENC_A, {"p1": (self.u(0, 1), {"colour": "green"})})
        assert await vector_index.count(ENC_A) == 6
        results = await vector_index.query(ENC_A, self.u(0, 1), 1)
        assert results[0][0] == "p1"
        assert results[0][1] == pytest.approx(1.0, abs=SCORE_TOL)
        green = await vector_index.query(ENC_A, self.u(1), 10, ProductFilter({"colour": "green"}))
        assert ids_of(green) == ["p1"]

    # -- flush ---------------------------------------------------------------------------

    async def test_flush_keeps_everything_queryable(self, vector_index: VectorIndex) -> None:
        await self.put_catalog(vector_index)
        await vector_index.flush()
        await vector_index.delete(["p2"])
        await vector_index.flush()
        await vector_index.flush()
        assert await vector_index.count(ENC_A) == 5
        assert ids_of(await vector_index.query(ENC_A, self.u(1), 2)) == ["p1", "p3"]


def _product(
    pid: str,
    name: str | None = None,
    description: str | None = None,
    image_keys: tuple[str, ...] = (),
    **tags: str,
) -> Product:
    return Product(
        id=pid,
        name=name or f"Product {pid}",
        description=description,
        tags=tags,
        image_keys=image_keys,
    )


def _sample_products() -> list[Product]:
    return [
        _product("p01", colour="black", type="trousers", gender="women"),
        _product("p02", colour="red", type="dress", gender="women"),
        _product("p03", colour="black", type="dress", gender="women"),
        _product("p04", colour="blue", type="trousers", gender="men"),
        _product("p05", colour="black", type="dress", gender="men"),
        _product("p06", colour="white", type="shirt"),
        _product("p07", colour="black", type="shirt", gender="men"),
        _product("p08", colour="red", type="trousers", gender="women"),
        _product("p09", colour="black", type="trousers", gender="men"),
        _product("p10", colour="blue", type="dress", gender="women"),
        _product("p11", colour="black", type="dress", gender="women"),
    ]


class CatalogContract:
    """Semantics every Catalog honours. Fixture: ``catalog`` (fresh and empty)."""

    async def walk(
        self, catalog: Catalog, filter: ProductFilter | None, limit: int
    ) -> list[list[str]]:
        """Every page of a listing, as lists of ids."""
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            page = await catalog.list(filter, cursor, limit)
            assert len(page.items) <= limit
            pages.append([p.id for p in page.items])
            if page.next_cursor is None:
                return pages
            assert len(pages) < 100, "pagination does not end"
            cursor = page.next_cursor

    # -- empty ---------------------------------------------------------------------------

    async def test_empty_catalog(self, catalog: Catalog) -> None:
        assert await catalog.get("p1") is None
        assert await catalog.get_many(["p1", "p2"]) == {}
        assert await catalog.get_many([]) == {}
        assert await catalog.count() == 0
        page = await catalog.list()
        assert page.items == ()
        assert page.next_cursor is None
        assert await catalog.facets() == {}
        assert await catalog.indexed_hashes(ENC_A) == {}
        assert await catalog.delete("p1") is False

    # -- upsert and reads ----------------------------------------------------------------

    async def test_upsert_and_get_round_trip(self, catalog: Catalog) -> None:
        full = Product(
            id="sku/42 é",
            name="Robe d'été — rouge",
            description='Light "summer" dress\nwith pockets',
            tags={"colour": "red", "type": "dress", "note": "ünïcode ✓"},
            image_keys=("sku_42-aaaa.jpg", "sku_42-bbbb.png"),
        )
        bare = Product(id="p2", name="Plain")
        await catalog.upsert_many([full, bare])
        assert await catalog.get("sku/42 é") == full
        got = await catalog.get("p2")
        assert got == bare
        assert got is not None
        assert got.description is None
        assert dict(got.tags) == {}
        assert got.image_keys == ()

    async def test_colour_histogram_round_trips(self, catalog: Catalog) -> None:
        """The photo's colour histogram is stored with the product and read back by every
        read (get, get_many, list) to the bit; replaced or removed with the product."""
        histogram = np.linspace(0.0, 1.0, HISTOGRAM_BINS)
        stored = replace(_product("p1", type="dress"), colour=histogram_bytes(histogram))
        await catalog.upsert_many([stored, _product("p2")])
        assert await catalog.get("p1") == stored
        many = await catalog.get_many(["p1", "p2"])
        assert many["p1"].colour == histogram_bytes(histogram)
        assert many["p2"].colour is None
        listed = {p.id: p for p in (await catalog.list()).items}
        assert listed["p1"] == stored
        again = replace(stored, colour=histogram_bytes(histogram[::-1]))
        await catalog.upsert_many([again])
        assert (await catalog.get_many(["p1"]))["p1"].colour == again.colour
        await catalog.upsert_many([replace(again, colour=None)])
        got = await catalog.get("p1")
        assert got is not None
        assert got.colour is None

    async def test_rows_give_colours_and_products_as_get_many_does(self, catalog: Catalog) -> None:
        """``get_rows`` (one round trip, products decoded when asked for) agrees with
        ``get_many``; a catalog without it is read through ``get_many``."""
        coloured = replace(_product("p1", type="dress"), colour=histogram_bytes(np.ones(54)))
        await catalog.upsert_many([coloured, _product("p2")])
        if not isinstance(catalog, RowReader):
            pytest.skip("this catalog has no rows read")
        rows = await catalog.get_rows(["p2", "missing", "p1"])
        assert rows.colour("p1") == coloured.colour
        assert rows.colour("p2") is None
        assert rows.colour("missing") is None
        assert rows.product("p1") == coloured
        assert rows.product("p2") == _product("p2")
        assert rows.product("missing") is None
        assert (await catalog.get_rows([])).product("p1") is None

    async def test_upsert_overwrites(self, catalog: Catalog) -> None:
        await catalog.upsert_many([_product("p1", colour="red", type="dress")])
        updated = _product("p1", name="Renamed", image_keys=("k.jpg",), colour="blue")
        await catalog.upsert_many([updated])
        assert await catalog.get("p1") == updated
        assert await catalog.count() == 1
        # Old tags are gone everywhere: filters and facets.
        assert await catalog.count(ProductFilter({"type": "dress"})) == 0
        assert await catalog.count(ProductFilter({"colour": "red"})) == 0
        assert await catalog.facets() == {"colour": {"blue": 1}}

    async def test_upsert_many_with_nothing_is_a_no_op(self, catalog: Catalog) -> None:
        await catalog.upsert_many([])
        assert await catalog.count() == 0

    async def test_get_many_returns_only_existing(self, catalog: Catalog) -> None:
        products = _sample_products()
        await catalog.upsert_many(products)
        by_id = {p.id: p for p in products}
        got = await catalog.get_many(["p03", "nope", "p01", "p03"])
        assert got == {"p03": by_id["p03"], "p01": by_id["p01"]}

    async def test_get_many_with_many_ids(self, catalog: Catalog) -> None:
        products = [_product(f"id{i:04d}", colour="black") for i in range(300)]
        await catalog.upsert_many(products)
        wanted = [f"id{i:04d}" for i in range(0, 600, 2)]
        got = await catalog.get_many(wanted)
        assert set(got) == {f"id{i:04d}" for i in range(0, 300, 2)}

    # -- delete and the ledger -----------------------------------------------------------

    async def test_delete(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products())
        assert await catalog.delete("p02") is True
        assert await catalog.delete("p02") is False
        assert await catalog.get("p02") is None
        assert await catalog.count() == 10
        assert await catalog.count(ProductFilter({"colour": "red"})) == 1
        assert (await catalog.facets(["colour"]))["colour"]["red"] == 1
        assert "p02" not in [p.id for p in (await catalog.list(limit=100)).items]

    async def test_delete_forgets_ledger_entries_of_that_product_only(
        self, catalog: Catalog
    ) -> None:
        await catalog.upsert_many([_product("p1"), _product("p2")])
        await catalog.mark_indexed(ENC_A, {"p1": "h1", "p2": "h2"})
        await catalog.mark_indexed(ENC_B, {"p1": "h1b"})
        assert await catalog.delete("p1") is True
        assert await catalog.indexed_hashes(ENC_A) == {"p2": "h2"}
        assert await catalog.indexed_hashes(ENC_B) == {}

    async def test_ledger_is_per_encoder(self, catalog: Catalog) -> None:
        await catalog.upsert_many([_product("p1"), _product("p2"), _product("p3")])
        await catalog.mark_indexed(ENC_A, {"p1": "aaa", "p2": "bbb"})
        await catalog.mark_indexed(ENC_B, {"p1": "ccc"})
        await catalog.mark_indexed(ENC_A, {"p2": "bbb2", "p3": "ddd"})
        await catalog.mark_indexed(ENC_C, {})
        assert await catalog.indexed_hashes(ENC_A) == {"p1": "aaa", "p2": "bbb2", "p3": "ddd"}
        assert await catalog.indexed_hashes(ENC_B) == {"p1": "ccc"}
        assert await catalog.indexed_hashes(ENC_C) == {}
        assert await catalog.indexed_hashes("never-used") == {}

    async def test_ledger_entries_of_a_batch(self, catalog: Catalog) -> None:
        await catalog.mark_indexed(ENC_A, {"p1": "a1", "p2": "a2", "p3": "a3"})
        await catalog.mark_indexed(ENC_B, {"p2": "b2"})
        entries = await catalog.ledger_entries([ENC_A, ENC_B, ENC_C], ["p2", "p3", "p9", "p2"])
        assert {e: v for e, v in entries.items() if v} == {
            ENC_A: {"p2": "a2", "p3": "a3"},
            ENC_B: {"p2": "b2"},
        }
        assert await catalog.ledger_entries([ENC_A], []) == {}
        assert await catalog.ledger_entries([], ["p1"]) == {}

    async def test_ledger_pages_walk_one_encoder_in_id_order(self, catalog: Catalog) -> None:
        ids = [f"p{i:03d}" for i in range(25)]
        await catalog.mark_indexed(ENC_A, {pid: f"h{pid}" for pid in reversed(ids)})
        await catalog.mark_indexed(ENC_B, {"p000": "other", "zzz": "other"})
        walked: list[str] = []
        after: str | None = None
        while page := await catalog.ledger_page(ENC_A, after, 10):
            assert list(page) == sorted(page)
            assert len(page) <= 10
            assert all(page[pid] == f"h{pid}" for pid in page)
            walked += list(page)
            after = walked[-1]
        assert walked == ids
        assert await catalog.ledger_page("never-used", None, 10) == {}

    async def test_forget_indexed_for_one_or_every_encoder(self, catalog: Catalog) -> None:
        await catalog.mark_indexed(ENC_A, {"p1": "a1", "p2": "a2"})
        await catalog.mark_indexed(ENC_B, {"p1": "b1", "p2": "b2"})
        await catalog.forget_indexed(["p1"], ENC_A)
        assert await catalog.indexed_hashes(ENC_A) == {"p2": "a2"}
        assert await catalog.indexed_hashes(ENC_B) == {"p1": "b1", "p2": "b2"}
        await catalog.forget_indexed(["p2", "p9"])
        assert await catalog.indexed_hashes(ENC_A) == {}
        assert await catalog.indexed_hashes(ENC_B) == {"p1": "b1"}
        await catalog.forget_indexed([])

    async def test_reupserting_a_product_keeps_its_ledger(self, catalog: Catalog) -> None:
        await catalog.upsert_many([_product("p1", colour="red")])
        await catalog.mark_indexed(ENC_A, {"p1": "h1"})
        await catalog.upsert_many([_product("p1", colour="blue")])
        assert await catalog.indexed_hashes(ENC_A) == {"p1": "h1"}

    # -- list and count ------------------------------------------------------------------

    async def test_list_is_in_id_order_with_limit(self, catalog: Catalog) -> None:
        products = _sample_products()
        await catalog.upsert_many(list(reversed(products)))
        page = await catalog.list(limit=4)
        assert [p.id for p in page.items] == ["p01", "p02", "p03", "p04"]
        assert page.items[1] == products[1]
        assert page.next_cursor is not None

    async def test_list_pagination_visits_every_product_once(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products())
        pages = await self.walk(catalog, None, 3)
        assert [len(p) for p in pages] == [3, 3, 3, 2]
        assert [pid for page in pages for pid in page] == [f"p{i:02d}" for i in range(1, 12)]

    async def test_list_last_full_page_has_no_cursor(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products()[:6])
        pages = await self.walk(catalog, None, 3)
        assert [len(p) for p in pages] == [3, 3]
        page = await catalog.list(limit=6)
        assert len(page.items) == 6
        assert page.next_cursor is None

    async def test_list_with_filter_and_cursor(self, catalog: Catalog) -> None:
        products = _sample_products()
        await catalog.upsert_many(products)
        flt = ProductFilter(equals={"colour": "black"}, any_of={"type": ("dress", "trousers")})
        expected = sorted(p.id for p in products if flt.matches(p.tags))
        assert expected == ["p01", "p03", "p05", "p09", "p11"]
        pages = await self.walk(catalog, flt, 2)
        assert pages == [["p01", "p03"], ["p05", "p09"], ["p11"]]

    async def test_list_cursor_is_a_position_not_a_snapshot(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products())
        first = await catalog.list(limit=3)
        assert first.next_cursor is not None
        await catalog.delete("p04")  # the next page's first item disappears
        await catalog.upsert_many([_product("p00"), _product("p035")])
        second = await catalog.list(cursor=first.next_cursor, limit=3)
        assert [p.id for p in second.items] == ["p035", "p05", "p06"]

    async def test_list_accepts_cursor_made_by_domain(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products())
        page = await catalog.list(cursor=Cursor(after_id="p09").encode(), limit=10)
        assert [p.id for p in page.items] == ["p10", "p11"]
        assert page.next_cursor is None

    async def test_list_rejects_invalid_cursor(self, catalog: Catalog) -> None:
        with pytest.raises(BadInput):
            await catalog.list(cursor="not a cursor!", limit=5)

    async def test_list_filter_without_matches(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products())
        page = await catalog.list(ProductFilter({"colour": "purple"}))
        assert page.items == ()
        assert page.next_cursor is None

    async def test_count_with_filter(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products())
        assert await catalog.count() == 11
        assert await catalog.count(ProductFilter()) == 11
        assert await catalog.count(ProductFilter({"colour": "black"})) == 6
        assert await catalog.count(ProductFilter({"colour": "black", "gender": "men"})) == 3
        assert await catalog.count(ProductFilter(any_of={"colour": ("red", "blue")})) == 4
        assert await catalog.count(ProductFilter(any_of={"gender": ("men", "women")})) == 10
        assert (
            await catalog.count(
                ProductFilter(equals={"type": "dress"}, any_of={"gender": ("women", "x")})
            )
            == 4
        )
        assert await catalog.count(ProductFilter({"nope": "x"})) == 0

    # -- facets --------------------------------------------------------------------------

    async def test_facets_of_all_keys(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products())
        assert await catalog.facets() == {
            "colour": {"black": 6, "red": 2, "blue": 2, "white": 1},
            "type": {"trousers": 4, "dress": 5, "shirt": 2},
            "gender": {"women": 6, "men": 4},
        }

    async def test_facets_of_chosen_keys_with_filter(self, catalog: Catalog) -> None:
        await catalog.upsert_many(_sample_products())
        assert await catalog.facets(["colour"]) == {
            "colour": {"black": 6, "red": 2, "blue": 2, "white": 1}
        }
        facets = await catalog.facets(["type", "gender"], ProductFilter({"colour": "black"}))
        assert facets == {
            "type": {"trousers": 2, "dress": 3, "shirt": 1},
            "gender": {"women": 3, "men": 3},
        }
        nothing = await catalog.facets(["colour", "unknown"], ProductFilter({"colour": "purple"}))
        assert nothing.get("colour", {}) == {}
        assert nothing.get("unknown", {}) == {}


def _lexical_products() -> list[Product]:
    return [
        _product(
            "w1", "Basics Men Black Trousers", "Slim trousers in stretch twill.", colour="Black"
        ),
        _product("w2", "Café Crème T-Shirt", "A soft cotton top.", colour="White"),
        _product("w3", "Lace Dress", "A dress in lace, with matching trousers sold apart."),
        _product("w4", "Puma Men Tshirts", colour="Navy Blue"),
        _product("w5", "Running Shoes", "Cushioned shoes for running.", colour="Black"),
        _product("w6", "Floral Skirt", colour="Pink"),
    ]


def _ids(hits: Sequence[LexicalHit]) -> list[str]:
    return [h.product_id for h in hits]


class LexicalContract:
    """What every LexicalIndex (a catalog capability) honours: BM25-style matching of the
    products' words. Fixture: ``catalog`` (fresh and empty, and a LexicalIndex).

    ``any_word_matches``: a multi-word query also finds products having only some of its
    words (MongoDB, FTS5). A test server that needs every word (nx-27017) sets it False; the
    tests that rely on it then do not run there."""

    any_word_matches: ClassVar[bool] = True

    async def lexical(self, catalog: Catalog) -> LexicalIndex:
        assert isinstance(catalog, LexicalIndex)
        await catalog.upsert_many(_lexical_products())
        return catalog

    async def test_stemming_matches_other_word_forms(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        assert set(_ids(await index.search_text("trouser", 10))) == {"w1", "w3"}
        assert _ids(await index.search_text("shoe", 10)) == ["w5"]
        assert _ids(await index.search_text("runs", 10)) == ["w5"]
        assert _ids(await index.search_text("dresses", 10)) == ["w3"]

    async def test_name_ranks_above_description(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        hits = await index.search_text("trousers", 10)
        assert _ids(hits) == ["w1", "w3"]
        assert hits[0].score > hits[1].score > 0

    async def test_accents_fold_both_ways(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        assert _ids(await index.search_text("cafe", 10)) == ["w2"]
        assert _ids(await index.search_text("CRÈME", 10)) == ["w2"]

    async def test_hyphen_and_space_variants(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        for typed in ("T-shirt", "tshirt", "t shirt", "T-SHIRTS"):
            assert "w2" in _ids(await index.search_text(typed, 10)), typed
        assert "w4" in _ids(await index.search_text("tshirt", 10))

    async def test_joined_query_words_find_a_compound_name(self, catalog: Catalog) -> None:
        if not self.any_word_matches:
            pytest.skip("needs any-word matching")
        index = await self.lexical(catalog)
        for typed in ("t-shirt", "t shirt"):
            assert {"w2", "w4"} <= set(_ids(await index.search_text(typed, 10))), typed

    async def test_a_possessive_is_its_word(self, catalog: Catalog) -> None:
        """A query "women's shoes" asks for women's shoes: the "'s" is no word of its own, so a
        men's shoe ("Men's", "Men’s") does not match it as well as a women's one."""
        if not self.any_word_matches:
            pytest.skip("the query's joined words ('womenshoe') must be optional")
        index = await self.lexical(catalog)
        await catalog.upsert_many(
            [
                _product("p1", "Fila Men's Agony Shoe"),
                _product("p2", "Nike Women Air Shoes"),
                _product("p3", "Puma Men’s Runner Shoe"),
            ]
        )
        for typed in ("women's shoes", "Women’s shoes"):
            hits = await index.search_text(typed, 10)
            assert _ids(hits)[0] == "p2", typed
            assert hits[0].matched == 1.0
            assert all(h.matched < 1.0 for h in hits[1:]), typed
        men = await index.search_text("men's shoe", 10)
        assert {h.product_id for h in men if h.matched == 1.0} == {"p1", "p3"}

    async def test_tag_values_are_searchable(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        assert _ids(await index.search_text("navy", 10)) == ["w4"]
        assert _ids(await index.search_text("pink", 10)) == ["w6"]

    async def test_filter_combined_with_text(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        black = ProductFilter({"colour": "Black"})
        assert _ids(await index.search_text("trousers", 10, black)) == ["w1"]
        assert _ids(await index.search_text("shoes", 10, ProductFilter({"colour": "Pink"}))) == []
        either = ProductFilter(any_of={"colour": ("White", "Navy Blue")})
        assert set(_ids(await index.search_text("tshirt", 10, either))) == {"w2", "w4"}

    async def test_all_words_share_and_best_first(self, catalog: Catalog) -> None:
        if not self.any_word_matches:
            pytest.skip("the query's joined words ('lacedress') must be optional")
        index = await self.lexical(catalog)
        hits = await index.search_text("lace dress", 10)
        assert _ids(hits)[0] == "w3"
        assert hits[0].matched == 1.0

    async def test_any_word_matches_with_partial_share(self, catalog: Catalog) -> None:
        if not self.any_word_matches:
            pytest.skip("needs any-word matching")
        index = await self.lexical(catalog)
        hits = await index.search_text("black dress", 10)
        assert set(_ids(hits)) == {"w1", "w3", "w5"}
        assert all(h.matched == pytest.approx(0.5) for h in hits)

    async def test_synonyms_find_the_catalogs_word_below_the_word_typed(
        self, catalog: Catalog
    ) -> None:
        """The built-in lexicon: "sweater" also finds "jumper", at SYNONYM_WEIGHT of the score
        the same product would have with the word typed (the two names differ in that word
        only), and with SYNONYM_CREDIT of the matched share."""
        index = await self.lexical(catalog)
        await catalog.upsert_many(
            [
                _product("j1", "Wool Jumper", colour="Grey"),
                _product("j2", "Wool Sweater", colour="Grey"),
            ]
        )
        hits = await index.search_text("sweater", 10)
        assert _ids(hits) == ["j2", "j1"]
        assert hits[1].score == pytest.approx(SYNONYM_WEIGHT * hits[0].score)
        assert [h.matched for h in hits] == pytest.approx([1.0, SYNONYM_CREDIT])
        assert _ids(await index.search_text("jumpers", 10)) == ["j1", "j2"]
        assert set(_ids(await index.search_text("gray", 10))) == {"j1", "j2"}  # tag values too

    async def test_one_directional_synonyms(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        assert _ids(await index.search_text("pants", 10)) == ["w1", "w3"]  # -> trousers
        await catalog.upsert_many([_product("p1", "Jersey Pants", "Pull-on pants.")])
        assert _ids(await index.search_text("trousers", 10)) == ["w1", "w3"]  # not -> pants
        pants = await index.search_text("pants", 10)
        assert _ids(pants) == ["p1", "w1", "w3"]
        assert [h.matched for h in pants] == pytest.approx([1.0, SYNONYM_CREDIT, SYNONYM_CREDIT])

    async def test_top_k_limits(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        assert len(await index.search_text("trousers", 1)) == 1

    async def test_nothing_searchable_gives_nothing(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        for text in ("qwxzjv", "the", "!!! ---", ""):
            assert await index.search_text(text, 10) == [], text

    async def test_hostile_queries_are_words_or_nothing(self, catalog: Catalog) -> None:
        """Query syntax of the index (FTS5's quotes, NEAR, *, -, AND/OR, column filters;
        MongoDB's quoted phrases and negation) is never read as syntax: what is left is
        words, or nothing, and nothing raises."""
        index = await self.lexical(catalog)
        nothing = ['"', "NEAR(", "*", "-", "AND OR", "NOT", "^", "(", ")", '""', "😀😀", "\x00"]
        for text in nothing:
            assert await index.search_text(text, 10) == [], repr(text)
        for text in ('"trousers', "trousers*", "-trousers", "trousers 😀", "(black) trousers"):
            assert _ids(await index.search_text(text, 10))[0] == "w1", repr(text)
        assert await index.search_text("x" * 10_000, 10) == []
        long_query = " ".join(f"w{i}x" for i in range(500)) + " trousers"
        for text in ("NEAR(trousers black, 2)", "{name}: trousers", long_query):
            hits = await index.search_text(text, 10)  # never raises
            if self.any_word_matches:
                assert "w1" in _ids(hits), text[:40]

    async def test_other_scripts_are_words(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        await catalog.upsert_many(
            [
                _product("s1", "Платье чёрное", colour="Black"),
                _product("s2", "黑色 连衣裙", colour="Black"),
            ]
        )
        assert _ids(await index.search_text("платье", 10)) == ["s1"]
        assert _ids(await index.search_text("ЧЕРНОЕ", 10)) == ["s1"]  # case and ё/е folded
        assert _ids(await index.search_text("连衣裙", 10)) == ["s2"]
        assert await index.search_text("日本", 10) == []

    async def test_writes_and_deletes_follow(self, catalog: Catalog) -> None:
        index = await self.lexical(catalog)
        await catalog.upsert_many([_product("w6", "Denim Jacket", colour="Blue")])
        assert await index.search_text("floral", 10) == []
        assert _ids(await index.search_text("jacket", 10)) == ["w6"]
        assert await catalog.delete("w1")
        assert _ids(await index.search_text("trousers", 10)) == ["w3"]


class ImageStoreContract:
    """Semantics every ImageStore honours. Fixture: ``image_store`` (fresh and empty)."""

    key = "p1-0123456789abcdef0123.jpg"

    async def test_put_get_exists(self, image_store: ImageStore) -> None:
        assert await image_store.exists(self.key) is False
        data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\x00\r\n\x1a\n"
        await image_store.put(self.key, data, "image/jpeg")
        assert await image_store.exists(self.key) is True
        assert await image_store.get(self.key) == data

    async def test_binary_safe_larger_object(self, image_store: ImageStore) -> None:
        data = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
        await image_store.put("big-0000.png", data, "image/png")
        assert await image_store.get("big-0000.png") == data

    async def test_missing_key_raises_not_found(self, image_store: ImageStore) -> None:
        with pytest.raises(NotFound):
            await image_store.get("missing-0000.jpg")

    async def test_keys_are_listed_in_pages(self, image_store: ImageStore) -> None:
        assert isinstance(image_store, ListableImageStore)
        assert [page async for page in image_store.key_pages()] == []
        keys = {f"k{i:02d}-abcd.jpg" for i in range(7)}
        for key in keys:
            await image_store.put(key, b"\xff\xd8\xff" + key.encode(), "image/jpeg")
        await image_store.put("typed-abcd.jpg", b"\x89PNG\r\n\x1a\n", "image/png")  # a sidecar
        await image_store.delete("k00-abcd.jpg")
        pages = [page async for page in image_store.key_pages(page_size=3)]
        assert all(1 <= len(page) <= 3 for page in pages)
        listed = [key for page in pages for key in page]
        assert sorted(listed) == sorted(keys - {"k00-abcd.jpg"} | {"typed-abcd.jpg"})

    async def test_put_is_idempotent(self, image_store: ImageStore) -> None:
        data = b"\x89PNG\r\n\x1a\n" + b"pixels" * 10
        await image_store.put("p2-aaaa.png", data, "image/png")
        await image_store.put("p2-aaaa.png", data, "image/png")
        assert await image_store.get("p2-aaaa.png") == data
        assert await image_store.exists("p2-aaaa.png")

    async def test_put_again_replaces_content(self, image_store: ImageStore) -> None:
        await image_store.put(self.key, b"\xff\xd8\xff first", "image/jpeg")
        await image_store.put(self.key, b"\xff\xd8\xff second", "image/jpeg")
        assert await image_store.get(self.key) == b"\xff\xd8\xff second"

    async def test_keys_are_independent(self, image_store: ImageStore) -> None:
        await image_store.put("a-1.jpg", b"\xff\xd8\xff a", "image/jpeg")
        await image_store.put("b-1.jpg", b"\xff\xd8\xff b", "image/jpeg")
        assert await image_store.get("a-1.jpg") == b"\xff\xd8\xff a"
        assert await image_store.get("b-1.jpg") == b"\xff\xd8\xff b"
        await image_store.delete("a-1.jpg")
        assert await image_store.exists("b-1.jpg")

    async def test_delete(self, image_store: ImageStore) -> None:
        await image_store.put(self.key, b"\xff\xd8\xff data", "image/jpeg")
        await image_store.delete(self.key)
        assert await image_store.exists(self.key) is False
        with pytest.raises(NotFound):
            await image_store.get(self.key)
        await image_store.delete(self.key)  # deleting a missing key is fine
        await image_store.delete("never-there.jpg")

    async def test_url_names_the_key(self, image_store: ImageStore) -> None:
        await image_store.put(self.key, b"\xff\xd8\xff data", "image/jpeg")
        url = image_store.url(self.key)
        assert isinstance(url, str)
        assert self.key in url
        assert image_store.url("other-1.png") != url
