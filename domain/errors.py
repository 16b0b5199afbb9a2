"""Errors the domain raises; adapters translate their own failures into these."""

from __future__ import annotations


class FashionSearchError(Exception):
    """Base class of every error the product raises on purpose."""

    code = "INTERNAL"


class BadInput(FashionSearchError):
    """The caller sent something we cannot use (empty text, top_k out of range, bad cursor)."""

    code = "BAD_USER_INPUT"


class InvalidImage(BadInput):
    """Bytes that are not a supported image, or an image beyond the size or pixel limits."""


class PayloadTooLarge(BadInput):
    """An upload or a fetched image larger than the configured limit."""

    code = "PAYLOAD_TOO_LARGE"


class UrlRejected(BadInput):
    """An image URL we refuse to fetch (scheme, private address, redirect to one)."""


class NotFound(FashionSearchError):
    """A product, image or encoder that does not exist."""

    code = "NOT_FOUND"


class UnknownEncoder(NotFound):
    """An encoder id that no plugin provides, or that has nothing indexed."""


class Unauthenticated(FashionSearchError):
    code = "UNAUTHENTICATED"


class UpstreamUnavailable(FashionSearchError):
    """A store or remote service did not answer in time or refused the connection."""

    code = "UPSTREAM_UNAVAILABLE"


class StoreMisconfigured(UpstreamUnavailable):
    """A store's settings cannot work (a malformed URI or endpoint, an index of another
    dimension than the encoder's): retrying does not help, the operator must fix the setting
    the message names. Never the caller's fault, so never BAD_USER_INPUT."""


class WriterBusy(FashionSearchError):
    """Another process is writing to the same data home (an ingest, a mutation): the write
    was not made and can be retried. The message names the holder (pid, command)."""

    code = "WRITER_BUSY"


class EncoderUnavailable(FashionSearchError):
    """An encoder that cannot be loaded here (missing weights, offline hub download)."""

    code = "ENCODER_UNAVAILABLE"
