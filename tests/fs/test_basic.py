"""First contact: a mounted volume behaves like a directory."""

from __future__ import annotations

import os

from conftest import sealfs  # noqa: F401  (tests/fs/conftest.py)


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
