"""Locks that serialise the writers of one embedded data home across processes.

``FileWriteLock`` (the ``WriteLock`` port for the embedded profile) is an exclusive
``flock`` on ``<home>/writer.lock``. A writer holds it only while it writes (one ingest
batch, one mutation); encoding happens outside it, so other writers get their turn between
batches. The kernel drops a ``flock`` when its holder dies, SIGKILL included, so a crashed
writer never leaves the home locked. While holding it the writer records itself in the same
file (pid, purpose, command line, since when), and a writer that cannot get the lock in
time raises ``WriterBusy`` with a one-line message naming that holder.

Waiting is bounded and depends on the purpose: a mutation (``addProduct``, ...) waits
``wait_s`` (a few seconds: an ingest batch's write is short) and then fails with the
retryable ``WriterBusy``; an ingest batch waits ``ingest_wait_s`` (minutes), so two ingests
into one home interleave batch by batch and both complete. ``flock`` has no timeout, so a
waiter polls with a non-blocking attempt every ``poll_s`` (on the event loop, without
blocking it). Two holders in one process conflict too (each ``hold`` opens its own file
description), so the lock also serialises the concurrent requests of one server worker.

``NullWriteLock`` is the production profile's: MongoDB, Pinecone and S3 take concurrent
writers themselves, and serving instances keep no local state to protect.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from domain.errors import WriterBusy

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "writer.lock"
DEFAULT_WAIT_S = 5.0
"""How long a mutation waits for a running writer (an ingest batch) before WriterBusy."""
DEFAULT_INGEST_WAIT_S = 300.0
"""How long an ingest batch waits for another writer (e.g. a second ingest's batch)."""
DEFAULT_POLL_S = 0.02
NOTICE_AFTER_S = 2.0
"""A writer still waiting after this long says once (a log warning) whom it waits for."""
INGEST_PURPOSE = "ingest"
MAX_COMMAND_CHARS = 160


@contextlib.contextmanager
def exclusive_flock(path: Path) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (created when missing) for the block, waiting
    as long as it takes. For short critical sections between processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, as it recorded itself in the lock file."""

    pid: int
    purpose: str
    command: str
    since: float

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%H:%M:%S UTC")
        return f"pid {self.pid} ({self.purpose}: {self.command}) since {since}"

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            fields = json.loads(data.decode("utf-8"))
            return cls(
                int(fields["pid"]),
                str(fields["purpose"]),
                str(fields["command"]),
                float(fields["since"]),
            )
        except (ValueError, KeyError, TypeError):
            return None  # empty (released, or the holder has not written itself yet)


def this_process(purpose: str) -> Holder:
    argv = list(sys.orig_argv)
    if "-c" in argv[:-1]:  # an inline script: name it, do not print it
        argv[argv.index("-c") + 1] = "<script>"
    command = " ".join(shlex.join(argv).split())  # one line, whatever the arguments hold
    if len(command) > MAX_COMMAND_CHARS:
        command = command[: MAX_COMMAND_CHARS - 3] + "..."
    return Holder(os.getpid(), purpose, command, time.time())


class FileWriteLock:
    """The embedded home's ``WriteLock`` (see the module docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        wait_s: float = DEFAULT_WAIT_S,
        ingest_wait_s: float = DEFAULT_INGEST_WAIT_S,
        poll_s: float = DEFAULT_POLL_S,
        notice_after_s: float = NOTICE_AFTER_S,
    ) -> None:
        self.path = Path(path)
        self.wait_s = wait_s
        self.ingest_wait_s = ingest_wait_s
        self.poll_s = poll_s
        self.notice_after_s = notice_after_s

    def wait_for(self, purpose: str) -> float:
        """How long a writer with this purpose waits for the lock."""
        return self.ingest_wait_s if purpose == INGEST_PURPOSE else self.wait_s

    @contextlib.asynccontextmanager
    async def hold(self, purpose: str) -> AsyncIterator[None]:
        fd = await self._acquire(purpose)
        try:
            yield
        finally:
            self._release(fd)

    def holder(self) -> Holder | None:
        """The recorded holder (None when free or not recorded yet)."""
        try:
            return Holder.parse(self.path.read_bytes())
        except OSError:
            return None

    async def _acquire(self, purpose: str) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        wait_s = self.wait_for(purpose)
        started = time.monotonic()
        noticed = False
        try:
            while not _try_flock(fd):
                waited = time.monotonic() - started
                if waited >= wait_s:
                    raise WriterBusy(self._busy_message(purpose, wait_s))
                if not noticed and waited >= self.notice_after_s:
                    noticed = True
                    holder = self.holder()
                    who = holder.describe() if holder is not None else "another process"
                    logger.warning("%s waits for %s (up to %g s)", purpose, who, wait_s)
                await asyncio.sleep(self.poll_s)
            record = this_process(purpose).to_bytes()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _release(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)  # waiters then read "free", not a holder that is gone
        finally:
            os.close(fd)

    def _busy_message(self, purpose: str, waited_s: float) -> str:
        holder = self.holder()
        who = holder.describe() if holder is not None else "another process"
        return (
            f"cannot {purpose}: the data home {self.path.parent} is being written by {who}; "
            f"waited {waited_s:g} s. Retry when it has finished."
        )


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class NullWriteLock:
    """The production profile's ``WriteLock``: holds nothing (the stores serialise writes)."""

    @contextlib.asynccontextmanager
    async def hold(self, purpose: str) -> AsyncIterator[None]:
        yield
