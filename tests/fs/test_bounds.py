"""No single request makes the daemon's memory or the store grow without
bound (issue 14, item 7).

Each test does what a hostile user of the mount would do -- truncate a file
to a petabyte (pjdfstest truncate/12.t does), write single bytes petabytes
apart, fill an entry with attributes, make a deep and a wide tree -- on
both stores, and then checks what it cost: the daemon's peak resident size
(VmHWM in /proc/<pid>/status, a high-water mark, so nothing in between is
missed) stays within a fixed margin of what it was before, and the store
holds a few kilobytes, not the size.  Then the data is read back after a
remount and ``sealfs fsck`` must find the volume clean.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import daemon_pids, raises_errno, sealfs  # tests/fs/conftest.py

from sealfs.codec.blocks import MAX_FILE_SIZE
from sealfs.fs.attrs import XATTR_SIZE_MAX, XATTR_TOTAL_MAX

#: What pjdfstest truncate/12.t asks for.
HUGE = 999_999_999_999_999
#: Allowed growth of the daemon's peak resident size over the test.
MARGIN = 200 * 1024 * 1024
MIB = 1024 * 1024


def peak_rss(m) -> int:
    """The largest VmHWM of the mount's daemon processes, in bytes."""
    peaks = []
    for pid in daemon_pids(m.path):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    assert peaks, "no daemon found for the mount"
    return max(peaks)


def stored_bytes(m) -> int:
    """Bytes of every object of the volume's store."""
    store = m.spec.open()
    try:
        return sum(o.size for o in store.list_all("") if not isinstance(o, str))
    finally:
        store.close()


def check_bound(m, before: int, what: str) -> None:
    peak = peak_rss(m)
    assert peak <= before + MARGIN, f"{what}: the daemon's peak RSS grew from {before >> 20} to {peak >> 20} MiB"


def pread_all(fd: int, length: int, offset: int) -> bytes:
    out = b""
    while len(out) < length:
        chunk = os.pread(fd, length - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return out


#: What pjdfstest truncate/12.t does, as a program: truncate(2) to HUGE,
#: then print the errno (0) and the size stat(2) gives.
TRUNCATE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct stat st;
    int err = truncate(argv[1], 999999999999999LL) == 0 ? 0 : errno;
    if (stat(argv[1], &st) != 0) return 2;
    printf("%d %lld\n", err, (long long)st.st_size);
    return 0;
}
"""


@pytest.fixture(scope="module")
def truncate_program(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc) to build the test program")
    top = tmp_path_factory.mktemp("bounds-programs")
    (top / "truncate.c").write_text(TRUNCATE_C)
    subprocess.run([cc, "-O1", "-o", str(top / "truncate"), str(top / "truncate.c")], check=True, capture_output=True)
    return top / "truncate"


def test_a_huge_truncate_costs_nothing(mounted, truncate_program):
    """truncate(2) to 999,999,999,999,999 bytes (by a program, as pjdfstest
    does): the size is there, the far end reads as zeros, a byte written
    beyond it reads back, before and after a remount; the store holds
    kilobytes; the daemon's peak memory does not move."""
    m = mounted
    p = m.path / "big"
    p.write_bytes(b"head")
    before = peak_rss(m)
    out = subprocess.run([str(truncate_program), str(p)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", str(HUGE)]
    assert p.stat().st_size == HUGE
    far = 2 * 10**15
    fd = os.open(p, os.O_RDWR)
    try:
        assert pread_all(fd, 4, 0) == b"head"
        assert pread_all(fd, 8192, HUGE - 8192) == bytes(8192)
        assert pread_all(fd, MIB, HUGE // 2) == bytes(MIB)
        assert os.pwrite(fd, b"tail", far) == 4
        os.fsync(fd)
        assert os.fstat(fd).st_size == far + 4
        assert pread_all(fd, 4, far) == b"tail"
        assert pread_all(fd, 4096, far - 4096) == bytes(4096)
    finally:
        os.close(fd)
    check_bound(m, before, "truncate to 10^15 bytes, then a write at 2*10^15")
    assert stored_bytes(m) < MIB, "the store holds the holes"
    assert p.stat().st_blocks * 512 < MIB, "st_blocks counts the holes"

    m.remount()
    before = peak_rss(m)
    assert p.stat().st_size == far + 4
    with open(p, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(HUGE)
        assert f.read(MIB) == bytes(MIB)
        f.seek(far - 10)
        assert f.read() == bytes(10) + b"tail"
    # shrink it back into its first block, and grow it again by a write
    os.truncate(p, 2)
    assert p.read_bytes() == b"he"
    with open(p, "r+b") as f:
        os.pwrite(f.fileno(), b"x", HUGE)
    assert p.stat().st_size == HUGE + 1
    check_bound(m, before, "reading the holes after a remount")
    m.unmount()
    sealfs("fsck", m.url, *m.store_args())  # (exit 0: clean)
    m.mount()
    with open(p, "rb") as f:
        assert f.read(2) == b"he"
        f.seek(HUGE - 3)
        assert f.read() == bytes(3) + b"x"


def test_scattered_writes_store_only_what_was_written(mounted):
    """A thousand 64 KiB writes spread over a petabyte, then rewritten in
    place after a remount: the store holds about the data written (plus a
    block map), the daemon's memory stays put, everything reads back."""
    m = mounted
    p = m.path / "scattered"
    p.touch()
    before = peak_rss(m)
    step = 10**12 + 12345  # (not block aligned: each write spans two blocks)
    chunk = os.urandom(64 * 1024)
    fd = os.open(p, os.O_RDWR)
    try:
        for k in range(1000):
            assert os.pwrite(fd, chunk, k * step) == len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    check_bound(m, before, "scattered writes")
    assert stored_bytes(m) < 1000 * (len(chunk) + 2 * 65536) + MIB

    m.remount()
    before = peak_rss(m)
    fd = os.open(p, os.O_RDWR)
    try:
        assert os.fstat(fd).st_size == 999 * step + len(chunk)
        for k in (0, 1, 500, 999):
            assert pread_all(fd, len(chunk), k * step) == chunk
            after = k * step + len(chunk)  # (a hole, up to the end of the file)
            assert pread_all(fd, 4096, after) == bytes(min(4096, 999 * step + len(chunk) - after))
        os.pwrite(fd, b"!", 500 * step)
        os.fsync(fd)
    finally:
        os.close(fd)
    m.remount()
    with open(p, "rb") as f:
        f.seek(500 * step)
        assert f.read(len(chunk)) == b"!" + chunk[1:]
        f.seek(500 * step - 100)
        assert f.read(100) == bytes(100)
    check_bound(m, before, "reading and rewriting scattered blocks")


def test_sizes_above_the_maximum_are_efbig(mounted):
    """The maximum file size (2^60) is a size like any other; one byte more
    is EFBIG, for truncate and for a write, and a write across it is cut
    short there (as the kernel does at its own limit)."""
    p = mounted.path / "max"
    p.touch()
    with raises_errno(errno.EFBIG):
        os.truncate(p, MAX_FILE_SIZE + 1)
    assert p.stat().st_size == 0
    os.truncate(p, MAX_FILE_SIZE)
    assert p.stat().st_size == MAX_FILE_SIZE
    fd = os.open(p, os.O_RDWR)
    try:
        with raises_errno(errno.EFBIG):
            os.pwrite(fd, b"x", MAX_FILE_SIZE)
        # the kernel's own limit (FUSE's s_maxbytes) is 2^63 - 1: it passes these on
        with raises_errno(errno.EFBIG):
            os.pwrite(fd, b"x", 2**63 - 2)
        with raises_errno(errno.EFBIG):
            os.ftruncate(fd, 2**63 - 1)
        assert os.pwrite(fd, b"yz", MAX_FILE_SIZE - 1) == 1
        assert pread_all(fd, 10, MAX_FILE_SIZE - 5) == b"\0\0\0\0y"
        os.fsync(fd)
    finally:
        os.close(fd)
    mounted.remount()
    assert p.stat().st_size == MAX_FILE_SIZE
    with open(p, "rb") as f:
        f.seek(MAX_FILE_SIZE - 1)
        assert f.read() == b"y"


def test_attributes_are_bounded_per_entry(mounted):
    """Attributes of the largest size, as many as an entry takes: the
    entry's total is capped (ENOSPC past it, nothing set), a value above
    64 KiB is E2BIG, and the daemon's memory stays put."""
    m = mounted
    p = m.path / "x"
    p.touch()
    before = peak_rss(m)
    with raises_errno(errno.E2BIG):
        os.setxattr(p, "user.too-big", bytes(XATTR_SIZE_MAX + 1))
    value = os.urandom(XATTR_SIZE_MAX)
    stored = []
    with raises_errno(errno.ENOSPC):
        for k in range(64):
            os.setxattr(p, f"user.a{k}", value)
            stored.append(f"user.a{k}")
    assert 0 < len(stored) * XATTR_SIZE_MAX <= XATTR_TOTAL_MAX
    assert sorted(os.listxattr(p)) == sorted(stored)
    # many small ones, up to the same total
    q = m.path / "y"
    q.touch()
    with raises_errno(errno.ENOSPC):
        for k in range(100_000):
            os.setxattr(q, f"user.{k}", b"v" * 16000)
    m.remount()
    assert os.getxattr(p, stored[-1]) == value
    assert sum(len(n) + len(os.getxattr(q, n)) for n in os.listxattr(q)) <= XATTR_TOTAL_MAX
    check_bound(m, before, "attributes")


def test_deep_and_wide_trees(mounted):
    """A directory 400 levels deep with the longest names, and one with 2000
    entries listed again and again: the daemon's memory stays put, and
    both read back after a remount."""
    m = mounted
    before = peak_rss(m)
    name = "d" * 255
    fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(400):
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"deep")
    finally:
        os.close(fd)
    wide = m.path / "wide"
    wide.mkdir()
    for k in range(2000):
        (wide / f"{k:04d}-{'w' * 200}").touch()
    for _ in range(5):
        assert len(os.listdir(wide)) == 2000
    check_bound(m, before, "a deep and a wide tree")
    m.remount()
    fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(400):
            new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        with open(os.open("leaf", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep"
    finally:
        os.close(fd)
    assert len(os.listdir(wide)) == 2000


def test_many_files_written_at_once_share_one_memory_budget(make_mount):
    """300 files open at once, each with 1 MiB of changed blocks that cannot
    go to the store before the close (none starts at offset 0): together
    they stay within 4 x dirty_size in memory (the rest goes to the spool),
    not 300 x; every file reads back after a remount."""
    m = make_mount(["dirty_size=8M"])
    before = peak_rss(m)
    chunks = [os.urandom(64 * 1024) for _ in range(16)]
    fds = []
    try:
        for n in range(300):
            fd = os.open(m.path / f"f{n}", os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(fd)
            for k, chunk in enumerate(chunks):
                os.pwrite(fd, chunk, (k + 1) * MIB + n)
        check_bound(m, before, "300 files with 1 MiB of changes each")
    finally:
        for fd in fds:
            os.close(fd)
    m.remount()
    for n in (0, 150, 299):
        with open(m.path / f"f{n}", "rb") as f:
            for k, chunk in enumerate(chunks):
                f.seek((k + 1) * MIB + n)
                assert f.read(len(chunk)) == chunk
            f.seek(n)
            assert f.read(MIB) == bytes(MIB)


def test_a_file_sent_while_written_then_truncated_far(mounted):
    """20 MiB written from the start (sent to the store while written: S3
    parts, appends on a file:// store), then ftruncate to 10^15 bytes before
    the close: stored sparse, the 20 MiB kept, nothing of the rest."""
    m = mounted
    p = m.path / "grown"
    data = os.urandom(20 * MIB)
    before = peak_rss(m)
    with open(p, "wb") as f:
        f.writelines(data[pos : pos + MIB] for pos in range(0, len(data), MIB))
        f.flush()
        os.ftruncate(f.fileno(), HUGE)
    assert p.stat().st_size == HUGE
    assert stored_bytes(m) < len(data) + MIB
    check_bound(m, before, "a 20 MiB file truncated to 10^15 bytes")
    m.remount()
    with open(p, "rb") as f:
        assert f.read(len(data) + 4096) == data + bytes(4096)
        f.seek(HUGE - 1)
        assert f.read() == b"\0"
