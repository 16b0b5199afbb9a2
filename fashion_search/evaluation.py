"""``fashion-search eval``: how well encoders retrieve the products of a labelled catalog.

The gallery goes through the real ingest pipeline into a throwaway data directory with the
embedded stores (FAISS, SQLite, local images), whatever production stores are configured.
Names, descriptions and any other free text are left out of that catalog: products keep their
id and their label tags (type, colour, pattern, section) only, so only the images can answer.

Each encoder then encodes the queries: the products' own texts, generated "<attribute> <type>"
phrases, augmented copies of the product photos and shopper-style photos of them
(``encoders.shopper_photos``: the garment on a procedural background, tilted, cut, in coloured
light, blurred, JPEG-compressed), ranked against the clean gallery. The ranking is the index's own: the
vectors the pipeline stored are read back from the index and every query is ranked against the
whole gallery by cosine similarity with ``domain.evaluation`` (exact, so MRR is computed over
the full ranking, never truncated). A sample of queries is also sent to the index itself and
its top 10 compared with that ranking (``index_check``).

Metric definitions and chance levels live in ``domain/evaluation.py``; this module only picks
the labels, drives the stores and encoders and assembles the report.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from domain import evaluation as ev
from domain.errors import BadInput
from domain.images import sniff_image_type
from domain.model import Modality
from domain.ports import Encoder, ImageStore, VectorIndex, Vectors
from encoders.augment import augment_image
from encoders.images import decode_image
from encoders.shopper_photos import EVAL_RANGES, PhotoChain
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build
from ingest.pipeline import DEFAULT_BATCH_SIZE, IngestOptions
from ingest.readers import Source, SourceItem, open_source
from ingest.report import FailedItem, IngestProgress

SEED = 1234
"""Seed of the augmented and photo-style queries (the training command never uses it)."""
PHOTO_EXAMPLES = 16
"""Photo-style queries written by ``--photo-examples`` (the first ones, in gallery order)."""
MIN_PRODUCTS = 10
"""An "<attribute> <type>" query is asked when at least this many gallery products match it."""
INDEX_CHECK_QUERIES = 20
TEXT_BATCH = 64
TOP_K = 10
SCORE_TOLERANCE = 1e-4

LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "product_type": ("product_type", "articleType"),
    "colour": ("baseColour", "colour"),  # Kaggle's own column before the canonical copy
    "pattern": ("pattern",),
    "section": ("section", "gender"),
}
"""Each label the evaluation uses and the columns (tags) it is read from, first found wins:
hm-dev style manifests and the Kaggle layout (articleType, baseColour, gender)."""
TEXT_FIELDS = ("auto", "description", "name")

Progress = Callable[[str, int, int | None], None]
T = TypeVar("T")


class EvalInputError(BadInput):
    """A manifest or selection the evaluation cannot use."""


def _no_progress(what: str, done: int, total: int | None) -> None:
    return None


# -- what is evaluated -----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalOptions:
    manifest: Path
    encoder_ids: tuple[str, ...]
    ids: frozenset[str] | None = None
    """Only the items with these ids (None: every item of the manifest)."""
    selection: str = "all"
    """How the items were chosen, for the report."""
    limit: int | None = None
    """At most this many items (after ``ids``), in manifest order."""
    text_field: str = "auto"
    """The query text of each product: its description, its name, or auto (descriptions when
    the manifest has them, else names)."""
    min_products: int = MIN_PRODUCTS
    seed: int = SEED
    home: Path | None = None
    """Ingest here and keep it (a new or empty directory); None: a temporary directory."""
    batch_size: int = DEFAULT_BATCH_SIZE
    index_check: int = INDEX_CHECK_QUERIES
    photo_style: bool = True
    """Measure the photo-style metric (a shopper-style photo of each product of a known type,
    encoded by every encoder)."""
    photo_examples: Path | None = None
    """Write the first PHOTO_EXAMPLES photo-style queries here, beside their originals."""

    def __post_init__(self) -> None:
        if self.text_field not in TEXT_FIELDS:
            raise EvalInputError(f"text field must be one of {', '.join(TEXT_FIELDS)}")
        if not self.encoder_ids:
            raise EvalInputError("give at least one encoder")
        if self.limit is not None and self.limit < 1:
            raise EvalInputError("--limit must be at least 1")
        if self.min_products < 1 or self.batch_size < 1 or self.index_check < 0:
            raise EvalInputError("min products and batch size must be at least 1")


@dataclass(frozen=True)
class LabelledItem:
    """A source item with the labels and texts the evaluation reads from it."""

    item: SourceItem
    labels: dict[str, str]
    description: str
    name: str  # "" when the source gives none (readers fall back to the id)

    @classmethod
    def of(cls, item: SourceItem) -> LabelledItem:
        labels: dict[str, str] = {}
        for label, columns in LABEL_COLUMNS.items():
            value = next((item.tags[c].strip() for c in columns if item.tags.get(c)), "")
            if value:
                labels[label] = value
        name = item.name.strip() if item.name.strip() != item.id else ""
        return cls(item, labels, (item.description or "").strip(), name)

    def gallery_item(self) -> SourceItem:
        """What is ingested: the image and the label tags; no name, description or other
        text (the name is the id, which the catalog requires)."""
        return replace(self.item, name=self.item.id, description=None, tags=dict(self.labels))

    def text(self, field_name: str) -> str:
        return self.description if field_name == "description" else self.name


def select_items(source: Source, options: EvalOptions) -> list[LabelledItem]:
    """The items to evaluate, in manifest order; raises EvalInputError when there are none or
    when they carry no product type (the one label every image metric needs)."""
    items: list[LabelledItem] = []
    for item in source:
        if options.ids is not None and item.id not in options.ids:
            continue
        items.append(LabelledItem.of(item))
        if options.limit is not None and len(items) >= options.limit:
            break
    where = source.location
    if not items:
        if options.ids is not None:
            raise EvalInputError(
                f"none of the {len(options.ids):,} selected ids ({options.selection}) is in "
                f"{where}: pass --all, or --ids FILE with ids of this manifest"
            )
        raise EvalInputError(f"{where} holds no products")
    if not any(ev.is_known(i.labels.get("product_type", "")) for i in items):
        columns = " or ".join(LABEL_COLUMNS["product_type"])
        raise EvalInputError(
            f"{where} ({source.layout} layout) has no product type labels: eval needs a labelled "
            f"manifest with a {columns} column, such as hm-dev/products.csv or the Kaggle zip"
        )
    return items


def pick_text_field(items: Sequence[LabelledItem], wanted: str) -> str | None:
    """The field the text queries come from, or None when the items have no such text."""
    candidates = ("description", "name") if wanted == "auto" else (wanted,)
    for field_name in candidates:
        if any(i.text(field_name) for i in items):
            return field_name
    return None


def label_columns(items: Sequence[LabelledItem]) -> dict[str, str]:
    """Which column each label was read from (labels no item has are absent)."""
    found: dict[str, str] = {}
    for label, columns in LABEL_COLUMNS.items():
        for column in columns:
            if any(i.item.tags.get(column) for i in items):
                found[label] = column
                break
    return found


# -- timing ----------------------------------------------------------------------------------


@dataclass
class EncodeTime:
    calls: int = 0
    inputs: int = 0
    seconds: float = 0.0

    def add(self, inputs: int, seconds: float) -> None:
        self.calls += 1
        self.inputs += inputs
        self.seconds += seconds

    def since(self, earlier: EncodeTime) -> EncodeTime:
        """The calls made after ``earlier`` (a copy of this one) was taken."""
        return EncodeTime(
            self.calls - earlier.calls,
            self.inputs - earlier.inputs,
            self.seconds - earlier.seconds,
        )

    @property
    def ms_per_input(self) -> float | None:
        return 1000 * self.seconds / self.inputs if self.inputs else None

    def to_dict(self) -> dict[str, Any]:
        per = self.ms_per_input
        return {
            "inputs": self.inputs,
            "seconds": round(self.seconds, 3),
            "ms_per_input": None if per is None else round(per, 2),
        }


class TimedEncoder:
    """The encoder, timing its calls (wall time of whole batches: decode, model, heads)."""

    def __init__(self, encoder: Encoder) -> None:
        self.inner = encoder
        self.images = EncodeTime()
        self.texts = EncodeTime()
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.inner.id

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def modalities(self) -> frozenset[Modality]:
        return self.inner.modalities

    @property
    def reads_text(self) -> bool:
        return Modality.TEXT in self.inner.modalities

    def warm_up(self) -> None:
        """Load the models (lazy in every encoder) before anything is timed."""
        buffer = io.BytesIO()
        Image.new("RGB", (48, 72), (200, 180, 160)).save(buffer, format="JPEG")
        self.inner.encode_images([buffer.getvalue()])
        if self.reads_text:
            self.inner.encode_texts(["warm up"])

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        return self._timed(self.texts, self.inner.encode_texts, texts)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        return self._timed(self.images, self.inner.encode_images, images)

    def _timed(
        self, record: EncodeTime, encode: Callable[[Sequence[T]], Vectors], inputs: Sequence[T]
    ) -> Vectors:
        started = time.perf_counter()
        vectors = encode(inputs)
        with self._lock:
            record.add(len(inputs), time.perf_counter() - started)
        return vectors


# -- the report ------------------------------------------------------------------------------


@dataclass
class EncoderRun:
    id: str
    dim: int
    modalities: list[str]
    ingest_seconds: float = 0.0
    gallery_images: EncodeTime = field(default_factory=EncodeTime)
    text_queries: EncodeTime = field(default_factory=EncodeTime)
    augmented_queries: EncodeTime = field(default_factory=EncodeTime)
    photo_queries: EncodeTime = field(default_factory=EncodeTime)
    index_check_queries: int = 0
    index_check_agreeing: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "modalities": self.modalities,
            "ingest_seconds": round(self.ingest_seconds, 3),
            "gallery_images": self.gallery_images.to_dict(),
            "text_queries": self.text_queries.to_dict(),
            "augmented_queries": self.augmented_queries.to_dict(),
            "photo_queries": self.photo_queries.to_dict(),
            "index_check": {
                "queries": self.index_check_queries,
                "agreeing": self.index_check_agreeing,
            },
        }


@dataclass(frozen=True)
class Skipped:
    metric: str
    reason: str


@dataclass
class EvalReport:
    manifest: str
    layout: str
    selection: str
    items: int
    gallery_ids: list[str]
    text_field: str | None
    labels: dict[str, str]
    baselines: dict[str, ev.Baseline]
    """Chance level and number of queries of every metric computed, in display order."""
    metrics: dict[str, dict[str, float | None]]
    """Encoder id -> metric -> value (None: the encoder cannot answer that query, e.g. text
    for an image-only encoder)."""
    encoders: list[EncoderRun]
    skipped: list[Skipped]
    failures: list[FailedItem]
    options: EvalOptions
    seconds: float = 0.0
    home: str | None = None
    attribute_queries: dict[str, list[str]] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def metric_names(self) -> list[str]:
        return list(self.baselines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "fashion-search.eval-report",
            "version": 1,
            "created_at": self.created_at,
            "dataset": {
                "manifest": self.manifest,
                "layout": self.layout,
                "selection": self.selection,
                "items": self.items,
                "gallery": len(self.gallery_ids),
                "failed": len(self.failures),
                "query_text": self.text_field,
                "labels": self.labels,
                "home": self.home,
                "ids": self.gallery_ids,
            },
            "metrics": self.metrics,
            "chance": {name: b.chance for name, b in self.baselines.items()},
            "queries": {name: b.n_queries for name, b in self.baselines.items()},
            "attribute_queries": self.attribute_queries,
            "skipped": [{"metric": s.metric, "reason": s.reason} for s in self.skipped],
            "encoders": {run.id: run.to_dict() for run in self.encoders},
            "failures": [f.to_dict() for f in self.failures],
            "options": {
                "limit": self.options.limit,
                "min_products": self.options.min_products,
                "seed": self.options.seed,
                "text_field": self.options.text_field,
                "batch_size": self.options.batch_size,
                "photo_style": self.options.photo_style,
            },
            "seconds": round(self.seconds, 1),
        }


# -- running it ------------------------------------------------------------------------------


def eval_settings(settings: Settings, home: Path) -> Settings:
    """The user's settings with an embedded-only profile in ``home``."""
    return settings.model_copy(
        update={"home": home, "pinecone_api_key": None, "mongodb_uri": None, "s3_bucket": None}
    )


@contextmanager
def eval_home(keep: Path | None) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(
            prefix="fashion-search-eval-", ignore_cleanup_errors=True
        ) as tmp:
            yield Path(tmp)
        return
    if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise EvalInputError(f"--keep-home {keep} must be a new or empty directory")
    keep.mkdir(parents=True, exist_ok=True)
    yield keep


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


async def _encode_texts(
    encoder: TimedEncoder, texts: Sequence[str], what: str, progress: Progress
) -> Vectors:
    parts = []
    for rows in _batches(len(texts), TEXT_BATCH):
        chunk = [texts[i] for i in rows]
        parts.append(await asyncio.to_thread(encoder.encode_texts, chunk))
        progress(what, rows.stop, len(texts))
    if not parts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def augmented_copy(data: bytes, product_id: str, seed: int = SEED) -> bytes:
    """The augmented query of a product photo: the same one for a product in every run."""
    return augment_image(decode_image(data), random.Random(f"{seed}:{product_id}"))


def photo_style_chain(product_id: str, seed: int = SEED) -> PhotoChain:
    """The shopper-photo changes of a product's photo-style query: drawn from EVAL_RANGES with
    a seed derived from its id, so the same in every run."""
    return PhotoChain.draw(random.Random(f"{seed}:photo:{product_id}"), EVAL_RANGES)


def photo_style_copy(data: bytes, product_id: str, seed: int = SEED) -> bytes:
    """The photo-style query of a product photo (JPEG bytes, the photo's size)."""
    return photo_style_chain(product_id, seed).apply(decode_image(data))


QueryCopy = Callable[[bytes, str, int], bytes]


async def _copied_vectors(
    container: Container,
    ids: Sequence[str],
    encoders: Sequence[TimedEncoder],
    options: EvalOptions,
    progress: Progress,
    make_copy: QueryCopy,
    what: str,
) -> dict[str, Vectors]:
    """A copy (``make_copy``) of each product's stored photo, encoded by every encoder."""
    parts: dict[str, list[Vectors]] = {e.id: [np.zeros((0, e.dim), np.float32)] for e in encoders}
    for rows in _batches(len(ids), options.batch_size):
        chunk = [ids[i] for i in rows]
        products = await container.catalog.get_many(chunk)
        copies = []
        for pid in chunk:
            data = await _stored_image(container.images, products[pid].primary_image_key, pid)
            copies.append(await asyncio.to_thread(make_copy, data, pid, options.seed))
        for encoder in encoders:
            parts[encoder.id].append(await asyncio.to_thread(encoder.encode_images, copies))
        progress(what, rows.stop, len(ids))
    return {key: np.concatenate(value).astype(np.float32) for key, value in parts.items()}


def save_photo_examples(photos: Mapping[str, bytes], folder: Path, seed: int = SEED) -> None:
    """``<id>.jpg`` (the product photo; ``.png``, ``.webp`` for those), ``<id>-photo.jpg``
    (its photo-style query) and ``chains.json`` (the changes drawn for each) in ``folder``, for
    a look at what the metric asks."""
    folder.mkdir(parents=True, exist_ok=True)
    chains: dict[str, Any] = {}
    for pid, data in photos.items():
        suffix = (sniff_image_type(data) or "image/jpeg").removeprefix("image/")
        (folder / f"{pid}.{suffix.replace('jpeg', 'jpg')}").write_bytes(data)
        (folder / f"{pid}-photo.jpg").write_bytes(photo_style_copy(data, pid, seed))
        chains[pid] = asdict(photo_style_chain(pid, seed))
    (folder / "chains.json").write_text(json.dumps(chains, indent=2) + "\n", encoding="utf-8")


async def _stored_image(images: ImageStore, key: str | None, product_id: str) -> bytes:
    if key is None:
        raise EvalInputError(f"product {product_id!r} was ingested without an image")
    return await images.get(key)


async def index_agreement(
    index: VectorIndex,
    encoder_id: str,
    queries: npt.NDArray[np.float32],
    gallery_vectors: npt.NDArray[np.float32],
    gallery_ids: Sequence[str],
    top_k: int = TOP_K,
) -> int:
    """How many of the queries get from the index itself the top ``top_k`` of the exact
    ranking of ``gallery_vectors`` (the same scores rank by rank and each returned id scored
    as its gallery vector scores; ties may come in any order). Ids the index holds beyond the
    gallery are passed over."""
    position = {pid: i for i, pid in enumerate(gallery_ids)}
    extra = max(await index.count(encoder_id) - len(gallery_ids), 0)
    wanted = min(top_k, len(gallery_ids))
    agreeing = 0
    for query in queries:
        found = await index.query(encoder_id, query, top_k + extra)
        hits = [(pid, score) for pid, score in found if pid in position][:wanted]
        scores = gallery_vectors @ query
        expected = np.sort(scores)[::-1][:wanted]
        if len(hits) == wanted and all(
            abs(score - expected[rank]) <= SCORE_TOLERANCE
            and abs(score - scores[position[pid]]) <= SCORE_TOLERANCE
            for rank, (pid, score) in enumerate(hits)
        ):
            agreeing += 1
    return agreeing


def _sample(n: int, count: int) -> list[int]:
    """Up to ``count`` positions spread evenly over ``range(n)``."""
    if n == 0 or count == 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, count))})


def _attribute_plan(
    gallery: ev.LabelledGallery, min_products: int
) -> tuple[dict[str, list[ev.AttributeQuery]], list[Skipped]]:
    plan: dict[str, list[ev.AttributeQuery]] = {}
    skipped: list[Skipped] = []
    for name, queries in gallery.attribute_queries(min_products).items():
        metric = f"{name} P@10"
        attribute = ev.ATTRIBUTE_PAIRS[name][0]
        if not any(ev.is_known(a.get(attribute, "")) for a in gallery.attributes):
            skipped.append(Skipped(metric, f"the manifest has no {attribute} labels"))
        elif not queries:
            skipped.append(
                Skipped(
                    metric,
                    f"no <{attribute}> <type> pair is held by {min_products} or more products "
                    "of the gallery",
                )
            )
        else:
            plan[metric] = queries
    return plan, skipped


async def run_eval(
    options: EvalOptions, settings: Settings, progress: Progress = _no_progress
) -> EvalReport:
    """Ingest the selected items of the manifest into a throwaway home and measure every
    encoder of ``options`` on it."""
    started = time.perf_counter()
    with open_source(options.manifest) as source:
        items = select_items(source, options)
        with eval_home(options.home) as home:
            container = build(eval_settings(settings, home))
            try:
                encoders = [TimedEncoder(container.encoders.get(e)) for e in options.encoder_ids]
                unique = list({e.id: e for e in encoders}.values())
                report = await _evaluate(container, source, items, unique, options, progress)
            finally:
                await container.aclose()
    report.home = str(options.home) if options.home is not None else None
    report.seconds = time.perf_counter() - started
    return report


async def _ingest(
    container: Container,
    items: Sequence[LabelledItem],
    encoders: Sequence[TimedEncoder],
    runs: Mapping[str, EncoderRun],
    options: EvalOptions,
    progress: Progress,
) -> list[FailedItem]:
    """Ingest the gallery once per encoder (so that each encoder's time is its own); the
    failures of every run, each item and reason once."""
    gallery_items = [i.gallery_item() for i in items]
    ingest_options = IngestOptions(
        batch_size=options.batch_size, max_image_bytes=container.settings.max_image_bytes
    )
    failures: dict[tuple[str, str], FailedItem] = {}
    for encoder in encoders:
        progress(f"loading {encoder.id}", 0, None)
        await asyncio.to_thread(encoder.warm_up)
        progress(f"loading {encoder.id}", 1, 1)
        what = f"gallery images · {encoder.id}"

        def on_progress(p: IngestProgress, what: str = what) -> None:
            progress(what, p.done, p.total)

        pipeline = container.ingest_pipeline([encoder], ingest_options, on_progress)
        summary = await pipeline.run(gallery_items, total=len(gallery_items))
        runs[encoder.id].ingest_seconds = summary.seconds
        runs[encoder.id].gallery_images = replace(encoder.images)
        for failure in summary.failures:
            failures.setdefault((failure.id, failure.reason.value), failure)
    return list(failures.values())


async def _text_metrics(
    encoder: TimedEncoder,
    gallery: ev.LabelledGallery,
    gallery_vectors: Vectors,
    prefix: str | None,
    attribute_plan: Mapping[str, list[ev.AttributeQuery]],
    progress: Progress,
) -> tuple[dict[str, float], Vectors]:
    """The text-to-image metrics of a text-capable encoder, and its text query vectors."""
    values: dict[str, float] = {}
    queries = np.zeros((0, encoder.dim), dtype=np.float32)
    if prefix is not None:
        texts = [gallery.texts[i] for i in gallery.text_rows]
        queries = await _encode_texts(encoder, texts, f"text queries · {encoder.id}", progress)
        values.update(ev.text_to_image_metrics(queries, gallery_vectors, gallery, prefix))
    for metric, attribute_queries in attribute_plan.items():
        phrases = [q.text for q in attribute_queries]
        vectors = await _encode_texts(encoder, phrases, f"{metric} · {encoder.id}", progress)
        values[metric] = ev.attribute_precision(
            vectors, gallery_vectors, attribute_queries, gallery.attributes
        )
    return values, queries


def _after(baselines: dict[str, ev.Baseline], metric: str, new: str) -> dict[str, ev.Baseline]:
    """``baselines`` with ``new`` right after ``metric``, at the same chance level."""
    out: dict[str, ev.Baseline] = {}
    for name, baseline in baselines.items():
        out[name] = baseline
        if name == metric:
            out[new] = baseline
    return out


async def _photo_style_metric(
    container: Container,
    gallery: ev.LabelledGallery,
    gallery_vectors: Mapping[str, Vectors],
    encoders: Sequence[TimedEncoder],
    runs: Mapping[str, EncoderRun],
    metrics: dict[str, dict[str, float | None]],
    options: EvalOptions,
    progress: Progress,
) -> None:
    """Photo-style queries of the products of a known type against the clean gallery."""
    query_ids = [gallery.ids[i] for i in gallery.type_rows]
    if options.photo_examples is not None:
        shown = query_ids[:PHOTO_EXAMPLES]
        products = await container.catalog.get_many(shown)
        originals = {
            pid: await _stored_image(container.images, products[pid].primary_image_key, pid)
            for pid in shown
        }
        await asyncio.to_thread(
            save_photo_examples, originals, options.photo_examples, options.seed
        )
    before = {e.id: replace(e.images) for e in encoders}
    photos = await _copied_vectors(
        container, query_ids, encoders, options, progress, photo_style_copy, "photo-style queries"
    )
    for encoder in encoders:
        metrics[encoder.id][ev.PHOTO_TYPE_METRIC] = ev.photo_style_type_precision(
            photos[encoder.id], gallery_vectors[encoder.id], gallery
        )
        runs[encoder.id].photo_queries = encoder.images.since(before[encoder.id])


async def _evaluate(
    container: Container,
    source: Source,
    items: list[LabelledItem],
    encoders: list[TimedEncoder],
    options: EvalOptions,
    progress: Progress,
) -> EvalReport:
    runs = {e.id: EncoderRun(e.id, e.dim, sorted(m.value for m in e.modalities)) for e in encoders}
    failures = await _ingest(container, items, encoders, runs, options, progress)

    # The gallery: the items every encoder indexed, in manifest order (an id once).
    unique = list({i.item.id: i for i in reversed(items) if i.item.id}.values())[::-1]
    stored = {
        e.id: await container.index.fetch(e.id, [i.item.id for i in unique]) for e in encoders
    }
    kept = [i for i in unique if all(i.item.id in found for found in stored.values())]
    if not kept:
        raise EvalInputError("no image of the selection could be ingested (see the failures)")
    ids = [i.item.id for i in kept]
    text_field = pick_text_field(kept, options.text_field)
    gallery = ev.LabelledGallery(
        ids=ids,
        texts=[i.text(text_field) if text_field else "" for i in kept],
        attributes=[i.labels for i in kept],
    )
    gallery_vectors = {
        e.id: np.stack([stored[e.id][pid] for pid in ids]).astype(np.float32) for e in encoders
    }

    prefix = None if text_field is None else "desc" if text_field == "description" else "name"
    attribute_plan, skipped = _attribute_plan(gallery, options.min_products)
    baselines: dict[str, ev.Baseline] = {}
    if prefix is None:
        wanted = "descriptions or names" if options.text_field == "auto" else options.text_field
        skipped.insert(0, Skipped("text-to-image", f"the manifest has no {wanted}"))
    else:
        baselines.update(ev.text_to_image_chance(gallery, prefix))
    for metric, phrases in attribute_plan.items():
        baselines[metric] = ev.attribute_chance(phrases, gallery)
    image_chance = ev.image_to_image_chance(gallery)
    if options.photo_style:  # the same queries' labels and exclusions, beside the clean figure
        image_chance = _after(image_chance, ev.IMAGE_TYPE_METRIC, ev.PHOTO_TYPE_METRIC)
    baselines.update(image_chance)

    metrics: dict[str, dict[str, float | None]] = {}
    for encoder in encoders:
        values: dict[str, float | None] = dict.fromkeys(baselines)
        check = gallery_vectors[encoder.id][_sample(len(ids), options.index_check)]
        if encoder.reads_text:
            before = replace(encoder.texts)
            text_values, queries = await _text_metrics(
                encoder, gallery, gallery_vectors[encoder.id], prefix, attribute_plan, progress
            )
            values.update(text_values)
            runs[encoder.id].text_queries = encoder.texts.since(before)
            check = np.concatenate([queries[_sample(len(queries), options.index_check)], check])
        metrics[encoder.id] = values
        runs[encoder.id].index_check_queries = len(check)
        runs[encoder.id].index_check_agreeing = await index_agreement(
            container.index, encoder.id, check, gallery_vectors[encoder.id], ids
        )

    before_images = {e.id: replace(e.images) for e in encoders}
    augmented = await _copied_vectors(
        container, ids, encoders, options, progress, augmented_copy, "augmented queries"
    )
    for encoder in encoders:
        metrics[encoder.id].update(
            ev.image_to_image_metrics(gallery_vectors[encoder.id], augmented[encoder.id], gallery)
        )
        runs[encoder.id].augmented_queries = encoder.images.since(before_images[encoder.id])
    if options.photo_style:
        await _photo_style_metric(
            container, gallery, gallery_vectors, encoders, runs, metrics, options, progress
        )

    # A metric none of whose queries has a relevant product (e.g. no two products of one
    # type) would read 0.0: leave it out and say why.
    for name in [n for n, b in baselines.items() if b.n_queries == 0]:
        del baselines[name]
        skipped.append(Skipped(name, "no query has a relevant product in the gallery"))
    metrics = {e: {n: values.get(n) for n in baselines} for e, values in metrics.items()}
    return EvalReport(
        manifest=source.location,
        layout=source.layout,
        selection=options.selection,
        items=len(items),
        gallery_ids=ids,
        text_field=text_field,
        labels=label_columns(items),
        baselines=baselines,
        metrics=metrics,
        encoders=list(runs.values()),
        skipped=skipped,
        failures=failures,
        options=options,
        attribute_queries={m: [q.text for q in qs] for m, qs in attribute_plan.items()},
    )
