"""``ingest --engine ray`` (the Ray Data pipeline) on a local Ray (``ray.init(num_cpus=2)``,
one runtime for the module): the Kaggle zip's first products give exactly what the local
engine gives; a killed encoder actor and a SIGKILLed driver are recovered; the production
profile (MongoDB, S3, Pinecone fake) is filled the same way; an ``s3://`` manifest with a
missing key gives both engines the same catalog and report."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from pydantic import SecretStr
from typer.testing import CliRunner

from domain.ports import Vectors
from fashion_search.cli import app
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build, s3_access
from ingest.pipeline import IngestOptions
from ingest.ray_engine import (
    ENCODER_PROCESS_TITLE,
    RayIngestPipeline,
    RayOptions,
    RayRunStats,
    RayUnavailable,
    ray_engine,
    ray_runtime,
)
from ingest.readers import open_source
from ingest.report import FailureReason, IngestSummary
from ingest.s3 import S3Access
from stores.catalog.mongodb import MongoCatalog
from stores.images.s3 import S3ImageStore
from tests.stores.pinecone_fake import FakePinecone
from tests.stores.servers import (
    AWS_TEST_CREDENTIALS,
    AWS_TEST_REGION,
    MongoServer,
    S3Server,
    mongo_server,
    pinecone_server,
    s3_server,
    unique_name,
)

__all__ = ["mongo_server", "pinecone_server", "s3_server"]

REFERENCE_PRODUCTS = 500
"""The first products of the Kaggle zip ingested by both engines (the issue's 500)."""
RECOVERY_PRODUCTS = 96
"""The products of the crash tests (a prefix of the reference)."""
SMALL_BATCH = 16
"""Batches of the crash tests: several are acknowledged before the end."""
RECOVERY_WINDOW = 40
"""Source rows per Ray Dataset in the killed-actor test (three windows, the last one short)."""
CHANGED_CATALOG = 24
"""Products of the changed-catalog rerun test (one new photo, one new name)."""
VECTOR_TOLERANCE = 1e-4
"""Batch composition changes the float sums a little (unit vectors)."""
REPO = Path(__file__).resolve().parents[2]
MAX_IMAGE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    """Everything a home holds for some products: the products, vectors and image bytes."""

    products: dict[str, Any]
    vectors: dict[str, Vectors]
    images: dict[str, bytes]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """One local Ray runtime for the module; its address (for a driver in a subprocess)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with (
        tempfile.TemporaryDirectory(prefix="fs-ray-test-") as temp,
        pytest.MonkeyPatch.context() as env,
    ):
        # the workers' S3 credentials (moto's), from the environment they start with
        env.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["aws_access_key_id"])
        env.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["aws_secret_access_key"])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def home_settings(home: Path) -> Settings:
    return Settings(home=home)


async def ingest_on(
    settings: Settings,
    zip_path: Path | str,
    limit: int,
    *,
    engine: RayOptions | None,
    batch_size: int = 32,
    container: Container | None = None,
    on_progress: Any = None,
    window_rows: int | None = None,
    stats: list[RayRunStats] | None = None,
) -> IngestSummary:
    container = container or build(settings)
    encoders = [container.encoders.get(None)]
    options = IngestOptions(batch_size=batch_size, limit=limit)
    try:
        with open_source(zip_path, s3_access(settings)) as source:
            if engine is None:
                pipeline = container.ingest_pipeline(encoders, options, on_progress)
                return await pipeline.run(source, limit)
            with ray_engine(engine, container.ray_encoder_factory(encoders)) as running:
                if window_rows is not None:
                    running = replace(running, window_rows=window_rows)
                ray_pipeline = container.ingest_pipeline(encoders, options, on_progress, running)
                assert isinstance(ray_pipeline, RayIngestPipeline)
                if stats is not None:
                    stats.append(ray_pipeline.stats)
                return await ray_pipeline.run(source, limit)
    finally:
        await container.aclose()


async def snapshot(container: Container, ids: list[str] | None = None) -> Snapshot:
    """The products (all of them, or ``ids``), their vectors and image bytes."""
    try:
        products: dict[str, Any] = {}
        cursor: str | None = None
        while True:
            page = await container.catalog.list(cursor=cursor, limit=500)
            products.update({p.id: p for p in page.items})
            cursor = page.next_cursor
            if cursor is None:
                break
        if ids is not None:
            products = {i: products[i] for i in ids if i in products}
        encoder_id = container.encoders.get(None).id
        vectors = await container.index.fetch(encoder_id, list(products))
        images = {
            key: await container.images.get(key) for p in products.values() for key in p.image_keys
        }
        return Snapshot(products, vectors, images)
    finally:
        await container.aclose()


def assert_same(got: Snapshot, want: Snapshot) -> None:
    assert got.products == want.products
    assert got.images == want.images
    assert sorted(got.vectors) == sorted(want.vectors) == sorted(want.products)
    for product_id, vector in want.vectors.items():
        np.testing.assert_allclose(got.vectors[product_id], vector, atol=VECTOR_TOLERANCE)


@pytest.fixture(scope="module")
def reference(
    kaggle_zip: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Snapshot, IngestSummary]:
    """The local engine's result for the first REFERENCE_PRODUCTS products."""
    settings = home_settings(tmp_path_factory.mktemp("local") / "home")
    summary = asyncio.run(ingest_on(settings, kaggle_zip, REFERENCE_PRODUCTS, engine=None))
    return asyncio.run(snapshot(build(settings))), summary


def first_ids(kaggle_zip: Path, n: int) -> list[str]:
    with open_source(kaggle_zip) as source:
        return [item.id for item in itertools.islice(source, n)]


def encoder_actor_pids() -> list[int]:
    """This test's encoder actors (found by their process title, as an operator would, among
    the descendants of this process, which started the module's Ray: another Ray on the
    machine is not touched)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and (proc / "cmdline").read_bytes().startswith(ENCODER_PROCESS_TITLE)
                and descends_from_us(int(proc.name))
            ):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def descends_from_us(pid: int) -> bool:
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
        if pid == os.getpid():
            return True
    return False


async def test_ray_gives_the_local_engines_catalog_and_a_rerun_changes_nothing(
    local_ray: str, reference: tuple[Snapshot, IngestSummary], kaggle_zip: Path, tmp_path: Path
) -> None:
    want, local_summary = reference
    settings = home_settings(tmp_path / "home")
    summary = await ingest_on(
        settings, kaggle_zip, REFERENCE_PRODUCTS, engine=RayOptions(workers=2)
    )
    assert (summary.seen, summary.indexed, summary.failed) == (
        local_summary.seen,
        local_summary.indexed,
        local_summary.failed,
    )
    assert summary.failures == local_summary.failures
    assert_same(await snapshot(build(settings)), want)

    actors_before = encoder_actors_started()
    stats: list[RayRunStats] = []
    again = await ingest_on(
        settings, kaggle_zip, REFERENCE_PRODUCTS, engine=RayOptions(workers=2), stats=stats
    )
    assert (again.indexed, again.updated, again.failed) == (0, 0, local_summary.failed)
    assert again.skipped_unchanged == local_summary.indexed
    # checked against the ledger by hash only: no image went on to the encoders, and no
    # encoder actor was started (Ray's own actor table says so too)
    assert stats[0].images_hashed == local_summary.indexed
    assert (stats[0].images_to_encoders, stats[0].encoder_datasets) == (0, 0)
    assert again.engine_counters["encoder_datasets"] == 0  # the JSON report carries them
    assert encoder_actors_started() == actors_before > 0


def encoder_actors_started() -> int:
    """Encoder actors this module's Ray has ever started (alive or dead), from its actor
    table (``ray.util.state`` needs the dashboard, which the tests do not start)."""
    from ray._private.state import actors

    return sum("EncodeImages" in a["ActorClassName"] for a in actors().values())


async def test_a_rerun_encodes_exactly_the_changed_images(
    local_ray: str, reference: tuple[Snapshot, IngestSummary], kaggle_zip: Path, tmp_path: Path
) -> None:
    want = reference[0]
    ids = first_ids(kaggle_zip, CHANGED_CATALOG)
    manifest = tmp_path / "catalog" / "manifest.jsonl"
    manifest.parent.mkdir()
    images = {pid: want.images[want.products[pid].image_keys[0]] for pid in ids}
    write_manifest(manifest, images, {pid: want.products[pid].name for pid in ids})
    settings = home_settings(tmp_path / "home")
    first = await ingest_on(settings, manifest, CHANGED_CATALOG, engine=RayOptions(workers=1))
    assert first.indexed == CHANGED_CATALOG

    new_photo, renamed, donor = ids[0], ids[1], ids[-1]
    images[new_photo] = images[donor]
    names = {pid: want.products[pid].name for pid in ids} | {renamed: "renamed product"}
    write_manifest(manifest, images, names)
    stats: list[RayRunStats] = []
    again = await ingest_on(
        settings, manifest, CHANGED_CATALOG, engine=RayOptions(workers=1), stats=stats
    )
    assert (again.indexed, again.updated, again.skipped_unchanged, again.failed) == (
        1,
        1,
        CHANGED_CATALOG - 2,
        0,
    )
    assert (stats[0].images_hashed, stats[0].images_to_encoders) == (CHANGED_CATALOG, 1)
    got = await snapshot(build(settings))
    np.testing.assert_allclose(got.vectors[new_photo], want.vectors[donor], atol=VECTOR_TOLERANCE)
    assert got.products[renamed].name == "renamed product"
    assert got.images[got.products[new_photo].image_keys[0]] == images[donor]


def write_manifest(path: Path, images: dict[str, bytes], names: dict[str, str]) -> None:
    """A JSONL manifest of the products, each image a file beside it."""
    lines = []
    for pid, data in images.items():
        (path.parent / f"{pid}.jpg").write_bytes(data)
        lines.append(json.dumps({"id": pid, "image": f"{pid}.jpg", "name": names[pid]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def test_a_killed_encoder_actor_is_replaced_and_the_run_completes(
    local_ray: str, reference: tuple[Snapshot, IngestSummary], kaggle_zip: Path, tmp_path: Path
) -> None:
    settings = home_settings(tmp_path / "home")
    run = asyncio.create_task(
        ingest_on(
            settings,
            kaggle_zip,
            RECOVERY_PRODUCTS,
            engine=RayOptions(workers=2),
            batch_size=SMALL_BATCH,
            window_rows=RECOVERY_WINDOW,  # several datasets, one after the other
        )
    )
    while not (pids := encoder_actor_pids()):  # polling for the actors, not ordering by time
        assert not run.done(), run.exception()
        await asyncio.sleep(0.05)
    assert not run.done(), "the actor is killed while the run goes on"
    os.kill(pids[0], signal.SIGKILL)
    summary = await run
    assert summary.indexed == RECOVERY_PRODUCTS
    assert summary.failed == 0
    ids = first_ids(kaggle_zip, RECOVERY_PRODUCTS)
    assert_same(await snapshot(build(settings)), subset(reference[0], ids))


def subset(snapshot_: Snapshot, ids: list[str]) -> Snapshot:
    products = {i: snapshot_.products[i] for i in ids}
    keys = {k for p in products.values() for k in p.image_keys}
    return Snapshot(
        products,
        {i: snapshot_.vectors[i] for i in ids},
        {k: v for k, v in snapshot_.images.items() if k in keys},
    )


async def acknowledged(settings: Settings) -> int:
    """Products the ledger records as indexed (what an ingest has acknowledged)."""
    container = build(settings)
    try:
        encoder_id = container.encoders.get(None).id
        return len(await container.catalog.ledger_page(encoder_id, None, RECOVERY_PRODUCTS + 1))
    finally:
        await container.aclose()


async def test_a_killed_driver_is_resumed_by_rerunning(
    local_ray: str, reference: tuple[Snapshot, IngestSummary], kaggle_zip: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    settings = home_settings(home)
    env = {
        **os.environ,
        "RAY_ADDRESS": local_ray,
        "FASHION_SEARCH_HOME": str(home),
        "PYTHONPATH": str(REPO),
    }
    argv = [sys.executable, "-m", "fashion_search.cli", "ingest", str(kaggle_zip)]
    argv += ["--engine", "ray", "--workers", "1", "--limit", str(RECOVERY_PRODUCTS)]
    argv += ["--batch-size", str(SMALL_BATCH)]
    log = tmp_path / "driver.log"
    with log.open("wb") as output:
        driver = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        while (done := await acknowledged(settings)) < SMALL_BATCH:
            assert driver.returncode is None, log.read_text(errors="replace")
            await asyncio.sleep(0.2)  # polling the ledger, not ordering by time
        driver.send_signal(signal.SIGKILL)
        await driver.wait()
    finally:
        if driver.returncode is None:
            driver.kill()
            await driver.wait()
    assert done < RECOVERY_PRODUCTS, "the driver was killed mid-run"

    summary = await ingest_on(settings, kaggle_zip, RECOVERY_PRODUCTS, engine=RayOptions(workers=2))
    assert summary.skipped_unchanged >= done
    assert summary.indexed + summary.skipped_unchanged == RECOVERY_PRODUCTS
    ids = first_ids(kaggle_zip, RECOVERY_PRODUCTS)
    assert_same(await snapshot(build(settings)), subset(reference[0], ids))


@pytest.fixture
async def production(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pinecone_server: FakePinecone,
    mongo_server: MongoServer,
    s3_server: S3Server,
) -> AsyncIterator[Settings]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["aws_secret_access_key"])
    dim = build(home_settings(tmp_path / "probe")).encoders.get(None).dim
    settings = Settings(
        home=tmp_path / "home",
        pinecone_api_key=SecretStr(pinecone_server.api_key),
        pinecone_host=pinecone_server.create_index(unique_name("idx"), dim),
        mongodb_uri=SecretStr(mongo_server.uri),
        mongodb_db=unique_name("shop").replace("-", "_"),
        s3_bucket=unique_name("images"),
        s3_endpoint_url=s3_server.endpoint_url,
        aws_region=AWS_TEST_REGION,
    )
    container = build(settings)
    assert isinstance(container.images, S3ImageStore)
    await container.images.create_bucket()
    yield settings
    if isinstance(container.catalog, MongoCatalog):
        await container.catalog.drop()
    await container.aclose()


@pytest.mark.e2e
async def test_the_production_profile_is_filled_the_same_way(
    local_ray: str,
    reference: tuple[Snapshot, IngestSummary],
    production: Settings,
    kaggle_zip: Path,
) -> None:
    summary = await ingest_on(
        production, kaggle_zip, RECOVERY_PRODUCTS, engine=RayOptions(workers=2)
    )
    assert summary.indexed == RECOVERY_PRODUCTS
    ids = first_ids(kaggle_zip, RECOVERY_PRODUCTS)
    assert_same(await snapshot(build(production), ids), subset(reference[0], ids))
    again = await ingest_on(production, kaggle_zip, RECOVERY_PRODUCTS, engine=RayOptions(workers=2))
    assert (again.indexed, again.skipped_unchanged) == (0, RECOVERY_PRODUCTS)


S3_PRODUCTS = 12


@pytest.fixture
def s3_manifest(s3_server: S3Server, kaggle_zip: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A manifest in a bucket, its images keys beside it (the first Kaggle products) and one
    key that does not exist."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["aws_secret_access_key"])
    client = S3Access(s3_server.endpoint_url, AWS_TEST_REGION).client()
    bucket = unique_name("catalog")
    client.create_bucket(Bucket=bucket)
    lines = ["id,image,name"]
    with open_source(kaggle_zip) as source:
        for item in itertools.islice(source, S3_PRODUCTS):
            data = item.image.read(MAX_IMAGE_BYTES)  # type: ignore[union-attr]
            client.put_object(Bucket=bucket, Key=f"shop/images/{item.id}.jpg", Body=data)
            lines.append(f"{item.id},images/{item.id}.jpg,{item.name.replace(',', ' ')}")
    lines.append("lost,images/lost.jpg,Lost coat")
    client.put_object(Bucket=bucket, Key="shop/manifest.csv", Body="\n".join(lines).encode())
    return f"s3://{bucket}/shop/manifest.csv"


async def test_an_s3_manifest_gives_the_same_catalog_and_report_on_both_engines(
    local_ray: str, s3_server: S3Server, s3_manifest: str, tmp_path: Path
) -> None:
    def settings(name: str) -> Settings:
        return Settings(
            home=tmp_path / name, s3_endpoint_url=s3_server.endpoint_url, aws_region=AWS_TEST_REGION
        )

    local = await ingest_on(settings("local"), s3_manifest, S3_PRODUCTS + 1, engine=None)
    on_ray = await ingest_on(
        settings("ray"), s3_manifest, S3_PRODUCTS + 1, engine=RayOptions(workers=2)
    )
    assert (on_ray.indexed, on_ray.failed) == (local.indexed, local.failed) == (S3_PRODUCTS, 1)
    assert on_ray.failures == local.failures
    [lost] = on_ray.failures
    assert (lost.id, lost.reason, lost.image) == (
        "lost",
        FailureReason.MISSING,
        s3_manifest.replace("manifest.csv", "images/lost.jpg"),
    )
    assert_same(await snapshot(build(settings("ray"))), await snapshot(build(settings("local"))))


def test_without_ray_the_engine_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    with (
        pytest.raises(RayUnavailable, match=r"pip install 'fashion-search\[ray\]'"),
        ray_runtime(RayOptions()),
    ):
        pass


def test_ray_options_without_the_ray_engine_are_refused(kaggle_zip: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["ingest", str(kaggle_zip), "--workers", "2"],
        env={"FASHION_SEARCH_HOME": str(tmp_path / "home")},
    )
    assert result.exit_code == 2
    assert "--engine ray" in result.output
    assert not (tmp_path / "home").exists()


LOCAL_RAY_LOGS = """
import sys
from pathlib import Path
from ingest.ray_engine import RayOptions, ray_runtime

logs = Path(sys.argv[1])
with ray_runtime(RayOptions(workers=1)):
    print("during", len(list(logs.glob("fs-ray-*"))))
print("after success", len(list(logs.glob("fs-ray-*"))))
try:
    with ray_runtime(RayOptions(workers=1)):
        raise RuntimeError("a failed run")
except RuntimeError:
    pass
print("after failure", len(list(logs.glob("fs-ray-*"))))
"""


def test_a_local_ray_removes_its_logs_after_a_run_and_keeps_them_after_a_failure() -> None:
    """A nightly ingest on a local Ray leaves nothing in /tmp; a failed one leaves its logs.
    (Its own short temporary directory: Ray's socket paths must fit in 107 bytes.)"""
    with tempfile.TemporaryDirectory(prefix="fsr-") as temp:
        env = {**os.environ, "TMPDIR": temp, "PYTHONPATH": str(REPO)}
        env.pop("RAY_ADDRESS", None)
        result = subprocess.run(
            [sys.executable, "-c", LOCAL_RAY_LOGS, temp],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("during", "after"))]
    assert lines == ["during 1", "after success 0", "after failure 1"]


def test_a_local_ray_that_cannot_start_is_a_one_line_error(
    kaggle_zip: Path, tmp_path: Path
) -> None:
    """Ray's sockets live in its temporary folder; a TMPDIR too deep for a socket path (107
    bytes) fails the start, which the CLI reports in one line instead of a traceback."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    env = {**os.environ, "TMPDIR": str(deep), "PYTHONPATH": str(REPO)}
    env["FASHION_SEARCH_HOME"] = str(tmp_path / "home")
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "fashion_search.cli", "ingest", str(kaggle_zip)]
    argv += ["--engine", "ray", "--limit", "4"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "cannot start a local Ray" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
