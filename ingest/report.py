"""What an ingest run did: the summary it returns and the machine-readable report it leaves."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any


class FailureReason(StrEnum):
    MISSING = "missing"
    """The image file or zip member does not exist, or the reference is unusable."""
    TOO_LARGE = "too_large"
    """Above the configured size limit."""
    INVALID_IMAGE = "invalid_image"
    """Not a JPEG, PNG or WebP image, or one the encoder cannot decode."""
    FETCH_FAILED = "fetch_failed"
    """An image URL that could not be downloaded (or no fetcher is configured)."""
    DUPLICATE_ID = "duplicate_id"
    """The id appeared earlier in the same source; the first occurrence was kept."""
    BAD_ROW = "bad_row"
    """A row that cannot become a product (no id, invalid JSON)."""


@dataclass(frozen=True)
class FailedItem:
    id: str
    image: str
    reason: FailureReason
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "image": self.image,
            "reason": self.reason.value,
            "message": self.message,
        }


@dataclass(frozen=True)
class IngestProgress:
    """Reported after every batch: items taken from the source so far and their outcome."""

    done: int
    total: int | None
    indexed: int
    updated: int
    skipped: int
    failed: int


@dataclass
class IngestSummary:
    """``indexed``: encoded and stored (new or changed image); ``updated``: same image, new
    name/description/tags (no re-encoding); ``skipped_unchanged``: nothing to do;
    ``failed``: see ``failures``."""

    encoders: list[str]
    seen: int = 0
    indexed: int = 0
    updated: int = 0
    skipped_unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[FailedItem] = field(default_factory=list)
    engine_counters: dict[str, int] = field(default_factory=dict)
    """What the engine did beyond the counts (the Ray engine: images hashed by its ledger
    check, images sent to its encoders, encoder actor pools started); none locally."""

    @property
    def images_per_s(self) -> float:
        """Images encoded and stored per second of wall time."""
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        """Source items handled (whatever the outcome) per second of wall time."""
        return self.seen / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, Any]:
        return {
            "encoders": list(self.encoders),
            "seen": self.seen,
            "indexed": self.indexed,
            "updated": self.updated,
            "skipped_unchanged": self.skipped_unchanged,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "items_per_s": round(self.items_per_s, 2),
        }


def report_document(
    summary: IngestSummary,
    source: str,
    layout: str,
    started_at: datetime | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    finished = datetime.now(UTC)
    return {
        "kind": "fashion-search.ingest-report",
        "version": 1,
        "source": source,
        "layout": layout,
        "started_at": (started_at or finished).isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "options": options or {},
        "summary": summary.counts(),
        **({"engine_counters": dict(summary.engine_counters)} if summary.engine_counters else {}),
        "failures": [f.to_dict() for f in summary.failures],
    }


def default_report_path(data_dir: Path, now: datetime | None = None) -> Path:
    moment = now or datetime.now(UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f".{moment.microsecond // 1000:03d}Z"
    return data_dir / "reports" / f"ingest-{stamp}.json"


def write_report(path: Path, document: dict[str, Any]) -> Path:
    """Write atomically (a reader never sees half a report) and return the path. Text that is
    not valid Unicode (a file name with Latin-1 bytes) is written escaped, not refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    temporary.write_text(text, "utf-8", errors="backslashreplace")
    os.replace(temporary, path)
    return path


def failures_by_reason(failures: Sequence[FailedItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure.reason.value] = counts.get(failure.reason.value, 0) + 1
    return counts


__all__ = [
    "FailedItem",
    "FailureReason",
    "IngestProgress",
    "IngestSummary",
    "default_report_path",
    "failures_by_reason",
    "report_document",
    "write_report",
]
