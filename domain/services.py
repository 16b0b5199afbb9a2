"""Use cases: searching and managing the catalog. Everything here talks to ports only."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from domain.colour import (
    DEFAULT_COLOUR_RERANK,
    ColourRerank,
    Mask,
    asks_plain,
    colour_mask,
    colour_order,
    colour_shares,
    pattern_phrases,
    says_patterned,
)
from domain.errors import BadInput, InvalidImage, NotFound, UnknownEncoder
from domain.fusion import (
    DEFAULT_FUSION,
    FACET_DEPTH,
    FUSION_DEPTH,
    Fused,
    FusedHit,
    FusionConfig,
    Ranked,
    exact_matches,
    fuse,
)
from domain.images import content_hash, sniff_image_type
from domain.indexer import Indexer, IndexItem
from domain.model import (
    MAX_RESULT_DEPTH,
    Cursor,
    EncoderInfo,
    ImageQuery,
    LexicalHit,
    Modality,
    Product,
    ProductFilter,
    ProductPage,
    SearchHit,
    SearchMode,
    SearchPage,
    SearchQuery,
    Signals,
    TextQuery,
    is_product_text_space,
    product_text_space,
    search_page_end,
)
from domain.ports import (
    Catalog,
    ColourAnalyser,
    Encoder,
    EncoderProvider,
    ImageFetcher,
    ImageStore,
    ImmediateFetch,
    ImmediateLexical,
    ImmediateQuery,
    LexicalIndex,
    MappedRows,
    ProductRows,
    RowReader,
    SeveralQueries,
    SpaceQuery,
    TagCounts,
    VectorIndex,
    WriteLock,
)
from domain.ports import Vectors as Vectors

SPACES_RECHECK_S = 10.0
"""How long a search trusts the list of vector spaces the index holds."""
EXACT_CANDIDATES = 50
"""Full lexical matches checked for a name equal to the query."""


def l2_normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    normalised: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


@dataclass(frozen=True)
class SearchTimings:
    encode_ms: float
    index_ms: float
    catalog_ms: float


@dataclass
class _Pending:
    text: str
    future: asyncio.Future[Vectors]


@dataclass
class TextBatcher:
    """Encodes the query texts of concurrent searches together (micro-batching).

    A text arriving while no batch is being encoded is encoded at once, alone: a lone query
    never waits. Texts arriving while a batch is in the encoder queue up and all go into the
    next call (up to ``max_batch``). Encoding 8 short texts costs about twice one (measured
    with fashion-lite on 2 cores), so under concurrent load this multiplies the text queries
    one process answers. If a batch fails, its texts are encoded one by one, so an error
    reaches only the request it belongs to.

    Encoder calls run in a worker thread, so the event loop serves other requests meanwhile.
    A caller that knows nothing else is going on (``inline``: the only search in progress)
    has its text encoded on the event loop's own thread instead, once the encoder has
    answered from a worker thread (its model is loaded then): with nothing to overlap, the
    hand-off to a thread and back only costs time, about 0.3 ms of wall and CPU time of a
    5 ms fashion-lite query at one torch thread (interleaved A/B on the 2-core machine). The
    loop is blocked meanwhile, for the few milliseconds of one short text."""

    encoder: Encoder
    max_batch: int = 16
    _pending: list[_Pending] = field(default_factory=list)
    _drainer: asyncio.Task[None] | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _warm: bool = False
    """The encoder has answered from a worker thread (so it is loaded)."""

    async def encode(self, text: str, inline: bool = False) -> Vectors:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (tests)
            self._loop, self._pending, self._drainer = loop, [], None
        if inline and self._warm and not self._pending and self._idle():
            vectors = self.encoder.encode_texts([text])
            _check_count(self.encoder, vectors, 1)
            vector: Vectors = vectors[0]
            return vector
        item = _Pending(text, loop.create_future())
        self._pending.append(item)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await item.future

    def _idle(self) -> bool:
        return self._drainer is None or self._drainer.done()

    async def _drain(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._pending:
                batch = [p for p in self._pending[: self.max_batch] if not p.future.done()]
                del self._pending[: self.max_batch]
                if batch:
                    await self._encode(batch)
        except BaseException:  # cancelled with its loop: the waiting requests are cancelled too
            for item in batch + self._pending:
                item.future.cancel()
            self._pending = []
            raise

    async def _encode(self, batch: list[_Pending]) -> None:
        try:
            vectors = await asyncio.to_thread(self.encoder.encode_texts, [p.text for p in batch])
            _check_count(self.encoder, vectors, len(batch))
            self._warm = True
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc)
                return
            for item in batch:
                try:
                    vector = (await asyncio.to_thread(self.encoder.encode_texts, [item.text]))[0]
                except Exception as single:
                    _settle(item.future, single)
                else:
                    _settle(item.future, vector)
            return
        for item, vector in zip(batch, vectors, strict=True):
            _settle(item.future, vector)


def _check_count(encoder: Encoder, vectors: Vectors, texts: int) -> None:
    if len(vectors) != texts:
        raise RuntimeError(
            f"encoder {encoder.id!r} returned {len(vectors)} vectors for {texts} texts"
        )


def _settle(future: asyncio.Future[Vectors], outcome: Vectors | Exception) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@dataclass(frozen=True)
class QueryVectors:
    """A search's query encoded once: the vector asked of the image vectors (a text's, an
    image's, or the two blended), the text's own vector (for the products' words) and the
    product the query is (excluded from its own results)."""

    visual: Vectors
    text: Vectors | None
    exclude_id: str | None


class SearchService:
    """Searches: encode the query once, ask each signal's port (image vectors, product-text
    vectors, the lexical index) concurrently, fuse them in ``domain.fusion``, load the page's
    products in one call (with the fused top's, when the colour re-rank of ``domain.colour``
    applies: their colour histograms come with the rows)."""

    def __init__(
        self,
        encoders: EncoderProvider,
        index: VectorIndex,
        catalog: Catalog,
        images: ImageStore,
        fetcher: ImageFetcher | None = None,
        lexical: LexicalIndex | None = None,
        fusion: FusionConfig = DEFAULT_FUSION,
        colour_rerank: ColourRerank = DEFAULT_COLOUR_RERANK,
    ) -> None:
        """``lexical`` defaults to the catalog when it is a LexicalIndex."""
        self._encoders = encoders
        self._index = index
        self._catalog = catalog
        self._images = images
        self._fetcher = fetcher
        self._lexical = lexical if lexical is not None else _lexical_of(catalog)
        self.fusion = fusion
        self.colour_rerank = colour_rerank
        self._spaces: frozenset[str] = frozenset()
        self._spaces_checked = -SPACES_RECHECK_S
        self._text_batchers: dict[str, TextBatcher] = {}
        self._surface_prompts: dict[tuple[str, str], Vectors] = {}
        """(encoder id, surface phrase) -> the phrase's text vector (a finite vocabulary:
        ``domain.colour.PATTERN_PHRASES``), encoded the first time a query names it."""
        self._searches = 0
        """Searches in progress (the text batcher encodes inline when there is only one)."""
        self.last_timings: SearchTimings | None = None

    async def by_text(
        self,
        text: str,
        top_k: int = 10,
        filter: ProductFilter | None = None,
        encoder_id: str | None = None,
        cursor: str | None = None,
        mode: SearchMode = SearchMode.HYBRID,
    ) -> SearchPage:
        return await self.search(
            SearchQuery(
                text=TextQuery(text),
                filter=filter,
                top_k=top_k,
                encoder_id=encoder_id,
                cursor=cursor,
                mode=mode,
            )
        )

    async def by_image(
        self,
        image: ImageQuery,
        top_k: int = 10,
        filter: ProductFilter | None = None,
        encoder_id: str | None = None,
        cursor: str | None = None,
    ) -> SearchPage:
        return await self.search(
            SearchQuery(
                image=image, filter=filter, top_k=top_k, encoder_id=encoder_id, cursor=cursor
            )
        )

    async def similar(
        self,
        product_id: str,
        top_k: int = 10,
        filter: ProductFilter | None = None,
        encoder_id: str | None = None,
        cursor: str | None = None,
    ) -> SearchPage:
        return await self.by_image(
            ImageQuery(product_id=product_id), top_k, filter, encoder_id, cursor
        )

    async def search(self, query: SearchQuery) -> SearchPage:
        self._searches += 1
        try:
            return await self._search(query)
        finally:
            self._searches -= 1

    async def _search(self, query: SearchQuery) -> SearchPage:
        started = time.perf_counter()
        encoder = await self._encoder(query.encoder_id)
        position = Cursor.decode(query.cursor)
        depth = search_page_end(position, query.top_k)
        # One extra to know whether a next page exists, one more for the excluded query item.
        wanted = depth + 1 + (1 if query.image is not None and query.image.product_id else 0)
        lexical = self._lexical_early(query)
        try:
            vectors = await self._query_vectors(encoder, query)
        except BaseException:
            if lexical is not None:
                lexical.cancel()
            raise
        encoded = time.perf_counter()
        ranked = await self._rank(encoder, query, vectors, wanted, lexical)
        fused = fuse(ranked, self.fusion, limit=wanted)  # hits for the page, ids for facets
        ordered = [h for h in fused.hits if h.product_id != vectors.exclude_id]
        excluded = int(vectors.exclude_id in fused.order)
        queried = time.perf_counter()

        hits = await self._page_hits(
            encoder, query, fused, ordered, vectors.exclude_id, position.offset, depth
        )
        finished = time.perf_counter()
        more = fused.total - excluded > depth and depth < MAX_RESULT_DEPTH
        next_cursor = Cursor(offset=depth).encode() if more else None
        self.last_timings = SearchTimings(
            encode_ms=(encoded - started) * 1000,
            index_ms=(queried - encoded) * 1000,
            catalog_ms=(finished - queried) * 1000,
        )
        ranked_ids = _facet_ids(fused.order, vectors.exclude_id)
        deeper = None
        if not _asks_words(query) and fused.total >= wanted and len(ranked_ids) < FACET_DEPTH:
            # one signal asked for the page only: facets (if asked) need its top FACET_DEPTH
            deeper = functools.partial(self._deeper_ids, encoder, query, vectors)
        return SearchPage(
            hits=hits,
            encoder_id=encoder.id,
            took_ms=(finished - started) * 1000,
            next_cursor=next_cursor,
            match_quality=fused.quality,
            mode=query.mode,
            ranked_ids=ranked_ids,
            deeper_ids=deeper,
        )

    async def _deeper_ids(
        self, encoder: Encoder, query: SearchQuery, vectors: QueryVectors
    ) -> tuple[str, ...]:
        """The top FACET_DEPTH of a one-signal search's ranking (its page asked fewer)."""
        wanted = FACET_DEPTH + (1 if vectors.exclude_id is not None else 0)
        fused = fuse(await self._rank(encoder, query, vectors, wanted), self.fusion, limit=0)
        return _facet_ids(fused.order, vectors.exclude_id)

    async def _page_hits(
        self,
        encoder: Encoder,
        query: SearchQuery,
        fused: Fused,
        ordered: list[FusedHit],
        exclude_id: str | None,
        offset: int,
        depth: int,
    ) -> tuple[SearchHit, ...]:
        """The page's hits (positions ``offset`` to ``depth``) with their products, re-ranked
        by colour when the query names a colour (or asks for a plain garment, or names a
        surface) its words do not answer (the re-rank's top rows read with the page's; for a
        surface, the top's image vectors too)."""
        colours = self._colour_mask(query)
        plain = self._asks_plain(query)
        surfaces = self._surfaces(query)
        top: list[str] = []  # the colour re-rank's ids, when it applies
        asked = colours is not None or plain or bool(surfaces)
        if asked and self.colour_rerank.applies(fused.confidence):
            top = [p for p in fused.order[: self.colour_rerank.depth + 1] if p != exclude_id]
            top = top[: self.colour_rerank.depth]
        window = ordered[offset:depth]
        if top:
            # one call: the top's rows come with the page's, decoded for the page only
            reading = self._rows([*top, *(h.product_id for h in window)])
            if surfaces and self.colour_rerank.pattern_prompt_weight:
                rows, surface = await asyncio.gather(
                    reading, self._surface_cosines(encoder, surfaces, top)
                )
            else:
                rows, surface = await reading, None
            window, shares = self._colour_window(
                fused, top, ordered, rows, colours, plain, offset, depth, surface
            )
            products = _decoded(rows, [h.product_id for h in window])
        else:
            products = await self._catalog.get_many([h.product_id for h in window])
            shares = {}
        window = [h for h in window if h.product_id in products]
        signals = _with_colour(window, products, colours, shares)
        return tuple(
            SearchHit(
                product=products[h.product_id],
                score=h.score,
                rank=offset + i + 1,
                image_url=self.image_url(products[h.product_id]),
                signals=signals[i],
                exact=h.exact,
            )
            for i, h in enumerate(window)
        )

    def _lexical_early(self, query: SearchQuery) -> asyncio.Future[list[LexicalHit]] | None:
        """The lexical list asked in a worker thread before the query is encoded, when this
        is the only search (the encoder then runs on this thread, the words need no vector:
        the two overlap on two cores); None otherwise (``_rank`` asks it)."""
        words = _asks_words(query)
        if not words or self._lexical is None or query.text is None or self._searches != 1:
            return None
        return asyncio.ensure_future(
            self._lexical.search_text(query.text.text, FUSION_DEPTH, query.filter)
        )

    async def _rows(self, ids: Sequence[str]) -> ProductRows:
        unique = list(dict.fromkeys(ids))
        if isinstance(self._catalog, RowReader):
            return await self._catalog.get_rows(unique)
        return MappedRows(await self._catalog.get_many(unique))

    @staticmethod
    def _colour_mask(query: SearchQuery) -> Mask | None:
        """The bins of the colours a HYBRID search's words name (a text query, or the text
        modifier of an image: "in blue"), None when they name none."""
        if query.mode is not SearchMode.HYBRID or query.text is None:
            return None
        return colour_mask(query.text.text)

    @staticmethod
    def _surfaces(query: SearchQuery) -> tuple[str, ...]:
        """The surface phrases a HYBRID search's words name ("stripe", "solid")."""
        if query.mode is not SearchMode.HYBRID or query.text is None:
            return ()
        return pattern_phrases(query.text.text)

    async def _surface_cosines(
        self, encoder: Encoder, surfaces: Sequence[str], ids: Sequence[str]
    ) -> npt.NDArray[np.float64]:
        """Each product's image vector against the surface phrases' text vectors (the mean
        cosine; NaN for a product without an image vector in the encoder's space). The
        phrases are encoded once per encoder."""
        missing = [
            s for s in dict.fromkeys(surfaces) if (encoder.id, s) not in self._surface_prompts
        ]
        if missing:
            encoded = await asyncio.to_thread(encoder.encode_texts, missing)
            for phrase, vector in zip(missing, np.asarray(encoded, np.float32), strict=True):
                self._surface_prompts[encoder.id, phrase] = vector.reshape(-1)
        prompts = np.stack([self._surface_prompts[encoder.id, s] for s in surfaces])
        stored = None
        if self._searches == 1 and isinstance(self._index, ImmediateFetch):
            stored = self._index.fetch_now(encoder.id, ids)  # no hand-off (see _vectors)
        if stored is None:
            stored = await self._index.fetch(encoder.id, ids)
        cosines = np.full(len(ids), np.nan)
        known = [i for i, pid in enumerate(ids) if pid in stored]
        if known:
            rows = np.stack([stored[ids[i]] for i in known]).reshape(len(known), -1)
            cosines[known] = (rows.astype(np.float32) @ prompts.T).mean(axis=1)
        return cosines

    @staticmethod
    def _asks_plain(query: SearchQuery) -> bool:
        """Whether a HYBRID search's words ask for a plain garment ("solid")."""
        if query.mode is not SearchMode.HYBRID or query.text is None:
            return False
        return asks_plain(query.text.text)

    def _colour_window(
        self,
        fused: Fused,
        top: list[str],
        ordered: list[FusedHit],
        rows: ProductRows,
        colours: Mask | None,
        plain: bool,
        offset: int,
        depth: int,
        surface: npt.NDArray[np.float64] | None = None,
    ) -> tuple[list[FusedHit], dict[str, float]]:
        """The page's hits once the fused top is re-ranked by the garments' colour shares,
        for a plain garment asked, by what their words say, and for a surface named, by the
        image vectors' cosines to it (``surface``; ``domain.colour``; exact name matches stay
        first), and the top's colour shares. Hits are made only for the page's products the
        fusion made none for."""
        made = {h.product_id: h for h in ordered}
        named = sum(1 for pid in top if pid in made and made[pid].exact)
        rest = top[named:]
        shares = np.full(len(top), np.nan)
        if colours is not None:
            shares = colour_shares([rows.colour(p) for p in top], colours)
        patterned = np.array([_says_patterned(rows.product(p)) for p in rest]) if plain else None
        rest_surface = surface[named:] if surface is not None else None
        order = colour_order(shares[named:], self.colour_rerank, patterned, rest_surface)
        ids = [
            *top[:named],
            *(rest[i] for i in order),
            *(h.product_id for h in ordered[len(top) :]),
        ]
        page = ids[offset:depth]
        missing = [p for p in page if p not in made]
        if missing:
            at = {pid: i for i, pid in enumerate(fused.order[: len(top) + 1])}
            made.update((h.product_id, h) for h in fused.hits_at([at[p] for p in missing]))
        known = dict(zip(top, shares.tolist(), strict=True)) if colours is not None else {}
        return [made[p] for p in page], known

    async def _rank(
        self,
        encoder: Encoder,
        query: SearchQuery,
        vectors: QueryVectors,
        wanted: int,
        lexical: asyncio.Future[list[LexicalHit]] | None = None,
    ) -> Ranked:
        """Each signal's list, asked concurrently (``lexical``: already asked). One signal
        (VISUAL, or a photo without words) needs only the page; fusing takes each list's top
        FUSION_DEPTH whatever the page, so that every page of a search is cut from one
        ranking (deeper lists would normalise and fuse differently, and pages past the
        first FUSION_DEPTH would repeat some products and skip others)."""
        words = _asks_words(query)
        depth = FUSION_DEPTH if words else wanted
        flt = query.filter
        asks_text_space = words and vectors.text is not None
        if asks_text_space:
            asks_text_space = await self._has_text_space(encoder)
        # Only the signals this search uses become coroutines, each handed straight to
        # gather (no coroutine left un-awaited when a list is not needed). The vector spaces
        # go first: the only search asks them on this thread (two spaces side by side on
        # two), concurrent searches hand them to a worker thread, one call for both, while
        # the lexical query runs on this thread when it can answer at once.
        asks: dict[str, Awaitable[Sequence[Any]]] = {}
        spaces: dict[str, SpaceQuery] = {}
        if query.mode is not SearchMode.TEXT:
            spaces["visual"] = SpaceQuery(encoder.id, vectors.visual, depth, flt)
        if asks_text_space and vectors.text is not None:
            spaces["semantic"] = SpaceQuery(
                product_text_space(encoder.id), vectors.text, depth, flt
            )
        if len(spaces) > 1 and isinstance(self._index, SeveralQueries):
            asks["spaces"] = self._several(self._index, list(spaces.values()))
        else:
            asks.update((name, self._vectors(*ask)) for name, ask in spaces.items())
        if lexical is not None:
            asks["lexical"] = lexical
        elif words and self._lexical is not None and query.text is not None:
            asks["lexical"] = self._lexical_list(self._lexical, query.text.text, depth, flt)
        lists = dict(zip(asks, await asyncio.gather(*asks.values()), strict=True))
        if "spaces" in lists:
            lists.update(zip(spaces, lists.pop("spaces"), strict=True))
        visual_list: Sequence[tuple[str, float]] = lists.get("visual", [])
        semantic_list: Sequence[tuple[str, float]] = lists.get("semantic", [])
        lexical_list: Sequence[LexicalHit] = lists.get("lexical", [])
        exact: list[str] = []
        if words and query.image is None and query.text is not None:
            exact = self._exact(query.text.text, lexical_list)
        return Ranked(
            visual=visual_list,
            semantic=semantic_list,
            lexical=lexical_list,
            exact=exact,
            text_share=2 * query.text_weight if query.image is not None else 1.0,
            image_query=query.image is not None,
        )

    async def _vectors(
        self, space: str, vector: Vectors, top_k: int, flt: ProductFilter | None
    ) -> list[tuple[str, float]]:
        ranked = None
        if self._searches == 1 and isinstance(self._index, ImmediateQuery):
            # the only search in progress: no hand-off to a thread (see TextBatcher)
            ranked = self._index.query_now(space, vector, top_k, flt)
        if ranked is None:
            ranked = await self._index.query(space, vector, top_k, flt)
        return ranked

    async def _several(
        self, index: SeveralQueries, queries: list[SpaceQuery]
    ) -> list[list[tuple[str, float]]]:
        answered = None
        if self._searches == 1:  # the only search: no hand-off (see TextBatcher)
            answered = index.query_several_now(queries)
        if answered is None:
            answered = await index.query_several(queries)
        return answered

    async def _lexical_list(
        self, lexical: LexicalIndex, text: str, top_k: int, flt: ProductFilter | None
    ) -> list[LexicalHit]:
        hits = None
        if isinstance(lexical, ImmediateLexical):  # no hand-off while the spaces are searched
            hits = lexical.search_text_now(text, top_k, flt)
        if hits is None:
            hits = await lexical.search_text(text, top_k, flt)
        return hits

    async def _encoder(self, encoder_id: str | None) -> Encoder:
        """The encoder a search names: the default, or one the index has vectors of (any
        other has nothing to find). Never one built on a caller's word alone: an id can name
        a model file on this machine (``open_clip:ARCH@/path``), and loading one costs
        seconds of CPU and memory."""
        wanted = (encoder_id or "").strip()
        if wanted and wanted != self._encoders.default_id:
            spaces = await self._indexed_spaces()
            if wanted not in spaces:  # perhaps indexed since the list was read
                spaces = await self._indexed_spaces(fresh=True)
            if wanted not in spaces or is_product_text_space(wanted):
                indexed = ", ".join(sorted(e for e in spaces if not is_product_text_space(e)))
                raise UnknownEncoder(
                    f"no products are indexed with encoder {wanted!r}"
                    f" (indexed: {indexed or 'none'})"
                )
        return self._encoders.get(wanted or None)  # blank: no encoder named, the default

    async def _has_text_space(self, encoder: Encoder) -> bool:
        """Whether the products' words have vectors of this encoder."""
        return product_text_space(encoder.id) in await self._indexed_spaces()

    async def _indexed_spaces(self, fresh: bool = False) -> frozenset[str]:
        """The vector spaces the index holds, kept for SPACES_RECHECK_S (a space appears
        with an ingest, rarely), so searches do not ask the index each time."""
        now = time.monotonic()
        if fresh or now - self._spaces_checked > SPACES_RECHECK_S:
            self._spaces = frozenset(await self._index.encoder_ids())
            self._spaces_checked = now
        return self._spaces

    @staticmethod
    def _exact(text: str, lexical: Sequence[LexicalHit]) -> list[str]:
        """Products the query names: its id, or a name equal to it. Both are words of the
        lexical index (ids count as words of the name), so only full lexical matches are
        looked at, and the filter applies already."""
        full = lexical[:EXACT_CANDIDATES]
        return exact_matches(text, {h.product_id: h.name for h in full if h.matched >= 1.0})

    async def facet_counts(
        self, page: SearchPage, keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, int]]:
        """For each tag key (all keys when None): value -> number of products among the
        top FACET_DEPTH of the page's ranking, so counts follow the query and its filter."""
        ids = page.ranked_ids if page.deeper_ids is None else await page.deeper_ids()
        if isinstance(self._catalog, TagCounts):
            return await self._catalog.count_tags(ids, keys)
        products = await self._catalog.get_many(ids)
        counts: dict[str, dict[str, int]] = {}
        for product in products.values():
            for key, value in product.tags.items():
                if keys is None or key in keys:
                    per_value = counts.setdefault(key, {})
                    per_value[value] = per_value.get(value, 0) + 1
        return counts

    def image_url(self, product: Product) -> str | None:
        key = product.primary_image_key
        return self._images.url(key) if key else None

    def available_encoders(self) -> list[EncoderInfo]:
        return self._encoders.available()

    async def _query_vectors(self, encoder: Encoder, query: SearchQuery) -> QueryVectors:
        text_vector = image_vector = None
        exclude_id: str | None = None
        if query.text is not None:
            _require(encoder, Modality.TEXT)
            alone = self._searches == 1
            text_vector = await self._text_batcher(encoder).encode(query.text.text, alone)
            text_vector = text_vector.astype(np.float32)
        if query.image is not None:
            image_vector, exclude_id = await self._image_vector(encoder, query.image)
        if text_vector is not None and image_vector is not None:
            w = query.text_weight
            blended = l2_normalise(w * text_vector + (1 - w) * image_vector)
            return QueryVectors(blended, text_vector, exclude_id)
        vector = text_vector if text_vector is not None else image_vector
        assert vector is not None
        return QueryVectors(vector.astype(np.float32), text_vector, exclude_id)

    def _text_batcher(self, encoder: Encoder) -> TextBatcher:
        batcher = self._text_batchers.get(encoder.id)
        if batcher is None or batcher.encoder is not encoder:
            batcher = self._text_batchers[encoder.id] = TextBatcher(encoder)
        return batcher

    async def _image_vector(
        self, encoder: Encoder, image: ImageQuery
    ) -> tuple[Vectors, str | None]:
        if image.product_id is not None:
            stored = await self._index.fetch(encoder.id, [image.product_id])
            if image.product_id in stored:
                return stored[image.product_id], image.product_id
            product = await self._catalog.get(image.product_id)
            if product is None:
                raise NotFound(f"no product with id {image.product_id!r}")
            if product.primary_image_key is None:
                raise NotFound(f"product {image.product_id!r} has no image")
            data = await self._images.get(product.primary_image_key)
            _require(encoder, Modality.IMAGE)
            return (await asyncio.to_thread(encoder.encode_images, [data]))[0], image.product_id
        _require(encoder, Modality.IMAGE)
        if image.url is not None:
            if self._fetcher is None:
                raise BadInput("searching by image URL is not enabled")
            data = await self._fetcher.fetch(image.url)
        else:
            assert image.data is not None
            data = image.data
        return (await asyncio.to_thread(encoder.encode_images, [data]))[0], None


def _asks_words(query: SearchQuery) -> bool:
    """Whether a search asks the words' signals (lexical, semantic): their lists are read
    FUSION_DEPTH deep; a search without them asks the images for its page only."""
    return query.mode is not SearchMode.VISUAL and query.text is not None


def _facet_ids(order: Sequence[str], exclude_id: str | None) -> tuple[str, ...]:
    """The top FACET_DEPTH of a ranking, the query's own product left out."""
    return tuple(pid for pid in order[: FACET_DEPTH + 1] if pid != exclude_id)[:FACET_DEPTH]


def _with_colour(
    hits: Sequence[FusedHit],
    products: Mapping[str, Product],
    colours: Mask | None,
    known: Mapping[str, float],
) -> list[Signals]:
    """The hits' signals, with their colour shares when the query names a colour (``known``:
    shares computed already)."""
    if colours is None:
        return [h.signals for h in hits]
    if all(h.product_id in known for h in hits):
        shares = [known[h.product_id] for h in hits]
    else:
        shares = colour_shares([products[h.product_id].colour for h in hits], colours).tolist()
    return [
        h.signals
        if math.isnan(share)
        else Signals(h.signals.visual, h.signals.lexical, h.signals.semantic, share)
        for h, share in zip(hits, shares, strict=True)
    ]


def _says_patterned(product: Product | None) -> bool:
    if product is None:
        return False
    return says_patterned(product.name, product.description, product.tags.values())


def _decoded(rows: ProductRows, ids: Sequence[str]) -> dict[str, Product]:
    products = {pid: rows.product(pid) for pid in ids}
    return {pid: p for pid, p in products.items() if p is not None}


def _lexical_of(catalog: Catalog) -> LexicalIndex | None:
    return catalog if isinstance(catalog, LexicalIndex) else None


def _require(encoder: Encoder, modality: Modality) -> None:
    if modality not in encoder.modalities:
        raise BadInput(f"encoder {encoder.id!r} cannot encode {modality.value} queries")


class CatalogService:
    """Adding, reading and removing products. Writes go through the Indexer (the one write
    use case, shared with ingest), so the three stores stay consistent and a mutation is
    durable when it is answered."""

    def __init__(
        self,
        encoders: EncoderProvider,
        index: VectorIndex,
        catalog: Catalog,
        images: ImageStore,
        lock: WriteLock | None = None,
        colours: ColourAnalyser | None = None,
    ) -> None:
        self._encoders = encoders
        self._index = index
        self._catalog = catalog
        self._images = images
        self._indexer = Indexer(index, catalog, images, lock, colours)

    async def add(
        self,
        product_id: str,
        name: str,
        image: bytes,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        encoder_ids: Sequence[str] | None = None,
    ) -> Product:
        """Index the product with every encoder that already has vectors (or the default),
        as a batch of one: stored, flushed and in the ledger when this returns; a failure
        leaves nothing behind (or says what remains, see IncompleteWrite)."""
        content_type = sniff_image_type(image)
        if content_type is None:
            raise InvalidImage("the image is not a JPEG, PNG or WebP file")
        item = IndexItem(
            id=product_id,
            name=name,
            image=image,
            content_type=content_type,
            digest=content_hash(image),
            description=description,
            tags=dict(tags or {}),
        )
        if not encoder_ids:
            spaces = await self._index.encoder_ids()
            encoder_ids = [e for e in spaces if not is_product_text_space(e)]
            encoder_ids = encoder_ids or [self._encoders.default_id]
        encoders = [self._encoders.get(e) for e in encoder_ids]
        # reindex: an explicit add always writes (a product with the same photo and texts is
        # written again, which repairs whatever a store lost)
        plan = await self._indexer.plan([item], encoders, reindex=True)
        encoded = await self._indexer.encode(plan)
        if encoded.broken:
            raise InvalidImage(encoded.broken[product_id])
        # once writing starts it finishes, even if the client goes away
        await asyncio.shield(self._indexer.write(encoded, "addProduct"))
        return plan.encode[0].product

    async def get(self, product_id: str) -> Product:
        product = await self._catalog.get(product_id)
        if product is None:
            raise NotFound(f"no product with id {product_id!r}")
        return product

    async def get_many(self, ids: Sequence[str]) -> dict[str, Product]:
        return await self._catalog.get_many(ids)

    async def list(
        self, filter: ProductFilter | None = None, cursor: str | None = None, limit: int = 20
    ) -> ProductPage:
        if not 1 <= limit <= 100:
            raise BadInput(f"first must be between 1 and 100, got {limit}")
        Cursor.decode(cursor)  # a bad cursor is the caller's error, whatever the store
        return await self._catalog.list(filter, cursor, limit)

    async def count(self, filter: ProductFilter | None = None) -> int:
        return await self._catalog.count(filter)

    async def facets(
        self, keys: Sequence[str] | None = None, filter: ProductFilter | None = None
    ) -> dict[str, dict[str, int]]:
        return await self._catalog.facets(keys, filter)

    async def delete(self, product_id: str) -> bool:
        """Remove the product from every store (see Indexer.remove); True when it existed."""
        result = await asyncio.shield(self._indexer.remove([product_id], "deleteProduct"))
        return product_id in result.removed

    def image_url(self, product: Product) -> str | None:
        key = product.primary_image_key
        return self._images.url(key) if key else None
