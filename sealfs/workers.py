"""A bounded pool of threads for the blocking part of FUSE requests.

``trio.to_thread.run_sync`` costs about 120 µs per call on the 2-CPU
machine of docs/PERFORMANCE.md: a capacity limiter, a copy of the context,
a thread cache that hands each job to a thread of its own, and the report
back.  A request that reaches the store pays it once, and small-file
workloads send several such requests per file.  This pool is one queue
and one wake-up back into trio (``TrioToken.run_sync_soon``): about 65 µs.

Like ``to_thread.run_sync`` without ``abandon_on_cancel``, a call is not
cancellable: the caller waits until its thread is done, so nothing runs on
after the request that started it has been answered.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, TypeVar

import outcome
import trio

T = TypeVar("T")


class Workers:
    def __init__(self, threads: int, name: str = "sealfs-worker"):
        if threads < 1:
            raise ValueError("at least one worker thread is needed")
        self.threads = threads
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._started: list[threading.Thread] = []

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in one of the threads; its result or exception."""
        if not self._started:
            self._start(trio.lowlevel.current_trio_token())
        self._jobs.put((fn, trio.lowlevel.current_task()))
        return await trio.lowlevel.wait_task_rescheduled(_not_abortable)

    def _start(self, token: trio.lowlevel.TrioToken) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._work, args=(token,), name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._started.append(t)

    def _work(self, token: trio.lowlevel.TrioToken) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, task = job
            result = outcome.capture(fn)
            del fn, job  # (nothing of the job outlives it here)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                return  # the loop is gone, and with it whoever waited

    def close(self) -> None:
        """Let the threads end once the queued jobs are done."""
        for _ in self._started:
            self._jobs.put(None)
        for t in self._started:
            t.join()
        self._started.clear()


def _not_abortable(_raise_cancel) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED
