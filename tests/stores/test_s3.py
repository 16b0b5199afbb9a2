"""S3ImageStore through boto3 against moto's ThreadedMotoServer on a free port."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import numpy as np
import pytest

from domain.errors import BadInput, NotFound, StoreMisconfigured, UpstreamUnavailable
from fashion_search import wiring
from fashion_search.settings import Settings
from stores.images.s3 import CACHE_CONTROL, MB, S3ImageStore
from tests.stores.contracts import ImageStoreContract
from tests.stores.servers import (
    AWS_TEST_CREDENTIALS,
    AWS_TEST_REGION,
    HEALTHY_TIMEOUT_S,
    S3Server,
    free_port,
    hang_guard,
    s3_server,
    unique_name,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["s3_server"]

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4


def make_store(server: S3Server, bucket: str | None = None, **kwargs: object) -> S3ImageStore:
    return S3ImageStore(
        bucket or unique_name("bucket"),
        endpoint_url=server.endpoint_url,
        region=AWS_TEST_REGION,
        credentials=AWS_TEST_CREDENTIALS,
        **{"timeout_s": HEALTHY_TIMEOUT_S, **kwargs},  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(s3_server: S3Server) -> AsyncIterator[S3ImageStore]:
    store = make_store(s3_server)
    await store.create_bucket()
    yield store
    await store.close()


def raw_client(server: S3Server) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=AWS_TEST_REGION,
        aws_access_key_id=AWS_TEST_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["aws_secret_access_key"],
    )


class TestS3ImageStore(ImageStoreContract):
    @pytest.fixture
    async def image_store(self, s3_server: S3Server) -> AsyncIterator[S3ImageStore]:
        store = make_store(s3_server)
        await store.create_bucket()
        yield store
        await store.close()


async def test_presigned_url_serves_the_bytes_and_content_type(store: S3ImageStore) -> None:
    await store.put("p1-abc.jpg", JPEG, "image/jpeg")
    await store.put("p2-def.png", b"\x89PNG\r\n\x1a\n" + b"x" * 100, "image/png")
    url = store.url("p1-abc.jpg")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3600"]
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        assert response.status_code == 200
        assert response.content == JPEG
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["cache-control"] == CACHE_CONTROL
        png = await client.get(store.url("p2-def.png"))
        assert png.headers["content-type"] == "image/png"
        # A URL without the signature is refused by a private bucket.
        assert (await client.get(url.split("?")[0])).status_code == 403


async def test_presign_expiry_is_configurable_and_urls_are_reused(s3_server: S3Server) -> None:
    store = make_store(s3_server, presign_expiry_s=120)
    try:
        url = store.url("k-1.jpg")
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["120"]
        assert store.url("k-1.jpg") == url  # cacheable by browsers across searches
        assert store.url("k-2.jpg") != url
    finally:
        await store.close()


async def test_public_base_url_mode(s3_server: S3Server) -> None:
    bucket = unique_name("bucket")
    store = make_store(s3_server, bucket, public_base_url=f"{s3_server.endpoint_url}/{bucket}/")
    try:
        await store.create_bucket()
        raw_client(s3_server).put_bucket_policy(
            Bucket=bucket,
            Policy=(
                '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*",'
                f'"Action":"s3:GetObject","Resource":"arn:aws:s3:::{bucket}/*"}}]}}'
            ),
        )
        await store.put("p1 a+b.jpg", JPEG, "image/jpeg")
        url = store.url("p1 a+b.jpg")
        assert url == f"{s3_server.endpoint_url}/{bucket}/p1%20a%2Bb.jpg"
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
        assert response.status_code == 200
        assert response.content == JPEG
    finally:
        await store.close()


async def test_objects_carry_content_type_and_cache_control(
    s3_server: S3Server, store: S3ImageStore
) -> None:
    await store.put("p1-abc.webp", b"RIFF0000WEBPVP8 ", "image/webp")
    head = raw_client(s3_server).head_object(Bucket=store.bucket, Key="p1-abc.webp")
    assert head["ContentType"] == "image/webp"
    assert head["CacheControl"] == CACHE_CONTROL
    assert await store.content_type("p1-abc.webp") == "image/webp"
    with pytest.raises(NotFound):
        await store.content_type("nope.jpg")


async def test_large_objects_are_uploaded_in_parts(s3_server: S3Server) -> None:
    store = make_store(s3_server, multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    try:
        await store.create_bucket()
        data = np.random.default_rng(3).integers(0, 256, 11 * MB, dtype=np.uint8).tobytes()
        await store.put("huge.png", data, "image/png")
        head = raw_client(s3_server).head_object(Bucket=store.bucket, Key="huge.png")
        assert re.fullmatch(r'"[0-9a-f]{32}-3"', head["ETag"])  # three parts
        assert head["ContentType"] == "image/png"
        assert await store.get("huge.png") == data
    finally:
        await store.close()


async def test_key_prefix(s3_server: S3Server) -> None:
    store = make_store(s3_server, key_prefix="catalog-a/")
    try:
        await store.create_bucket()
        await store.put("k.jpg", JPEG, "image/jpeg")
        listing = raw_client(s3_server).list_objects_v2(Bucket=store.bucket)
        assert [o["Key"] for o in listing["Contents"]] == ["catalog-a/k.jpg"]
        assert "catalog-a/k.jpg" in store.url("k.jpg")
        with pytest.raises(BadInput):
            await store.get("/absolute.jpg")
    finally:
        await store.close()


async def test_missing_bucket_is_named(s3_server: S3Server) -> None:
    store = make_store(s3_server, bucket="no-such-bucket-here")
    try:
        with pytest.raises(UpstreamUnavailable, match="S3_BUCKET=no-such-bucket-here"):
            await store.check()
        with pytest.raises(UpstreamUnavailable, match="bucket does not exist"):
            await store.put("k.jpg", JPEG, "image/jpeg")
        # A HEAD 404 cannot tell a missing bucket from a missing key: exists() checks.
        with pytest.raises(UpstreamUnavailable, match="S3_BUCKET=no-such-bucket-here"):
            await store.exists("readyz-probe")
    finally:
        await store.close()


async def test_unreachable_endpoint_fails_within_the_timeout() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3ImageStore(
        "bucket",
        endpoint_url=endpoint,
        region=AWS_TEST_REGION,
        credentials=AWS_TEST_CREDENTIALS,
        timeout_s=1.0,
    )
    try:
        for call in (store.check(), store.get("k.jpg"), store.put("k.jpg", JPEG, "image/jpeg")):
            with (
                hang_guard(),
                pytest.raises(UpstreamUnavailable, match=re.escape(f"S3_ENDPOINT_URL={endpoint}")),
            ):
                await call
    finally:
        await store.close()


async def test_stopped_server_fails_within_the_timeout() -> None:
    server = S3Server().start()
    store = make_store(server, timeout_s=1.0)
    await store.create_bucket()
    await store.put("k.jpg", JPEG, "image/jpeg")
    server.stop()
    try:
        with hang_guard(), pytest.raises(UpstreamUnavailable, match="S3_BUCKET"):
            await store.get("k.jpg")
    finally:
        await store.close()


def test_wiring_builds_the_adapter_from_settings(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = Settings(
        s3_bucket="fs-images",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_presign_expiry_s=60,
        aws_region=AWS_TEST_REGION,
        store_timeout_s=HEALTHY_TIMEOUT_S,
    )
    store = wiring.s3_images(settings)
    assert store.where == f"S3_BUCKET=fs-images, S3_ENDPOINT_URL={s3_server.endpoint_url}"
    assert "X-Amz-Expires=60" in store.url("k.jpg")
    cdn = wiring.s3_images(
        settings.model_copy(update={"s3_public_base_url": "https://cdn.example.com/img"})
    )
    assert cdn.url("k.jpg") == "https://cdn.example.com/img/k.jpg"
    with pytest.raises(StoreMisconfigured, match="S3_BUCKET"):
        wiring.s3_images(Settings(s3_bucket=None))
