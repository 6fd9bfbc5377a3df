"""The descriptors held open per exec of a process (its ``stat``,
``status`` and ``maps``), and how an exec is noticed through them.

They stay bound to the process they were opened for, and fail once it is
gone, even if its pid is reused; ``maps`` is bound to the address space,
and reads as empty once the process exec'd (see "Exec." in
:mod:`.identity`).  The last :data:`HANDLE_CACHE_ENTRIES` processes keep
theirs (:class:`HandleCache`), with what was gathered about their exec
(:attr:`Handles.stable`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .proc import Gone, Stat, Status, parse_stat, parse_status

if TYPE_CHECKING:
    from .programs import Stable

#: Processes (threads) whose stat, status and maps stay open (three
#: descriptors each), with their exec-stable part.
HANDLE_CACHE_ENTRIES = 128


class Handles:
    """``/proc/PID/stat``, ``status`` and ``maps`` of one exec of one
    process, held open, and what was gathered about that exec.  Reads
    (pread at 0 regenerates them) fail with ESRCH once the process is gone;
    ``maps`` is bound to the address space that the process had when it was
    opened, and reads as empty once an ``execve`` replaced it (or the
    process is gone): that is how an exec is noticed (``maps_fd`` is None
    when it could not be opened: then nothing is cached).
    A request holds them (:meth:`acquire`, :meth:`release`) from its first
    read to its last, so that :meth:`close` (eviction) never closes a
    descriptor in use, whose number could then be reused: the last user
    closes them.  (:meth:`HandleCache.held_stat` reads ``stat_fd`` after the
    request released them: it holds :attr:`lock` and checks :attr:`closed`
    instead.)"""

    def __init__(self, stat_fd: int, status_fd: int, maps_fd: int | None):
        self.stat_fd = stat_fd
        self.status_fd = status_fd
        self.maps_fd = maps_fd
        self.lock = threading.Lock()
        self.users = 0
        self.evicted = False
        self.closed = False
        #: The exec-stable part gathered for this exec (None: not yet).
        self.stable: Stable | None = None
        #: The layout (:class:`.proc.Stat`) seen first through these handles.
        self.layout: tuple[int, ...] | None = None
        #: What handles of the same process had gathered when its layout
        #: changed with no exec seen: kept if the executable is the same.
        self.previous: Stable | None = None

    def acquire(self) -> bool:
        """Hold the descriptors open for one request (False: evicted)."""
        with self.lock:
            if self.evicted:
                return False
            self.users += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.evicted and not self.users:
                self._close()

    def same_exec(self) -> bool:
        """Whether the process still runs the exec these were opened on."""
        return self.maps_fd is not None and os.pread(self.maps_fd, 1, 0) != b""

    def maps(self) -> bytes:
        """The whole maps text of this exec (empty once it is over)."""
        out = b""
        while True:
            chunk = os.pread(self.maps_fd, 1 << 20, len(out))
            if not chunk:
                return out
            out += chunk

    def close(self) -> None:
        """Close now, or when the last request holding them is done."""
        with self.lock:
            self.evicted = True
            if not self.users:
                self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.stat_fd)
            os.close(self.status_fd)
            if self.maps_fd is not None:
                os.close(self.maps_fd)


class HandleCache:
    """The :class:`Handles` of the last :data:`HANDLE_CACHE_ENTRIES`
    processes of ``proc`` (a procfs mount).  ``on_exec(tgid, start_time)``
    is told of each exec that the held ``maps`` of a process's leader
    saw.  Thread-safe."""

    def __init__(self, proc: str, on_exec: Callable[[int, int], None]):
        self.proc = proc
        self.on_exec = on_exec
        self._handles: OrderedDict[int, Handles] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._handles)

    def live(self, pid: int) -> tuple[Stat, Status, Handles]:
        """``stat`` and ``status`` of ``pid`` now, and its handles, acquired
        (the caller releases them), through descriptors held open per exec
        of a process (:class:`Handles`): they stay bound to the process
        (and ``maps`` to the exec) they were opened for, so once it is gone
        or has exec'd they fail or read empty, even if its pid was reused;
        then they are opened afresh, once."""
        carry = None
        for fresh in (False, True):
            h = self._handles_of(pid, fresh)
            if not h.acquire():  # evicted meanwhile
                continue
            if fresh:
                h.previous = carry
            try:
                st = parse_stat(os.pread(h.stat_fd, 65536, 0))
                status = parse_status(os.pread(h.status_fd, 65536, 0))
                if h.layout is None:
                    h.layout = st.layout
                # a held maps that still reads is this exec's, unless the address space was shared (vfork) when
                # it was opened: then a new layout tells the exec (with address randomisation on)
                exec_seen = h.maps_fd is not None and not h.same_exec()
                if h.layout == st.layout and not exec_seen:
                    return st, status, h  # (the caller releases h)
                if exec_seen:
                    if status.tgid == pid:  # it exec'd (a live process whose maps read empty): a new program
                        self.on_exec(pid, st.start_time)
                else:  # a new layout, and no exec seen: a vfork child's, or one the process set itself
                    carry = h.stable
            except (ProcessLookupError, Gone):
                pass
            except BaseException:
                h.release()
                raise
            h.release()
            self._drop(pid, h)
        raise Gone()

    def _handles_of(self, pid: int, fresh: bool) -> Handles:
        if not fresh:
            with self._lock:
                h = self._handles.get(pid)
                if h is not None:
                    self._handles.move_to_end(pid)
                    return h
        base = f"{self.proc}/{pid}"
        try:
            stat_fd = os.open(f"{base}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise Gone() from None
        try:
            status_fd = os.open(f"{base}/status", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException as exc:
            os.close(stat_fd)
            if isinstance(exc, (FileNotFoundError, ProcessLookupError)):
                raise Gone() from None
            raise
        try:
            maps_fd: int | None = os.open(f"{base}/maps", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            os.close(stat_fd)
            os.close(status_fd)
            raise Gone() from None
        except OSError:  # (not ours to read: nothing is cached for it)
            maps_fd = None
        h = Handles(stat_fd, status_fd, maps_fd)
        evicted = []
        with self._lock:
            old = self._handles.pop(pid, None)
            if old is not None:
                evicted.append(old)
            self._handles[pid] = h
            while len(self._handles) > HANDLE_CACHE_ENTRIES:
                evicted.append(self._handles.popitem(last=False)[1])
        for e in evicted:
            e.close()
        return h

    def _drop(self, pid: int, h: Handles) -> None:
        with self._lock:
            if self._handles.get(pid) is h:
                del self._handles[pid]
        h.close()

    def held(self) -> list[Handles]:
        """The handles held now, of every process."""
        with self._lock:
            return list(self._handles.values())

    def held_stat(self, pid: int) -> os.stat_result | None:
        """``fstat`` of the held ``stat`` descriptor of ``pid`` (None when
        none is held, or it was closed meanwhile)."""
        with self._lock:
            h = self._handles.get(pid)
        if h is None:
            return None
        with h.lock:
            if h.closed:
                return None
            return os.fstat(h.stat_fd)

    def close(self) -> None:
        """Close every held descriptor (the cache stays usable)."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for h in handles:
            h.close()
