"""Running FUSE requests: the worker threads and the one error path.

:func:`fuse_errors` is the one place where a failure becomes a reply:
pyfuse3 only catches ``FUSEError`` in a handler, and any other exception
escaping would take the mount down, so everything else is logged once and
answered with EIO.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import pyfuse3
import trio

from ..errors import FsError, IntegrityError, SealfsError, StoreError

#: (The log lines of the adapter keep the name of its package.)
log = logging.getLogger("sealfs.fuseops")

T = TypeVar("T")


class Workers:
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


@contextlib.contextmanager
def fuse_errors(op: str):
    """The one error path: a failure of ``op`` becomes the FUSEError of its
    errno (FsError) or EIO (anything else), logged once."""
    try:
        yield
    except FsError as exc:
        if exc.errno == errno.EIO:
            log.error("%s: %s", op, exc)
        elif exc.errno == errno.ENOSPC:
            log.warning("%s: %s", op, exc)
        raise pyfuse3.FUSEError(exc.errno) from None
    except IntegrityError as exc:
        log.error("integrity failure in %s: %s", op, exc)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except StoreError as exc:
        log.error("store failure in %s: %s", op, exc)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except SealfsError as exc:
        log.error("%s failed: %s", op, exc)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except Exception:
        log.exception("unexpected error in %s", op)
        raise pyfuse3.FUSEError(errno.EIO) from None


def checked(check, call):
    """``call()`` after the policy check ``check()``, in one thread call."""
    check()
    return call()


class _QuietLateReplies(logging.Filter):
    """pyfuse3 logs an ERROR whenever the kernel refuses a reply.  With
    ENOENT that only means nobody waits for it any more: the request was
    interrupted (the caller got a signal) or the connection is gone (an
    unmount while a release was still uploading; the upload completes, and
    the daemon syncs everything before it exits).  Nothing is lost, so it
    is said at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and "fuse_reply_* failed" in str(record.msg)
            and record.args
            and record.args[-1] == os.strerror(errno.ENOENT)
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


#: The filter for pyfuse3's logger (one instance: adding it again does nothing).
QUIET_LATE_REPLIES = _QuietLateReplies()
