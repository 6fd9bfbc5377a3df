"""Tracers: who traces a process now (any of its threads), and the first
tracer seen on it since its exec, remembered for ``untraced``.

A debugger that attaches and detaches between two requests is never seen
by a look at ``TracerPid``; one seen at any request is remembered by
:class:`Tracers` until the process execs another program, so that
``untraced`` refuses the process until then.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from .proc import Gone, Stat, Status, parse_stat, read, status_field

#: Above this many threads, only the calling thread and the thread-group
#: leader are checked for a tracer.
MAX_THREADS_SCANNED = 256
#: Processes (exec keys) remembered as having been traced.  When full,
#: entries of processes that are gone are dropped first, then the oldest.
TRACED_ENTRIES = 65536


class Tracers:
    """The tracers of the processes of ``proc`` (a procfs mount), now and
    since their exec.  Thread-safe."""

    def __init__(self, proc: str):
        self.proc = proc
        self._lock = threading.Lock()
        #: (tgid, leader start time) of a process -> (the first tracer seen
        #: on it since its exec, its tgid, its start time, the layout of its
        #: memory and its executable's (st_dev, st_ino) then).
        self._traced: OrderedDict[tuple, tuple] = OrderedDict()
        #: how many keys of _traced each tgid has (a cheap first test).
        self._traced_tgids: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._traced)

    def now(self, pid: int, status: Status) -> int:
        """The first tracer found on the calling thread or any thread of its
        process (0 if none): a debugger attached to any thread controls them
        all."""
        if status.tracer_pid:
            return status.tracer_pid
        if status.threads <= 1 and status.tgid == pid:
            return 0
        tgid = status.tgid or pid
        if status.threads > MAX_THREADS_SCANNED:
            tids = [tgid]
        else:
            try:
                tids = [int(t) for t in os.listdir(f"{self.proc}/{tgid}/task")]
            except OSError:
                tids = [tgid]
        for tid in tids:
            if tid == pid:
                continue
            try:
                text = read(None, f"{self.proc}/{tgid}/task/{tid}/status")
            except (Gone, OSError):
                continue  # that thread ended
            tracer = int(status_field(b"\n" + text, b"TracerPid") or 0)
            if tracer:
                return tracer
        return 0

    def since_exec(self, pid: int, st: Stat, status: Status, tracer: int, exe_key: tuple[int, int] | None) -> int:
        """The first tracer seen on the process of thread ``pid`` since its
        exec (``tracer`` now, remembered; or one remembered), 0 if none.

        The memory is per process: keyed by its tgid and the start time of
        its leader, so that a tracer seen on one thread counts for every
        thread.  A thread group's leader pid stays taken as long as any
        thread of the group lives, so its key cannot be another process's
        meanwhile.  It is forgotten at an exec: one that the held ``maps``
        saw (:meth:`forget_exec`, from :meth:`.handles.HandleCache.live`),
        or one that both changed the layout of the memory (the same for
        every thread) and runs another executable (``exe_key``).  Not at a
        new layout alone: any process may set its own
        (``prctl(PR_SET_MM, PR_SET_MM_MAP)``, which a tracer can make it
        call before it detaches), only not its executable."""
        tgid = status.tgid or pid
        with self._lock:
            known = tgid in self._traced_tgids
        if not tracer and not known:
            return 0
        start = st.start_time if tgid == pid else self._leader_stat(tgid).start_time
        key = (tgid, start)
        with self._lock:
            first = self._traced.get(key)
            if first is not None:
                seen_layout, seen_exe = first[3], first[4]
                if seen_layout == st.layout or None in (seen_exe, exe_key) or seen_exe == exe_key:
                    self._traced.move_to_end(key)
                    return first[0]
                self._forget(key)  # exec'd another program
            if not tracer:
                return 0
            self._traced[key] = (tracer, tgid, start, st.layout, exe_key)
            self._traced_tgids[tgid] = self._traced_tgids.get(tgid, 0) + 1
            full = len(self._traced) > TRACED_ENTRIES
        if full:
            self._prune()
        return tracer

    def forget_exec(self, tgid: int, start_time: int) -> None:
        """The process ``tgid`` (started at ``start_time``) exec'd: a new
        program, whose tracers are yet to be seen."""
        with self._lock:
            self._forget((tgid, start_time))

    def _leader_stat(self, tgid: int) -> Stat:
        return parse_stat(read(None, f"{self.proc}/{tgid}/stat"))

    def _prune(self) -> None:
        """Drop remembered tracers of processes that are gone (no process
        with that tgid and start time), then the oldest, down to the bound."""
        with self._lock:
            entries = list(self._traced.items())
        gone = []
        for key, (_, tgid, start, *_) in entries:
            try:
                alive = self._leader_stat(tgid).start_time == start
            except (Gone, OSError, ValueError):
                alive = False
            if not alive:
                gone.append(key)
        with self._lock:
            for key in gone:
                self._forget(key)
            while len(self._traced) > TRACED_ENTRIES:
                self._forget(next(iter(self._traced)))

    def _forget(self, key: tuple) -> None:
        """(With the lock held.)"""
        entry = self._traced.pop(key, None)
        if entry is None:
            return
        tgid = entry[1]
        left = self._traced_tgids.get(tgid, 1) - 1
        if left > 0:
            self._traced_tgids[tgid] = left
        else:
            self._traced_tgids.pop(tgid, None)
