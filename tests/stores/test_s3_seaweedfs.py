"""S3ImageStore against SeaweedFS (``weed mini``): the ImageStore contract on an S3 gateway
that checks request signatures, so wrong credentials are refused for real (moto accepts any);
moto stays for fault injection (tests/stores/test_s3.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from domain.errors import UpstreamUnavailable
from stores.images import s3 as s3_module
from stores.images.s3 import S3ImageStore
from tests.stores.contracts import ImageStoreContract
from tests.stores.servers import AWS_TEST_REGION, SeaweedServer, seaweed_server, unique_name
from tests.stores.test_store_commands import run

__all__ = ["seaweed_server"]

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4


def make_store(
    server: SeaweedServer, bucket: str, credentials: dict[str, str] | None = None
) -> S3ImageStore:
    return S3ImageStore(
        bucket,
        endpoint_url=server.endpoint_url,
        region=AWS_TEST_REGION,
        credentials=credentials or server.credentials,
        timeout_s=5.0,
        max_attempts=1,
    )


@pytest.fixture
async def bucket(seaweed_server: SeaweedServer) -> str:
    name = unique_name("bucket")
    store = make_store(seaweed_server, name)
    await store.create_bucket()
    await store.close()
    return name


class TestS3ImageStoreOnSeaweedFS(ImageStoreContract):
    @pytest.fixture
    async def image_store(
        self, seaweed_server: SeaweedServer, bucket: str
    ) -> AsyncIterator[S3ImageStore]:
        store = make_store(seaweed_server, bucket)
        yield store
        await store.close()


WRONG_CREDENTIALS = {
    "wrong secret": {
        "aws_access_key_id": SeaweedServer.ACCESS_KEY,
        "aws_secret_access_key": "not-the-secret",
    },
    "unknown key": {"aws_access_key_id": "AKIANOTAKEY", "aws_secret_access_key": "x"},
}


@pytest.mark.parametrize("which", sorted(WRONG_CREDENTIALS))
async def test_wrong_credentials_are_refused_naming_the_settings(
    seaweed_server: SeaweedServer, bucket: str, which: str
) -> None:
    store = make_store(seaweed_server, bucket, WRONG_CREDENTIALS[which])
    try:
        for call in (
            store.check(),
            store.put("p1-abc.jpg", JPEG, "image/jpeg"),
            store.get("p1-abc.jpg"),
        ):
            with pytest.raises(UpstreamUnavailable, match="check the AWS credentials") as caught:
                await call
            assert f"S3_BUCKET={bucket}" in str(caught.value)
            assert "not-the-secret" not in str(caught.value)
    finally:
        await store.close()
    good = make_store(seaweed_server, bucket)
    try:
        assert await good.exists("p1-abc.jpg") is False  # nothing was written
    finally:
        await good.close()


async def test_presigned_urls_are_checked_by_the_gateway(
    seaweed_server: SeaweedServer, bucket: str
) -> None:
    store = make_store(seaweed_server, bucket)
    forged = make_store(seaweed_server, bucket, WRONG_CREDENTIALS["wrong secret"])
    try:
        await store.put("p1-abc.jpg", JPEG, "image/jpeg")
        async with httpx.AsyncClient() as client:
            served = await client.get(store.url("p1-abc.jpg"))
            assert served.status_code == 200
            assert served.content == JPEG
            assert served.headers["content-type"] == "image/jpeg"
            assert (await client.get(forged.url("p1-abc.jpg"))).status_code == 403
            unsigned = store.url("p1-abc.jpg").split("?")[0]
            assert (await client.get(unsigned)).status_code in (401, 403)
    finally:
        await store.close()
        await forged.close()


def test_config_check_reports_refused_credentials(
    seaweed_server: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `config --check` as in a new process: boto3's shared session keeps the
    credentials it first read from the environment."""
    env = {
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": seaweed_server.endpoint_url,
        "AWS_REGION": AWS_TEST_REGION,
        "AWS_ACCESS_KEY_ID": SeaweedServer.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SeaweedServer.SECRET_KEY,
    }
    monkeypatch.setattr(s3_module, "_SESSION", None)
    code, output = run(env, "config", "--json", "--check")
    assert code == 0, output
    assert json.loads(output)["checks"] == {"images": "ok"}
    monkeypatch.setattr(s3_module, "_SESSION", None)
    code, output = run(
        {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "config", "--json", "--check"
    )
    assert code == 1
    assert "check the AWS credentials" in json.loads(output)["checks"]["images"]
