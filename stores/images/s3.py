"""ImageStore on Amazon S3 or an S3-compatible store (MinIO, Cloudflare R2, ...) with boto3.

Keys come from the domain (they are derived from the content hash), so an object never
changes once written and is served with a long, immutable ``Cache-Control``. Browsers load
images through presigned GET URLs (``S3_PRESIGN_EXPIRY_S``), or through
``S3_PUBLIC_BASE_URL`` + key when the bucket sits behind a public bucket policy or a CDN.
Objects of ``multipart_threshold`` bytes or more are uploaded in parts.

boto3 is blocking, so every call runs in a worker thread. botocore's connect/read timeouts
and retries (standard mode) come from the settings, and each call also has an overall
deadline, so an unreachable store raises ``UpstreamUnavailable`` (naming ``S3_BUCKET`` /
``S3_ENDPOINT_URL``) in time instead of hanging a request.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from domain.errors import BadInput, NotFound, StoreMisconfigured, UpstreamUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

MB = 1024 * 1024
DEFAULT_MULTIPART_THRESHOLD = 8 * MB
DEFAULT_MULTIPART_CHUNKSIZE = 8 * MB
CACHE_CONTROL = "public, max-age=31536000, immutable"
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
DENIED_CODES = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)
URL_CACHE_SIZE = 10_000
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600
"""SigV4's limit on a presigned URL's lifetime."""

_SESSION: boto3.session.Session | None = None
_SESSION_LOCK = threading.Lock()


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def check_endpoint_url(url: str | None, setting: str = "S3_ENDPOINT_URL") -> None:
    """Raise StoreMisconfigured, in one line, for a URL boto3 cannot use (botocore's own
    ValueError only surfaces as a traceback): an http(s) scheme and a host are needed."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreMisconfigured(
            f"{setting}={url!r} is not an http(s) URL: write it with its scheme, e.g. "
            f"http://{url.split('://')[-1]}"
        )
    try:
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError as exc:
        raise StoreMisconfigured(f"{setting}={url!r} has an invalid port: {exc}") from None


class S3ImageStore:
    """The ImageStore port on one bucket (optionally under a key prefix)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        public_base_url: str | None = None,
        presign_expiry_s: int = 3600,
        timeout_s: float = 5.0,
        max_attempts: int = 3,
        key_prefix: str = "",
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int = DEFAULT_MULTIPART_CHUNKSIZE,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        """``credentials`` (``aws_access_key_id``, ``aws_secret_access_key``,
        ``aws_session_token``) override boto3's usual chain (environment, profile, role)."""
        if not bucket:
            raise StoreMisconfigured("S3_BUCKET is empty")
        if presign_expiry_s < 1 or presign_expiry_s > MAX_PRESIGN_EXPIRY_S:
            raise StoreMisconfigured("S3_PRESIGN_EXPIRY_S must be between 1 s and 7 days")
        check_endpoint_url(endpoint_url)
        if public_base_url:
            check_endpoint_url(public_base_url, "S3_PUBLIC_BASE_URL")
        self.bucket = bucket
        self._endpoint_url = endpoint_url or None
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._expiry = presign_expiry_s
        self._timeout = timeout_s
        self._prefix = key_prefix
        extra: dict[str, Any] = {}
        if self._endpoint_url:
            # S3-compatible stores and local endpoints want path-style addressing, and many
            # do not implement the CRC checksums botocore now sends by default.
            extra["s3"] = {"addressing_style": "path"}
            extra["request_checksum_calculation"] = "when_required"
            extra["response_checksum_validation"] = "when_required"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=32,
            **extra,
        )
        creds = dict(credentials or {})
        with _SESSION_LOCK:  # boto3 sessions are not thread-safe; loading one is slow
            global _SESSION
            if _SESSION is None:
                _SESSION = boto3.session.Session()
            self._client: S3Client = _SESSION.client(
                "s3",
                endpoint_url=self._endpoint_url,
                region_name=region,
                config=config,
                aws_access_key_id=creds.get("aws_access_key_id"),
                aws_secret_access_key=creds.get("aws_secret_access_key"),
                aws_session_token=creds.get("aws_session_token"),
            )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
        )
        self._multipart_threshold = multipart_threshold
        self._bucket_verified = False
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._urls_lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------

    @property
    def where(self) -> str:
        where = f"S3_BUCKET={self.bucket}"
        if self._endpoint_url:
            where += f", S3_ENDPOINT_URL={self._endpoint_url}"
        return where

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or "\x00" in key:
            raise BadInput(f"invalid image key {key!r}")
        return self._prefix + key

    def _translate(self, exc: Exception, key: str | None = None) -> Exception:
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if key is not None and code in NOT_FOUND_CODES:
                return NotFound(f"no image {key!r}")
            if code in NO_BUCKET_CODES or (key is None and code in NOT_FOUND_CODES):
                return UpstreamUnavailable(f"the bucket does not exist ({self.where})")
            if code in DENIED_CODES:
                return UpstreamUnavailable(
                    f"S3 denied access ({self.where}): check the AWS credentials and policy"
                )
            if _status(exc) >= 500 or code in ("SlowDown", "ServiceUnavailable"):
                return UpstreamUnavailable(f"S3 is unavailable ({self.where}): {code}")
            return exc
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return UpstreamUnavailable(
                f"no usable AWS credentials for S3 ({self.where}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile or a role"
            )
        if isinstance(exc, ConnectionError | BotoCoreError):
            return UpstreamUnavailable(f"cannot reach S3 ({self.where}): {exc}")
        return exc

    async def _run(self, call: Callable[[], T], key: str | None = None, deadline: bool = True) -> T:
        """Run a blocking boto3 call in a worker thread, within the deadline. (A call that
        outlives the deadline finishes in its thread; botocore's own timeouts end it.)"""
        try:
            if deadline:
                async with asyncio.timeout(self._timeout):
                    return await asyncio.to_thread(call)
            return await asyncio.to_thread(call)
        except TimeoutError as exc:
            raise UpstreamUnavailable(
                f"S3 ({self.where}) did not answer within {self._timeout:g}s"
            ) from exc
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key) from exc

    # -- the port ------------------------------------------------------------------------

    async def check(self) -> None:
        """Fails with UpstreamUnavailable naming S3_BUCKET / S3_ENDPOINT_URL when the bucket
        cannot be used."""
        await self._run(lambda: self._client.head_bucket(Bucket=self.bucket))
        self._bucket_verified = True

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self._key(key)
        extra = {"ContentType": content_type, "CacheControl": CACHE_CONTROL}
        if len(data) >= self._multipart_threshold:
            # Parts are uploaded in parallel; each request has botocore's timeouts but the
            # whole upload has no overall deadline (it scales with the size).
            await self._run(
                lambda: self._client.upload_fileobj(
                    io.BytesIO(data), self.bucket, name, ExtraArgs=extra, Config=self._transfer
                ),
                deadline=False,
            )
            return
        await self._run(
            lambda: self._client.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=data,
                ContentType=content_type,
                CacheControl=CACHE_CONTROL,
            )
        )

    async def get(self, key: str) -> bytes:
        name = self._key(key)

        def read() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=name)
            with response["Body"] as body:
                return body.read()

        return await self._run(read, key=key)

    async def content_type(self, key: str) -> str:
        name = self._key(key)
        try:
            head = await self._run(
                lambda: self._client.head_object(Bucket=self.bucket, Key=name), key
            )
        except NotFound:
            # A HEAD answer has no body: a missing bucket also looks like a missing key.
            await self._verify_bucket_once()
            raise
        return head.get("ContentType") or "application/octet-stream"

    async def _verify_bucket_once(self) -> None:
        if not self._bucket_verified:
            await self.check()
            self._bucket_verified = True

    async def exists(self, key: str) -> bool:
        try:
            await self.content_type(key)
        except NotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        name = self._key(key)
        await self._run(lambda: self._client.delete_object(Bucket=self.bucket, Key=name))
        with self._urls_lock:
            self._urls.pop(key, None)

    async def key_pages(self, page_size: int = 1000) -> AsyncIterator[list[str]]:
        """The bucket's keys (under the prefix), one ListObjectsV2 page at a time."""
        token: str | None = None
        while True:
            request: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": self._prefix,
                "MaxKeys": min(page_size, 1000),
            }
            if token is not None:
                request["ContinuationToken"] = token
            response = await self._run(partial(self._client.list_objects_v2, **request))
            keys = [o["Key"][len(self._prefix) :] for o in response.get("Contents", [])]
            if keys:
                yield keys
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or token is None:
                return

    def url(self, key: str) -> str:
        name = self._key(key)
        if self._public_base_url:
            return f"{self._public_base_url}/{quote(name)}"
        # Reuse a URL for half its lifetime: the same image gets the same URL across
        # searches, so browsers and proxies can cache it.
        now = time.monotonic()
        with self._urls_lock:
            cached = self._urls.get(key)
            if cached is not None and now - cached[1] < self._expiry / 2:
                self._urls.move_to_end(key)
                return cached[0]
        url = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=self._expiry
        )
        with self._urls_lock:
            self._urls[key] = (url, now)
            self._urls.move_to_end(key)
            while len(self._urls) > URL_CACHE_SIZE:
                self._urls.popitem(last=False)
        return url

    async def create_bucket(self) -> None:
        """Create the bucket if it does not exist (tests and first-time set-up)."""

        def create() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in NOT_FOUND_CODES | NO_BUCKET_CODES:
                    raise
            region = self._client.meta.region_name
            if region and region != "us-east-1":
                self._client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                )
            else:
                self._client.create_bucket(Bucket=self.bucket)

        await self._run(create)

    async def close(self) -> None:
        self._client.close()
