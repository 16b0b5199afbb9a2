"""Small helpers shared by the embedded stores: crash-safe file writes and file-system-safe
names."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_length: int = 80) -> str:
    """A file name for an arbitrary string (an encoder id such as
    ``open_clip:ViT-B-32@/path/ckpt.pt``): a readable slug plus a hash of the exact text, so
    two different strings never share a name even when their slugs agree."""
    slug = _UNSAFE.sub("_", text).strip("._-")[:max_length] or "x"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{slug}-{digest}"


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: Path, *, durable: bool = True, tmp_dir: Path | None = None
) -> Iterator[BinaryIO]:
    """Write ``path`` all or nothing: the data goes to a temporary file in the same directory
    (or in ``tmp_dir``, on the same file system) which replaces ``path`` (``os.replace``) only
    once it is complete (and, when ``durable``, fsynced). Readers never see a partial file; a
    crash leaves the old file in place plus at most a stray ``*.tmp`` file, whose name carries
    the writer's process id (see ``remove_orphaned_tmp_files``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = tmp_dir or path.parent
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}{TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(
    path: Path, data: bytes, *, durable: bool = True, tmp_dir: Path | None = None
) -> None:
    with atomic_writer(path, durable=durable, tmp_dir=tmp_dir) as handle:
        handle.write(data)


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that wrote this temporary file may still be writing it. Names
    without a process id (older versions) count as alive: they are left alone."""
    stem = tmp_name.removesuffix(TMP_SUFFIX)
    pid_text = stem.rsplit(".", 1)[-1].split("-", 1)[0]
    if not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_orphaned_tmp_files(directory: Path) -> None:
    """Remove the temporary files of writers that died mid-write (a crash, a SIGKILL); those
    of running processes stay. Safe while other processes write to the same directory."""
    if not directory.is_dir():
        return
    for stray in directory.glob(f".*{TMP_SUFFIX}"):
        if not _writer_alive(stray.name):
            with contextlib.suppress(OSError):
                stray.unlink()
