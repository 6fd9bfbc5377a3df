"""Several mounts of one volume, as two hosts would have them: conflicting
writes keep both versions, and a directory renamed on one mount while the
other writes into it loses no file.  (Close-to-open between mounts is in
test_posix.py.)  Both stores."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for  # tests/fs/conftest.py

CONFLICT_LOG = r"changed by another mount"


def conflict_copies(d: Path, name: str) -> list[Path]:
    stem, _, ext = name.rpartition(".")
    prefix = f"{stem}.conflict-" if stem else f"{name}.conflict-"
    return sorted(p for p in d.iterdir() if p.name.startswith(prefix) and (not stem or p.name.endswith("." + ext)))


def close_fails_with_eio(f) -> None:
    with pytest.raises(OSError) as info:
        f.close()
    assert info.value.errno == errno.EIO


@pytest.mark.parametrize("size", [100, 3 * 65536 + 17, 20 * 1024 * 1024], ids=["small", "blocks", "multipart"])
def test_losing_writer_gets_eio_and_a_conflict_copy(make_mount, size):
    a = make_mount()
    b = make_mount(spec=a.spec)
    b.expected_log.append(CONFLICT_LOG)
    (a.path / "report.txt").write_bytes(b"the original")
    mine, theirs = os.urandom(size), os.urandom(size // 2 + 1)
    fb = open(b.path / "report.txt", "r+b")  # B opens the original ...
    try:
        (a.path / "report.txt").write_bytes(theirs)  # ... A replaces it ...
        fb.truncate(0)
        fb.write(mine)  # ... and B writes its own version over what it opened
    finally:
        close_fails_with_eio(fb)
    # A's version stays under the name, on both mounts
    assert (a.path / "report.txt").read_bytes() == theirs
    assert (b.path / "report.txt").read_bytes() == theirs
    # B's is beside it, seen by both mounts, and only one copy was made
    for m in (a, b):
        copies = conflict_copies(m.path, "report.txt")
        assert len(copies) == 1, os.listdir(m.path)
        assert hashlib.sha256(copies[0].read_bytes()).digest() == hashlib.sha256(mine).digest()
    assert sorted(os.listdir(a.path)) == sorted(["report.txt", copies[0].name])
    log = b.log.read_text()
    assert copies[0].name in log  # the log names the copy


def test_writer_whose_file_was_removed_keeps_its_version(make_mount):
    a = make_mount()
    b = make_mount(spec=a.spec)
    b.expected_log.append(CONFLICT_LOG)
    (a.path / "d").mkdir()
    (a.path / "d" / "notes").write_bytes(b"v1")
    fb = open(b.path / "d" / "notes", "r+b")
    try:
        fb.read()
        os.unlink(a.path / "d" / "notes")
        fb.seek(0)
        fb.write(b"B's notes, written after A removed the file")
    finally:
        close_fails_with_eio(fb)
    [copy] = conflict_copies(a.path / "d", "notes")
    assert copy.read_bytes() == b"B's notes, written after A removed the file"
    assert not (a.path / "d" / "notes").exists()


def test_partial_edit_over_a_cached_version_is_kept(make_mount):
    """B changes a few bytes in the middle of a file it has read (so the
    unchanged blocks are cached); A replaced the file meanwhile: B's whole
    version, unchanged blocks included, is the conflict copy."""
    a = make_mount()
    b = make_mount(spec=a.spec)
    b.expected_log.append(CONFLICT_LOG)
    original = os.urandom(500_000)
    (a.path / "db").write_bytes(original)
    with open(b.path / "db", "r+b") as fb:
        assert fb.read() == original
        (a.path / "db").write_bytes(b"A's rewrite")
        fb.seek(300_000)
        fb.write(b"B was here")
        with pytest.raises(OSError) as info:
            fb.flush()
            os.fsync(fb.fileno())  # the first to report the conflict
        assert info.value.errno == errno.EIO
    [copy] = conflict_copies(a.path, "db")
    assert copy.read_bytes() == original[:300_000] + b"B was here" + original[300_010:]
    assert (b.path / "db").read_bytes() == b"A's rewrite"


def test_directory_renamed_while_another_mount_writes_into_it(make_mount):
    a = make_mount()
    b = make_mount(spec=a.spec)
    (a.path / "incoming").mkdir()
    assert (b.path / "incoming").is_dir()
    written: dict[str, bytes] = {}
    failures: list[OSError] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and n < 400:
            name, data = f"f{n:03}", os.urandom(1000 + n * 37)
            try:
                with open(b.path / "incoming" / name, "wb") as f:
                    f.write(data)
            except OSError as exc:  # the old name is gone on B too: a clean error
                assert exc.errno in (errno.ENOENT, errno.ESTALE), exc
                failures.append(exc)
                time.sleep(0.01)  # (a pause, not a wait: the next name is tried after it)
            else:
                written[name] = data
            n += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: len(written) >= 20 or not t.is_alive(), "the writer to write into incoming", 60)
        os.rename(a.path / "incoming", a.path / "archive")
        # B writes on into the renamed directory (its kernel knows the old
        # name for entry_timeout, 1 s) until it finds the name gone
        wait_for(lambda: failures or not t.is_alive(), "B to find incoming gone", 60)
    finally:
        stop.set()
        t.join()
    assert written, "the writer wrote nothing"
    for m in (a, b):
        names = set(os.listdir(m.path / "archive"))
        assert names == set(written), f"lost: {sorted(set(written) - names)}"
        for name, data in written.items():
            assert (m.path / "archive" / name).read_bytes() == data
    assert not (a.path / "incoming").exists()


def test_conflict_found_after_parts_were_sent(make_mount):
    """B has sent parts of its new version (S3 uploads them while they are
    written) when A replaces the file: completing B's upload must fail, not
    replace A's version."""
    a = make_mount()
    b = make_mount(spec=a.spec)
    b.expected_log.append(CONFLICT_LOG)
    (a.path / "big").write_bytes(b"the original")
    mine = os.urandom(40 * 1024 * 1024)
    fb = open(b.path / "big", "r+b")
    try:
        fb.truncate(0)
        fb.write(mine[: 30 * 1024 * 1024])
        fb.flush()
        (a.path / "big").write_bytes(b"A's version")
        fb.write(mine[30 * 1024 * 1024 :])
    finally:
        close_fails_with_eio(fb)
    assert (a.path / "big").read_bytes() == b"A's version"
    [copy] = conflict_copies(a.path, "big")
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(mine).digest()


def test_partial_edit_of_unread_blocks_is_reported(make_mount):
    """The one documented loss: B writes into a file without reading it, A
    replaces it meanwhile; the blocks B did not change were only in the
    replaced version, so B's version cannot be rebuilt.  B must hear of it
    (EIO, and an error naming the file in the log); A's version is intact."""
    a = make_mount()
    b = make_mount(spec=a.spec)
    b.expected_log += [CONFLICT_LOG, "could not be saved as a conflict copy", "discarding changes to ledger"]
    (a.path / "ledger").write_bytes(os.urandom(400_000))
    fd = os.open(b.path / "ledger", os.O_WRONLY)
    try:
        os.pwrite(fd, b"B was here", 200_000)
        (a.path / "ledger").write_bytes(b"A's rewrite")
        with pytest.raises(OSError) as info:
            os.fsync(fd)
        assert info.value.errno == errno.EIO
    finally:
        with pytest.raises(OSError):
            os.close(fd)
    deadline = time.monotonic() + 30  # (the kernel sends the release after close returns)
    while "discarding changes to ledger" not in b.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (b.path / "ledger").read_bytes() == b"A's rewrite"
    assert conflict_copies(b.path, "ledger") == []
    assert "ledger was changed by another mount, and this mount's version could not be saved" in b.log.read_text()


# -- new files are stored at their first flush, together with their contents ----------------


def test_new_file_is_stored_at_its_first_flush(make_mount):
    a = make_mount()
    b = make_mount(spec=a.spec)
    fd = os.open(a.path / "new", os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        os.write(fd, b"hello")
        # on this mount the name is there at once: stat, listing, open, chmod
        assert os.stat(a.path / "new").st_size == 5
        assert "new" in os.listdir(a.path)
        assert (a.path / "new").read_bytes() == b"hello"
        os.chmod(a.path / "new", 0o600)
        # another mount sees it once it is flushed (close-to-open)
        assert not (b.path / "new").exists()
        os.fsync(fd)
        assert (b.path / "new").read_bytes() == b"hello"
    finally:
        os.close(fd)
    assert stat_mode(b.path / "new") == 0o600
    # an empty file is stored at its close too
    (a.path / "empty").touch()
    assert (b.path / "empty").read_bytes() == b""


def stat_mode(p: Path) -> int:
    return os.stat(p).st_mode & 0o7777


def test_new_file_renamed_or_removed_before_its_first_flush(make_mount):
    a = make_mount()
    b = make_mount(spec=a.spec)
    with open(a.path / "tmp.part", "wb") as f:
        f.write(b"draft")
        os.rename(a.path / "tmp.part", a.path / "final")  # (stores it first)
        f.write(b", finished")
    assert (b.path / "final").read_bytes() == b"draft, finished"
    assert not (b.path / "tmp.part").exists()
    with open(a.path / "scratch", "wb") as f:
        f.write(b"x" * 100_000)
        os.unlink(a.path / "scratch")
        f.write(b"y")
    assert sorted(os.listdir(b.path)) == ["final"]
    assert sorted(os.listdir(a.path)) == ["final"]


@pytest.mark.parametrize("excl", [False, True], ids=["creat", "excl"])
def test_two_mounts_create_one_name(make_mount, excl):
    """Both create the same new name: the first to close keeps it, the
    second's file becomes a conflict copy (O_EXCL too: it is exclusive on
    one mount at once, and across mounts at the first flush)."""
    a = make_mount()
    b = make_mount(spec=a.spec)
    b.expected_log.append(CONFLICT_LOG)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if excl else os.O_TRUNC)
    fa = os.open(a.path / "out.log", flags, 0o644)
    fb = os.open(b.path / "out.log", flags, 0o644)
    if excl:
        with pytest.raises(FileExistsError):  # on one mount, at once
            os.open(a.path / "out.log", flags, 0o644)
    os.write(fa, b"from A")
    os.write(fb, b"from B")
    os.close(fa)
    with pytest.raises(OSError) as info:
        os.close(fb)
    assert info.value.errno == errno.EIO
    assert (b.path / "out.log").read_bytes() == b"from A"
    [copy] = conflict_copies(a.path, "out.log")
    assert copy.read_bytes() == b"from B"
    # B's view of the name now leads to A's file: a chmod there changes
    # A's file, and never puts B's lost file's identity on it
    os.chmod(b.path / "out.log", 0o600)
    assert (a.path / "out.log").read_bytes() == b"from A"
    assert stat_mode(a.path / "out.log") == 0o600


def test_directory_with_files_not_yet_stored_is_not_empty(make_mount):
    m = make_mount()
    (m.path / "d").mkdir()
    (m.path / "e").mkdir()
    with open(m.path / "d" / "f", "wb") as f:
        f.write(b"not flushed yet")
        with pytest.raises(OSError) as info:
            os.rmdir(m.path / "d")
        assert info.value.errno == errno.ENOTEMPTY
        with pytest.raises(OSError) as info:
            os.rename(m.path / "e", m.path / "d")
        assert info.value.errno == errno.ENOTEMPTY
    assert (m.path / "d" / "f").read_bytes() == b"not flushed yet"


def test_metadata_change_through_a_stale_name_never_breaks_the_new_file(make_mount):
    """B still knows the name for a file that A replaced by another one: a
    chmod on B lands on the new file or nowhere, never puts the old file's
    identity on the new contents."""
    a = make_mount()
    b = make_mount(spec=a.spec)
    (a.path / "f").write_bytes(b"old file")
    assert (b.path / "f").read_bytes() == b"old file"
    os.unlink(a.path / "f")
    (a.path / "f").write_bytes(b"a new file")
    os.chmod(b.path / "f", 0o600)  # (B's kernel still has the old file's inode for the name)
    os.utime(b.path / "f", (1, 1))
    assert (a.path / "f").read_bytes() == b"a new file"
    assert (b.path / "f").read_bytes() == b"a new file"
