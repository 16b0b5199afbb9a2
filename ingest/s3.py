"""Catalogs in S3 (or an S3-compatible store): ``s3://bucket/key`` manifests and images.

Ingest reads with boto3 and the S3 settings the app already has (``S3_ENDPOINT_URL``,
``AWS_REGION``, boto3's usual credential chain), handed over by the composition root as an
``S3Access``. Items carry an ``S3Image`` (plain values, so it pickles to Ray workers) and each
process builds its own client once, on first read.

A missing object or an unreadable one is the item's failure (reported, never fatal), like a
missing file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from domain.errors import BadInput, PayloadTooLarge

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

S3_SCHEME = "s3"
S3_PREFIX = "s3://"
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
MAX_ATTEMPTS = 3


class S3ReadError(Exception):
    """An object that cannot be read (missing, refused, unreachable); the message says which."""


@dataclass(frozen=True)
class S3Access:
    """Where and how to reach S3: plain values, hashable, picklable."""

    endpoint_url: str | None = None
    """An S3-compatible endpoint (MinIO, SeaweedFS, moto); None: AWS."""
    region: str | None = None
    timeout_s: float = 5.0

    def client(self) -> S3Client:
        """This process's client for these settings (built once; boto3 clients are
        thread-safe)."""
        client: S3Client = _client(self)
        return client

    def get(self, bucket: str, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes. Raises S3ReadError, or PayloadTooLarge above ``max_bytes``
        (checked on the object's size before its body is read)."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"{S3_PREFIX}{bucket}/{key}"
        try:
            response = self.client().get_object(Bucket=bucket, Key=key)
            size = int(response.get("ContentLength", 0))
            body = response["Body"]
            if max_bytes is not None and size > max_bytes:
                body.close()
                raise PayloadTooLarge(
                    f"image of {size:,} bytes is above the limit of {max_bytes:,}"
                )
            return body.read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_CODES:
                raise S3ReadError(f"no such object: {where}") from None
            raise S3ReadError(f"cannot read {where}: {code or exc}") from None
        except (BotoCoreError, ValueError) as exc:  # ValueError: an unusable endpoint URL
            raise S3ReadError(f"cannot read {where}: {exc}") from None

    def download(self, bucket: str, key: str, target: Path) -> bool:
        """Copy the object to ``target`` (streamed, any size); False when it does not exist.
        Raises S3ReadError when it cannot be read."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().download_file(bucket, key, str(target))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_CODES:
                return False
            raise S3ReadError(f"cannot read {S3_PREFIX}{bucket}/{key}: {code or exc}") from None
        except (BotoCoreError, ValueError) as exc:
            raise S3ReadError(f"cannot read {S3_PREFIX}{bucket}/{key}: {exc}") from None
        return True


@functools.lru_cache(maxsize=4)
def _client(access: S3Access) -> Any:
    import boto3
    from botocore.config import Config

    extra: dict[str, Any] = {}
    if access.endpoint_url:
        # S3-compatible stores want path-style addressing (as the S3 image store does)
        extra["s3"] = {"addressing_style": "path"}
        extra["request_checksum_calculation"] = "when_required"
        extra["response_checksum_validation"] = "when_required"
    config = Config(
        region_name=access.region,
        signature_version="s3v4",
        connect_timeout=access.timeout_s,
        read_timeout=access.timeout_s,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        max_pool_connections=32,
        **extra,
    )
    return boto3.session.Session().client("s3", endpoint_url=access.endpoint_url, config=config)


def is_s3_uri(text: str) -> bool:
    return text.startswith(S3_PREFIX)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (bucket, key). Raises BadInput without a bucket or key."""
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != S3_SCHEME or not parts.netloc or not key:
        raise BadInput(f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, key
