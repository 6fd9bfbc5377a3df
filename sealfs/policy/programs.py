"""What a process runs, gathered once per exec: its executable (path,
file, sha256), the script an interpreter runs, the loader and interpreter
variables of its environment, Python's startup flags, its cgroup and its
executable mappings (:mod:`.mappings`).

Only an ``execve`` changes these (and the cgroup, which rarely moves), so
they are gathered into a :class:`Stable` kept with the process's held
descriptors (:attr:`.handles.Handles.stable`) and reused for
:data:`.identity.STABLE_TTL` seconds.  Files are hashed through a
:class:`.hashing.HashCache`, only when the policy could need the hash.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import mappings
from .handles import Handles
from .hashing import HashCache, HashRefused
from .interpreters import (
    PYTHON_INTERACTIVE,
    injection_variables,
    interpreter_family,
    python_flags,
    python_startup_of_flags,
    script_argument,
)
from .mappings import DELETED, Code
from .proc import Gone, Stat, parse_stat, read

if TYPE_CHECKING:
    from .identity import Identity

#: Looks at the executable mappings of one process while they keep
#: changing under the look (then its identity has a code problem).
MAPS_LOOKS = 3


class NotHashed(Exception):
    """A file the identity needs was not hashed (a limit): the identity is invalid."""


@dataclass(eq=False)
class Stable:
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


class ProgramReader:
    """Gathers the :class:`Stable` part of the identities of processes of
    ``proc`` (a procfs mount), hashing through ``hashes`` the files that
    ``wanted(kind, uid, path)`` says the policy could need ("exe" or
    "script"; mapped libraries not root's are always hashed).  ``clock``
    stamps what was gathered.  It keeps nothing itself: what it gathers is
    kept with the handles of the process (:attr:`.handles.Handles.stable`)."""

    def __init__(
        self, proc: str, hashes: HashCache, clock: Callable[[], float], wanted: Callable[[str, int, str], bool]
    ):
        self.proc = proc
        self.hashes = hashes
        self.clock = clock
        self.wanted = wanted

    def gather(self, pid: int, before: Stat, h: Handles, uid: int, *, code_only: bool) -> Stable | None:
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
            raise Gone() from None
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
        self, base: int, h: Handles, lines: list, exe_key: tuple[int, int] | None, uid: int
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
                raise Gone() from None
            code = found.merged(code)
            maps = h.maps() if found.problem == mappings.CHANGED else b""
            if not maps:  # (none changed; or it exec'd or exited: the caller sees that)
                break
            lines = mappings.executable_lines(maps)
        return code, lines

    def _gather_stable(self, base: int, now: float, uid: int) -> Stable:
        exe, deleted, replaced, exe_hash, exe_key = self._exe(base, uid)
        family = interpreter_family(exe)
        try:
            cmdline = read(base, "cmdline")
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
            startup = python_startup_of_flags(flags)
            if flags & {"I", "E"}:
                variables_of = None  # Python ignores its PYTHON* variables then
        try:
            environ = read(base, "environ", limit=1 << 22)
            preload = injection_variables(environ, variables_of)
        except PermissionError:
            preload = ()
        if family == "python" and "PYTHONINSPECT" in preload and PYTHON_INTERACTIVE not in startup:
            startup += (PYTHON_INTERACTIVE,)
        return Stable(
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
        None when the policy cannot need it.  Raises NotHashed past a
        limit of the hash cache."""
        if not self.wanted(kind, uid, path):
            return None
        try:
            return self.hashes.of_fd(fd, uid)
        except HashRefused as exc:
            raise NotHashed(f"the {kind} {path} was not hashed: {exc}") from None

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
            self._read_stat(base)  # raises Gone for the latter
            return None, False, False, None, None
        except OSError:
            return None, False, False, None, None
        deleted = link.endswith(DELETED)
        path = link[: -len(DELETED)] if deleted else link
        digest = None
        try:
            fd = os.open("exe", os.O_RDONLY | os.O_CLOEXEC, dir_fd=base)
        except (FileNotFoundError, ProcessLookupError):
            raise Gone() from None
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
            text = read(base, "cgroup").decode("utf-8", "surrogateescape")
        except (Gone, OSError):
            return None
        for line in text.splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
        return None

    def _read_stat(self, base: int) -> Stat:
        return parse_stat(read(base, "stat"))
