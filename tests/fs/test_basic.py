"""First contact: a mounted volume behaves like a directory."""

from __future__ import annotations

import os

from conftest import sealfs, wait_for  # noqa: F401  (tests/fs/conftest.py)

from sealfs.daemon import READ_AHEAD_KB


def test_write_read_remount(mounted):
    p = mounted.path
    (p / "a.txt").write_bytes(b"hello\n")
    (p / "d").mkdir()
    (p / "d" / "b.bin").write_bytes(os.urandom(200_000))
    data = (p / "d" / "b.bin").read_bytes()
    os.symlink("d/b.bin", p / "link")
    os.setxattr(p / "a.txt", "user.color", b"blue")
    os.chmod(p / "a.txt", 0o640)
    os.utime(p / "a.txt", ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
    mounted.remount()
    assert (p / "a.txt").read_bytes() == b"hello\n"
    assert (p / "d" / "b.bin").read_bytes() == data
    assert os.readlink(p / "link") == "d/b.bin"
    assert (p / "link").read_bytes() == data
    assert os.getxattr(p / "a.txt", "user.color") == b"blue"
    st = os.stat(p / "a.txt")
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_mtime_ns == 1_500_000_000_123_456_789
    assert sorted(os.listdir(p)) == ["a.txt", "d", "link"]


def test_metadata_changes_while_open_read_only_are_stored(mounted):
    p = mounted.path / "f"
    p.write_bytes(b"0123456789")
    with open(p, "rb") as f:
        assert f.read() == b"0123456789"
        os.chmod(p, 0o600)
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        os.setxattr(p, "user.k", b"v")
        os.truncate(p, 4)
    mounted.remount()
    st = os.stat(p)
    assert st.st_mode & 0o777 == 0o600
    assert p.read_bytes() == b"0123"
    assert os.getxattr(p, "user.k") == b"v"


def test_changes_by_another_mount_are_seen_after_reopen(make_mount):
    """Close-to-open across mounts, including a metadata-only change
    (on S3 that keeps the object's etag)."""
    a = make_mount()
    b = make_mount(spec=a.spec)
    (a.path / "f").write_bytes(b"first")
    assert (b.path / "f").read_bytes() == b"first"
    os.chmod(a.path / "f", 0o640)
    (a.path / "f").write_bytes(b"second version")
    import time

    time.sleep(1.1)  # the kernel's attribute cache (attr_timeout=1) on mount b
    assert (b.path / "f").read_bytes() == b"second version"
    assert os.stat(b.path / "f").st_mode & 0o777 == 0o640
    os.chmod(a.path / "f", 0o600)
    time.sleep(1.1)  # the attribute cache again
    assert os.stat(b.path / "f").st_mode & 0o777 == 0o600


def test_reader_never_mixes_two_versions(make_mount):
    """A file open on one mount and rewritten by another: the reader gets
    the old blocks it already had, or ESTALE — never blocks of the new one."""
    import errno

    import pytest

    a = make_mount(["cache_size=0"])
    b = make_mount(["cache_size=0"], spec=a.spec)
    old = b"A" * (3 * 65536)
    (a.path / "f").write_bytes(old)
    with open(b.path / "f", "rb", buffering=0) as f:
        assert f.read(100) == b"A" * 100
        (a.path / "f").write_bytes(b"B" * (3 * 65536 + 5))
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with pytest.raises(OSError) as err:
            f.seek(2 * 65536)
            f.read(100)
        assert err.value.errno == errno.ESTALE
    b.expected_log.append("rewritten in the store")
    assert (b.path / "f").read_bytes() == b"B" * (3 * 65536 + 5)


def test_the_mount_reads_ahead_in_large_requests(mounted):
    """The daemon raises the mount's readahead once the kernel has its
    answer to FUSE_INIT (which would cap a value set earlier): from the
    first request on, before any read."""
    with open("/proc/self/mountinfo") as f:
        device = next(line.split()[2] for line in f if line.split()[4] == str(mounted.path))
    os.listdir(mounted.path)
    ra = f"/sys/class/bdi/{device}/read_ahead_kb"
    wait_for(lambda: int(open(ra).read()) == READ_AHEAD_KB, f"{ra} to be {READ_AHEAD_KB}", timeout=10)
