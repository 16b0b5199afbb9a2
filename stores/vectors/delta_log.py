"""The append-only change log of one FAISS space (see faiss_index.py, "Persistence").

A log is a sequence of records, each ``header | payload``: the header is the magic bytes,
the operation, the payload length and the payload's CRC-32. An upsert's payload is a JSON
document (ids, tags) followed by the float32 vectors; a delete's is the JSON document alone.
Records are self-delimiting and checked, so a reader stops at the first incomplete or
damaged record: the torn tail a crash mid-append leaves behind, or a record another process
is appending right now. Nothing past that point was acknowledged (a writer fsyncs its
records before ``flush()`` returns), and the next writer cuts the torn tail off before it
appends.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from domain.ports import Vectors

Operation = Literal["upsert", "delete"]

MAGIC = b"FSVL"
_HEADER = struct.Struct("<4sB3xQI")  # magic, operation, payload bytes, CRC-32 of the payload
_JSON_LENGTH = struct.Struct("<I")
_OPERATIONS: dict[Operation, int] = {"upsert": 1, "delete": 2}
_BY_CODE: dict[int, Operation] = {code: op for op, code in _OPERATIONS.items()}


@dataclass(frozen=True)
class Change:
    """One upsert (ids, vectors, tags) or delete (ids) as it was applied to a space."""

    operation: Operation
    ids: tuple[str, ...]
    vectors: Vectors | None = None
    tags: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def upsert(
        cls, ids: Sequence[str], vectors: Vectors, tags: Sequence[Mapping[str, str]]
    ) -> Change:
        return cls("upsert", tuple(ids), np.array(vectors, dtype=np.float32), tuple(tags))

    @classmethod
    def delete(cls, ids: Sequence[str]) -> Change:
        return cls("delete", tuple(ids))

    def encode(self) -> bytes:
        document: dict[str, object] = {"ids": list(self.ids)}
        if self.operation == "upsert":
            document["tags"] = [dict(t) for t in self.tags]
        text = json.dumps(document, ensure_ascii=False).encode("utf-8")
        payload = _JSON_LENGTH.pack(len(text)) + text
        if self.vectors is not None:
            payload += np.ascontiguousarray(self.vectors, dtype="<f4").tobytes()
        header = _HEADER.pack(MAGIC, _OPERATIONS[self.operation], len(payload), zlib.crc32(payload))
        return header + payload


def decode(data: bytes | memoryview, dim: int) -> tuple[list[Change], int]:
    """The complete, intact records at the start of ``data`` and how many bytes they take
    (everything after them is incomplete or damaged)."""
    view = memoryview(data)
    changes: list[Change] = []
    offset = 0
    while offset + _HEADER.size <= len(view):
        magic, code, length, crc = _HEADER.unpack_from(view, offset)
        start = offset + _HEADER.size
        end = start + length
        if magic != MAGIC or code not in _BY_CODE or end > len(view):
            break
        payload = view[start:end]
        if zlib.crc32(payload) != crc:
            break
        change = _parse(_BY_CODE[code], payload, dim)
        if change is None:
            break
        changes.append(change)
        offset = end
    return changes, offset


def _parse(operation: Operation, payload: memoryview, dim: int) -> Change | None:
    (text_length,) = _JSON_LENGTH.unpack_from(payload, 0)
    text_end = _JSON_LENGTH.size + text_length
    try:
        document = json.loads(bytes(payload[_JSON_LENGTH.size : text_end]).decode("utf-8"))
    except ValueError:
        return None
    ids = tuple(str(pid) for pid in document["ids"])
    if operation == "delete":
        return Change.delete(ids)
    raw = payload[text_end:]
    if len(raw) != len(ids) * dim * 4:
        return None
    vectors: Vectors = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(len(ids), dim)
    tags = tuple({str(k): str(v) for k, v in t.items()} for t in document["tags"])
    return Change("upsert", ids, vectors, tags)
