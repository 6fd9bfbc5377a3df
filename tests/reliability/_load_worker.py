"""One worker process of the load test (tests/reliability/test_load.py).

    python _load_worker.py MOUNTPOINT INDEX WORKERS SEED SECONDS OUT.json

Runs for SECONDS against the mount, stdlib only, and writes what it did
and every error it met to OUT.json.  What it does, chosen at random (seeded
by SEED, so a failure can be replayed):

* publish: write a new version of one of its shared files
  ``shared/w<INDEX>-<k>`` the way programs replace files safely: into a
  temporary name, close, rename over the old version;
* read: read a shared file of any worker (its own or another's) and check
  it is one complete version (see :func:`check_version`); a missing file is
  fine (not yet published, or unlinked);
* private: change its own file ``w<INDEX>/p<k>`` in place (rewrite,
  overwrite a range, truncate, append), close, reopen and compare with a
  model kept in memory;
* rename or unlink one of its shared files; list the shared directory.

Sizes are random from 0 to 4 MiB, a third of them at a block boundary
(k * 64 KiB - 1, k * 64 KiB, k * 64 KiB + 1), and now and then 17 MiB
(over the single-PUT size: a multipart upload).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import struct
import sys
import time
import traceback

BLOCK = 65536
MAGIC = b"SLFL"
#: magic, writer, seed, total size, then sha256 of the payload
HEAD = struct.Struct(">4sIQQ")
HEADER_SIZE = HEAD.size + 32
SHARED_PER_WORKER = 4
PRIVATE_PER_WORKER = 2
PRIVATE_MAX = 4 << 20
MAX_ERRORS = 20


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_version(writer: int, seed: int, size: int) -> bytes:
    """A self-checking file of exactly ``size`` (>= HEADER_SIZE) bytes."""
    body = payload(seed, size - HEADER_SIZE)
    return HEAD.pack(MAGIC, writer, seed, size) + hashlib.sha256(body).digest() + body


def check_version(data: bytes) -> tuple[int, int]:
    """(writer, seed) of a complete version; AssertionError for anything
    else: a torn, truncated, extended or mixed file."""
    assert len(data) >= HEADER_SIZE, f"{len(data)} bytes: shorter than a header"
    magic, writer, seed, size = HEAD.unpack_from(data)
    assert magic == MAGIC, f"bad magic {magic!r}"
    assert size == len(data), f"header says {size} bytes, read {len(data)}"
    assert hashlib.sha256(data[HEADER_SIZE:]).digest() == data[HEAD.size : HEADER_SIZE], "payload digest mismatch"
    return writer, seed


def pick_size(rnd: random.Random) -> int:
    r = rnd.random()
    if r < 0.08:
        return rnd.randrange(0, 200)
    if r < 0.40:
        return max(0, rnd.randrange(1, 48) * BLOCK + rnd.choice((-1, 0, 1)))
    if r < 0.985:
        return rnd.randrange(1, 4 << 20)
    return (17 << 20) + rnd.randrange(BLOCK)


def write_all(fd: int, data: bytes, rnd: random.Random) -> None:
    """Write in random chunk sizes (1 byte to 1 MiB), as programs do."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        n = min(len(view) - pos, rnd.choice((1, 100, 4096, 65535, 65536, 65537, 131072, 1 << 20)))
        pos += os.write(fd, view[pos : pos + n])


def read_all(path: str, rnd: random.Random) -> bytes:
    with open(path, "rb", buffering=0) as f:
        parts = []
        while True:
            chunk = f.read(rnd.choice((4096, 65536, 100_000, 1 << 20)))
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)


class Worker:
    def __init__(self, root: str, index: int, workers: int, seed: int):
        self.root = root
        self.index = index
        self.workers = workers
        self.rnd = random.Random(seed)
        self.shared = os.path.join(root, "shared")
        self.tmp = os.path.join(root, "tmp")
        self.own = os.path.join(root, f"w{index}")
        self.published: dict[str, tuple[int, int]] = {}  # name -> (seed, size)
        self.private: dict[str, bytearray] = {}
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.bytes_written = 0
        self.bytes_read = 0
        self.serial = 0

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- operations -----------------------------------------------------------------

    def publish(self) -> None:
        name = f"w{self.index}-{self.rnd.randrange(SHARED_PER_WORKER)}"
        size = max(HEADER_SIZE, pick_size(self.rnd))
        seed = self.rnd.getrandbits(63)
        data = make_version(self.index, seed, size)
        self.serial += 1
        tmp = os.path.join(self.tmp, f"w{self.index}-{self.serial}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, data, self.rnd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.shared, name))
        self.published[name] = (seed, size)
        self.bytes_written += size
        self.count("publish")

    def read_shared(self) -> None:
        name = f"w{self.rnd.randrange(self.workers)}-{self.rnd.randrange(SHARED_PER_WORKER)}"
        try:
            data = read_all(os.path.join(self.shared, name), self.rnd)
        except FileNotFoundError:
            self.count("read-missing")
            return
        try:
            writer, seed = check_version(data)
        except AssertionError as exc:
            raise AssertionError(f"shared/{name}: not one complete version: {exc}") from None
        assert name.startswith(f"w{writer}-"), f"shared/{name} holds a version written by worker {writer}"
        if name in self.published and writer == self.index:
            # our own file: only we write it, so it is the last version we published
            assert seed == self.published[name][0], f"shared/{name}: an older version than the last published"
        self.bytes_read += len(data)
        self.count("read-other" if writer != self.index else "read-own")

    def change_private(self) -> None:
        name = f"p{self.rnd.randrange(PRIVATE_PER_WORKER)}"
        path = os.path.join(self.own, name)
        model = self.private.get(name)
        how = self.rnd.choice(("rewrite", "overwrite", "truncate", "append")) if model is not None else "rewrite"
        if how == "rewrite":
            data = payload(self.rnd.getrandbits(63), min(pick_size(self.rnd), PRIVATE_MAX))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, data, self.rnd)
            finally:
                os.close(fd)
            model = bytearray(data)
        elif how == "overwrite":  # a range across block boundaries, maybe past the end
            off = self.rnd.randrange(0, len(model) + BLOCK)
            data = payload(self.rnd.getrandbits(63), self.rnd.randrange(1, 3 * BLOCK))
            if off + len(data) > PRIVATE_MAX:
                return
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, data, off)
            finally:
                os.close(fd)
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off : off + len(data)] = data
        elif how == "truncate":
            size = self.rnd.randrange(0, len(model) + 2 * BLOCK)
            if size > PRIVATE_MAX:
                return
            os.truncate(path, size)
            model = model[:size] + bytes(max(0, size - len(model)))
        else:
            data = payload(self.rnd.getrandbits(63), self.rnd.randrange(1, 2 * BLOCK))
            if len(model) + len(data) > PRIVATE_MAX:
                return
            with open(path, "ab") as f:
                f.write(data)
            model.extend(data)
        self.private[name] = model
        got = read_all(path, self.rnd)
        if got != model:
            pairs = enumerate(zip(got, model, strict=False))
            first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(model)))
            raise AssertionError(
                f"w{self.index}/{name} after {how}: {len(got)} bytes read, {len(model)} expected, "
                f"first difference at {first}"
            )
        self.bytes_written += len(model) if how == "rewrite" else 0
        self.count(f"private-{how}")

    def rename_own(self) -> None:
        if not self.published:
            return
        src = self.rnd.choice(sorted(self.published))
        dst = f"w{self.index}-{self.rnd.randrange(SHARED_PER_WORKER)}"
        os.rename(os.path.join(self.shared, src), os.path.join(self.shared, dst))
        self.published[dst] = self.published.pop(src)
        self.count("rename")

    def unlink_own(self) -> None:
        if not self.published:
            return
        name = self.rnd.choice(sorted(self.published))
        os.unlink(os.path.join(self.shared, name))
        del self.published[name]
        self.count("unlink")

    def list_shared(self) -> None:
        names = os.listdir(self.shared)
        for name in names:
            try:
                os.stat(os.path.join(self.shared, name))
            except FileNotFoundError:
                pass  # renamed or unlinked by its writer meanwhile
        mine = {n for n in names if n.startswith(f"w{self.index}-")}
        assert mine == set(self.published), f"listing shows {sorted(mine)}, published {sorted(self.published)}"
        self.count("list")

    # -- the loop -------------------------------------------------------------------

    OPS = (
        ("publish", 30),
        ("read_shared", 36),
        ("change_private", 20),
        ("rename_own", 5),
        ("unlink_own", 4),
        ("list_shared", 5),
    )

    def run(self, seconds: float) -> None:
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(self.errors) < MAX_ERRORS:
            op = self.rnd.choices(names, weights)[0]
            try:
                getattr(self, op)()
            except Exception as exc:  # noqa: BLE001 - every error is reported to the test
                code = errno.errorcode.get(getattr(exc, "errno", None) or 0, "")
                self.errors.append(
                    f"worker {self.index} {op}: {code} {exc!r}\n" + "".join(traceback.format_exc(limit=3))
                )

    def manifest(self) -> dict:
        return {
            "index": self.index,
            "published": {n: list(v) for n, v in self.published.items()},
            "private": {n: hashlib.sha256(m).hexdigest() for n, m in self.private.items()},
            "counts": self.counts,
            "bytes_written": self.bytes_written,
            "bytes_read": self.bytes_read,
            "errors": self.errors,
        }


def main(argv: list[str]) -> int:
    root, index, workers, seed, seconds, out = argv
    w = Worker(root, int(index), int(workers), int(seed))
    # pick up what an earlier run (the warm-up) of this worker left
    for name in os.listdir(w.shared):
        if name.startswith(f"w{w.index}-"):
            with open(os.path.join(w.shared, name), "rb") as f:
                _, seed_, size = HEAD.unpack_from(f.read(HEAD.size))[1:]
            w.published[name] = (seed_, size)
    for name in os.listdir(w.own):
        with open(os.path.join(w.own, name), "rb") as f:
            w.private[name] = bytearray(f.read())
    w.run(float(seconds))
    with open(out, "w") as f:
        json.dump(w.manifest(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
