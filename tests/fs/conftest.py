"""Fixtures for tests that mount a volume for real with FUSE.

``mounted`` gives a volume mounted on a temporary directory, once per store
kind (``local``, ``s3`` on the moto server).  The daemon is started the way
a user starts it (``sealfs mount``, which returns once the mount is ready)
and is always unmounted at the end, even when the test failed.  After the
unmount the daemon must have exited and its log must hold no error or
traceback, unless the test declared the errors it expects.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SEALFS = [sys.executable, "-m", "sealfs.cli.main"]
UNMOUNT_TIMEOUT = 120.0


def sealfs(
    *args: str, check: bool = True, input: bytes | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the sealfs command line; on failure show what it printed."""
    proc = subprocess.run([*SEALFS, *args], input=input, capture_output=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"sealfs {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def daemon_pids(mountpoint: Path) -> list[int]:
    """Pids of sealfs daemons serving ``mountpoint``."""
    target = os.fsencode(str(mountpoint))
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sealfs.cli.main" in argv or any(a.endswith(b"/sealfs") for a in argv[:2]):
            if target in argv and b"mount" in argv:
                pids.append(int(pid))
    return pids


def wait_for(cond, what: str, timeout: float = 120.0) -> None:
    """Poll until ``cond()`` is true; fail, naming ``what``, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def raises_errno(code: int):
    """``with raises_errno(errno.X): ...``: an OSError with exactly that errno."""
    with pytest.raises(OSError) as info:
        yield info
    got = info.value.errno
    assert got == code, f"{errno.errorcode.get(got, got)} instead of {errno.errorcode[code]}: {info.value}"


def is_mounted(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@dataclass
class Mount:
    """A volume and the directory it is mounted on."""

    path: Path
    url: str
    store_options: dict[str, str]
    keyfile: Path
    log: Path
    cache_dir: Path
    extra: list[str] = field(default_factory=list)
    #: The store's spec: ``make_mount(spec=m.spec)`` mounts the same volume again.
    spec: object = None
    #: Regexes of log lines this test expects (errors it provokes on purpose).
    expected_log: list[str] = field(default_factory=list)

    def options(self) -> str:
        opts = [f"keyfile={self.keyfile}", f"log={self.log}", f"cache_dir={self.cache_dir}", "log_level=info"]
        opts += [f"{k}={v}" for k, v in self.store_options.items()]
        return ",".join(opts + self.extra)

    def store_args(self) -> list[str]:
        """Arguments for offline sealfs commands on the same volume."""
        opts = [f"keyfile={self.keyfile}"] + [f"{k}={v}" for k, v in self.store_options.items()]
        return ["-o", ",".join(opts)]

    def mount(self) -> None:
        sealfs("mount", self.url, str(self.path), "-o", self.options())
        assert is_mounted(self.path), "sealfs mount returned but nothing is mounted"

    def unmount(self) -> None:
        """Unmount and wait for the daemon to finish uploading and exit."""
        if is_mounted(self.path):
            proc = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, text=True)
            if proc.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
                raise AssertionError(f"unmount failed (lazily detached): {proc.stderr.strip()}")
        deadline = time.monotonic() + UNMOUNT_TIMEOUT
        while daemon_pids(self.path):
            if time.monotonic() > deadline:
                for pid in daemon_pids(self.path):
                    os.kill(pid, 9)
                raise AssertionError("the daemon did not exit after unmount")
            time.sleep(0.05)

    def remount(self) -> None:
        self.unmount()
        self.check_log()
        self.mount()

    def log_problems(self) -> list[str]:
        if not self.log.exists():
            return []
        bad = []
        for line in self.log.read_text(errors="replace").splitlines():
            if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line):
                if not any(re.search(p, line) for p in self.expected_log):
                    bad.append(line)
        return bad

    def check_log(self) -> None:
        problems = self.log_problems()
        assert not problems, "daemon logged errors:\n" + "\n".join(problems[:20])


@pytest.fixture
def make_mount(make_store_spec, store_kind, tmp_path: Path, request) -> Iterator:
    """A factory: ``make_mount(extra=[...])`` inits a fresh volume on a fresh
    store of the current kind and mounts it (``extra``: more ``-o`` options);
    ``make_mount(spec=m.spec)`` mounts the volume of an earlier mount ``m``
    once more (same store and keyfile), on its own mountpoint, log and cache
    directory.  ``mountpoint=`` mounts on a given (empty) directory instead
    of a new one in ``tmp_path`` (which only root may enter).  Every mount
    is unmounted at the end and its log checked."""
    if store_kind == "s3":
        # Set the bucket factory up first, so that it is torn down (buckets
        # deleted) only after every mount here is unmounted.
        request.getfixturevalue("make_bucket")
    mounts: list[Mount] = []
    keyfiles: dict[str, Path] = {}  # store URL -> keyfile of the volume made there
    counter = iter(range(1000))

    def make(extra: list[str] | None = None, *, spec=None, mountpoint: Path | None = None) -> Mount:
        n = next(counter)
        spec = spec or make_store_spec()
        keyfile = keyfiles.get(spec.url)
        if keyfile is None:
            keyfile = keyfiles[spec.url] = tmp_path / f"key{n}"
            sealfs(
                "init",
                spec.url,
                "--keyfile",
                str(keyfile),
                *(["-o", ",".join(f"{k}={v}" for k, v in spec.options.items())] if spec.options else []),
            )
        mnt = mountpoint or tmp_path / f"mnt{n}"
        mnt.mkdir(exist_ok=mountpoint is not None)
        m = Mount(
            mnt,
            spec.url,
            dict(spec.options),
            keyfile,
            tmp_path / f"daemon{n}.log",
            tmp_path / f"cache{n}",
            list(extra or []),
            spec=spec,
        )
        mounts.append(m)
        m.mount()
        return m

    try:
        yield make
    finally:
        unmount_all(mounts)


def unmount_all(mounts: list[Mount], after_each=None) -> None:
    """Unmount every mount (each attempted even when one fails), then fail
    the test if any unmount failed or any daemon logged an unexpected
    error.  ``after_each(mount)`` runs after each unmount attempt."""
    errors = []
    for m in mounts:
        try:
            m.unmount()
        except AssertionError as exc:
            errors.append(str(exc))
        if after_each is not None:
            after_each(m)
    errors += [f"{m.path}: {line}" for m in mounts for line in m.log_problems()[:20]]
    if errors:
        pytest.fail("; ".join(errors))


@pytest.fixture
def mounted(make_mount) -> Iterator[Mount]:
    """A fresh volume mounted on a temporary directory (per store kind)."""
    m = make_mount()
    yield m
    m.unmount()  # (make_mount checks the log)
    leftovers = [p for p in m.cache_dir.rglob("*") if p.is_file()] if m.cache_dir.exists() else []
    assert not leftovers, f"files left in the cache directory: {leftovers}"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    return path
