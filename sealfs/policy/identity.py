"""Who is calling: a FUSE request's pid/uid/gid, enriched from /proc.

The kernel tells the daemon the pid (the calling *thread*), the fsuid and
the fsgid of every request.  Everything else a policy can select on is read
from ``/proc/PID``:

==================  ===================================================
groups              ``status`` Groups: (supplementary) plus the gid
exe, exe_sha256     ``readlink exe``; the hash is of the open ``exe``
                    link, so it is the binary that is *running*, even if
                    the path now names another file or nothing
exe_deleted         the kernel marks the link `` (deleted)``
exe_replaced        the path now names a different file (dev/inode), or
                    none
script, its sha256  when the exe is an interpreter (python, node, sh,
                    perl, ruby, …): the first non-option argument of
                    ``cmdline``, opened relative to the process's
                    ``cwd`` (and ``root``), path as the kernel resolves it
cgroup              the cgroup v2 line of ``cgroup`` (systemd unit,
                    container)
start_time          field 22 of ``stat`` (clock ticks after boot)
tracer_pid          ``status`` TracerPid: of the calling thread, and of
                    every thread of the process when it has several
preload             names of loader variables in ``environ`` that inject
                    code: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, and the
                    interpreter's own (PYTHONPATH, NODE_OPTIONS, …) when
                    the exe is an interpreter
==================  ===================================================

**Pid reuse.**  /proc entries are read through descriptors opened for that
process (its ``stat`` and ``status``, held open; one ``/proc/PID``
directory while gathering the rest): they stay bound to it, and fail once
it is gone, even if its pid is reused.  The start time is also compared
before and after gathering.  If it changed, or the process is gone, or its fsuid/fsgid are
not those of the request, the identity is *invalid*
(:attr:`Identity.problem` says why) and every decision on it is a denial.
A request with pid 0 (the kernel's own) is invalid too.

**Cost.**  Hashing a binary is the expensive part: hashes are cached by
(device, inode, size, mtime, ctime) of the open file, so a changed binary is
hashed again and an unchanged one never (:class:`HashCache`, bounded).
Any user can make the daemon hash a file of their choosing (run a program,
or name a script), so hashing is bounded (:class:`HashCache`): a file is
only hashed when the policy could need that hash for the caller
(:attr:`Identifier.needs_hash`), files above a size limit are refused
rather than read, one file is hashed once at a time, and only a few
threads may be hashing at once, fewer for any one uid.  A caller past a
limit gets an invalid identity (:attr:`Identity.problem` says which limit),
so every decision on it is a denial with that reason in the audit line.  What
only an ``execve`` can change (exe, cmdline, environ; and the cgroup, which
rarely moves) is cached per (pid, start time, exec fingerprint) for
:data:`STABLE_TTL` seconds.  The exec fingerprint is the stack, argument and
environment addresses of ``stat`` (fields 28, 48–51): with address space
randomisation an ``execve`` changes them even when pid and start time stay.
What can change at any moment — credentials, groups, tracers — is read on
every call.  A warm call is two ``pread`` calls: ``stat`` and ``status``
stay open for the last :data:`HANDLE_CACHE_ENTRIES` processes.

**What this cannot see.**  A process can rewrite its own command line, so
``script`` only says what an interpreter was *asked* to run: pair script
selectors with a user that untrusted code does not run as.  ``environ`` is
the environment at ``execve`` (which is when the loader reads it).  Without
root (CAP_SYS_PTRACE) the daemon cannot read ``exe``, ``environ`` or the
fingerprint of other users' processes: those fields stay ``None``/empty and
selectors on them do not match.

All of this is blocking file I/O: call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import UsageError

#: Seconds an exec-stable part of an identity (exe, script, environ flags,
#: cgroup) is reused for one (pid, start time, exec fingerprint).
STABLE_TTL = 2.0
#: Binaries/scripts whose hash is remembered (by stat key).
HASH_CACHE_ENTRIES = 512
#: Processes whose exec-stable part is remembered.
STABLE_CACHE_ENTRIES = 4096
#: Processes (threads) whose stat and status stay open (two descriptors each).
HANDLE_CACHE_ENTRIES = 128
#: Above this many threads, only the calling thread and the thread-group
#: leader are checked for a tracer.
MAX_THREADS_SCANNED = 256

_HASH_CHUNK = 1 << 20
#: Largest file (bytes) that is hashed; policy key ``max_hash_mib``.
MAX_HASH_BYTES = 256 << 20
#: Threads that may be hashing (or waiting for a hash) at once, in all and
#: for one uid: half and a quarter of the FUSE worker pool (16 threads; the
#: adapter sets them from its pool), so that requests whose identity needs
#: no new hash always find a thread, and one uid leaves hashing to others.
HASH_JOBS = 8
HASH_JOBS_PER_UID = 4
_DELETED = " (deleted)"

#: Loader variables that make a process run code it did not ship with.
LOADER_VARIABLES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT")

# Interpreters: basename pattern -> family.  The family says how its
# command line names the script (see _SCRIPT_OPTIONS).
_INTERPRETERS = [
    (re.compile(r"(?:python|pypy)[0-9.]*(?:-dbg)?"), "python"),
    (re.compile(r"(?:node|nodejs|deno|bun)"), "node"),
    (re.compile(r"(?:bash|sh|dash|zsh|ksh|ksh93|mksh|ash|busybox)"), "sh"),
    (re.compile(r"perl[0-9.]*"), "perl"),
    (re.compile(r"ruby[0-9.]*"), "ruby"),
    (re.compile(r"php[0-9.]*(?:-cli)?"), "php"),
    (re.compile(r"lua(?:jit)?[0-9.]*"), "lua"),
    (re.compile(r"tclsh[0-9.]*|wish[0-9.]*"), "tcl"),
]
# Per family: options after which no script file follows (code given
# inline, a module, stdin), options that take the next argument as a value,
# and options whose value *is* the script.
_SCRIPT_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    "python": (frozenset({"-c", "-m"}), frozenset({"-W", "-X", "--check-hash-based-pycs"}), frozenset()),
    "node": (frozenset({"-e", "--eval", "-p", "--print", "-i", "--interactive"}),
             frozenset({"-r", "--require", "--import", "--loader", "--experimental-loader", "--input-type",
                        "-C", "--conditions", "--env-file"}), frozenset()),
    "sh": (frozenset({"-c", "-s", "-i"}), frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"}),
           frozenset()),
    "perl": (frozenset({"-e", "-E"}), frozenset(), frozenset()),
    "ruby": (frozenset({"-e"}), frozenset({"-I", "-r", "-C", "-E", "--encoding"}), frozenset()),
    "php": (frozenset({"-r", "-a"}), frozenset({"-c", "-d", "-z"}), frozenset({"-f"})),
    "lua": (frozenset({"-e", "-i"}), frozenset({"-l"}), frozenset()),
    "tcl": (frozenset(), frozenset(), frozenset()),
}
#: Variables that make an interpreter load code from elsewhere.
_INTERPRETER_VARIABLES = {
    "python": ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT", "PYTHONUSERBASE"),
    "node": ("NODE_OPTIONS", "NODE_PATH"),
    "sh": ("BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4"),
    "perl": ("PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB"),
    "ruby": ("RUBYLIB", "RUBYOPT"),
    "php": ("PHP_INI_SCAN_DIR", "PHPRC"),
    "lua": ("LUA_PATH", "LUA_CPATH", "LUA_INIT"),
    "tcl": ("TCLLIBPATH",),
}


@dataclass(frozen=True)
class Identity:
    """What the daemon knows about the caller of one request.

    Fields it could not read are ``None`` (or empty).  When :attr:`problem`
    is set, the identity is not trustworthy and must be denied everything.
    """

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    exe: str | None = None
    exe_sha256: str | None = None
    exe_deleted: bool = False
    exe_replaced: bool = False
    script: str | None = None
    script_sha256: str | None = None
    cgroup: str | None = None
    start_time: int | None = None
    tracer_pid: int = 0
    preload: tuple[str, ...] = ()
    problem: str | None = None
    #: The process (thread group) of the calling thread ``pid``.
    tgid: int = 0

    @property
    def valid(self) -> bool:
        return self.problem is None

    @property
    def traced(self) -> bool:
        return self.tracer_pid != 0

    def describe(self) -> str:
        """One line for logs and ``sealfs policy explain``."""
        parts = [f"pid {self.pid}", f"uid {self.uid}", f"gid {self.gid}"]
        if self.exe:
            parts.append(f"exe {self.exe}" + (" (deleted)" if self.exe_deleted else "")
                         + (" (replaced since start)" if self.exe_replaced else ""))
        if self.script:
            parts.append(f"script {self.script}")
        if self.cgroup:
            parts.append(f"cgroup {self.cgroup}")
        if self.traced:
            parts.append(f"traced by pid {self.tracer_pid}")
        if self.preload:
            parts.append("environment sets " + ", ".join(self.preload))
        if self.problem:
            parts.append(f"INVALID: {self.problem}")
        return ", ".join(parts)


class _Gone(Exception):
    """The process (or the thread) no longer exists."""


class _NotHashed(Exception):
    """A file the identity needs was not hashed (a limit): the identity is invalid."""


class _Handles:
    """``/proc/PID/stat`` and ``status`` of one process, held open.  Reads
    (pread at 0 regenerates them) fail with ESRCH once the process is gone.
    ``lock`` is held while reading, so that :meth:`close` (eviction) never
    closes a descriptor in use, whose number could then be reused."""

    def __init__(self, stat_fd: int, status_fd: int):
        self.stat_fd = stat_fd
        self.status_fd = status_fd
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                os.close(self.stat_fd)
                os.close(self.status_fd)


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

    def __init__(self, entries: int = HASH_CACHE_ENTRIES, *, max_bytes: int = MAX_HASH_BYTES,
                 jobs: int = HASH_JOBS, jobs_per_uid: int = HASH_JOBS_PER_UID):
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
                raise HashRefused(f"it is {_size(st.st_size)}, above the {_size(self.max_bytes)} that sealfs "
                                  "hashes (max_hash_mib in the policy)")
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


@dataclass(eq=False)
class _Stable:
    """The part of an identity only an execve changes (plus the cgroup),
    and the last identity built on it (reused while the rest is equal)."""

    exe: str | None
    exe_sha256: str | None
    exe_deleted: bool
    exe_replaced: bool
    script: str | None
    script_sha256: str | None
    cgroup: str | None
    preload: tuple[str, ...]
    made: float
    last: Identity | None = None


@dataclass(frozen=True)
class _Stat:
    start_time: int
    fingerprint: tuple[int, ...]


@dataclass(frozen=True)
class _Status:
    fsuid: int
    fsgid: int
    groups: frozenset[int]
    tracer_pid: int
    tgid: int
    threads: int


class Identifier:
    """Builds :class:`Identity` objects from /proc, with the caches
    described in the module docstring.  One per mount; thread-safe.

    ``proc`` is the procfs mount to read (tests may point it elsewhere);
    ``clock`` gives the time for the exec-stable cache.
    :attr:`needs_hash` says which files to hash (all, by default).
    """

    def __init__(self, proc: str = "/proc", *, stable_ttl: float = STABLE_TTL, hashes: HashCache | None = None,
                 clock=time.monotonic):
        self.proc = proc
        self.stable_ttl = stable_ttl
        self.hashes = hashes if hashes is not None else HashCache()
        self.clock = clock
        #: ``needs_hash(kind, uid, path)``: whether the hash of the exe
        #: (kind "exe") or script ("script") at ``path`` of a caller of
        #: ``uid`` could matter (the policy's answer, set by the Guard);
        #: None: hash every one.  A hash not needed stays None.
        self.needs_hash = None
        self._stable: OrderedDict[tuple, _Stable] = OrderedDict()
        self._handles: OrderedDict[int, _Handles] = OrderedDict()
        self._lock = threading.Lock()

    # -- the one entry point -----------------------------------------------------------

    def identify(self, pid: int, uid: int, gid: int) -> Identity:
        """The identity of the process (thread) ``pid`` that sent a request
        with fsuid ``uid`` and fsgid ``gid``.  Never raises for a process
        that vanished or cannot be read: the result is then invalid or has
        empty fields."""
        if pid <= 0:
            return Identity(pid, uid, gid, problem="request from the kernel (pid 0), not from a process")
        try:
            before, status = self._live(pid)
            stable = self._cached_stable(pid, before)
            if stable is None:
                stable = self._gather(pid, before, uid)
                if stable is None:
                    return Identity(pid, uid, gid, start_time=before.start_time,
                                    problem="the pid was reused while the process was being identified")
            tracer = self._tracer(pid, status)
        except _Gone:
            return Identity(pid, uid, gid, problem="the process exited before it could be identified")
        except (OSError, ValueError) as exc:  # (hidepid=, an unreadable or odd /proc entry)
            return Identity(pid, uid, gid, problem=f"cannot read {self.proc}/{pid}: {exc}")
        except _NotHashed as exc:
            return Identity(pid, uid, gid, problem=str(exc))
        if (status.fsuid, status.fsgid) != (uid, gid):
            return Identity(pid, uid, gid, start_time=before.start_time,
                            problem=f"the process now runs as uid {status.fsuid} gid {status.fsgid}, not as the "
                                    "request said (pid reused, or its credentials changed)")
        groups = status.groups | {gid}
        last = stable.last
        if (last is not None and (last.pid, last.uid, last.gid, last.tracer_pid, last.start_time, last.groups)
                == (pid, uid, gid, tracer, before.start_time, groups)):
            return last
        stable.last = Identity(pid, uid, gid, groups=groups, exe=stable.exe, exe_sha256=stable.exe_sha256,
                               exe_deleted=stable.exe_deleted, exe_replaced=stable.exe_replaced,
                               script=stable.script, script_sha256=stable.script_sha256, cgroup=stable.cgroup,
                               start_time=before.start_time, tracer_pid=tracer, preload=stable.preload,
                               tgid=status.tgid or pid)
        return stable.last

    def _live(self, pid: int) -> tuple[_Stat, _Status]:
        """``stat`` and ``status`` of ``pid`` now, through descriptors held
        open per process (:class:`_Handles`): they stay bound to the process
        they were opened for, so once it is gone they fail, even if its pid
        was reused; then they are opened afresh, once."""
        for fresh in (False, True):
            h = self._handles_of(pid, fresh)
            with h.lock:
                if h.closed:  # evicted meanwhile
                    continue
                try:
                    return _parse_stat(os.pread(h.stat_fd, 65536, 0)), _parse_status(os.pread(h.status_fd, 65536, 0))
                except (ProcessLookupError, _Gone):
                    pass
            self._drop_handles(pid, h)
        raise _Gone()

    def _handles_of(self, pid: int, fresh: bool) -> _Handles:
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
            raise _Gone() from None
        try:
            status_fd = os.open(f"{base}/status", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException as exc:
            os.close(stat_fd)
            if isinstance(exc, (FileNotFoundError, ProcessLookupError)):
                raise _Gone() from None
            raise
        h = _Handles(stat_fd, status_fd)
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

    def _drop_handles(self, pid: int, h: _Handles) -> None:
        with self._lock:
            if self._handles.get(pid) is h:
                del self._handles[pid]
        h.close()

    def close(self) -> None:
        """Close every held descriptor (the Identifier stays usable)."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for h in handles:
            h.close()

    def identify_process(self, pid: int) -> Identity:
        """The identity of a running process as if it sent a request now
        (its fsuid/fsgid from /proc): for ``sealfs policy explain``.
        Raises UsageError if there is no such process."""
        try:
            base = os.open(f"{self.proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                status = self._read_status(base)
            finally:
                os.close(base)
        except (_Gone, OSError):
            raise UsageError(f"there is no process with pid {pid}") from None
        return self.identify(pid, status.fsuid, status.fsgid)

    # -- per call ----------------------------------------------------------------------

    @staticmethod
    def _read(base: int | None, name: str, limit: int = 1 << 20) -> bytes:
        """The content of ``name`` in the /proc directory ``base`` (a
        directory descriptor; None: ``name`` is a full path)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=base)
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone() from None
        try:
            out = os.read(fd, 65536)
            while len(out) < limit and len(out) % 65536 == 0 and out:  # (one read is enough for most files)
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
            return out
        except ProcessLookupError:
            raise _Gone() from None
        finally:
            os.close(fd)

    def _read_stat(self, base: int) -> _Stat:
        return _parse_stat(self._read(base, "stat"))

    def _read_status(self, base: int) -> _Status:
        return _parse_status(self._read(base, "status"))

    def _tracer(self, pid: int, status: _Status) -> int:
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
                text = self._read(None, f"{self.proc}/{tgid}/task/{tid}/status")
            except (_Gone, OSError):
                continue  # that thread ended
            tracer = int(_status_field(b"\n" + text, b"TracerPid") or 0)
            if tracer:
                return tracer
        return 0

    # -- exec-stable part -----------------------------------------------------------------

    def _cached_stable(self, pid: int, st: _Stat) -> _Stable | None:
        key = (pid, st.start_time, st.fingerprint)
        with self._lock:
            cached = self._stable.get(key)
            if cached is not None and self.clock() - cached.made < self.stable_ttl:
                self._stable.move_to_end(key)
                return cached
        return None

    def _gather(self, pid: int, before: _Stat, uid: int) -> _Stable | None:
        """Gather the exec-stable part through one ``/proc/PID`` directory
        handle, checking that it is the process ``before`` was read from,
        before and after; None if it is not (the pid was reused)."""
        try:
            base = os.open(f"{self.proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone() from None
        try:
            if self._read_stat(base).start_time != before.start_time:
                return None
            now = self.clock()
            stable = self._gather_stable(pid, base, now, uid)
            if self._read_stat(base).start_time != before.start_time:
                return None
        finally:
            os.close(base)
        key = (pid, before.start_time, before.fingerprint)
        with self._lock:
            self._stable[key] = stable
            self._stable.move_to_end(key)
            while len(self._stable) > STABLE_CACHE_ENTRIES:
                self._stable.popitem(last=False)
        return stable

    def forget(self) -> None:
        """Drop the exec-stable cache (hashes stay: they are keyed by content)."""
        with self._lock:
            self._stable.clear()

    def _gather_stable(self, pid: int, base: int, now: float, uid: int) -> _Stable:
        exe, deleted, replaced, exe_hash = self._exe(base, uid)
        family = interpreter_family(exe)
        try:
            cmdline = self._read(base, "cmdline")
        except PermissionError:
            cmdline = b""
        script = script_hash = None
        if family is not None:
            arg = script_argument(family, cmdline)
            if arg is not None:
                script, script_hash = self._script(base, arg, uid)
        try:
            environ = self._read(base, "environ", limit=1 << 22)
            preload = injection_variables(environ, family)
        except PermissionError:
            preload = ()
        return _Stable(exe, exe_hash, deleted, replaced, script, script_hash, self._cgroup(base), preload, now)

    def _hash(self, fd: int, kind: str, uid: int, path: str) -> str | None:
        """The hash of the open ``fd`` (the exe or script at ``path``), or
        None when the policy cannot need it.  Raises _NotHashed past a
        limit of the hash cache."""
        if self.needs_hash is not None and not self.needs_hash(kind, uid, path):
            return None
        try:
            return self.hashes.of_fd(fd, uid)
        except HashRefused as exc:
            raise _NotHashed(f"the {kind} {path} was not hashed: {exc}") from None

    def _exe(self, base: int, uid: int) -> tuple[str | None, bool, bool, str | None]:
        try:
            link = os.readlink("exe", dir_fd=base)
        except (FileNotFoundError, ProcessLookupError):
            # a kernel thread or a zombie has no exe; a vanished process neither
            self._read_stat(base)  # raises _Gone for the latter
            return None, False, False, None
        except OSError:
            return None, False, False, None
        deleted = link.endswith(_DELETED)
        path = link[: -len(_DELETED)] if deleted else link
        digest = None
        replaced = False
        try:
            fd = os.open("exe", os.O_RDONLY | os.O_CLOEXEC, dir_fd=base)
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone() from None
        except OSError:
            return path, deleted, False, None
        try:
            running = os.fstat(fd)
            digest = self._hash(fd, "exe", uid, path)
        finally:
            os.close(fd)
        try:
            now = os.stat("root" + path, dir_fd=base)  # the path as the process sees it (containers)
            replaced = (now.st_dev, now.st_ino) != (running.st_dev, running.st_ino)
        except OSError:
            replaced = True  # the path names nothing (or nothing we may see) any more
        return path, deleted, replaced, digest

    def _script(self, base: int, arg: bytes, uid: int) -> tuple[str | None, str | None]:
        """Open the script as the process would (relative to its cwd, or
        under its root); return (resolved path, sha256) or (None, None).

        The name comes from an untrusted command line and the daemon runs
        as root, so nothing but a regular file is ever opened for reading:
        opening a device can have side effects (a watchdog, a tape).  The
        file is first opened with O_PATH, checked, then re-opened through
        that descriptor, so it cannot be swapped in between."""
        if not arg:
            return None, None
        where = b"root" + arg if arg.startswith(b"/") else b"cwd/" + arg
        try:
            pfd = os.open(where, os.O_PATH | os.O_CLOEXEC, dir_fd=base)
        except OSError:
            return None, None
        try:
            if not stat.S_ISREG(os.fstat(pfd).st_mode):
                return None, None
            path = os.readlink(f"/proc/self/fd/{pfd}")
            if path.endswith(_DELETED):
                return None, None
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None, None
        finally:
            os.close(pfd)
        try:
            return path, self._hash(fd, "script", uid, path)
        except OSError:
            return None, None
        finally:
            os.close(fd)

    def _cgroup(self, base: int) -> str | None:
        try:
            text = self._read(base, "cgroup").decode("utf-8", "surrogateescape")
        except (_Gone, OSError):
            return None
        for line in text.splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
        return None


def _parse_stat(raw: bytes) -> _Stat:
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = raw[raw.rfind(b")") + 2:].split()
    if len(fields) < 50:
        raise _Gone()
    # fields[0] is field 3 (state): field N is fields[N - 3]
    start = int(fields[22 - 3])
    fingerprint = tuple(int(f) for f in fields[28 - 3: 29 - 3] + fields[48 - 3: 52 - 3])
    return _Stat(start, fingerprint)


def _parse_status(text: bytes) -> _Status:
    raw = b"\n" + text
    try:
        uids = _status_field(raw, b"Uid").split()
        gids = _status_field(raw, b"Gid").split()
        groups = frozenset(int(g) for g in _status_field(raw, b"Groups").split())
        return _Status(int(uids[3]), int(gids[3]), groups, int(_status_field(raw, b"TracerPid") or 0),
                       int(_status_field(raw, b"Tgid") or 0), int(_status_field(raw, b"Threads") or 1))
    except (IndexError, ValueError):
        raise _Gone() from None  # a zombie has no credentials left to show


def _status_field(raw: bytes, name: bytes) -> bytes:
    """The value of ``name:`` in a /proc status text that starts with a
    newline (a plain search: this is on every request's path)."""
    start = raw.find(b"\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 2
    end = raw.find(b"\n", start)
    return raw[start:end if end >= 0 else len(raw)].strip()


def interpreter_family(exe: str | None) -> str | None:
    """The interpreter family of an executable path, or None."""
    if not exe:
        return None
    name = os.path.basename(exe)
    for pattern, family in _INTERPRETERS:
        if pattern.fullmatch(name):
            return family
    return None


def script_argument(family: str, cmdline: bytes) -> bytes | None:
    """The script an interpreter of ``family`` was started with: the first
    non-option argument of ``cmdline`` (NUL-separated argv).  None when the
    code comes inline (``-c``, ``-e``), from a module (``-m``) or stdin."""
    argv = cmdline.split(b"\0")
    if argv and argv[-1] == b"":
        argv.pop()
    stop, takes_value, names_script = _SCRIPT_OPTIONS[family]
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i].decode("utf-8", "surrogateescape")
        if arg == "--":
            return args[i + 1] if i + 1 < len(args) else None
        if arg == "-":
            return None
        is_option = arg.startswith("-") or (family == "sh" and arg.startswith("+") and len(arg) > 1)
        if not is_option:
            return args[i]
        if "=" in arg and arg.startswith("--"):
            i += 1
            continue
        if arg in stop:
            return None
        if arg in names_script:
            return args[i + 1] if i + 1 < len(args) else None
        if arg in takes_value:
            i += 2
            continue
        if not arg.startswith("--") and len(arg) > 2:
            # a cluster of short options such as -Bc or -xe
            letters = arg[1:]
            for j, letter in enumerate(letters):
                opt = arg[0] + letter
                if opt in stop:
                    return None
                if opt in takes_value or opt in names_script:
                    if j + 1 < len(letters):  # the value is attached: -Wignore
                        break
                    if opt in names_script:
                        return args[i + 1] if i + 1 < len(args) else None
                    i += 1
                    break
        i += 1
    return None


def injection_variables(environ: bytes, family: str | None) -> tuple[str, ...]:
    """Names of the code-injecting variables set (non-empty) in a
    NUL-separated environment."""
    wanted = set(LOADER_VARIABLES)
    if family is not None:
        wanted.update(_INTERPRETER_VARIABLES.get(family, ()))
    found = []
    for item in environ.split(b"\0"):
        name, eq, value = item.partition(b"=")
        if eq and value:
            text = name.decode("ascii", "replace")
            if text in wanted:
                found.append(text)
    return tuple(sorted(set(found)))
