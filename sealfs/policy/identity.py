"""Who is calling: a FUSE request's pid/uid/gid, enriched from /proc.

The kernel tells the daemon the pid (the calling *thread*), the fsuid and
the fsgid of every request.  Everything else a policy can select on is read
from ``/proc/PID``:

==================  ===================================================
groups              ``status`` Groups: (supplementary) plus the gid
exe, exe_sha256     ``readlink exe`` (the path, as the process's mount
                    namespace names it); the file is the one ``exe``
                    resolves to (by device and inode), and the hash is
                    of that open file: the binary that is *running*
exe_deleted         the kernel marks the link `` (deleted)``
exe_replaced        the path, as the *daemon* sees it in its own mount
                    namespace, names another file (dev/inode) or none:
                    deleted, replaced since start, or lent by a bind
                    mount in another namespace
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
foreign_code,       the executable mappings of ``maps`` that are not
memory_code,        root's (see :mod:`.mappings`), by ``map_files``
code_problem
startup             for Python: ``cmdline`` without ``-I`` (or ``-E -s``),
                    or with ``-i``
dumpable            the owner of ``/proc/PID/stat`` as a fresh lookup
                    shows it: the kernel shows a non-dumpable process's
                    files as root's (see :meth:`Identifier._dumpable`)
traced_since_exec   a tracer this Identifier saw on the process earlier
                    in the life of its current program (kept in
                    :attr:`Identifier._traced`)
==================  ===================================================

**Pid reuse.**  /proc entries are read through descriptors opened for that
process (its ``stat``, ``status`` and ``maps``, held open; one
``/proc/PID`` directory while gathering the rest): they stay bound to it,
and fail once it is gone, even if its pid is reused.  The start time is
also compared before and after gathering.  If it changed, or the process
is gone, or its fsuid/fsgid are not those of the request, the identity is
*invalid* (:attr:`Identity.problem` says why) and every decision on it is
a denial.  A request with pid 0 (the kernel's own) is invalid too.

**Exec.**  The held ``maps`` descriptor is bound to the address space the
process had when it was opened: after an ``execve`` (any: also with
address randomisation off, also of the same file) it reads as empty.  So
a one-byte read of it at each request tells whether the process still
runs the program that was identified; if not, everything is gathered
again.  (Neither the start time nor the stack and argument addresses of
``stat`` tell execs apart: ``setarch -R`` makes the latter equal.)  One
case escapes it: a vfork child shares its parent's address space until
it execs, and the parent keeps that alive; so the layout of ``stat``
(code, data, stack, arguments: fields 26-28, 45-51) must also stay what
it was when the handles were opened, which an exec changes unless
address randomisation is off and the layouts are equal.

**Cost.**  Hashing a binary is the expensive part: hashes are cached by
(device, inode, size, mtime, ctime) of the open file, so a changed binary is
hashed again and an unchanged one never (:class:`HashCache`, bounded).
Any user can make the daemon hash a file of their choosing (run a program,
name a script, map a library), so hashing is bounded (:class:`HashCache`):
an exe or script is only hashed when the policy could need that hash for
the caller (:attr:`Identifier.needs_hash`), files above a size limit are
refused rather than read, one file is hashed once at a time, and only a
few threads may be hashing at once, fewer for any one uid.  A caller past
a limit gets an invalid identity (:attr:`Identity.problem` says which
limit), so every decision on it is a denial with that reason in the audit
line (a library not hashed for a limit refuses that look only).  What
only an ``execve`` can change (exe, cmdline, environ, the mappings; and
the cgroup, which rarely moves) is kept per exec of a process for
:data:`STABLE_TTL` seconds; the mappings are read again when the virtual
size (field 23 of ``stat``) changes, which any new mapping does.  What
was seen once during one exec (loader variables, foreign code, Python
flags) stays seen until the next exec.  What can change at any moment —
credentials, groups, tracers, dumpable — is read on every call.  A warm
call is three ``pread`` calls (``stat``, ``status`` and one byte of
``maps`` stay open for the last :data:`HANDLE_CACHE_ENTRIES` processes),
and a ``stat`` and an ``fstat`` while a workload requires ``nondumpable``
(for a caller whose euid is not 0).

**Memory.**  Another process of the same uid may write into a dumpable
process's memory (``/proc/PID/mem``, ``process_vm_writev``, ptrace) unless
Yama forbids it, so whatever a workload selector proves at one request,
the code that runs next may be another's.  Two facts help, both read on
every request: ``dumpable`` (False: the kernel refuses ptrace and
``/proc/PID/mem`` to every process without CAP_SYS_PTRACE, whatever its
uid), and ``traced_since_exec``: a tracer seen at any earlier request of
the same process and program is remembered, so that ``untraced`` refuses
the process until it execs again.  A debugger that attaches and detaches
between two requests is never seen: only a non-dumpable process is safe
from it.

**What this cannot see.**  ``cmdline`` and ``environ`` are the process's
own memory, not the arguments and environment of its ``execve``: code
running in the process may rewrite them.  So ``script`` and the Python
flags only say what an interpreter *shows*, and the loader variables are
a first look; the executable mappings are what the kernel has mapped and
cannot be rewritten from inside (but code may still write into its own
memory, or another process of its uid may).  Without root
(CAP_SYS_PTRACE, CAP_SYS_ADMIN) the daemon cannot read ``exe``,
``environ`` or ``map_files`` of other users' processes: those fields stay
``None``/empty (``code_problem`` set) and selectors on them do not match.

All of this is blocking file I/O: call it from a worker thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import UsageError
from . import mappings
from .mappings import DELETED, Code

#: Seconds an exec-stable part of an identity (exe, script, environ flags,
#: mappings, cgroup) is reused for one exec of a process.
STABLE_TTL = 2.0
#: Binaries/scripts whose hash is remembered (by stat key).
HASH_CACHE_ENTRIES = 512
#: Processes (threads) whose stat, status and maps stay open (three
#: descriptors each), with their exec-stable part.
HANDLE_CACHE_ENTRIES = 128
#: Above this many threads, only the calling thread and the thread-group
#: leader are checked for a tracer.
MAX_THREADS_SCANNED = 256
#: Looks at the executable mappings of one process while they keep
#: changing under the look (then its identity has a code problem).
MAPS_LOOKS = 3
#: Processes (exec keys) remembered as having been traced.  When full,
#: entries of processes that are gone are dropped first, then the oldest.
TRACED_ENTRIES = 65536

_HASH_CHUNK = 1 << 20
#: Largest file (bytes) that is hashed; policy key ``max_hash_mib``.
MAX_HASH_BYTES = 256 << 20
#: Threads that may be hashing (or waiting for a hash) at once, in all and
#: for one uid: half and a quarter of the FUSE worker pool (16 threads; the
#: adapter sets them from its pool), so that requests whose identity needs
#: no new hash always find a thread, and one uid leaves hashing to others.
HASH_JOBS = 8
HASH_JOBS_PER_UID = 4

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
    "node": (
        frozenset({"-e", "--eval", "-p", "--print", "-i", "--interactive"}),
        frozenset(
            {
                "-r",
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--input-type",
                "-C",
                "--conditions",
                "--env-file",
            }
        ),
        frozenset(),
    ),
    "sh": (frozenset({"-c", "-s", "-i"}), frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"}), frozenset()),
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
    #: Executable mappings of files not trusted by their owner: (path,
    #: sha256 or None, whether it is the running executable) (mappings.py).
    foreign_code: tuple[tuple[str, str | None, bool], ...] = ()
    #: Anonymous executable memory and memory-only files (memfd, deleted).
    memory_code: tuple[str, ...] = ()
    #: Why the executable mappings could not be inspected (None: they were).
    code_problem: str | None = None
    #: How an interpreter's command line lets it load code from the caller's
    #: environment or files (python without -I, python -i).
    startup: tuple[str, ...] = ()
    #: False: the process is not dumpable, so the kernel refuses ptrace and
    #: /proc/PID/mem to every process without CAP_SYS_PTRACE.  None: cannot
    #: be told (the process runs as root: its /proc files are root's anyway),
    #: or not looked at (no workload requires nondumpable:
    #: :attr:`Identifier.check_dumpable` is off).
    dumpable: bool | None = None
    #: The first tracer seen on this process since it exec'ed its current
    #: program (by an earlier request or this one; 0 if none was ever seen).
    traced_since_exec: int = 0

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
            parts.append(
                f"exe {self.exe}"
                + (" (deleted)" if self.exe_deleted else "")
                + (" (replaced since start)" if self.exe_replaced else "")
            )
        if self.script:
            parts.append(f"script {self.script}")
        if self.cgroup:
            parts.append(f"cgroup {self.cgroup}")
        if self.traced:
            parts.append(f"traced by pid {self.tracer_pid}")
        elif self.traced_since_exec:
            parts.append(f"was traced by pid {self.traced_since_exec} since its exec")
        if self.dumpable is False:
            parts.append("not dumpable")
        if self.preload:
            parts.append("environment sets " + ", ".join(self.preload))
        if self.startup:
            parts.append("; ".join(self.startup))
        if self.foreign_code:
            parts.append("maps " + ", ".join(p for p, _, _ in self.foreign_code))
        if self.memory_code:
            parts.append("runs " + ", ".join(self.memory_code))
        if self.code_problem:
            parts.append(self.code_problem)
        if self.problem:
            parts.append(f"INVALID: {self.problem}")
        return ", ".join(parts)


class _Gone(Exception):
    """The process (or the thread) no longer exists."""


class _NotHashed(Exception):
    """A file the identity needs was not hashed (a limit): the identity is invalid."""


class _Handles:
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
    closes them.  (:meth:`Identifier._dumpable` reads ``stat_fd`` after
    the request released them: it holds :attr:`lock` and checks
    :attr:`closed` instead.)"""

    def __init__(self, stat_fd: int, status_fd: int, maps_fd: int | None):
        self.stat_fd = stat_fd
        self.status_fd = status_fd
        self.maps_fd = maps_fd
        self.lock = threading.Lock()
        self.users = 0
        self.evicted = False
        self.closed = False
        #: The exec-stable part gathered for this exec (None: not yet).
        self.stable: _Stable | None = None
        #: The layout (:class:`_Stat`) seen first through these handles.
        self.layout: tuple[int, ...] | None = None
        #: What handles of the same process had gathered when its layout
        #: changed with no exec seen: kept if the executable is the same.
        self.previous: _Stable | None = None

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
    startup: tuple[str, ...]
    code: Code
    #: The virtual size when ``code`` was read: a new mapping changes it.
    vsize: int
    made: float
    last: Identity | None = None
    #: (st_dev, st_ino) of the running executable.
    exe_key: tuple[int, int] | None = None
    #: The executable lines of maps that ``code`` was made from.
    code_lines: list | None = None


@dataclass(frozen=True)
class _Stat:
    start_time: int
    vsize: int
    #: Where the kernel laid out code, data, stack, arguments and
    #: environment at the exec (fields 26-28 and 45-51 of ``stat``).
    layout: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Status:
    euid: int
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

    def __init__(
        self,
        proc: str = "/proc",
        *,
        stable_ttl: float = STABLE_TTL,
        hashes: HashCache | None = None,
        clock=time.monotonic,
    ):
        self.proc = proc
        self.stable_ttl = stable_ttl
        self.hashes = hashes if hashes is not None else HashCache()
        self.clock = clock
        #: ``needs_hash(kind, uid, path)``: whether the hash of the exe
        #: (kind "exe") or script ("script") at ``path`` of a caller of
        #: ``uid`` could matter (the policy's answer, set by the Guard);
        #: None: hash every one.  A hash not needed stays None.
        self.needs_hash = None
        self._handles: OrderedDict[int, _Handles] = OrderedDict()
        self._lock = threading.Lock()
        #: (tgid, leader start time) of a process -> (the first tracer seen
        #: on it since its exec, its tgid, its start time, the layout of its
        #: memory and its executable's (st_dev, st_ino) then).
        self._traced: OrderedDict[tuple, tuple] = OrderedDict()
        #: how many keys of _traced each tgid has (a cheap first test).
        self._traced_tgids: dict[int, int] = {}
        #: Whether to find out :attr:`Identity.dumpable` (a ``stat`` per
        #: request); a :class:`~sealfs.policy.guard.Guard` turns it off
        #: while no workload of its policy requires nondumpable.
        self.check_dumpable = True

    # -- the one entry point -----------------------------------------------------------

    def identify(self, pid: int, uid: int, gid: int) -> Identity:
        """The identity of the process (thread) ``pid`` that sent a request
        with fsuid ``uid`` and fsgid ``gid``.  Never raises for a process
        that vanished or cannot be read: the result is then invalid or has
        empty fields."""
        if pid <= 0:
            return Identity(pid, uid, gid, problem="request from the kernel (pid 0), not from a process")
        try:
            before, status, h = self._live(pid)
            try:
                stable = h.stable
                if stable is None or h.maps_fd is None or self.clock() - stable.made >= self.stable_ttl:
                    stable = self._gather(pid, before, h, uid, code_only=False)
                elif before.vsize != stable.vsize:  # something was mapped or unmapped (dlopen): look again
                    stable = self._gather(pid, before, h, uid, code_only=True)
            finally:
                h.release()
            if stable is None:
                return Identity(
                    pid,
                    uid,
                    gid,
                    start_time=before.start_time,
                    problem="the pid was reused, or the process exec'd, while it was being identified",
                )
            tracer = self._tracer(pid, status)
            since = self._traced_since_exec(pid, before, status, tracer, stable.exe_key)
            dumpable = self._dumpable(pid, status)
        except _Gone:
            return Identity(pid, uid, gid, problem="the process exited before it could be identified")
        except (OSError, ValueError) as exc:  # (hidepid=, an unreadable or odd /proc entry)
            return Identity(pid, uid, gid, problem=f"cannot read {self.proc}/{pid}: {exc}")
        except _NotHashed as exc:
            return Identity(pid, uid, gid, problem=str(exc))
        if (status.fsuid, status.fsgid) != (uid, gid):
            return Identity(
                pid,
                uid,
                gid,
                start_time=before.start_time,
                problem=f"the process now runs as uid {status.fsuid} gid {status.fsgid}, not as the "
                "request said (pid reused, or its credentials changed)",
            )
        groups = status.groups | {gid}
        last = stable.last
        if last is not None and (
            last.pid,
            last.uid,
            last.gid,
            last.tracer_pid,
            last.start_time,
            last.groups,
            last.traced_since_exec,
            last.dumpable,
        ) == (pid, uid, gid, tracer, before.start_time, groups, since, dumpable):
            return last
        stable.last = Identity(
            pid,
            uid,
            gid,
            groups=groups,
            exe=stable.exe,
            exe_sha256=stable.exe_sha256,
            exe_deleted=stable.exe_deleted,
            exe_replaced=stable.exe_replaced,
            script=stable.script,
            script_sha256=stable.script_sha256,
            cgroup=stable.cgroup,
            start_time=before.start_time,
            tracer_pid=tracer,
            preload=stable.preload,
            tgid=status.tgid or pid,
            foreign_code=stable.code.foreign,
            memory_code=stable.code.memory_only,
            code_problem=stable.code.problem,
            startup=stable.startup,
            dumpable=dumpable,
            traced_since_exec=since,
        )
        return stable.last

    def _live(self, pid: int) -> tuple[_Stat, _Status, _Handles]:
        """``stat`` and ``status`` of ``pid`` now, and its handles, through
        descriptors held open per exec of a process (:class:`_Handles`):
        they stay bound to the process (and ``maps`` to the exec) they were
        opened for, so once it is gone or has exec'd they fail or read
        empty, even if its pid was reused; then they are opened afresh,
        once."""
        carry = None
        for fresh in (False, True):
            h = self._handles_of(pid, fresh)
            if not h.acquire():  # evicted meanwhile
                continue
            if fresh:
                h.previous = carry
            try:
                st = _parse_stat(os.pread(h.stat_fd, 65536, 0))
                status = _parse_status(os.pread(h.status_fd, 65536, 0))
                if h.layout is None:
                    h.layout = st.layout
                # a held maps that still reads is this exec's, unless the address space was shared (vfork) when
                # it was opened: then a new layout tells the exec (with address randomisation on)
                exec_seen = h.maps_fd is not None and not h.same_exec()
                if h.layout == st.layout and not exec_seen:
                    return st, status, h  # (the caller releases h)
                if exec_seen:
                    if status.tgid == pid:
                        with self._lock:  # it exec'd (a live process whose maps read empty): a new program
                            self._forget_traced((pid, st.start_time))
                else:  # a new layout, and no exec seen: a vfork child's, or one the process set itself
                    carry = h.stable
            except (ProcessLookupError, _Gone):
                pass
            except BaseException:
                h.release()
                raise
            h.release()
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
        try:
            maps_fd: int | None = os.open(f"{base}/maps", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            os.close(stat_fd)
            os.close(status_fd)
            raise _Gone() from None
        except OSError:  # (not ours to read: nothing is cached for it)
            maps_fd = None
        h = _Handles(stat_fd, status_fd, maps_fd)
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

    def _dumpable(self, pid: int, status: _Status) -> bool | None:
        """Whether the process may be traced (and its memory opened) by
        another process of its uid, as the kernel decides it.

        The kernel shows the files of ``/proc/PID`` (not the directory) as
        owned by root, or by the root of the user namespace the process's
        memory belongs to, when the process is not dumpable
        (``PR_SET_DUMPABLE`` 0, or an exec that changed its credentials:
        setuid, setgid, file capabilities), and by its euid otherwise; and it
        refuses ptrace and ``/proc/PID/mem`` to anyone without
        CAP_SYS_PTRACE *in that namespace* in the first case.  So owner 0
        means: closed to every unprivileged process.  A process in a user
        namespace shows that namespace's root, which is an unprivileged uid
        that may trace it: dumpable, rightly.

        The owner is updated on a path lookup only (a held descriptor keeps
        the owner it was opened with), so this is a fresh ``stat``; it is of
        the process the held descriptors are bound to when it is the same
        inode (a reused pid would have new inodes).  None for a process
        whose euid is 0: its files are root's either way; and when
        :attr:`check_dumpable` is off."""
        if status.euid == 0 or not self.check_dumpable:
            return None
        try:
            st = os.stat(f"{self.proc}/{pid}/stat")
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone() from None
        with self._lock:
            h = self._handles.get(pid)
        if h is None:
            return None
        with h.lock:
            if h.closed:
                return None
            held = os.fstat(h.stat_fd)
        if (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino):
            raise _Gone()
        return st.st_uid != 0

    def _traced_since_exec(
        self, pid: int, st: _Stat, status: _Status, tracer: int, exe_key: tuple[int, int] | None
    ) -> int:
        """The first tracer seen on the process of thread ``pid`` since its
        exec (``tracer`` now, remembered; or one remembered), 0 if none.

        The memory is per process: keyed by its tgid and the start time of
        its leader, so that a tracer seen on one thread counts for every
        thread.  A thread group's leader pid stays taken as long as any
        thread of the group lives, so its key cannot be another process's
        meanwhile.  It is forgotten at an exec: one that the held ``maps``
        saw (:meth:`_live`), or one that both changed the layout of the
        memory (the same for every thread) and runs another executable
        (``exe_key``).  Not at a new layout alone: any process may set its
        own (``prctl(PR_SET_MM, PR_SET_MM_MAP)``, which a tracer can make it
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
                self._forget_traced(key)  # exec'd another program
            if not tracer:
                return 0
            self._traced[key] = (tracer, tgid, start, st.layout, exe_key)
            self._traced_tgids[tgid] = self._traced_tgids.get(tgid, 0) + 1
            full = len(self._traced) > TRACED_ENTRIES
        if full:
            self._prune_traced()
        return tracer

    def _leader_stat(self, tgid: int) -> _Stat:
        return _parse_stat(self._read(None, f"{self.proc}/{tgid}/stat"))

    def _prune_traced(self) -> None:
        """Drop remembered tracers of processes that are gone (no process
        with that tgid and start time), then the oldest, down to the bound."""
        with self._lock:
            entries = list(self._traced.items())
        gone = []
        for key, (_, tgid, start, *_) in entries:
            try:
                alive = self._leader_stat(tgid).start_time == start
            except (_Gone, OSError, ValueError):
                alive = False
            if not alive:
                gone.append(key)
        with self._lock:
            for key in gone:
                self._forget_traced(key)
            while len(self._traced) > TRACED_ENTRIES:
                self._forget_traced(next(iter(self._traced)))

    def _forget_traced(self, key: tuple) -> None:
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

    # -- exec-stable part -----------------------------------------------------------------

    def _gather(self, pid: int, before: _Stat, h: _Handles, uid: int, *, code_only: bool) -> _Stable | None:
        """Gather the exec-stable part (``code_only``: only the executable
        mappings again) through one ``/proc/PID`` directory handle, checking
        before and after that it is the process ``before`` was read from and
        that it has not exec'd since ``h`` was opened; None if it is not or
        has (the pid was reused, or an execve came in between).  What an
        earlier look at the same exec saw (loader variables, foreign code)
        is kept: code that hid itself since was there all the same."""
        try:
            base = os.open(f"{self.proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone() from None
        try:
            if self._read_stat(base).start_time != before.start_time:
                return None
            old = h.stable
            now = self.clock()
            if code_only and old is not None:
                stable = dataclasses.replace(old, last=None)
            else:
                stable = self._gather_stable(base, now, uid)
                if old is None and h.previous is not None and h.previous.exe_key == stable.exe_key:
                    # a new layout with no exec seen (prctl PR_SET_MM_MAP may set it): the same program, maybe
                    old = h.previous
            stable.vsize = before.vsize
            maps = b"" if h.maps_fd is None else h.maps()
            if maps:
                lines = mappings.executable_lines(maps)
                # a new virtual size with the same executable mappings (the heap grew): nothing new to look at;
                # the full look (every STABLE_TTL) looks at every file again, a pinned one may have changed
                if old is None or not code_only or lines != old.code_lines:
                    stable.code, lines = self._inspect(base, h, lines, stable.exe_key, uid)
                # (a look with a problem, such as a changing mapping or a library not hashed, is made again at the
                # next request)
                stable.code_lines = None if stable.code.problem else lines
            elif h.maps_fd is not None:
                return None  # exec'd (or exited) since h was opened
            else:
                stable.code = Code(problem="cannot read its memory map (/proc/PID/maps)")
            if old is not None:
                stable.preload = tuple(sorted(set(old.preload) | set(stable.preload)))
                stable.startup = tuple(dict.fromkeys(old.startup + stable.startup))
                stable.code = stable.code.merged(old.code)
            if h.maps_fd is not None and not h.same_exec():
                return None
            if self._read_stat(base).start_time != before.start_time:
                return None
        finally:
            os.close(base)
        h.stable = stable
        return stable

    def _inspect(
        self, base: int, h: _Handles, lines: list, exe_key: tuple[int, int] | None, uid: int
    ) -> tuple[Code, list]:
        """:func:`mappings.inspect` of the executable ``lines`` of maps, and
        again on maps read anew while a mapping changed under a look (up to
        :data:`MAPS_LOOKS` looks; what each saw is kept): (the code, the
        lines it is of)."""
        code = None
        for _ in range(MAPS_LOOKS):
            try:
                found = mappings.inspect(base, lines, exe_key, lambda fd: self._library_hash(fd, uid))
            except ProcessLookupError:
                raise _Gone() from None
            code = found.merged(code)
            maps = h.maps() if found.problem == mappings.CHANGED else b""
            if not maps:  # (none changed; or it exec'd or exited: the caller sees that)
                break
            lines = mappings.executable_lines(maps)
        return code, lines

    def forget(self) -> None:
        """Gather the exec-stable part of every process again at its next
        request (after a policy reload: it may need hashes the old one did
        not).  What was seen once during an exec (loader variables, foreign
        code) stays seen: the cached part is made stale, not dropped.
        Hashes stay: they are keyed by content."""
        with self._lock:
            handles = list(self._handles.values())
        for h in handles:
            stable = h.stable
            if stable is not None:
                h.stable = dataclasses.replace(stable, made=float("-inf"))

    def _gather_stable(self, base: int, now: float, uid: int) -> _Stable:
        exe, deleted, replaced, exe_hash, exe_key = self._exe(base, uid)
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
        startup = ()
        variables_of = family
        if family == "python":
            flags = python_flags(cmdline)
            startup = _python_startup(flags)
            if flags & {"I", "E"}:
                variables_of = None  # Python ignores its PYTHON* variables then
        try:
            environ = self._read(base, "environ", limit=1 << 22)
            preload = injection_variables(environ, variables_of)
        except PermissionError:
            preload = ()
        if family == "python" and "PYTHONINSPECT" in preload and PYTHON_INTERACTIVE not in startup:
            startup += (PYTHON_INTERACTIVE,)
        return _Stable(
            exe,
            exe_hash,
            deleted,
            replaced,
            script,
            script_hash,
            self._cgroup(base),
            preload,
            startup,
            Code(),
            0,
            now,
            exe_key=exe_key,
        )

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

    def _library_hash(self, fd: int, uid: int) -> str:
        """The hash of a mapped library not root's; past a limit of the hash
        cache :class:`mappings.Unhashed` (that look is a refusal, and the
        next one hashes it again: a spent budget is not held against the
        process for the rest of its exec)."""
        try:
            return self.hashes.of_fd(fd, uid)
        except HashRefused as exc:
            raise mappings.Unhashed(str(exc)) from None

    def _exe(self, base: int, uid: int) -> tuple[str | None, bool, bool, str | None, tuple[int, int] | None]:
        """(path, deleted, replaced, sha256, (st_dev, st_ino)) of the running
        executable.  The file is the one ``exe`` resolves to (the kernel
        resolves it to the inode, in any mount namespace); the path is
        only what the process's namespace calls it, so ``replaced`` is set
        unless the daemon, in its own namespace, finds that very file at
        that path: a bind mount or another root cannot lend a path."""
        try:
            link = os.readlink("exe", dir_fd=base)
        except (FileNotFoundError, ProcessLookupError):
            # a kernel thread or a zombie has no exe; a vanished process neither
            self._read_stat(base)  # raises _Gone for the latter
            return None, False, False, None, None
        except OSError:
            return None, False, False, None, None
        deleted = link.endswith(DELETED)
        path = link[: -len(DELETED)] if deleted else link
        digest = None
        try:
            fd = os.open("exe", os.O_RDONLY | os.O_CLOEXEC, dir_fd=base)
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone() from None
        except OSError:
            fd = None
        try:
            running = os.fstat(fd) if fd is not None else os.stat("exe", dir_fd=base)
            if fd is not None:
                digest = self._hash(fd, "exe", uid, path)
        except OSError:
            return path, deleted, True, None, None  # cannot tell which file runs: it matches no exe
        finally:
            if fd is not None:
                os.close(fd)
        key = (running.st_dev, running.st_ino)
        try:
            here = os.stat(path)  # the daemon's own view of the path, never the caller's
            replaced = deleted or (here.st_dev, here.st_ino) != key
        except (OSError, ValueError):
            replaced = True  # the path names nothing (or nothing we may see) here
        return path, deleted, replaced, digest, key

    def _script(self, base: int, arg: bytes, uid: int) -> tuple[str | None, str | None]:
        """Open the script as the process would (relative to its cwd, or
        under its root); return (resolved path, sha256) or (None, None).

        The name comes from an untrusted command line and the daemon runs
        as root, so nothing but a regular file is ever opened for reading:
        opening a device can have side effects (a watchdog, a tape).  The
        file is first opened with O_PATH, checked, then re-opened through
        that descriptor, so it cannot be swapped in between.  As for the
        executable, the path is given only when the daemon finds that very
        file at it in its own mount namespace (else the path is None, the
        hash stays)."""
        if not arg:
            return None, None
        where = b"root" + arg if arg.startswith(b"/") else b"cwd/" + arg
        try:
            pfd = os.open(where, os.O_PATH | os.O_CLOEXEC, dir_fd=base)
        except OSError:
            return None, None
        try:
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                return None, None
            path: str | None = os.readlink(f"/proc/self/fd/{pfd}")
            if path.endswith(DELETED):
                return None, None
            try:
                here = os.stat(path)
                if (here.st_dev, here.st_ino) != (st.st_dev, st.st_ino):
                    path = None
            except (OSError, ValueError):
                path = None
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
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 50:
        raise _Gone()
    # fields[0] is field 3 (state): field N is fields[N - 3]
    layout = tuple(int(f) for f in fields[26 - 3 : 29 - 3] + fields[45 - 3 : 52 - 3])
    return _Stat(int(fields[22 - 3]), int(fields[23 - 3]), layout)


def _parse_status(text: bytes) -> _Status:
    raw = b"\n" + text
    try:
        uids = _status_field(raw, b"Uid").split()
        gids = _status_field(raw, b"Gid").split()
        groups = frozenset(int(g) for g in _status_field(raw, b"Groups").split())
        return _Status(
            int(uids[1]),
            int(uids[3]),
            int(gids[3]),
            groups,
            int(_status_field(raw, b"TracerPid") or 0),
            int(_status_field(raw, b"Tgid") or 0),
            int(_status_field(raw, b"Threads") or 1),
        )
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
    return raw[start : end if end >= 0 else len(raw)].strip()


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


#: What :func:`python_startup` says of ``python -i`` (and PYTHONINSPECT):
#: it is not the script alone that runs (script selectors refuse it).
PYTHON_INTERACTIVE = "python -i (or PYTHONINSPECT) reads code from stdin after the program"


def python_flags(cmdline: bytes) -> set[str]:
    """The one-letter options of a Python command line (``{"I", "B"}``
    for ``python3 -IB app.py``), up to the script, ``-c`` or ``-m``."""
    argv = cmdline.split(b"\0")
    if argv and argv[-1] == b"":
        argv.pop()
    flags: set[str] = set()
    takes_value = _SCRIPT_OPTIONS["python"][1]
    args = [a.decode("utf-8", "surrogateescape") for a in argv[1:]]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or arg == "-" or not arg.startswith("-"):
            break
        if arg in takes_value:
            i += 2
            continue
        if arg.startswith("--"):
            i += 1
            continue
        for j, letter in enumerate(arg[1:]):
            if "-" + letter in takes_value:  # -Wignore, -Xdev: the rest is its value
                if j == len(arg) - 2:
                    i += 1  # and the value is the next argument
                break
            flags.add(letter)
            if letter in "cm":  # the rest of the line is the code or the module's
                break
        if flags & {"c", "m"}:
            break
        i += 1
    return flags


def python_startup(cmdline: bytes) -> tuple[str, ...]:
    """What a Python command line lets the caller add to the program:
    without ``-I`` (or both ``-E`` and ``-s``) Python imports code named by
    the environment (PYTHONPATH, PYTHONSTARTUP, …) and the user
    site-packages of ``$HOME`` (``.pth`` files, ``usercustomize``), which
    the environment check cannot see once that code erased its traces;
    ``-i`` reads more code from stdin after the script."""
    return _python_startup(python_flags(cmdline))


def _python_startup(flags: set[str]) -> tuple[str, ...]:
    """:func:`python_startup` of the :func:`python_flags` ``flags``."""
    found = []
    if "i" in flags:
        found.append(PYTHON_INTERACTIVE)
    if "I" not in flags and not {"E", "s"} <= flags:
        found.append(
            "python runs without -I (or -E and -s), so it loads code that its environment and the "
            "user site-packages of $HOME name"
        )
    return tuple(found)


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
