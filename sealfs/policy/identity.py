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
                    in the life of its current program (kept by
                    :class:`.tracers.Tracers`)
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
hashed again and an unchanged one never (:class:`.hashing.HashCache`, bounded).
Any user can make the daemon hash a file of their choosing (run a program,
name a script, map a library), so hashing is bounded (:class:`.hashing.HashCache`):
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
``maps`` stay open for the last :data:`.handles.HANDLE_CACHE_ENTRIES` processes),
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
import os
import time
from dataclasses import dataclass

from ..errors import UsageError
from .handles import HandleCache
from .hashing import HashCache
from .proc import Gone, Status, parse_status, read
from .programs import NotHashed, ProgramReader
from .tracers import Tracers

#: Seconds an exec-stable part of an identity (exe, script, environ flags,
#: mappings, cgroup) is reused for one exec of a process.
STABLE_TTL = 2.0


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
        self._tracers = Tracers(proc)
        self._handles = HandleCache(proc, on_exec=self._tracers.forget_exec)
        self._programs = ProgramReader(proc, self.hashes, clock, self._hash_wanted)
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
            before, status, h = self._handles.live(pid)
            try:
                stable = h.stable
                if stable is None or h.maps_fd is None or self.clock() - stable.made >= self.stable_ttl:
                    stable = self._programs.gather(pid, before, h, uid, code_only=False)
                elif before.vsize != stable.vsize:  # something was mapped or unmapped (dlopen): look again
                    stable = self._programs.gather(pid, before, h, uid, code_only=True)
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
            tracer = self._tracers.now(pid, status)
            since = self._tracers.since_exec(pid, before, status, tracer, stable.exe_key)
            dumpable = self._dumpable(pid, status)
        except Gone:
            return Identity(pid, uid, gid, problem="the process exited before it could be identified")
        except (OSError, ValueError) as exc:  # (hidepid=, an unreadable or odd /proc entry)
            return Identity(pid, uid, gid, problem=f"cannot read {self.proc}/{pid}: {exc}")
        except NotHashed as exc:
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

    def close(self) -> None:
        """Close every held descriptor (the Identifier stays usable)."""
        self._handles.close()

    def identify_process(self, pid: int) -> Identity:
        """The identity of a running process as if it sent a request now
        (its fsuid/fsgid from /proc): for ``sealfs policy explain``.
        Raises UsageError if there is no such process."""
        try:
            base = os.open(f"{self.proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                status = parse_status(read(base, "status"))
            finally:
                os.close(base)
        except (Gone, OSError):
            raise UsageError(f"there is no process with pid {pid}") from None
        return self.identify(pid, status.fsuid, status.fsgid)

    def forget(self) -> None:
        """Gather the exec-stable part of every process again at its next
        request (after a policy reload: it may need hashes the old one did
        not).  What was seen once during an exec (loader variables, foreign
        code) stays seen: the cached part is made stale, not dropped.
        Hashes stay: they are keyed by content."""
        for h in self._handles.held():
            stable = h.stable
            if stable is not None:
                h.stable = dataclasses.replace(stable, made=float("-inf"))

    def _dumpable(self, pid: int, status: Status) -> bool | None:
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
            raise Gone() from None
        held = self._handles.held_stat(pid)
        if held is None:
            return None
        if (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino):
            raise Gone()
        return st.st_uid != 0

    def _hash_wanted(self, kind: str, uid: int, path: str) -> bool:
        """:attr:`needs_hash`, or True while there is none."""
        return self.needs_hash is None or self.needs_hash(kind, uid, path)
