from __future__ import annotations

import numpy as np
import pytest

from domain.errors import BadInput, InvalidImage, NotFound, UnknownEncoder
from domain.fusion import FACET_DEPTH
from domain.model import (
    MAX_RESULT_DEPTH,
    ImageQuery,
    Product,
    ProductFilter,
    SearchMode,
    SearchQuery,
    TextQuery,
)
from domain.services import CatalogService, SearchService
from tests.fakes import (
    FakeEncoderProvider,
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)

PRODUCTS = [
    ("1", "black slim trousers", {"type": "Trousers", "colour": "Black"}),
    ("2", "red summer dress", {"type": "Dress", "colour": "Red"}),
    ("3", "black summer dress", {"type": "Dress", "colour": "Black"}),
    ("4", "white leather sneakers", {"type": "Shoes", "colour": "White"}),
    ("5", "white canvas sneakers", {"type": "Shoes", "colour": "White"}),
]


class World:
    def __init__(self) -> None:
        self.encoder = HashingEncoder()
        self.other = HashingEncoder("other", dim=32)
        self.encoders = FakeEncoderProvider(self.encoder, self.other)
        self.index = InMemoryVectorIndex()
        self.catalog = InMemoryCatalog()
        self.images = InMemoryImageStore()
        self.search = SearchService(self.encoders, self.index, self.catalog, self.images)
        self.products = CatalogService(self.encoders, self.index, self.catalog, self.images)


@pytest.fixture
async def world() -> World:
    w = World()
    for pid, text, tags in PRODUCTS:
        await w.products.add(pid, text, fake_image(text), tags=tags, encoder_ids=["fake"])
    return w


async def test_text_search_ranks_by_similarity_and_resolves_images(world: World) -> None:
    page = await world.search.by_text("white sneakers", top_k=2)
    assert {h.product.id for h in page.hits} == {"4", "5"}
    assert [h.rank for h in page.hits] == [1, 2]
    assert page.hits[0].score >= page.hits[1].score
    assert page.hits[0].image_url is not None
    assert page.hits[0].image_url.startswith("/images/")
    assert page.encoder_id == "fake"
    assert page.took_ms > 0


async def test_search_loads_products_in_one_batched_call(world: World) -> None:
    world.catalog.get_many_calls = 0
    await world.search.by_text("dress", top_k=5)
    assert world.catalog.get_many_calls == 1


async def test_filter_is_pushed_to_the_index(world: World) -> None:
    page = await world.search.by_text(
        "summer dress", top_k=10, filter=ProductFilter(equals={"colour": "Black"})
    )
    assert {h.product.id for h in page.hits} == {"1", "3"}


async def test_cursor_pages_through_every_result_once(world: World) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await world.search.by_text("black", top_k=2, cursor=cursor)
        seen += [h.product.id for h in page.hits]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == ["1", "2", "3", "4", "5"]
    ranks = [h.rank for h in (await world.search.by_text("black", top_k=5)).hits]
    assert ranks == [1, 2, 3, 4, 5]


async def test_similar_excludes_the_product_itself(world: World) -> None:
    page = await world.search.similar("4", top_k=3)
    ids = [h.product.id for h in page.hits]
    assert "4" not in ids
    assert ids[0] == "5"
    assert len(ids) == 3


async def test_similar_to_unknown_product_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        await world.search.similar("nope")


async def test_image_bytes_search(world: World) -> None:
    page = await world.search.by_image(ImageQuery(data=fake_image("red summer dress")), top_k=1)
    assert page.hits[0].product.id == "2"


async def test_image_plus_text_modifier(world: World) -> None:
    query = SearchQuery(
        image=ImageQuery(data=fake_image("summer dress")),
        text=TextQuery("black"),
        text_weight=0.6,
        top_k=1,
    )
    page = await world.search.search(query)
    assert page.hits[0].product.id == "3"


async def test_url_search_without_fetcher_is_bad_input(world: World) -> None:
    with pytest.raises(BadInput, match="URL"):
        await world.search.by_image(ImageQuery(url="http://example.com/x.jpg"))


async def test_unknown_encoder(world: World) -> None:
    with pytest.raises(UnknownEncoder):
        await world.search.by_text("dress", encoder_id="nope")


async def test_encoders_never_mix(world: World) -> None:
    await world.products.add("6", "green coat", fake_image("green coat"), encoder_ids=["other"])
    page = await world.search.by_text("dress", encoder_id="other")
    assert [h.product.id for h in page.hits] == ["6"]
    assert await world.index.count("fake") == 5


class BuildsOnDemand(FakeEncoderProvider):
    """A provider that builds any encoder it is asked for, as the plugin registry does
    (``open_clip:ARCH@/path/to/file`` loads that file as a model), and records the asks."""

    def __init__(self, *encoders: HashingEncoder) -> None:
        super().__init__(*encoders)
        self.asked: list[str | None] = []

    def get(self, encoder_id: str | None = None) -> HashingEncoder:
        self.asked.append(encoder_id)
        return HashingEncoder(encoder_id.strip()) if encoder_id else HashingEncoder()


async def test_a_search_never_builds_an_encoder_with_nothing_indexed(world: World) -> None:
    """A caller's encoder id is not a licence to load a model: only the default and the
    encoders the index has vectors of are asked for; any other id is refused first."""
    provider = BuildsOnDemand(world.encoder)
    search = SearchService(provider, world.index, world.catalog, world.images)
    for encoder_id in ("open_clip:ViT-B-32@/etc/passwd", "other", "fake#text"):
        with pytest.raises(UnknownEncoder, match="indexed"):
            await search.by_text("dress", encoder_id=encoder_id)
        with pytest.raises(UnknownEncoder, match="indexed"):
            await search.similar("1", encoder_id=encoder_id)
    assert provider.asked == []
    for named in (None, "fake", " fake "):
        page = await search.by_text("dress", encoder_id=named)
        assert page.encoder_id == "fake"


async def test_orphan_vectors_are_dropped_not_crashing(world: World) -> None:
    world.catalog.products.pop("2")
    page = await world.search.by_text("red summer dress", top_k=5)
    assert "2" not in [h.product.id for h in page.hits]


async def test_add_rejects_non_images_and_writes_nothing(world: World) -> None:
    with pytest.raises(InvalidImage):
        await world.products.add("9", "svg", b"<svg/>")
    assert await world.catalog.get("9") is None
    assert await world.index.count("fake") == 5


async def test_add_records_the_ledger_and_indexes_with_existing_encoders(world: World) -> None:
    await world.products.add("9", "green coat", fake_image("green coat"), tags={"type": "Coat"})
    assert "9" in await world.catalog.indexed_hashes("fake")
    assert "9" in await world.index.fetch("fake", ["9"])


async def test_delete_removes_from_every_store(world: World) -> None:
    product = await world.products.get("4")
    key = product.image_keys[0]
    assert await world.images.exists(key)
    assert await world.products.delete("4") is True
    assert await world.catalog.get("4") is None
    assert await world.index.fetch("fake", ["4"]) == {}
    assert not await world.images.exists(key)
    assert "4" not in await world.catalog.indexed_hashes("fake")
    assert await world.products.delete("4") is False


async def test_list_bounds_and_pagination(world: World) -> None:
    with pytest.raises(BadInput):
        await world.products.list(limit=0)
    first = await world.products.list(limit=3)
    assert [p.id for p in first.items] == ["1", "2", "3"]
    second = await world.products.list(cursor=first.next_cursor, limit=3)
    assert [p.id for p in second.items] == ["4", "5"]
    assert second.next_cursor is None


async def test_facets_count_tag_values(world: World) -> None:
    facets = await world.products.facets(["type"])
    assert facets == {"type": {"Trousers": 1, "Dress": 2, "Shoes": 2}}


def test_search_vectors_are_unit_length() -> None:
    vectors = HashingEncoder().encode_texts(["a b", "c"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


async def test_product_missing_from_catalog_get(world: World) -> None:
    with pytest.raises(NotFound):
        await world.products.get("missing")
    assert isinstance(await world.catalog.get("1"), Product)


async def _deep_world(size: int) -> World:
    """A world of ``size`` products indexed straight into the fakes (no encoding)."""
    w = World()
    rng = np.random.default_rng(7)
    ids = [f"d{i:05d}" for i in range(size)]
    vectors = rng.normal(size=(size, w.encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await w.catalog.upsert_many(
        [Product(id=pid, name=f"item {pid}", tags={"n": str(i % 3)}) for i, pid in enumerate(ids)]
    )
    await w.index.upsert("fake", ids, vectors, [{} for _ in ids])
    return w


@pytest.mark.parametrize("top_k", [100, 7])
async def test_every_next_cursor_can_be_followed_to_the_deepest_result(top_k: int) -> None:
    """Paging a long ranking with one page size reaches MAX_RESULT_DEPTH without an error:
    a nextCursor is only handed out when the next page can be asked with the same topK (the
    last page is shorter when the depth is not a multiple of topK)."""
    world = await _deep_world(MAX_RESULT_DEPTH + 20)
    seen: list[str] = []
    cursor = None
    for _ in range(MAX_RESULT_DEPTH):
        page = await world.search.search(
            SearchQuery(text=TextQuery("item"), top_k=top_k, cursor=cursor, mode=SearchMode.VISUAL)
        )
        seen += [h.product.id for h in page.hits]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == MAX_RESULT_DEPTH
    assert len(set(seen)) == MAX_RESULT_DEPTH


@pytest.mark.parametrize("blank", ["", "  ", "\t"])
async def test_a_blank_encoder_id_is_the_default(world: World, blank: str) -> None:
    """An empty or blank `encoder` is no encoder named: the default answers (as for None)."""
    page = await world.search.by_text("dress", top_k=2, encoder_id=blank)
    assert page.encoder_id == "fake"
    assert page.hits


@pytest.mark.parametrize("kind", ["visual text", "similar"])
async def test_facets_of_a_one_signal_search_count_its_top_200_whatever_the_page(
    kind: str,
) -> None:
    """A search ranked by the images alone (VISUAL, a photo, "more like this") asks the
    index for its page only; its facets still count the top FACET_DEPTH of the ranking,
    the same whatever topK, as for every other search."""
    world = await _deep_world(FACET_DEPTH + 50)
    counts = []
    for top_k in (5, 100):
        if kind == "similar":
            query = SearchQuery(image=ImageQuery(product_id="d00000"), top_k=top_k)
        else:
            query = SearchQuery(text=TextQuery("item"), top_k=top_k, mode=SearchMode.VISUAL)
        page = await world.search.search(query)
        counts.append(await world.search.facet_counts(page, ["n"]))
    assert counts[0] == counts[1]
    assert sum(counts[0]["n"].values()) == FACET_DEPTH
