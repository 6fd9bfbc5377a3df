"""The code a process runs: its executable mappings, from ``/proc/PID/maps``.

Environment variables and the command line are the process's own memory
and it may rewrite them (a preloaded library can erase ``LD_PRELOAD=``
from its constructor).  What the kernel has mapped executable cannot be
rewritten from inside: every library, preload, audit module or loader
that runs code in the process appears there.  :func:`inspect` sorts each
executable mapping into

* *trusted*: a regular file owned by root that neither group nor others
  may write, on a file system mounted without ``nosuid`` (a user's own
  FUSE mount is always ``nosuid``, and there a file may claim any owner);
* *foreign*: any other file still linked into a directory: allowed only
  when its sha256 is pinned by the workload (``libraries``, or
  ``exe_sha256`` for the executable itself);
* *memory-only*: anonymous executable memory, and files with no name left
  (memfd, ``O_TMPFILE``, deleted and not trusted): allowed only for a
  workload that says it is a JIT (``jit = true``).

Files are identified through ``/proc/PID/map_files/START-END``, which the
kernel resolves to the mapped file itself (by its inode, in any mount
namespace), never by the path string of the maps line.  Reading
``map_files`` takes CAP_SYS_ADMIN: without it nothing can be trusted and
the result says so (:attr:`Code.problem`).

Blocking /proc I/O: call it from a worker thread.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

#: Kernel-provided executable areas that are not code from a file.
KERNEL_AREAS = frozenset({"[vdso]", "[vsyscall]", "[vectors]", "[sigpage]", "[uprobes]"})

# start-end perms offset dev inode [path]; only executable ones ('x' third)
_EXEC_LINE = re.compile(rb"^([0-9a-f]+-[0-9a-f]+) ..x. [0-9a-f]+ [0-9a-f]+:[0-9a-f]+ ([0-9]+) *([^\n]*)$", re.MULTILINE)
DELETED = " (deleted)"
#: :attr:`Code.problem` of a look during which a mapping changed (a range
#: of ``maps`` had no ``map_files`` entry any more): the caller looks again.
CHANGED = "its executable mappings changed while they were looked at"


class Unhashed(Exception):
    """Raised by the ``hash_fd`` of :func:`inspect` for a file not hashed
    because of a limit (``str()`` says which): that look has a problem,
    and the file is looked at again at the next one."""


#: Foreign files larger than this are not hashed (so never pinned): hashing
#: is work the caller chooses the size of.
HASH_LIMIT = 256 << 20


@dataclass(frozen=True)
class Code:
    """The executable mappings of one process, sorted (see the module
    docstring).  ``foreign`` holds (path as the maps line names it, sha256
    or None if unreadable, whether it is the running executable itself)."""

    foreign: tuple[tuple[str, str | None, bool], ...] = ()
    memory_only: tuple[str, ...] = ()
    problem: str | None = None

    def merged(self, older: Code | None) -> Code:
        """This and an older sighting of the same exec: what was ever seen
        stays (code unmapped since still ran in this process).  A problem
        is this look's own: a look that failed saw nothing, so a later one
        that succeeded knows no less than it."""
        if older is None:
            return self
        foreign = tuple(dict.fromkeys(older.foreign + self.foreign))
        memory_only = tuple(dict.fromkeys(older.memory_only + self.memory_only))
        return Code(foreign, memory_only, self.problem)


def executable_lines(maps: bytes) -> list[tuple[bytes, int, str]]:
    """(range, inode, path) of each executable mapping of a maps text."""
    return [
        (m.group(1), int(m.group(2)), m.group(3).decode("utf-8", "surrogateescape")) for m in _EXEC_LINE.finditer(maps)
    ]


def inspect(base: int, lines: list[tuple[bytes, int, str]], exe_key: tuple[int, int] | None, hash_fd) -> Code:
    """Sort the executable mappings ``lines`` (:func:`executable_lines` of
    the maps of the process whose /proc directory is the descriptor ``base``).
    ``exe_key`` is the (st_dev, st_ino) of its running executable;
    ``hash_fd(fd)`` hashes an open file (a :class:`.hashing.HashCache`).

    A range of ``lines`` that has no ``map_files`` entry any more was
    unmapped, moved, or split or merged with its neighbour (``mprotect`` of
    a part of it) since maps was read: the file may still be mapped, so
    the result has the problem :data:`CHANGED` (and what was seen).  A
    file that ``hash_fd`` did not hash for a limit (:class:`Unhashed`) is
    left out, with a problem that names it: it is neither pinned nor
    unreadable, only not known yet."""
    changed = False
    unhashed = None
    foreign: list[tuple[str, str | None, bool]] = []
    memory_only: list[str] = []
    seen: set[tuple[int, int]] = set()
    for area, inode, path in lines:
        if inode == 0:
            if path not in KERNEL_AREAS:
                memory_only.append(f"anonymous executable memory {path or area.decode()}".rstrip())
            continue
        start, _, end = area.partition(b"-")
        link = f"map_files/{int(start, 16):x}-{int(end, 16):x}"  # (maps pads to 8 digits, map_files does not)
        try:
            st = os.stat(link, dir_fd=base)
        except FileNotFoundError:
            changed = True  # (never skipped: a process could keep its mapping changing)
            continue
        except PermissionError:
            return Code(
                problem="cannot inspect its executable mappings (map_files needs CAP_SYS_ADMIN: run the daemon as root)"
            )
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        if _trusted(base, link, st):
            continue
        if st.st_nlink == 0 or not stat.S_ISREG(st.st_mode):
            memory_only.append(f"memory-only file {path}")
            continue
        name = path.removesuffix(DELETED)
        try:
            digest = _hash(base, link, hash_fd) if st.st_size <= HASH_LIMIT else None
        except Unhashed as exc:
            unhashed = f"the library {name} was not hashed: {exc}"
            continue
        foreign.append((name, digest, key == exe_key))
    return Code(tuple(foreign), tuple(memory_only), CHANGED if changed else unhashed)


def _trusted(base: int, link: str, st: os.stat_result) -> bool:
    if st.st_uid != 0 or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
        return False
    try:
        return not os.statvfs(f"/proc/self/fd/{base}/{link}").f_flag & os.ST_NOSUID
    except OSError:
        return False


def _hash(base: int, link: str, hash_fd) -> str | None:
    try:
        fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=base)
    except OSError:
        return None
    try:
        return hash_fd(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
