"""The worker pool of the FUSE adapter (sealfs.fuseops.run.Workers)."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from sealfs.fuseops.run import Workers


def test_results_exceptions_and_the_bound():
    workers = Workers(3)
    running, peak, lock = [0], [0], threading.Lock()

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)  # each job lasts a while, so that jobs overlap
        with lock:
            running[0] -= 1
        if i == 7:
            raise OSError(5, "seven")
        return i * i

    async def main() -> dict:
        out: dict = {}

        async def one(i: int) -> None:
            try:
                out[i] = await workers.run(lambda: job(i))
            except OSError as exc:
                out[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
        return out

    out = trio.run(main)
    assert {i: v for i, v in out.items() if i != 7} == {i: i * i for i in range(10) if i != 7}
    assert isinstance(out[7], OSError) and out[7].strerror == "seven"
    assert peak[0] == 3  # never more at once than threads
    names = {t.name for t in threading.enumerate()}
    assert {f"sealfs-worker-{i}" for i in range(3)} <= names
    workers.close()
    assert not {t.name for t in threading.enumerate()} & {f"sealfs-worker-{i}" for i in range(3)}


def test_a_call_is_not_abandoned_when_its_caller_is_cancelled():
    workers = Workers(1)
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.2)  # longer than the caller waits (0.01 s): the cancel must wait for it
        finished.set()

    async def main() -> None:
        with trio.move_on_after(0.01):
            await workers.run(slow)
        # the cancel waited for the thread: nothing runs on after the caller
        assert finished.is_set()

    trio.run(main)
    workers.close()


def test_no_threads():
    with pytest.raises(ValueError):
        Workers(0)
