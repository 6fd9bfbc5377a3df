"""Crash consistency: SIGKILL the daemon at random moments, remount, check.

One test per store kind.  It makes one volume and runs
``SEALFS_CRASH_ITERATIONS`` rounds on it (default 25 per store kind).  A
round:

1. A worker process (this file run as a script) does a seeded random
   sequence of operations on a few files of the mount: writes, closed or
   fsync'ed (from scratch, in place, appended, with ftruncate, with holes;
   sometimes one file of 8.5-10 MiB, which on S3 is uploaded in parts while
   it is written), truncates by path, file renames (also over an existing
   file, also between directories), unlinks and directory renames.  Before
   each operation it appends to a journal outside the mount what it is
   about to do (with the sha256 of what the file must hold after each of
   its fsyncs and after its close), and after each one what returned.
2. After a seeded random delay the daemon is stopped (SIGSTOP), every
   regular file it has open (the encrypted spool among them) is searched
   for the round's plaintext marker, and it is killed (SIGKILL).  The worker
   is killed and the dead mount lazily unmounted.
3. fsck -- the function ``sealfs fsck`` runs, called in-process (a CLI
   run costs a second per round on S3) with every multipart upload counted
   as stale, since nothing runs (the CLI leaves uploads younger than a day
   alone) -- must find no damaged object.  Leftovers of a crash
   (incomplete multipart uploads, ``o/`` objects of files unlinked while
   open) are repaired, and a second check must be clean.  The only warning
   allowed is two names of one directory or file, and only when the
   operation in flight was a rename of that kind (docs/SEMANTICS.md,
   rename).
4. The volume is mounted again, on the same mountpoint with the same cache
   directory, and every file is read and compared with the journal: each
   holds its last acknowledged version or, for the one operation in
   flight, a whole version that operation wrote (at one of its fsyncs or at
   its close) -- never a mix of versions, never a version older than an
   acknowledged fsync; an interrupted rename leaves the old name, both, or
   the new one, never neither.  Nothing may be left in the cache directory.
   Two names of one directory or file are resolved as fsck advises (the
   entry of the old name is deleted, in the store behind the mount's
   back) and the volume remounted, so that neither the kernel nor the
   mount still knows the deleted name.  (Until then the two names of a
   file are two independent files, as
   test_interrupted_file_rename_leaves_two_independent_names checks.)

At the end the volume is unmounted cleanly, ``sealfs fsck`` must exit 0,
and neither the store, nor any file of the test's directory (cache, logs,
journals), nor a file directly in /tmp written meanwhile holds a marker.

What a crash loses by design (docs/SEMANTICS.md, Durability): whatever was
written since the file's last close or fsync.  The spool is not recovered:
it is anonymous and sealed under a key only the dead process had.

Environment: ``SEALFS_CRASH_SEED`` (default 1; every failure names the seed
and round), ``SEALFS_CRASH_ITERATIONS`` (rounds per store kind).  The
timing of each kill depends on the machine, so a seed fixes the operations
and the delays, not exactly where the kill lands.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sys
import time

# -- the worker (runs in its own process, stdlib only) -------------------------------

ROOT_FILES = ("f0", "f1", "f2", "f3")
DIR_FILES = ("g0", "g1")
DIR_NAMES = ("dA", "dB")
BIG = "big"
MiB = 1 << 20
#: errnos of a request cut off by the daemon's death
DEAD_MOUNT = (errno.ENOTCONN, errno.ECONNABORTED)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


def _payload(marker: bytes, tag: str, n: int) -> bytes:
    unit = b"|" + marker + b"|" + tag.encode() + b"|\n"
    return (unit * (n // len(unit) + 1))[:n]


def _put(cur: bytearray, off: int, data: bytes) -> None:
    if off > len(cur):
        cur.extend(bytes(off - len(cur)))
    cur[off : off + len(data)] = data


def _resize(cur: bytearray, size: int) -> None:
    if size < len(cur):
        del cur[size:]
    else:
        cur.extend(bytes(size - len(cur)))


def _plan_write(rng: random.Random, old: bytes | None, tag: str, marker: bytes, big: bool):
    """(mode, actions, points): how a write operation opens the file, what
    it does, and the digest of the file after each of its fsyncs and after
    its close (the last point)."""
    cur = bytearray()
    actions: list[tuple] = []
    points: list[str] = []
    if big:
        # On S3 its first 8 MiB part is sent while it is written; the test
        # kills the daemon during or soon after the hold ("h") at 9 MiB.
        size = rng.randint(9 * MiB + MiB // 2, 10 * MiB)
        for off in range(0, size, MiB):
            if off == 9 * MiB:
                actions.append(("h", 0.3))
            data = _payload(marker, f"{tag}c{off // MiB}", min(MiB, size - off))
            actions.append(("w", off, data))
            _put(cur, off, data)
        return "trunc", actions, [digest(cur)]
    mode = rng.choice(("trunc", "trunc", "inplace", "append"))
    if old is not None and mode != "trunc":
        cur = bytearray(old)
    if len(cur) > 400_000:
        mode, cur = "trunc", bytearray()
    for k in range(rng.randint(1, 4)):
        if cur and rng.random() < 0.15:
            size = rng.randint(0, len(cur) + 100_000)
            actions.append(("t", size))
            _resize(cur, size)
        else:
            n = rng.randint(1, 4096) if rng.random() < 0.5 else rng.randint(1, 200_000)
            off = len(cur) if mode == "append" else rng.randint(0, len(cur) + rng.choice((0, 0, 70_000)))
            data = _payload(marker, f"{tag}c{k}", n)
            actions.append(("w", off, data))
            _put(cur, off, data)
        if rng.random() < 0.3:
            actions.append(("s", len(points)))
            points.append(digest(cur))
            if rng.random() < 0.5:
                actions.append(("z", rng.uniform(0.0, 0.05)))  # hold the fsync'ed version a while
    points.append(digest(cur))
    return mode, actions, points


def _scan(root: str) -> tuple[dict[str, bytes], list[str]]:
    files, dirs = {}, []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            dirs.append(name)
            for child in sorted(os.listdir(path)):
                with open(os.path.join(path, child), "rb") as f:
                    files[f"{name}/{child}"] = f.read()
        else:
            with open(path, "rb") as f:
                files[name] = f.read()
    return files, dirs


def worker(root: str, journal: str, seed: int, marker: bytes, round_no: int, big: bool) -> int:
    """Do random operations under ``root`` until killed, journaling each."""
    rng = random.Random(seed)
    jfd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def log(**rec) -> None:
        os.write(jfd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())

    files, dirs = _scan(root)
    assert len(dirs) == 1, dirs
    dirname = dirs[0]
    log(ready=1)
    step = 0
    while True:
        step += 1
        tag = f"r{round_no}s{step}"
        pool = [*ROOT_FILES, *(f"{dirname}/{g}" for g in DIR_FILES)]
        existing = sorted(p for p in files if p != BIG)
        r = rng.random()
        try:
            if big or not existing or r < 0.5:
                path = BIG if big else rng.choice(pool)
                old = files.get(path)
                mode, actions, points = _plan_write(rng, old, tag, marker, big)
                big = False
                log(step=step, op="write", path=path, mode=mode, points=points)
                flags = os.O_WRONLY | os.O_CREAT | {"trunc": os.O_TRUNC, "append": os.O_APPEND, "inplace": 0}[mode]
                cur = bytearray() if mode == "trunc" or old is None else bytearray(old)
                fd = os.open(os.path.join(root, path), flags, 0o644)
                for act in actions:
                    if act[0] == "w":
                        _, off, data = act
                        view = memoryview(data)
                        while view:
                            n = os.write(fd, view) if mode == "append" else os.pwrite(fd, view, off)
                            view, off = view[n:], off + n
                        _put(cur, act[1], data)
                    elif act[0] == "t":
                        os.ftruncate(fd, act[1])
                        _resize(cur, act[1])
                    elif act[0] == "s":
                        os.fsync(fd)
                        log(step=step, fsynced=act[1])
                    else:
                        if act[0] == "h":
                            log(step=step, hold=1)
                        time.sleep(act[1])  # a pause of the worker: time for the kill to land within it
                os.close(fd)
                files[path] = bytes(cur)
            elif r < 0.62:
                path = rng.choice(existing)
                cur = bytearray(files[path])
                _resize(cur, rng.randint(0, len(cur) + 100_000))
                log(step=step, op="truncate", path=path, size=len(cur), new=digest(cur))
                os.truncate(os.path.join(root, path), len(cur))
                files[path] = bytes(cur)
            elif r < 0.82:
                src = rng.choice(existing)
                dst = rng.choice([p for p in pool if p != src])
                log(step=step, op="rename", src=src, dst=dst)
                os.rename(os.path.join(root, src), os.path.join(root, dst))
                files[dst] = files.pop(src)
            elif r < 0.9:
                path = rng.choice(existing)
                log(step=step, op="unlink", path=path)
                os.unlink(os.path.join(root, path))
                del files[path]
            else:
                new = DIR_NAMES[1 - DIR_NAMES.index(dirname)]
                log(step=step, op="dirrename", src=dirname, dst=new)
                os.rename(os.path.join(root, dirname), os.path.join(root, new))
                files = {(new + p[len(dirname) :] if p.startswith(dirname + "/") else p): v for p, v in files.items()}
                dirname = new
        except OSError as exc:
            log(step=step, error=exc.errno, message=f"{exc.strerror} ({exc.filename})")
            return 3
        log(step=step, ack=1)


if __name__ == "__main__":  # the worker: started by the test below, stdlib only
    a = sys.argv[1:]
    sys.exit(worker(a[0], a[1], int(a[2]), a[3].encode(), int(a[4]), a[5] == "1"))

# -- the test ------------------------------------------------------------------------
# (imported here, below the worker, which runs as a script without them)
# ruff: noqa: E402

import re
import signal
import stat
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sealfs.fsck import check
from sealfs.keys.slots import KeyFile
from sealfs.volume import ROOT_ID, Volume

from .conftest import Mount, fs_helpers

SEED = int(os.environ.get("SEALFS_CRASH_SEED", "1"))
ROUNDS = int(os.environ.get("SEALFS_CRASH_ITERATIONS", "25"))
#: Dirty data above one block per file goes to the spool.
MOUNT_OPTIONS = ["dirty_size=64K"]
#: Share of rounds whose worker starts with the big file.
BIG_ROUNDS = 0.2
#: What fsck may find after a crash (and --repair removes).
CRASH_LEFTOVERS = {
    "stale multipart upload",
    "file unlinked while open, left by a crash",
    "times record of no entry version",
    "part of an object being written, left by a crash",
}
EMPTY = digest(b"")
ABSENT = None
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class State:
    """A namespace: file path -> digest of its content, and the directories."""

    files: tuple[tuple[str, str], ...]
    dirs: frozenset[str]

    @staticmethod
    def of(files: dict[str, str], dirs) -> State:
        return State(tuple(sorted(files.items())), frozenset(dirs))

    def fmap(self) -> dict[str, str]:
        return dict(self.files)

    def with_file(self, path: str, value: str | None) -> State:
        f = self.fmap()
        if value is ABSENT:
            f.pop(path, None)
        else:
            f[path] = value
        return State.of(f, self.dirs)


def _renamed(state: State, src: str, dst: str, *, keep_src: bool) -> State:
    f = state.fmap()
    f[dst] = f[src]
    if not keep_src:
        del f[src]
    return State.of(f, state.dirs)


def _dir_renamed(state: State, src: str, dst: str, *, keep_src: bool) -> State:
    f = state.fmap()
    for p, v in list(f.items()):
        if p.startswith(src + "/"):
            f[dst + p[len(src) :]] = v
            if not keep_src:
                del f[p]
    dirs = set(state.dirs) | {dst}
    if not keep_src:
        dirs.discard(src)
    return State.of(f, dirs)


def after(state: State, op: dict) -> State:
    """The state once ``op`` returned."""
    kind = op["op"]
    if kind == "write":
        return state.with_file(op["path"], op["points"][-1])
    if kind == "truncate":
        return state.with_file(op["path"], op["new"])
    if kind == "rename":
        return _renamed(state, op["src"], op["dst"], keep_src=False)
    if kind == "unlink":
        return state.with_file(op["path"], ABSENT)
    assert kind == "dirrename", op
    return _dir_renamed(state, op["src"], op["dst"], keep_src=False)


def outcomes(state: State, op: dict, fsynced: int) -> list[tuple[str, State]]:
    """Every state ``op`` may leave when the daemon dies while it runs:
    (label, state).  ``fsynced``: how many of its fsyncs were acknowledged."""
    kind = op["op"]
    if kind == "write":
        path, points = op["path"], op["points"]
        old = state.fmap().get(path, ABSENT)
        out = []
        if fsynced == 0:
            out.append(("old", state))
            if old is ABSENT:
                out.append(("created empty", state.with_file(path, EMPTY)))
        else:
            out.append((f"fsync {fsynced} (acknowledged)", state.with_file(path, points[fsynced - 1])))
        if fsynced < len(points):
            label = "closed" if fsynced == len(points) - 1 else f"fsync {fsynced + 1}"
            out.append((label, state.with_file(path, points[fsynced])))
        return out
    if kind == "truncate":
        return [("old", state), ("truncated", state.with_file(op["path"], op["new"]))]
    if kind == "unlink":
        return [("old", state), ("unlinked", state.with_file(op["path"], ABSENT))]
    if kind == "rename":
        return [
            ("old", state),
            ("both names", _renamed(state, op["src"], op["dst"], keep_src=True)),
            ("renamed", _renamed(state, op["src"], op["dst"], keep_src=False)),
        ]
    assert kind == "dirrename", op
    return [
        ("old", state),
        ("both names", _dir_renamed(state, op["src"], op["dst"], keep_src=True)),
        ("renamed", _dir_renamed(state, op["src"], op["dst"], keep_src=False)),
    ]


@dataclass
class Journal:
    ready: bool = False
    #: the big write reached its hold
    holding: bool = False
    acked: list[dict] = field(default_factory=list)
    #: the operation begun but not acknowledged, and its acknowledged fsyncs
    inflight: dict | None = None
    fsynced: int = 0
    errors: list[dict] = field(default_factory=list)

    @staticmethod
    def read(path: Path) -> Journal:
        j = Journal()
        if not path.exists():
            return j
        for line in path.read_text().split("\n"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # the last line, cut by the kill (or empty)
            if "ready" in rec:
                j.ready = True
            elif "hold" in rec:
                j.holding = True
            elif "op" in rec:
                assert j.inflight is None, f"step {rec['step']} began before step {j.inflight['step']} ended"
                j.inflight, j.fsynced = rec, 0
            elif "fsynced" in rec:
                assert j.inflight and j.inflight["step"] == rec["step"] and rec["fsynced"] == j.fsynced
                j.fsynced += 1
            elif "ack" in rec:
                assert j.inflight and j.inflight["step"] == rec["step"]
                j.acked.append(j.inflight)
                j.inflight = None
            elif "error" in rec:
                j.errors.append(rec)
        return j


def _holds(path: Path | str, needle: bytes) -> bool:
    """Whether the file holds ``needle`` (read in chunks)."""
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


def _tags(data: bytes) -> list[str]:
    """Which writes (round, step, chunk) the data came from; zero runs."""
    found = Counter(m.group(1).decode() for m in re.finditer(rb"\|(r\d+s\d+c\d+)\|", data))
    zeros = data.count(b"\0" * 64)
    return [f"{t}x{n}" for t, n in sorted(found.items())] + ([f"zeros~{zeros * 64}B"] if zeros else [])


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Contents(dict):
    """Path -> bytes read; its repr leaves the plaintext out of tracebacks."""

    def __repr__(self) -> str:
        return f"<contents of {len(self)} files>"


class CrashRun:
    def __init__(self, kind: str, spec, tmp_path: Path):
        self.kind = kind
        self.spec = spec
        self.tmp = tmp_path
        self.marker_base = f"PLAINTEXT-{uuid.uuid4().hex[:12]}"
        self.keyfile = tmp_path / "key"
        self.mnt = tmp_path / "mnt"
        self.cache = tmp_path / "cache"
        self.mounts: list = []
        self.stats: Counter = Counter()
        self.seconds: Counter = Counter()
        self.vol: Volume | None = None
        self.started = time.time()

    def where(self, r: int) -> str:
        return f"[SEALFS_CRASH_SEED={SEED} store={self.kind} round {r}]"

    def mount(self, r: int):
        m = Mount(
            self.mnt,
            self.spec.url,
            dict(self.spec.options),
            self.keyfile,
            self.tmp / f"daemon{r}.log",
            self.cache,
            list(MOUNT_OPTIONS),
            spec=self.spec,
        )
        self.mounts.append(m)
        m.mount()
        return m

    def setup(self):
        opts = ["-o", ",".join(f"{k}={v}" for k, v in self.spec.options.items())] if self.spec.options else []
        fs_helpers.sealfs("init", self.spec.url, "--keyfile", str(self.keyfile), *opts)
        self.mnt.mkdir()
        self.vol = Volume.open(self.spec.open(), [KeyFile(str(self.keyfile), self.keyfile.read_bytes())])
        m = self.mount(0)
        (m.path / DIR_NAMES[0]).mkdir()
        return m, State.of({}, {DIR_NAMES[0]})

    # -- one round ------------------------------------------------------------------------

    def crash(self, r: int, rng: random.Random) -> Journal:
        """Run the worker, kill the daemon at a random moment, detach."""
        journal = self.tmp / f"journal{r}.jsonl"
        big = rng.random() < BIG_ROUNDS
        delay = rng.uniform(0.0, 0.45 if big else 0.8)
        with open(self.tmp / f"worker{r}.err", "wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    str(self.mnt),
                    str(journal),
                    str(rng.getrandbits(64)),
                    f"{self.marker_base}-r{r}",
                    str(r),
                    "1" if big else "0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd="/",
            )
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not (Journal.read(journal).holding if big else Journal.read(journal).ready):
                assert proc.poll() is None, f"{self.where(r)} the worker died: {self._err(r)}"
                assert time.monotonic() < deadline, f"{self.where(r)} the worker did not start"
                time.sleep(0.01)
            time.sleep(delay)  # the kill's seeded moment (a big round: from the hold at 9 MiB, which lasts 0.3 s)
            pids = fs_helpers.daemon_pids(self.mnt)
            assert len(pids) == 1, f"{self.where(r)} daemons of {self.mnt}: {pids}"
            self.kill_daemon(r, pids[0])
        finally:
            proc.kill()
            proc.wait(timeout=30)
        self.stats["big rounds"] += big
        proc = subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, text=True, check=False)
        assert not fs_helpers.is_mounted(self.mnt), f"{self.where(r)} lazy unmount failed: {proc.stderr}"
        if self.kind == "s3":
            time.sleep(0.05)  # let the store finish requests the daemon sent before it died (moto shows no sign)
        return Journal.read(journal)

    def _err(self, r: int) -> str:
        return (self.tmp / f"worker{r}.err").read_text(errors="replace")[-3000:]

    def kill_daemon(self, r: int, pid: int) -> None:
        """SIGSTOP, search every regular file the daemon has open for the
        plaintext marker (its spool is one), SIGKILL."""
        needle = self.marker_base.encode()
        leaks = []
        os.kill(pid, signal.SIGSTOP)
        try:
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                path = f"{fd_dir}/{fd}"
                try:
                    target = os.readlink(path)
                    if not stat.S_ISREG(os.stat(path).st_mode):
                        continue
                    if target.startswith(str(self.cache)):
                        self.stats["spool files searched"] += 1
                    if _holds(path, needle):
                        leaks.append(target)
                except FileNotFoundError:
                    continue
        finally:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not _gone(pid):
            assert time.monotonic() < deadline, f"{self.where(r)} the daemon survived SIGKILL"
            time.sleep(0.01)
        assert not leaks, f"{self.where(r)} plaintext in files the daemon had open: {leaks}"

    def fsck(self, r: int, inflight: dict | None) -> list[str]:
        """Check the volume (nothing mounted); repair crash leftovers; return
        the warnings (only two names of one directory are allowed)."""
        report = check(self.vol, stale_seconds=-3600)
        assert not report.damaged, f"{self.where(r)} fsck found damage: {report.damaged}"
        unexpected = [x for x in report.leftovers if x[1] not in CRASH_LEFTOVERS]
        assert not unexpected, f"{self.where(r)} fsck found unexpected leftovers: {unexpected}"
        for w in report.warnings:
            expected = {"dirrename": "are one directory", "rename": "are one file"}.get(inflight and inflight["op"])
            assert expected and expected in w and len(report.warnings) == 1, (
                f"{self.where(r)} fsck warned: {report.warnings} (operation in flight: {inflight})"
            )
        if report.leftovers:
            for _, why in report.leftovers:
                self.stats[f"fsck repaired: {why}"] += 1
            fixed = check(self.vol, repair=True, stale_seconds=-3600)
            assert fixed.repaired == len(report.leftovers) and not fixed.damaged
            again = check(self.vol, stale_seconds=-3600)
            assert not again.leftovers and not again.damaged, f"{self.where(r)} after repair: {again}"
        return report.warnings

    def observe(self, m) -> tuple[State, Contents]:
        contents, dirs = Contents(), set()
        for name in sorted(os.listdir(m.path)):
            path = m.path / name
            if path.is_dir():
                dirs.add(name)
                children = [(f"{name}/{c}", path / c) for c in sorted(os.listdir(path))]
            else:
                children = [(name, path)]
            for rel, p in children:
                try:
                    contents[rel] = p.read_bytes()
                except OSError as exc:
                    contents[rel] = f"<read failed: {exc.strerror}>".encode()
        return State.of({p: digest(d) for p, d in contents.items()}, dirs), contents

    def verify(self, r: int, before: State, journal: Journal, seen: State, contents: Contents) -> str:
        """The label of the outcome ``seen`` is; fail if none."""
        bad = [e for e in journal.errors if e["error"] not in DEAD_MOUNT]
        assert not bad, f"{self.where(r)} the worker got an error before the crash: {bad}\n{self._err(r)}"
        state = before
        for op in journal.acked:
            state = after(state, op)
        self.stats["operations acknowledged"] += len(journal.acked)
        if journal.inflight is None:
            options = [("nothing in flight", state)]
        else:
            options = outcomes(state, journal.inflight, journal.fsynced)
        for label, candidate in options:
            if candidate == seen:
                return label
        # Explain: what differs from each allowed outcome, and where the data came from.
        lines = [
            f"{self.where(r)} no allowed outcome matches what the volume holds after the crash",
            f"  in flight: {journal.inflight} ({journal.fsynced} fsyncs acknowledged)",
            f"  last acknowledged: {journal.acked[-1] if journal.acked else None}",
            f"  directories seen: {sorted(seen.dirs)}",
        ]
        sf = seen.fmap()
        for label, candidate in options:
            cf = candidate.fmap()
            diff = sorted(p for p in set(cf) | set(sf) if cf.get(p) != sf.get(p))
            lines.append(f"  vs '{label}' (dirs {sorted(candidate.dirs)}):")
            for p in diff:
                lines.append(
                    f"    {p}: expected {cf.get(p)}, found {sf.get(p)} "
                    f"({len(contents.get(p, b''))} bytes from {_tags(contents.get(p, b''))})"
                )
        raise AssertionError("\n".join(lines))

    def check_local_disk(self, r: int) -> None:
        """Nothing the dead daemon wrote is left in the cache directory."""
        left = [p for p in self.cache.rglob("*") if p.is_file()] if self.cache.exists() else []
        assert not left, f"{self.where(r)} files left in the cache directory: {left}"

    def resolve_two_names(self, r: int, m, op: dict):
        """Delete the entry of the old name of a directory or file left with
        two (as fsck's warning advises; only the entry object: an overflow
        object would be the other name's too), and remount so that the
        kernel and the mount forget the name deleted behind their back
        (of a file too: the mount had the two names as two independent
        files, see test_interrupted_file_rename_leaves_two_independent_names)."""
        old = self.vol.resolve("/" + op["src"], follow=False)
        new = self.vol.resolve("/" + op["dst"], follow=False)
        assert old.id == new.id, f"{self.where(r)} two entries, not two names of one"
        self.vol.store.delete(old.key)
        report = check(self.vol, stale_seconds=-3600)
        assert report.clean, f"{self.where(r)} after removing the old name: {report}"
        m.unmount()
        m.mount()

    def round(self, r: int, m, before: State):
        rng = random.Random(f"{SEED}/{self.kind}/{r}")
        t = [time.monotonic()]
        journal = self.crash(r, rng)
        t.append(time.monotonic())
        warnings = self.fsck(r, journal.inflight)
        t.append(time.monotonic())
        m = self.mount(r + 1)
        t.append(time.monotonic())
        seen, contents = self.observe(m)
        label = self.verify(r, before, journal, seen, contents)
        t.append(time.monotonic())
        for phase, t0, t1 in zip(("run+kill", "fsck", "mount", "read+verify"), t, t[1:], strict=False):
            self.seconds[phase] += t1 - t0
        self.check_local_disk(r)
        kind = journal.inflight["op"] if journal.inflight else "none"
        self.stats[f"in flight: {kind} -> {label}"] += 1
        assert bool(warnings) == (label == "both names"), (
            f"{self.where(r)} fsck warned {warnings}, and the volume shows the outcome '{label}'"
        )
        if label == "both names":
            self.resolve_two_names(r, m, journal.inflight)
            seen, _ = self.observe(m)
        return m, seen

    # -- the end --------------------------------------------------------------------------

    def final_checks(self, m) -> None:
        m.unmount()
        proc = fs_helpers.sealfs("fsck", self.spec.url, *m.store_args(), check=False)
        assert proc.returncode == 0, (
            f"sealfs fsck exited {proc.returncode}:\n{proc.stdout.decode()}{proc.stderr.decode()}"
        )
        needle = self.marker_base.encode()
        leaks = []
        for o in self.vol.store.list_all(""):
            if not isinstance(o, str) and needle in self.vol.store.get(o.key):
                leaks.append(f"store object {o.key}")
        for p in self.tmp.rglob("*"):
            if p.is_file() and not p.is_symlink() and _holds(p, needle):
                leaks.append(str(p))
        for entry in os.scandir("/tmp"):
            try:
                recent = entry.is_file(follow_symlinks=False) and entry.stat().st_mtime >= self.started - 1
                if recent and _holds(entry.path, needle):
                    leaks.append(entry.path)
            except OSError:
                continue  # gone meanwhile, or not ours to read
        assert not leaks, (
            f"[SEALFS_CRASH_SEED={SEED} store={self.kind}] plaintext on local disk or in the store: {leaks}"
        )


@pytest.mark.timeout(900)
def test_sigkill_during_writes_renames_truncates(store_kind, make_store_spec, tmp_path: Path):
    """Crash-consistency rounds on one volume (see the module docstring)."""
    run = CrashRun(store_kind, make_store_spec(), tmp_path)
    t0 = time.monotonic()
    try:
        m, state = run.setup()
        for r in range(ROUNDS):
            m, state = run.round(r, m, state)
        run.final_checks(m)
    finally:
        try:
            fs_helpers.unmount_all(run.mounts)
        finally:
            if run.vol is not None:
                run.vol.close()
    took = time.monotonic() - t0
    print(f"\ncrash rounds, SEALFS_CRASH_SEED={SEED}, store={store_kind}: {ROUNDS} rounds in {took:.1f} s")
    for k, n in sorted(run.stats.items()):
        print(f"  {k}: {n}")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()))


# -- a rename cut short: two names of one file ---------------------------------------


def _interrupted_rename(vol: Volume, old: bytes, new: bytes) -> None:
    """What a crash between the two steps of a file rename leaves: the new
    entry written, the old one not deleted."""
    entry = vol.lookup(ROOT_ID, old)
    delete = vol.store.delete

    def crash(key: str) -> None:
        raise RuntimeError("the daemon died here")

    vol.store.delete = crash
    try:
        with pytest.raises(RuntimeError):
            vol.rename(entry, ROOT_ID, new)
    finally:
        vol.store.delete = delete


def test_fsck_reports_two_names_of_one_file(store):
    vol = Volume.create(store, KeyFile("k", os.urandom(64)), block_size=4096)
    e = vol.new_file_entry(ROOT_ID, b"a", 0o644, 0, 0)
    vol.write_content(e, 5000, lambda b: b"x" * min(4096, 5000 - b * 4096), if_none_match=True)
    assert check(vol).clean
    _interrupted_rename(vol, b"a", b"b")
    report = check(vol)
    assert not report.damaged and not report.leftovers and report.files == 2
    assert len(report.warnings) == 1, report.warnings
    assert re.match(r"/[ab] and /[ab] are one file \(a file rename was interrupted\)", report.warnings[0])


def test_interrupted_file_rename_leaves_two_independent_names(make_mount):
    """docs/SEMANTICS.md (rename, crash behaviour): 'For a file, the two
    names are two independent copies of the same content.'"""
    m = make_mount()

    def interrupted_rename(old: bytes, new: bytes) -> None:  # (with the volume unmounted)
        m.unmount()
        vol = Volume.open(m.spec.open(), [KeyFile(str(m.keyfile), m.keyfile.read_bytes())])
        try:
            _interrupted_rename(vol, old, new)
        finally:
            vol.close()
        m.mount()

    (m.path / "a").write_bytes(b"the content")
    interrupted_rename(b"a", b"b")
    assert sorted(os.listdir(m.path)) == ["a", "b"]  # (the kernel now knows both names)
    (m.path / "a").write_bytes(b"new content of a")
    m.remount()
    assert [(m.path / n).read_bytes() for n in ("a", "b")] == [b"new content of a", b"the content"]
    assert sorted(os.listdir(m.path)) == ["a", "b"]
    os.unlink(m.path / "a")
    assert (m.path / "b").read_bytes() == b"the content"
    # renaming one twin over the other keeps the renamed one's content
    interrupted_rename(b"b", b"c")
    (m.path / "b").write_bytes(b"b, changed")
    os.rename(m.path / "b", m.path / "c")
    assert sorted(os.listdir(m.path)) == ["c"]
    assert (m.path / "c").read_bytes() == b"b, changed"
    m.remount()
    assert (m.path / "c").read_bytes() == b"b, changed"
