"""FileWriteLock: the embedded home's writer lock, held by real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.errors import WriterBusy
from stores.locks import FileWriteLock, NullWriteLock

REPO_ROOT = Path(__file__).resolve().parents[2]

HOLDER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from stores.locks import FileWriteLock

    async def main(path):
        async with FileWriteLock(path).hold("ingest"):
            print("held", flush=True)
            sys.stdin.readline()  # hold until told (or killed)
        print("released", flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


class Holder:
    def __init__(self, lock_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, str(lock_path), "--catalog", "shop.csv"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "released"
        self.process.wait(30)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    held = Holder(tmp_path / "writer.lock")
    yield held
    held.process.kill()
    held.process.wait(30)


async def test_a_busy_home_names_its_holder_in_one_line(tmp_path: Path, holder: Holder) -> None:
    lock = FileWriteLock(tmp_path / "writer.lock", wait_s=0.05)
    with pytest.raises(WriterBusy) as caught:
        async with lock.hold("addProduct"):
            pytest.fail("the lock was held by the other process")
    message = str(caught.value)
    assert "\n" not in message
    assert f"pid {holder.process.pid} (ingest: " in message
    assert "--catalog shop.csv" in message
    assert message.startswith(f"cannot addProduct: the data home {tmp_path} is being written")
    assert "Retry" in message
    assert caught.value.code == "WRITER_BUSY"


async def test_a_waiting_writer_says_once_whom_it_waits_for(
    tmp_path: Path, holder: Holder, caplog: pytest.LogCaptureFixture
) -> None:
    lock = FileWriteLock(tmp_path / "writer.lock", ingest_wait_s=0.2, notice_after_s=0)
    with pytest.raises(WriterBusy):
        async with lock.hold("ingest"):
            pytest.fail("the lock was held by the other process")
    notices = [r.getMessage() for r in caplog.records if r.name == "stores.locks"]
    assert len(notices) == 1, notices
    assert notices[0].startswith(f"ingest waits for pid {holder.process.pid} (ingest: ")


async def test_a_waiter_gets_the_lock_when_the_holder_releases(
    tmp_path: Path, holder: Holder
) -> None:
    lock = FileWriteLock(tmp_path / "writer.lock", wait_s=60, poll_s=0.005)
    entered = asyncio.Event()

    async def write() -> None:
        async with lock.hold("addProduct"):
            entered.set()
            assert lock.holder() is not None
            assert lock.holder().pid == os.getpid()  # type: ignore[union-attr]

    task = asyncio.create_task(write())
    for _ in range(20):
        await asyncio.sleep(0)  # the waiter tries, and keeps waiting: the holder holds it
    assert not entered.is_set()
    await asyncio.to_thread(holder.release)
    await task
    assert lock.holder() is None  # released: the file no longer names anyone


async def test_a_killed_holder_frees_the_lock(tmp_path: Path, holder: Holder) -> None:
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait(30)
    async with FileWriteLock(tmp_path / "writer.lock", wait_s=5).hold("addProduct"):
        pass


async def test_two_holders_in_one_process_are_serialised(tmp_path: Path) -> None:
    lock = FileWriteLock(tmp_path / "writer.lock", wait_s=0.05)
    async with lock.hold("ingest"):
        with pytest.raises(WriterBusy, match=rf"pid {os.getpid()} \(ingest: "):
            async with lock.hold("deleteProduct"):
                pytest.fail("held twice at once")
    async with lock.hold("deleteProduct"):
        pass


def test_ingest_waits_longer_than_a_mutation(tmp_path: Path) -> None:
    lock = FileWriteLock(tmp_path / "writer.lock", wait_s=2, ingest_wait_s=600)
    assert lock.wait_for("ingest") == 600
    assert lock.wait_for("addProduct") == lock.wait_for("deleteProduct") == 2


async def test_the_production_lock_holds_nothing() -> None:
    lock = NullWriteLock()
    async with lock.hold("ingest"), lock.hold("addProduct"):
        pass
