"""Issue 8, item 5: crash-safe ingest.

The real CLI (``python -m fashion_search.cli ingest``) ingests a 48-product catalog (the first
rows of the shared hm-demo set, copied with their images into a CSV manifest) with two
encoders, ``crashtest:a`` and ``crashtest:b``, in batches of 4. Those encoders come from the
test-only plugin tests/reliability/crash_plugin.py, which the CLI loads through the
``fashion_search.encoders`` entry-point group (a ``*.dist-info`` on the child's PYTHONPATH):
hashed vectors, so no model is loaded, and a crash switch that makes the process SIGKILL
itself at the n-th call of a chosen store or encoder method. Some runs are instead killed
from outside with SIGKILL after a seeded random delay.

For each profile (embedded: SQLite + FAISS + local files; production: nx-27017 + Pinecone fake
+ moto S3), one catalog goes through a chain of killed runs, each one a rerun over what the
previous crash left, then a clean run. After every crash the ledger must not be ahead of the
stores (every product it records as indexed has its catalog row, its vectors for that
encoder and its image object, with the right content) and nothing may be duplicated or
foreign. After the clean run the three stores hold exactly the source: the catalog rows, the
ledger, N vectors per encoder (equal to what the encoder gives for the product's image), N
image objects holding the source bytes, nothing else. A further run writes nothing, and
``CatalogService.delete`` removes a product from all three stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from domain.images import content_hash, image_key, sniff_image_type
from domain.model import Product, product_text_space
from encoders.colour import ColourHistograms
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build
from ingest.readers import open_source
from stores.images.local import LocalImageStore
from stores.images.s3 import S3ImageStore
from tests.plugin_dist import write_plugin_distribution
from tests.reliability.conftest import (
    AWS_ENV,
    STORE_ENV_NAMES,
    Backends,
    production_env,
    production_names,
)
from tests.reliability.crash_plugin import CRASH_ENV, DELAY_ENV, vector_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO_ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 48
BATCH = 4
ENCODERS = ("crashtest:a", "crashtest:b")
RUN_TIMEOUT_S = 120.0
TIMING_SEED = 20261125

# Crash points, in chain order. Every batch is written, flushed and recorded in the ledger
# before the next one is (the Indexer's write, under the home's write lock), so each run
# resumes after the last finished batch and does at least a batch more than the one before.
# Per batch of 4 that needs work, the encoder is called once per encoder (a, b),
# images.put once per item, index.upsert once per encoder, catalog.upsert_many once,
# index.flush once, then catalog.mark_indexed once per encoder (a, then b). The n-th calls
# below stay within the first two batches a run writes, so each point is reached whatever
# the earlier runs finished (12 batches in all; the kills by timing come early, while much
# is left: the seeded delays are 0.78 s and 0.11 s, a batch takes at least 0.2 s then).
COMMON_CHAIN: tuple[str, ...] = (
    "encode:3:before",  # batch 2, before encoder a: batch 1 written (or being written)
    "images.put:6:after",  # batch 2 of the run, half of its images written
    "time",  # killed from outside after a random delay
    "index.upsert:4:after",  # batch 2, vectors of both encoders written, no product rows
    "catalog.upsert_many:2:after",  # batch 2's rows written, index not flushed, no ledger
    "time",
    "index.flush:2:after",  # batch 2's vectors durable, its ledger not written
    "catalog.mark_indexed:1:after",  # batch 1's ledger of encoder a written, not of b
)
EMBEDDED_CHAIN = (*COMMON_CHAIN[:3], "fsync:9:before", *COMMON_CHAIN[3:])
"""Plus a kill inside an atomic file write (temporary file written, not yet renamed)."""


COLOURS = ColourHistograms()


@dataclass(frozen=True)
class SourceProduct:
    product: Product
    image: bytes

    @property
    def key(self) -> str:
        content_type = sniff_image_type(self.image)
        assert content_type is not None
        return image_key(self.product.id, self.image, content_type)


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory, hm_demo: Path) -> Path:
    """A manifest of the first N_ITEMS hm-demo products, images copied beside it."""
    target = tmp_path_factory.mktemp("crash-catalog")
    (target / "images").mkdir()
    with (hm_demo / "products.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or ())
        rows = [row for _, row in zip(range(N_ITEMS), reader, strict=False)]
    assert len(rows) == N_ITEMS
    for row in rows:
        shutil.copyfile(hm_demo / row["image"], target / row["image"])
    with (target / "products.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return target


@pytest.fixture(scope="module")
def source(catalog_dir: Path) -> dict[str, SourceProduct]:
    """What the stores must hold in the end, read with the same reader as the CLI."""
    products: dict[str, SourceProduct] = {}
    with open_source(catalog_dir) as items:
        for item in items:
            data = item.image.read(10 * 1024 * 1024)  # type: ignore[union-attr]
            content_type = sniff_image_type(data)
            assert content_type is not None
            products[item.id] = SourceProduct(
                Product(
                    id=item.id,
                    name=item.name,
                    description=item.description,
                    tags=item.tags,
                    image_keys=(image_key(item.id, data, content_type),),
                    colour=COLOURS.colour_histograms([data])[0],  # what ingest stores
                ),
                data,
            )
    assert len(products) == N_ITEMS
    return products


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a distribution whose entry point is the crash plugin."""
    return write_plugin_distribution(
        tmp_path_factory.mktemp("crash-plugin"),
        "fs-reliability-crash-plugin",
        {"crashtest": "tests.reliability.crash_plugin"},
    )


# -- profiles --------------------------------------------------------------------------------


@dataclass
class Profile:
    name: str
    home: Path
    env: dict[str, str]
    """Settings of the profile, as environment variables (the child gets them, and the test
    builds its own view of the stores from them)."""

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def container(self) -> Container:
        """The stores as the CLI builds them from the same settings."""
        with self.environment():
            return build(Settings(home=self.home), load_entry_points=False)


def child_env(profile: Profile, plugin_path: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in STORE_ENV_NAMES and not k.startswith("FASHION_SEARCH_")
    }
    env.update(profile.env)
    env.update(extra)
    env["FASHION_SEARCH_HOME"] = str(profile.home)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_path), str(REPO_ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "120"
    return env


@dataclass(frozen=True)
class Run:
    crash: str
    returncode: int
    seconds: float
    output: str
    report: dict[str, Any] | None


def ingest(
    profile: Profile,
    plugin_path: Path,
    catalog_dir: Path,
    crash: str | None,
    number: int,
    rng: random.Random,
) -> Run:
    """One CLI run. ``crash``: a crash point for the plugin, "time" for a kill from outside
    after a random delay, None for a clean run."""
    report = profile.home.parent / f"{profile.name}-report-{number}.json"
    argv = [sys.executable, "-m", "fashion_search.cli", "ingest", str(catalog_dir)]
    for encoder in ENCODERS:
        argv += ["--encoder", encoder]
    argv += ["--batch-size", str(BATCH), "--report", str(report)]
    extra: dict[str, str] = {}
    if crash == "time":
        extra[DELAY_ENV] = "0.1"  # stretch the run so the kill lands inside the ingest
    elif crash is not None:
        extra[CRASH_ENV] = crash
    env = child_env(profile, plugin_path, extra)
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=profile.home.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    reading = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            if line.startswith("Reading"):
                reading.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    label = crash or "clean"
    if crash == "time":
        assert reading.wait(60), "".join(lines)
        delay = rng.uniform(0.1, 0.9)
        time.sleep(delay)
        assert process.poll() is None, f"the run ended before the kill at {delay:.2f}s"
        process.send_signal(signal.SIGKILL)
        label = f"time:{delay:.2f}s"
    try:
        returncode = process.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    reader.join(10)
    document = json.loads(report.read_text()) if report.exists() else None
    return Run(label, returncode, time.monotonic() - started, "".join(lines), document)


# -- reading the stores ----------------------------------------------------------------------


async def all_products(container: Container) -> list[Product]:
    products: list[Product] = []
    cursor: str | None = None
    while True:
        page = await container.catalog.list(cursor=cursor, limit=100)
        products.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return products


def image_objects(container: Container) -> dict[str, bytes]:
    """Every object the image store holds (by key for S3, by path for local files)."""
    images = container.images
    if isinstance(images, LocalImageStore):
        return {
            str(path.relative_to(images.directory)): path.read_bytes()
            for path in sorted(images.directory.rglob("*"))
            if path.is_file()
        }
    assert isinstance(images, S3ImageStore)
    client = boto3.client(
        "s3",
        endpoint_url=container.settings.s3_endpoint_url,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    objects: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=images.bucket):
        for entry in page.get("Contents", []):
            key = entry["Key"]
            objects[key] = client.get_object(Bucket=images.bucket, Key=key)["Body"].read()
    client.close()
    return objects


@dataclass
class State:
    products: list[Product]
    ledgers: dict[str, dict[str, str]]
    counts: dict[str, int]
    vectors: dict[str, dict[str, np.ndarray]]
    encoder_ids: list[str]
    objects: dict[str, bytes]
    text_counts: dict[str, int]
    """Vectors of the products' words, per encoder (product_text_space)."""


async def read_state(profile: Profile, source: dict[str, SourceProduct]) -> State:
    container = profile.container()
    try:
        ids = sorted(source)
        return State(
            products=await all_products(container),
            ledgers={e: await container.catalog.indexed_hashes(e) for e in ENCODERS},
            counts={e: await container.index.count(e) for e in ENCODERS},
            vectors={e: await container.index.fetch(e, ids) for e in ENCODERS},
            encoder_ids=await container.index.encoder_ids(),
            objects=image_objects(container),
            text_counts={e: await container.index.count(product_text_space(e)) for e in ENCODERS},
        )
    finally:
        await container.aclose()


def check_crash_invariants(
    profile: Profile, state: State, source: dict[str, SourceProduct], after: str
) -> None:
    """What must hold after any crash: nothing foreign or duplicated, and the ledger never
    ahead of the stores."""
    ids = [p.id for p in state.products]
    assert len(ids) == len(set(ids)), f"{after}: duplicate catalog rows"
    assert set(ids) <= set(source), f"{after}: catalog rows not in the source"
    rows = {p.id: p for p in state.products}
    names = {object_name_of(profile, s.key): s for s in source.values()}
    for encoder in ENCODERS:
        # count == the source ids found: no duplicate and no foreign vector
        assert state.counts[encoder] == len(state.vectors[encoder]), f"{after}: {encoder}"
        for pid, vector in state.vectors[encoder].items():
            expected = vector_for(encoder.split(":")[1], source[pid].image)
            assert np.allclose(vector, expected, atol=1e-5), f"{after}: wrong vector {pid}"
        for pid, digest in state.ledgers[encoder].items():
            item = source[pid]
            assert digest == content_hash(item.image), f"{after}: ledger hash of {pid}"
            assert rows.get(pid) == item.product, f"{after}: ledger ahead of catalog: {pid}"
            assert pid in state.vectors[encoder], f"{after}: ledger ahead of {encoder}: {pid}"
            name = object_name_of(profile, item.key)
            assert state.objects.get(name) == item.image, f"{after}: ledger ahead of images"
    for name, data in state.objects.items():
        if name in names:
            assert data == names[name].image, f"{after}: object {name} holds other bytes"


def object_name_of(profile: Profile, key: str) -> str:
    """How image_objects names the object of ``key``."""
    if profile.name == "embedded":
        images = LocalImageStore(profile.home / "images")
        return str(images.path(key).relative_to(images.directory))
    return key


def check_exact(profile: Profile, state: State, source: dict[str, SourceProduct]) -> None:
    """After a complete run: exactly the source, in all three stores."""
    assert sorted(p.id for p in state.products) == sorted(source)
    assert {p.id: p for p in state.products} == {pid: s.product for pid, s in source.items()}
    expected_ledger = {pid: content_hash(s.image) for pid, s in source.items()}
    spaces = [*ENCODERS, *(product_text_space(e) for e in ENCODERS)]
    assert sorted(state.encoder_ids) == sorted(spaces)
    for encoder in ENCODERS:
        assert state.text_counts[encoder] == len(source), encoder
        assert state.ledgers[encoder] == expected_ledger, encoder
        assert state.counts[encoder] == len(source), encoder
        assert sorted(state.vectors[encoder]) == sorted(source), encoder
        for pid, vector in state.vectors[encoder].items():
            expected = vector_for(encoder.split(":")[1], source[pid].image)
            assert np.allclose(vector, expected, atol=1e-5), (encoder, pid)
    expected_objects = {object_name_of(profile, s.key): s.image for s in source.values()}
    orphans = sorted(set(state.objects) - set(expected_objects))
    assert orphans == [], f"objects no product points at: {orphans}"
    assert state.objects == expected_objects


# -- the test --------------------------------------------------------------------------------


@pytest.fixture(params=["embedded", "production"])
def profile(
    request: pytest.FixtureRequest, tmp_path: Path, backends: Backends
) -> Iterator[Profile]:
    home = tmp_path / "home"
    if request.param == "embedded":
        yield Profile("embedded", home, {})
        return
    backends.ensure_running()
    names = production_names("crash")
    backends.pinecone.fake.create_index(names.index, 64)
    profile = Profile("production", home, production_env(backends, names, timeout_s=10.0))

    async def create_bucket() -> None:
        container = profile.container()
        try:
            assert isinstance(container.images, S3ImageStore)
            await container.images.create_bucket()
        finally:
            await container.aclose()

    asyncio.run(create_bucket())
    yield profile


async def test_sigkill_at_any_point_then_rerun_leaves_exactly_the_source(
    profile: Profile,
    plugin_path: Path,
    catalog_dir: Path,
    source: dict[str, SourceProduct],
) -> None:
    chain = EMBEDDED_CHAIN if profile.name == "embedded" else COMMON_CHAIN
    rng = random.Random(TIMING_SEED)
    log: list[str] = []
    for number, crash in enumerate(chain, start=1):
        run = await asyncio.to_thread(ingest, profile, plugin_path, catalog_dir, crash, number, rng)
        log.append(f"{run.crash}: exit {run.returncode} after {run.seconds:.1f}s")
        assert run.returncode == -signal.SIGKILL, f"{run.crash} did not crash:\n{run.output}"
        state = await read_state(profile, source)
        check_crash_invariants(profile, state, source, after=run.crash)
        log[-1] += (
            f"; left {len(state.products)} rows, "
            + ", ".join(
                f"{e}: {state.counts[e]} vectors/{len(state.ledgers[e])} ledger" for e in ENCODERS
            )
            + f", {len(state.objects)} objects"
        )

    final = await asyncio.to_thread(
        ingest, profile, plugin_path, catalog_dir, None, len(chain) + 1, rng
    )
    assert final.returncode == 0, final.output
    assert final.report is not None
    state = await read_state(profile, source)
    check_exact(profile, state, source)

    again = await asyncio.to_thread(
        ingest, profile, plugin_path, catalog_dir, None, len(chain) + 2, rng
    )
    assert again.returncode == 0, again.output
    assert again.report is not None
    summary = again.report["summary"]
    assert (summary["indexed"], summary["skipped_unchanged"], summary["failed"]) == (
        0,
        N_ITEMS,
        0,
    ), summary
    check_exact(profile, await read_state(profile, source), source)
    print(f"\n{profile.name}:\n  " + "\n  ".join(log))
    print(f"  clean rerun: {final.report['summary']}")

    # Deleting products removes them from the catalog, the index (every encoder), the image
    # store and the ledger, durably (checked through a fresh container).
    gone = sorted(source)[:3]
    container = profile.container()
    try:
        for pid in gone:
            assert await container.catalog_service.delete(pid) is True
    finally:
        await container.aclose()
    remaining = {pid: s for pid, s in source.items() if pid not in gone}
    check_exact(profile, await read_state(profile, source), remaining)
