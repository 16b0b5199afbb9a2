"""``s3://`` catalogs on moto's S3 server: a manifest in a bucket whose images are keys beside
it or ``s3://`` URIs anywhere, read with the app's S3 settings; a missing key is a bad image
in the report, never fatal."""

from __future__ import annotations

import itertools
import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from domain.errors import PayloadTooLarge
from fashion_search.cli import app
from ingest.pipeline import IngestPipeline
from ingest.readers import ImageUnavailable, S3Image, SourceNotFound, UnknownLayout, open_source
from ingest.report import FailureReason
from ingest.s3 import S3Access
from tests.fakes import (
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)
from tests.stores.servers import AWS_TEST_CREDENTIALS, AWS_TEST_REGION, S3Server, unique_name

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MANIFEST = (
    "id,image,name,colour\n"
    "p1,images/red.jpg,Red dress,Red\n"
    "p2,s3://{other}/photos/blue.jpg,Blue shirt,Blue\n"
    "p3,images/missing.jpg,Lost coat,Black\n"
)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def access(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Access:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["aws_secret_access_key"])
    return S3Access(s3.endpoint_url, AWS_TEST_REGION)


@pytest.fixture
def catalog_in_s3(access: S3Access) -> tuple[str, str]:
    """A shop bucket with ``shop/manifest.csv`` and ``shop/images/red.jpg``, and another
    bucket with ``photos/blue.jpg``; (manifest URI, other bucket)."""
    client = access.client()
    shop, other = unique_name("shop"), unique_name("photos")
    for bucket in (shop, other):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=shop, Key="shop/images/red.jpg", Body=fake_image("red dress"))
    client.put_object(Bucket=other, Key="photos/blue.jpg", Body=fake_image("blue shirt"))
    client.put_object(
        Bucket=shop, Key="shop/manifest.csv", Body=MANIFEST.format(other=other).encode()
    )
    return f"s3://{shop}/shop/manifest.csv", other


async def test_a_manifest_in_a_bucket_is_ingested_and_a_missing_key_is_reported(
    access: S3Access, catalog_in_s3: tuple[str, str]
) -> None:
    uri, _ = catalog_in_s3
    index, catalog, images = InMemoryVectorIndex(), InMemoryCatalog(), InMemoryImageStore()
    pipeline = IngestPipeline([HashingEncoder()], index, catalog, images)
    with open_source(uri, access) as source:
        assert (source.layout, source.location, source.count()) == ("manifest", uri, 3)
        summary = await pipeline.run(source)

    assert (summary.seen, summary.indexed, summary.failed) == (3, 2, 1)
    [failure] = summary.failures
    shop = uri.split("/")[2]
    assert failure.id == "p3"
    assert failure.reason is FailureReason.MISSING
    assert failure.image == f"s3://{shop}/shop/images/missing.jpg"
    assert "no such object" in failure.message
    products = await catalog.get_many(["p1", "p2"])
    assert products["p2"].tags["colour"] == "Blue"
    stored = {k: await images.get(k) for p in products.values() for k in p.image_keys}
    assert sorted(stored.values()) == sorted([fake_image("red dress"), fake_image("blue shirt")])

    with open_source(uri, access) as source:
        rerun = await IngestPipeline([HashingEncoder()], index, catalog, images).run(source)
    assert (rerun.indexed, rerun.skipped_unchanged, rerun.failed) == (0, 2, 1)


def test_s3_images_pickle_as_plain_values_for_other_processes(
    access: S3Access, catalog_in_s3: tuple[str, str]
) -> None:
    uri, other = catalog_in_s3
    with open_source(uri, access) as source:
        items = list(source)
    image = pickle.loads(pickle.dumps(items[1].image))
    assert image == S3Image(access, other, "photos/blue.jpg")
    assert image.read(1024) == fake_image("blue shirt")
    with pytest.raises(PayloadTooLarge):
        image.read(4)
    with pytest.raises(ImageUnavailable, match="no such object"):
        S3Image(access, other, "photos/none.jpg").read(1024)


def test_a_local_manifest_may_point_at_s3_images(
    access: S3Access, catalog_in_s3: tuple[str, str], tmp_path: Path
) -> None:
    _, other = catalog_in_s3
    manifest = tmp_path / "products.csv"
    manifest.write_text(f"id,image\nx,s3://{other}/photos/blue.jpg\ny,s3://{other}\n")
    with open_source(manifest, access) as source:
        first, second = list(source)
    assert isinstance(first.image, S3Image)
    assert first.image.read(1024) == fake_image("blue shirt")
    with pytest.raises(ImageUnavailable, match="not an s3://bucket/key"):
        second.image.read(1024)  # type: ignore[union-attr]


def test_a_missing_or_unreadable_s3_catalog_is_a_one_line_error(
    access: S3Access, catalog_in_s3: tuple[str, str]
) -> None:
    uri, other = catalog_in_s3
    with pytest.raises(SourceNotFound, match="no such manifest"):
        open_source(uri.replace("manifest.csv", "nothing.csv"), access)
    with pytest.raises(UnknownLayout, match="only manifests are read from S3"):
        open_source(f"s3://{other}/photos/blue.jpg", access)
    with pytest.raises(SourceNotFound, match="cannot read"):
        open_source(uri, S3Access("127.0.0.1:1", AWS_TEST_REGION))  # no scheme


def test_the_cli_ingests_an_s3_manifest_with_the_apps_s3_settings(
    access: S3Access, s3: S3Server, kaggle_zip: Path, tmp_path: Path
) -> None:
    client = access.client()
    bucket = unique_name("cli")
    client.create_bucket(Bucket=bucket)
    lines = ["id,image,name"]
    with open_source(kaggle_zip) as source:
        for item in itertools.islice(source, 2):
            data = item.image.read(MAX_IMAGE_BYTES)  # type: ignore[union-attr]
            client.put_object(Bucket=bucket, Key=f"images/{item.id}.jpg", Body=data)
            lines.append(f"{item.id},images/{item.id}.jpg,{item.name.replace(',', ' ')}")
    lines.append("gone,images/gone.jpg,Gone")
    client.put_object(Bucket=bucket, Key="manifest.csv", Body="\n".join(lines).encode())
    report = tmp_path / "report.json"

    result = CliRunner().invoke(
        app,
        ["ingest", f"s3://{bucket}/manifest.csv", "--report", str(report)],
        env={
            "FASHION_SEARCH_HOME": str(tmp_path / "home"),
            "S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_REGION": AWS_TEST_REGION,
        },
    )

    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["summary"]["indexed"] == 2
    [failure] = document["failures"]
    assert (failure["id"], failure["reason"]) == ("gone", "missing")
    assert failure["image"] == f"s3://{bucket}/images/gone.jpg"
