"""Reading /proc: one file of a process, and its ``stat`` and ``status``
parsed into what an identity needs of them.

A process that is gone (or a thread that ended) raises :class:`Gone`,
whichever file was being read.  Blocking file I/O: call it from a worker
thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class Gone(Exception):
    """The process (or the thread) no longer exists."""


@dataclass(frozen=True)
class Stat:
    start_time: int
    vsize: int
    #: Where the kernel laid out code, data, stack, arguments and
    #: environment at the exec (fields 26-28 and 45-51 of ``stat``).
    layout: tuple[int, ...] = ()


@dataclass(frozen=True)
class Status:
    euid: int
    fsuid: int
    fsgid: int
    groups: frozenset[int]
    tracer_pid: int
    tgid: int
    threads: int


def read(base: int | None, name: str, limit: int = 1 << 20) -> bytes:
    """The content of ``name`` in the /proc directory ``base`` (a
    directory descriptor; None: ``name`` is a full path)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=base)
    except (FileNotFoundError, ProcessLookupError):
        raise Gone() from None
    try:
        out = os.read(fd, 65536)
        while len(out) < limit and len(out) % 65536 == 0 and out:  # (one read is enough for most files)
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
        return out
    except ProcessLookupError:
        raise Gone() from None
    finally:
        os.close(fd)


def parse_stat(raw: bytes) -> Stat:
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 50:
        raise Gone()
    # fields[0] is field 3 (state): field N is fields[N - 3]
    layout = tuple(int(f) for f in fields[26 - 3 : 29 - 3] + fields[45 - 3 : 52 - 3])
    return Stat(int(fields[22 - 3]), int(fields[23 - 3]), layout)


def parse_status(text: bytes) -> Status:
    raw = b"\n" + text
    try:
        uids = status_field(raw, b"Uid").split()
        gids = status_field(raw, b"Gid").split()
        groups = frozenset(int(g) for g in status_field(raw, b"Groups").split())
        return Status(
            int(uids[1]),
            int(uids[3]),
            int(gids[3]),
            groups,
            int(status_field(raw, b"TracerPid") or 0),
            int(status_field(raw, b"Tgid") or 0),
            int(status_field(raw, b"Threads") or 1),
        )
    except (IndexError, ValueError):
        raise Gone() from None  # a zombie has no credentials left to show


def status_field(raw: bytes, name: bytes) -> bytes:
    """The value of ``name:`` in a /proc status text that starts with a
    newline (a plain search: this is on every request's path)."""
    start = raw.find(b"\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 2
    end = raw.find(b"\n", start)
    return raw[start : end if end >= 0 else len(raw)].strip()
