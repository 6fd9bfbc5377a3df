"""Bounded hashing: the sha256 of an executable, a script or a mapped
library, remembered by the stat key of the open file.

Any user can make the daemon hash a file of their choosing (run a program,
name a script, map a library), so the work is bounded: files above a size
limit are refused rather than read, one file is hashed once at a time, and
only a few threads may be hashing at once, fewer for any one uid.  A file
not hashed for a limit raises :class:`HashRefused`, whose text says which
limit (for the audit line).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

#: Binaries/scripts whose hash is remembered (by stat key).
HASH_CACHE_ENTRIES = 512
_HASH_CHUNK = 1 << 20
#: Largest file (bytes) that is hashed; policy key ``max_hash_mib``.
MAX_HASH_BYTES = 256 << 20
#: Threads that may be hashing (or waiting for a hash) at once, in all and
#: for one uid: half and a quarter of the FUSE worker pool (16 threads; the
#: adapter sets them from its pool), so that requests whose identity needs
#: no new hash always find a thread, and one uid leaves hashing to others.
HASH_JOBS = 8
HASH_JOBS_PER_UID = 4


class HashRefused(Exception):
    """A file was not hashed because of a limit of :class:`HashCache`
    (``str()`` says which, for the audit line)."""


class HashCache:
    """sha256 of files, remembered by the stat key of the open file.

    The key is (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): a
    changed file changes its ctime, which no unprivileged user can set back,
    so a stale hash cannot be served.  At most ``entries`` keys are kept
    (least recently used first out).  Thread-safe.

    Bounded work: a file larger than ``max_bytes`` is refused without being
    read; a file being hashed is hashed by that one thread while the others
    asking for it wait for its result; and at most ``jobs`` threads hash or
    wait at once, ``jobs_per_uid`` of them for one uid (the caller's): past
    that, :class:`HashRefused` at once, so no caller can keep more than a
    few worker threads busy, however many requests it sends.
    """

    def __init__(
        self,
        entries: int = HASH_CACHE_ENTRIES,
        *,
        max_bytes: int = MAX_HASH_BYTES,
        jobs: int = HASH_JOBS,
        jobs_per_uid: int = HASH_JOBS_PER_UID,
    ):
        self.entries = entries
        self.max_bytes = max_bytes
        self.jobs = jobs
        self.jobs_per_uid = jobs_per_uid
        self._hashes: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()
        #: key -> set when the thread hashing that file is done
        self._running: dict[tuple, threading.Event] = {}
        #: uid -> threads hashing or waiting for it
        self._busy: dict[int | None, int] = {}
        #: Number of files actually read and hashed (for tests, benchmarks).
        self.computed = 0

    def __len__(self) -> int:
        return len(self._hashes)

    def busy(self, uid: int | None) -> int:
        """Threads hashing (or waiting for a hash) for ``uid`` now."""
        with self._lock:
            return self._busy.get(uid, 0)

    @staticmethod
    def key(st: os.stat_result) -> tuple:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def of_fd(self, fd: int, uid: int | None = None) -> str:
        """Hash of the open file ``fd`` (read from offset 0, not moved),
        for a caller of ``uid``.  Raises :class:`HashRefused` past a limit."""
        st = os.fstat(fd)
        key = self.key(st)
        with self._lock:
            digest = self._hashes.get(key)
            if digest is not None:
                self._hashes.move_to_end(key)
                return digest
            if st.st_size > self.max_bytes:
                raise HashRefused(
                    f"it is {_size(st.st_size)}, above the {_size(self.max_bytes)} that sealfs "
                    "hashes (max_hash_mib in the policy)"
                )
            if sum(self._busy.values()) >= self.jobs:
                raise HashRefused(f"the limit of {self.jobs} hashes in progress is reached; try again")
            if self._busy.get(uid, 0) >= self.jobs_per_uid:
                raise HashRefused(f"uid {uid} is at its limit of {self.jobs_per_uid} hashes in progress; try again")
            self._busy[uid] = self._busy.get(uid, 0) + 1
        try:
            return self._single(fd, key)
        finally:
            with self._lock:
                self._busy[uid] -= 1
                if not self._busy[uid]:
                    del self._busy[uid]

    def _single(self, fd: int, key: tuple) -> str:
        """The hash of ``fd``: computed here, or by the thread already
        hashing the same file (waited for)."""
        while True:
            with self._lock:
                digest = self._hashes.get(key)
                if digest is not None:
                    return digest
                running = self._running.get(key)
                if running is None:
                    done = self._running[key] = threading.Event()
                    break
            running.wait()  # then the cache has it, or that thread failed: try again
        try:
            return self._compute(fd, key)
        finally:
            with self._lock:
                del self._running[key]
            done.set()

    def _compute(self, fd: int, key: tuple) -> str:
        """Read and hash ``fd``: no more than the size it had (``key``), so
        a file made to grow meanwhile cannot make this read on; a file that
        changed meanwhile has no hash to give (refused)."""
        h = hashlib.sha256()
        size = key[2]
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(_HASH_CHUNK, size - offset), offset)
            if not chunk:
                break
            h.update(chunk)
            offset += len(chunk)
        digest = h.hexdigest()
        if offset != size or self.key(os.fstat(fd)) != key:
            raise HashRefused("it changed while it was being hashed")
        with self._lock:
            self.computed += 1
            self._hashes[key] = digest
            while len(self._hashes) > self.entries:
                self._hashes.popitem(last=False)
        return digest


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"
