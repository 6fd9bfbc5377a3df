"""POSIX semantics through a real mount: the errno of each failure path,
rename, random writes against a model, many threads at once, unlink while
open, permissions of other users, times, link counts, long paths, big
directories, statfs, xattrs, two mounts of one volume (close-to-open) and
fsync.

Every test runs on both stores.  Where the store matters (leftover objects,
xattr overflow) the test looks behind the mount: into the local store's
directory, or into the bucket with boto3.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
import random
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Mount, daemon_pids, raises_errno, sealfs, wait_for  # tests/fs/conftest.py


def store_keys(m: Mount, request) -> set[str]:
    """Every object in the mount's store (local: files under objects/;
    s3: keys in the bucket, listed with boto3 behind the store's back)."""
    if m.spec.kind == "local":
        root = Path(urllib.parse.urlparse(m.url).path) / "objects"
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    client = request.getfixturevalue("moto_s3")
    bucket, _, prefix = m.url[len("s3://") :].partition("/")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", [])}


def overflow_keys(keys: set[str]) -> set[str]:
    """The overflow metadata objects (``x/<entry id>``) among store keys
    (a local store keeps them in the directory ``x~``)."""
    return {k for k in keys if k.startswith(("x/", "x~/"))}


def wait_for_keys(m: Mount, request, want: set[str], what: str, timeout: float = 10.0) -> None:
    """Poll until the store holds exactly ``want`` (the kernel sends a
    release after close() returns, so what it deletes goes a bit later)."""
    deadline = time.monotonic() + timeout
    while (keys := store_keys(m, request)) != want:
        assert time.monotonic() < deadline, f"{what}: left {keys - want}, lost {want - keys}"
        time.sleep(0.02)


# -- errno of each failure path ----------------------------------------------------------


def test_errnos(mounted):
    p = mounted.path
    (p / "file").write_bytes(b"data")
    (p / "dir").mkdir()
    (p / "full").mkdir()
    (p / "full" / "x").write_bytes(b"")
    (p / "dir" / "sub").mkdir()

    with raises_errno(errno.ENOENT):
        open(p / "missing", "rb")
    with raises_errno(errno.ENOENT):
        os.stat(p / "missing")
    with raises_errno(errno.ENOENT):
        os.unlink(p / "missing")
    with raises_errno(errno.ENOENT):
        os.rmdir(p / "missing")
    with raises_errno(errno.ENOENT):
        os.rename(p / "missing", p / "other")
    with raises_errno(errno.ENOENT):
        (p / "missing" / "x").write_bytes(b"")

    with raises_errno(errno.EEXIST):
        os.mkdir(p / "dir")
    with raises_errno(errno.EEXIST):
        os.mkdir(p / "file")
    with raises_errno(errno.EEXIST):
        os.open(p / "file", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with raises_errno(errno.EEXIST):
        os.symlink("target", p / "file")

    with raises_errno(errno.ENOTDIR):
        open(p / "file" / "x", "rb")
    with raises_errno(errno.ENOTDIR):
        os.stat(p / "file" / "x")
    with raises_errno(errno.ENOTDIR):
        os.mkdir(p / "file" / "x")
    with raises_errno(errno.ENOTDIR):
        os.rmdir(p / "file")
    with raises_errno(errno.ENOTDIR):
        os.listdir(p / "file")
    with raises_errno(errno.ENOTDIR):
        os.rename(p / "dir", p / "file")

    with raises_errno(errno.EISDIR):
        os.unlink(p / "dir")
    with raises_errno(errno.EISDIR):
        os.open(p / "dir", os.O_WRONLY)
    with raises_errno(errno.EISDIR):
        os.open(p / "dir", os.O_RDWR)
    with raises_errno(errno.EISDIR):
        os.rename(p / "file", p / "dir")

    with raises_errno(errno.ENOTEMPTY):
        os.rmdir(p / "full")
    with raises_errno(errno.ENOTEMPTY):
        os.rename(p / "dir", p / "full")

    with raises_errno(errno.EINVAL):
        os.rename(p / "dir", p / "dir" / "sub" / "inside")

    (p / ("n" * 255)).write_bytes(b"longest")
    os.mkdir(p / ("d" * 255))
    assert (p / ("n" * 255)).read_bytes() == b"longest"
    for op in (lambda q: open(q, "wb"), os.mkdir, os.stat, lambda q: os.symlink("t", q)):
        with raises_errno(errno.ENAMETOOLONG):
            op(p / ("n" * 256))
    with raises_errno(errno.ENAMETOOLONG):
        os.rename(p / "file", p / ("n" * 256))

    os.symlink("loop-b", p / "loop-a")
    os.symlink("loop-a", p / "loop-b")
    with raises_errno(errno.ELOOP):
        open(p / "loop-a", "rb")
    with raises_errno(errno.ELOOP):
        os.stat(p / "loop-a")
    os.symlink("self", p / "self")
    with raises_errno(errno.ELOOP):
        os.stat(p / "self" / "x")

    # Documented as unsupported (docs/SEMANTICS.md, "Hard links"; sealfs(1)):
    with raises_errno(errno.EPERM):
        os.link(p / "file", p / "hardlink")
    with raises_errno(errno.EPERM):
        os.mkfifo(p / "fifo")
    with raises_errno(errno.EPERM):
        os.mknod(p / "sock", stat.S_IFSOCK | 0o600)
    assert sorted(os.listdir(p)) == sorted(["file", "dir", "full", "n" * 255, "d" * 255, "loop-a", "loop-b", "self"])
    os.mknod(p / "regular", stat.S_IFREG | 0o640)  # a regular file by mknod: stored at once, empty
    assert (stat.S_IMODE(os.stat(p / "regular").st_mode), (p / "regular").read_bytes()) == (0o640, b"")


# -- rename ----------------------------------------------------------------------------


def test_rename_files_and_directories(mounted):
    p = mounted.path
    (p / "a" / "b" / "c").mkdir(parents=True)
    (p / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep")
    (p / "a" / "top.txt").write_bytes(b"top")
    (p / "other").mkdir()
    (p / "f").write_bytes(b"file f")
    os.rename(p / "f", p / "other" / "g")  # a file to another directory
    os.rename(p / "a", p / "other" / "A")  # a non-empty directory to another directory
    os.rename(p / "other" / "A" / "b", p / "other" / "A" / "B")  # within its directory
    (p / "empty").mkdir()
    os.rename(p / "other" / "A" / "B", p / "empty")  # over an empty directory

    def check() -> None:
        assert sorted(os.listdir(p)) == ["empty", "other"]
        assert sorted(os.listdir(p / "other")) == ["A", "g"]
        assert os.listdir(p / "other" / "A") == ["top.txt"]
        assert (p / "other" / "g").read_bytes() == b"file f"
        assert (p / "other" / "A" / "top.txt").read_bytes() == b"top"
        assert (p / "empty" / "c" / "deep.txt").read_bytes() == b"deep"

    check()
    (p / "empty" / "c" / "new.txt").write_bytes(b"written after the move")
    mounted.remount()
    check()
    assert (p / "empty" / "c" / "new.txt").read_bytes() == b"written after the move"


def test_rename_over_existing_file(mounted):
    p = mounted.path
    (p / "src").write_bytes(b"new content")
    (p / "dst").write_bytes(b"old content, longer than the new")
    os.setxattr(p / "dst", "user.old", b"1")
    os.rename(p / "src", p / "dst")
    assert os.listdir(p) == ["dst"]
    assert (p / "dst").read_bytes() == b"new content"
    assert os.listxattr(p / "dst") == []
    mounted.remount()
    assert os.listdir(p) == ["dst"]
    assert (p / "dst").read_bytes() == b"new content"


def test_rename_open_file_being_written(mounted):
    p = mounted.path
    (p / "d").mkdir()
    with open(p / "f", "wb") as f:
        f.write(b"first part, ")
        os.rename(p / "f", p / "d" / "g")  # while dirty
        f.write(b"second part, ")
        f.flush()
        os.rename(p / "d", p / "e")  # its directory
        f.write(b"third part")
    assert os.listdir(p) == ["e"]
    assert (p / "e" / "g").read_bytes() == b"first part, second part, third part"
    mounted.remount()
    assert (p / "e" / "g").read_bytes() == b"first part, second part, third part"


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old))


def test_renameat2_flags(mounted):
    p = mounted.path
    (p / "a").write_bytes(b"a")
    (p / "b").write_bytes(b"b")
    with raises_errno(errno.EEXIST):
        renameat2(p / "a", p / "b", RENAME_NOREPLACE)
    renameat2(p / "a", p / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(p)) == ["b", "c"]
    # Swapping two names cannot be one atomic step on an object store.
    with raises_errno(errno.EINVAL):
        renameat2(p / "b", p / "c", RENAME_EXCHANGE)
    assert (p / "b").read_bytes() == b"b"
    assert (p / "c").read_bytes() == b"a"


# -- file contents -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_random_writes_match_a_model(mounted, seed):
    """Random pwrite/ftruncate/pread on a file of over 16 MiB (so that its
    uploads are multipart, with unchanged parts copied server-side)
    compared with a bytearray, through closes and remounts."""
    rnd = random.Random(seed)
    path = mounted.path / "f"
    model = bytearray(rnd.randbytes(18 * 1024 * 1024 + 777))
    path.write_bytes(model)
    for round_ in range(3):
        fd = os.open(path, os.O_RDWR)
        try:
            for _ in range(40):
                op = rnd.random()
                if op < 0.7:
                    off = rnd.randrange(0, len(model) + 200_000)
                    data = rnd.randbytes(rnd.choice([1, 100, 4096, 65536, 65537, 300_000]))
                    assert os.pwrite(fd, data, off) == len(data)
                    model.extend(bytes(max(0, off - len(model))))
                    model[off : off + len(data)] = data
                elif op < 0.85:
                    size = max(0, len(model) + rnd.randrange(-300_000, 100_000))
                    os.ftruncate(fd, size)
                    del model[size:]
                    model.extend(bytes(size - len(model)))
                else:
                    off = rnd.randrange(0, len(model) + 10)
                    assert os.pread(fd, 70_000, off) == model[off : off + 70_000], (round_, off)
            if round_ == 1:
                os.fsync(fd)
        finally:
            os.close(fd)
        assert path.read_bytes() == model, round_
        mounted.remount()
        assert path.stat().st_size == len(model)
        assert path.read_bytes() == model, round_


def test_concurrent_namespace_and_content_changes(mounted):
    """Eight threads create, write, read, truncate, rename, unlink and list
    a few names in three directories at once.  Only the errors a local
    filesystem would give may come back (never EIO, ESTALE or a dead
    mount), the daemon logs no error, and a remount shows the same tree."""
    p = mounted.path
    dirs = [p / d for d in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()
    expected = {errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY}
    ops = {
        "write": lambda a, b, rnd: a.write_bytes(rnd.randbytes(rnd.randrange(0, 150_000))),
        "append": lambda a, b, rnd: a.open("ab").write(b"x" * 1000),
        "read": lambda a, b, rnd: a.read_bytes(),
        "truncate": lambda a, b, rnd: os.truncate(a, 100),
        "chmod": lambda a, b, rnd: os.chmod(a, 0o640),
        "rename": lambda a, b, rnd: os.rename(a, b),
        "unlink": lambda a, b, rnd: os.unlink(a),
        "mkdir": lambda a, b, rnd: os.mkdir(a),
        "rmdir": lambda a, b, rnd: os.rmdir(a),
        "stat": lambda a, b, rnd: os.stat(a),
        "list": lambda a, b, rnd: os.listdir(a.parent),
    }

    def worker(seed: int) -> list[str]:
        rnd = random.Random(seed)
        errors = []
        for _ in range(120):
            op = rnd.choice(sorted(ops))
            a, b = (rnd.choice(dirs) / f"n{rnd.randrange(10)}" for _ in range(2))
            try:
                ops[op](a, b, rnd)
            except OSError as e:
                if e.errno not in expected:
                    errors.append(f"{op} {a} {b}: {e}")
        return errors

    with ThreadPoolExecutor(8) as pool:
        errors = [e for found in pool.map(worker, range(8)) for e in found]
    assert not errors, errors[:10]

    def tree() -> dict[str, tuple]:
        out = {}
        for d, subdirs, files in os.walk(p):
            for name in subdirs + files:
                full = os.path.join(d, name)
                st = os.lstat(full)
                data = Path(full).read_bytes() if stat.S_ISREG(st.st_mode) else None
                out[os.path.relpath(full, p)] = (st.st_mode, st.st_size, data)
        return out

    before = tree()
    mounted.remount()
    assert tree() == before


# -- unlink while open --------------------------------------------------------------------


def test_unlink_while_open(mounted, request):
    p = mounted.path
    before = store_keys(mounted, request)
    data = os.urandom(200_000)
    (p / "f").write_bytes(data)
    os.setxattr(p / "f", "user.big", bytes(10_000))  # with an overflow object
    assert store_keys(mounted, request) != before
    fd = os.open(p / "f", os.O_RDWR)
    try:
        os.unlink(p / "f")
        assert not (p / "f").exists()
        assert os.listdir(p) == []
        assert os.pread(fd, len(data), 0) == data
        assert os.fstat(fd).st_nlink == 0
        os.pwrite(fd, b"still writable", 10)
        assert os.pread(fd, 20, 5) == data[5:10] + b"still writable" + data[24:25]
        assert os.fstat(fd).st_size == len(data)
        (p / "f").write_bytes(b"a new file of the same name")
        assert os.pread(fd, 10, 0) == data[:10]
    finally:
        os.close(fd)
    (p / "f").unlink()
    wait_for_keys(mounted, request, before, "the unlinked file's objects")
    mounted.remount()
    assert os.listdir(p) == []
    assert store_keys(mounted, request) == before


def test_rename_over_open_file(mounted, request):
    p = mounted.path
    before = store_keys(mounted, request)
    (p / "victim").write_bytes(b"old data")
    os.setxattr(p / "victim", "user.big", bytes(10_000))
    (p / "new").write_bytes(b"new data")
    with open(p / "victim", "rb") as f:
        os.rename(p / "new", p / "victim")
        assert f.read() == b"old data"
        assert (p / "victim").read_bytes() == b"new data"
    os.unlink(p / "victim")
    wait_for_keys(mounted, request, before, "the replaced file's objects")


# -- permissions of other users ------------------------------------------------------------

USER, GROUP, GROUP2 = "sealfs-test-u1", "sealfs-test-g1", "sealfs-test-g2"
OTHER_PYTHON = "/usr/bin/python3"  # readable by everyone, unlike a venv under /root


def _ensure(kind: str, name: str, argv: list[str]) -> None:
    lookup = pwd.getpwnam if kind == "user" else grp.getgrnam
    try:
        lookup(name)
        return
    except KeyError:
        pass
    proc = subprocess.run(argv, capture_output=True, text=True)
    try:
        lookup(name)  # (another test run may have created it meanwhile)
    except KeyError:
        pytest.fail(f"cannot create {kind} {name}: {proc.stderr.strip()}")


@pytest.fixture(scope="session")
def test_user() -> tuple[int, int, int]:
    """(uid, primary gid, supplementary gid) of an unprivileged user made
    for these tests (with groupadd/useradd when missing)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (creates a user, mounts with allow_other)")
    for tool in ("useradd", "groupadd", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.access(OTHER_PYTHON, os.X_OK):
        pytest.skip(f"{OTHER_PYTHON} is missing")
    _ensure("group", GROUP, ["groupadd", "--system", GROUP])
    _ensure("group", GROUP2, ["groupadd", "--system", GROUP2])
    _ensure(
        "user",
        USER,
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--gid",
            GROUP,
            "--groups",
            GROUP2,
            USER,
        ],
    )
    if USER not in grp.getgrnam(GROUP2).gr_mem:
        subprocess.run(["usermod", "-a", "-G", GROUP2, USER], check=True)
    return pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid, grp.getgrnam(GROUP2).gr_gid


@pytest.fixture
def public_dir() -> Path:
    """A directory every user may enter (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="sealfs-test-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def shared(test_user, public_dir, make_mount) -> Mount:
    """A mount with allow_other, on a mountpoint other users can reach.
    (Set up after public_dir, so unmounted before it is removed.)"""
    return make_mount(["allow_other"], mountpoint=public_dir / "mnt")


def as_user(code: str, *args) -> str:
    """Run Python ``code`` as the test user (``a`` is a list of the
    arguments) and return what it prints: "ok", or the errno name of the
    OSError it raised."""
    script = (
        "import errno, os, sys\na = sys.argv[1:]\ntry:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "except OSError as e:\n    print(errno.errorcode[e.errno])\nelse:\n    print('ok')\n"
    )
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={USER}",
            f"--regid={GROUP}",
            "--init-groups",
            OTHER_PYTHON,
            "-c",
            script,
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_permissions_of_other_users(shared, test_user):
    uid, gid, gid2 = test_user
    p = shared.path
    (p / "private").write_bytes(b"secret")
    os.chmod(p / "private", 0o600)
    (p / "public").write_bytes(b"hello")
    os.chmod(p / "public", 0o644)
    assert as_user("open(a[0], 'rb')", p / "private") == "EACCES"
    assert as_user("assert open(a[0], 'rb').read() == b'hello'", p / "public") == "ok"
    assert as_user("open(a[0], 'ab')", p / "public") == "EACCES"
    assert as_user("os.chmod(a[0], 0o666)", p / "public") == "EPERM"  # not the owner
    assert as_user("open(a[0], 'wb')", p / "new") == "EACCES"  # root's 0755 directory
    assert as_user("os.unlink(a[0])", p / "public") == "EACCES"

    (p / "open").mkdir(mode=0o777)
    os.chmod(p / "open", 0o777)
    assert as_user("open(a[0], 'wb').write(b'mine')", p / "open" / "mine") == "ok"
    st = os.stat(p / "open" / "mine")
    assert (st.st_uid, st.st_gid) == (uid, gid)
    assert as_user("os.mkdir(a[0])", p / "open" / "subdir") == "ok"
    st = os.stat(p / "open" / "subdir")
    assert (st.st_uid, st.st_gid) == (uid, gid)

    # chown: never to another user; to a group only if a member
    mine = p / "open" / "mine"
    assert as_user("os.chown(a[0], 0, -1)", mine) == "EPERM"
    assert as_user("os.chown(a[0], -1, 0)", mine) == "EPERM"
    assert as_user(f"os.chown(a[0], -1, {gid2})", mine) == "ok"
    assert os.stat(mine).st_gid == gid2
    assert as_user("os.chmod(a[0], 0o640)", mine) == "ok"
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o640

    shared.remount()
    st = os.stat(mine)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid2, 0o640)
    assert as_user("open(a[0], 'rb')", p / "private") == "EACCES"


def test_sticky_directory(shared, test_user):
    p = shared.path
    (p / "tmp").mkdir()
    os.chmod(p / "tmp", 0o1777)
    (p / "tmp" / "roots").write_bytes(b"root's")
    os.chmod(p / "tmp" / "roots", 0o666)
    assert as_user("os.unlink(a[0])", p / "tmp" / "roots") == "EPERM"
    assert as_user("os.rename(a[0], a[1])", p / "tmp" / "roots", p / "tmp" / "stolen") == "EPERM"
    assert as_user("open(a[0], 'ab').write(b'!')", p / "tmp" / "roots") == "ok"  # writable, not removable
    assert (
        as_user(
            "open(a[0], 'wb').close()\nos.rename(a[0], a[1])\nos.unlink(a[1])", p / "tmp" / "own", p / "tmp" / "own2"
        )
        == "ok"
    )
    assert sorted(os.listdir(p / "tmp")) == ["roots"]
    assert (p / "tmp" / "roots").read_bytes() == b"root's!"
    shared.remount()
    assert stat.S_IMODE(os.stat(p / "tmp").st_mode) == 0o1777


def test_setuid_bits_cleared(shared, test_user):
    uid, gid, gid2 = test_user
    p = shared.path
    (p / "open").mkdir()
    os.chmod(p / "open", 0o777)
    f = p / "open" / "suid"
    f.write_bytes(b"program")
    os.chmod(f, 0o6777)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6777
    assert as_user("open(a[0], 'ab').write(b'!')", f) == "ok"  # a write by a non-root user
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o777
    assert f.read_bytes() == b"program!"

    trunc = "os.close(os.open(a[0], os.O_WRONLY | os.O_TRUNC))"
    for how in ("os.truncate(a[0], 3)", trunc, trunc):  # (the last on an empty file)
        os.chmod(f, 0o6777)
        assert as_user(how, f) == "ok"  # a truncate by a non-root user
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o777, how

    os.chmod(f, 0o6755)
    with open(f, "ab") as fh:  # root's writes keep them (CAP_FSETID)
        fh.write(b"?")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6755
    os.chown(f, uid, gid)  # a chown clears them, even by root
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755

    g = p / "open" / "sgid-dir"
    g.mkdir()
    os.chmod(g, 0o2777)
    os.chown(g, 0, gid2)
    assert as_user("open(a[0], 'wb').close()\nos.mkdir(a[1])", g / "inherits", g / "sub") == "ok"
    assert os.stat(g / "inherits").st_gid == gid2  # set-group-id directory: its group
    assert os.stat(g / "sub").st_gid == gid2
    assert os.stat(g / "sub").st_mode & stat.S_ISGID
    shared.remount()
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    assert os.stat(g / "sub").st_mode & stat.S_ISGID


# -- times and link counts ---------------------------------------------------------------


def test_times(mounted):
    p = mounted.path
    (p / "d1").mkdir()
    (p / "d2").mkdir()
    f = p / "d1" / "f"
    f.write_bytes(b"x")

    def changed(action, path, *, mtime: bool, ctime: bool = True) -> os.stat_result:
        before = os.stat(path)
        time.sleep(0.002)  # the clock must move for a change to show
        action()
        after = os.stat(path)
        assert (after.st_mtime_ns > before.st_mtime_ns) == mtime, (action, "mtime")
        if not mtime:
            assert after.st_mtime_ns == before.st_mtime_ns
        assert (after.st_ctime_ns > before.st_ctime_ns) == ctime, (action, "ctime")
        return after

    def write():
        with open(f, "ab") as fh:
            fh.write(b"more")

    changed(write, f, mtime=True)
    changed(lambda: os.truncate(f, 100), f, mtime=True)
    changed(lambda: os.truncate(f, 2), f, mtime=True)
    g = p / "d1" / "g"
    g.write_bytes(b"data")
    for _ in ("with data", "empty"):
        changed(lambda: os.close(os.open(g, os.O_WRONLY | os.O_TRUNC)), g, mtime=True)
    g.unlink()
    changed(lambda: os.chmod(f, 0o600), f, mtime=False)
    changed(lambda: os.chown(f, 1234, 5678), f, mtime=False)
    changed(lambda: os.setxattr(f, "user.x", b"1"), f, mtime=False)
    changed(lambda: (p / "d1" / "g").write_bytes(b""), p / "d1", mtime=True)  # create in a directory
    changed(lambda: (p / "d1" / "g").unlink(), p / "d1", mtime=True)
    before, d2 = os.stat(f), os.stat(p / "d2")
    d1 = changed(lambda: os.rename(f, p / "d2" / "f"), p / "d1", mtime=True)
    moved = os.stat(p / "d2" / "f")
    assert moved.st_ctime_ns > before.st_ctime_ns  # a rename changes the file's ctime
    assert moved.st_mtime_ns == before.st_mtime_ns  # but not its mtime
    assert os.stat(p / "d2").st_mtime_ns > d2.st_mtime_ns
    os.utime(p / "d2" / "f", ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(p / "d2" / "f").st_mtime_ns == 2_000_000_000

    changed(lambda: os.utime(p / "d2" / "f"), p / "d2" / "f", mtime=True)  # UTIME_NOW
    assert abs(os.stat(p / "d2" / "f").st_mtime_ns - time.time_ns()) < 5_000_000_000
    os.utime(p / "d2" / "f", ns=(1_000_000_000, 2_000_000_000))
    os.symlink("f", p / "d2" / "link")
    os.utime(p / "d2" / "link", ns=(3_000_000_000, 4_000_000_000), follow_symlinks=False)
    os.lchown(p / "d2" / "link", 4321, 8765)
    assert os.lstat(p / "d2" / "link").st_mtime_ns == 4_000_000_000
    assert os.stat(p / "d2" / "link").st_mtime_ns == 2_000_000_000  # the target's

    want = {name: os.lstat(p / name) for name in ("d1", "d2", "d2/f", "d2/link")}
    assert d1.st_mtime_ns == want["d1"].st_mtime_ns
    mounted.remount()
    for name, st in want.items():
        now = os.lstat(p / name)
        assert (now.st_mtime_ns, now.st_ctime_ns, now.st_mode, now.st_uid, now.st_gid) == (
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_mode,
            st.st_uid,
            st.st_gid,
        ), name


def test_directory_nlink(mounted):
    p = mounted.path

    def nlink(path: Path) -> int:
        return os.stat(path).st_nlink

    assert nlink(p) == 2
    (p / "a").mkdir()
    (p / "b").mkdir()
    (p / "file").write_bytes(b"")
    assert nlink(p) == 4
    assert nlink(p / "a") == 2
    assert nlink(p / "file") == 1
    for i in range(3):
        (p / "a" / f"s{i}").mkdir()
    assert nlink(p / "a") == 5
    os.rmdir(p / "a" / "s2")
    assert nlink(p / "a") == 4
    os.rename(p / "a" / "s1", p / "b" / "s1")  # moves a subdirectory between parents
    assert (nlink(p / "a"), nlink(p / "b")) == (3, 3)
    os.rename(p / "a" / "s0", p / "a" / "t0")  # within one parent
    assert nlink(p / "a") == 3
    (p / "b" / "empty").mkdir()
    os.rename(p / "b" / "s1", p / "b" / "empty")  # over an empty directory
    assert nlink(p / "b") == 3
    os.rename(p / "file", p / "b" / "file")  # files do not count
    assert nlink(p / "b") == 3
    assert nlink(p) == 4
    want = {q: nlink(q) for q in (p, p / "a", p / "b", p / "b" / "empty")}
    mounted.remount()
    assert {q: nlink(q) for q in want} == want


# -- long paths and big directories --------------------------------------------------------


def test_path_max(mounted):
    """A 4,095-byte relative path (PATH_MAX with its NUL) through 60
    directories: created, written, read back after a remount."""
    levels = 60
    component = "L" * 66  # 60 × 67 bytes = 4,020
    dirs = "/".join(f"{i:02d}{component[2:]}" for i in range(levels))
    name = "f" * (4095 - len(dirs) - 1)
    rel = f"{dirs}/{name}"
    assert len(os.fsencode(rel)) == 4095
    data = os.urandom(70_000)
    cwd = os.getcwd()
    try:
        os.chdir(mounted.path)
        path = ""
        for part in dirs.split("/"):
            path = f"{path}/{part}" if path else part
            os.mkdir(path)
        with open(rel, "wb") as f:
            f.write(data)
        with open(rel, "rb") as f:
            assert f.read() == data
        with raises_errno(errno.ENAMETOOLONG):
            os.stat(rel + "x")  # 4,096 bytes: the kernel refuses it
    finally:
        os.chdir(cwd)
    mounted.remount()
    try:
        os.chdir(mounted.path)
        with open(rel, "rb") as f:
            assert f.read() == data
        assert os.listdir(dirs) == [name]
    finally:
        os.chdir(cwd)


def test_readdir_many_entries(mounted):
    d = mounted.path / "big"
    d.mkdir()
    names = {f"entry-{i:05d}-" + "x" * (i % 50) for i in range(1000)}
    names |= {f"sub-{i}" for i in range(10)}

    def make(name: str) -> None:
        if name.startswith("sub-"):
            os.mkdir(d / name)
        else:
            os.close(os.open(d / name, os.O_CREAT | os.O_WRONLY, 0o644))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, names))
    listed = os.listdir(d)
    assert len(listed) == len(names) and set(listed) == names
    with os.scandir(d) as it:
        entries = list(it)
    assert sorted(e.name for e in entries) == sorted(names)
    assert {e.name for e in entries if e.is_dir()} == {f"sub-{i}" for i in range(10)}
    assert os.stat(d).st_nlink == 12

    # Files created while a listing is under way: every name that existed
    # throughout is returned exactly once.
    seen = []
    with os.scandir(d) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 100:
                for k in range(50):
                    (d / f"during-{k}").write_bytes(b"")
    old = [n for n in seen if not n.startswith("during-")]
    assert len(old) == len(set(old)) and set(old) == names
    assert len(seen) == len(set(seen))
    assert len(os.listdir(d)) == len(names) + 50
    shutil.rmtree(d)  # unlinks while it lists
    assert os.listdir(mounted.path) == []


def test_statfs(mounted):
    st = os.statvfs(mounted.path)
    assert st.f_namemax == 255
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert st.f_blocks > 0 and 0 < st.f_bavail <= st.f_blocks
    assert st.f_files > 0
    assert shutil.disk_usage(mounted.path).free > 1 << 30


# -- xattrs --------------------------------------------------------------------------------


def test_xattrs(mounted, request):
    p = mounted.path
    f = p / "f"
    f.write_bytes(b"content")
    (p / "d").mkdir()
    assert os.listxattr(f) == []
    with raises_errno(errno.ENODATA):
        os.getxattr(f, "user.missing")
    with raises_errno(errno.ENODATA):
        os.removexattr(f, "user.missing")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.a", b"2")
    assert os.getxattr(f, "user.a") == b"2"
    assert os.getxattr(f, "user.empty") == b""
    assert sorted(os.listxattr(f)) == ["user.a", "user.empty"]
    with raises_errno(errno.EEXIST):
        os.setxattr(f, "user.a", b"3", os.XATTR_CREATE)
    with raises_errno(errno.ENODATA):
        os.setxattr(f, "user.new", b"3", os.XATTR_REPLACE)
    os.removexattr(f, "user.empty")
    assert os.listxattr(f) == ["user.a"]

    before = overflow_keys(store_keys(mounted, request))
    small, large = os.urandom(4096), os.urandom(65536)  # 64 KiB: XATTR_SIZE_MAX
    os.setxattr(f, "user.small", small)
    os.setxattr(f, "user.large", large)
    os.setxattr(p / "d", "user.large", large)
    with raises_errno(errno.E2BIG):
        os.setxattr(f, "user.huge", bytes(65537))
    # Over S3's 2 KB of user metadata: one overflow object per entry.
    assert len(overflow_keys(store_keys(mounted, request)) - before) == 2
    assert f.read_bytes() == b"content"
    mounted.remount()
    assert os.getxattr(f, "user.small") == small
    assert os.getxattr(f, "user.large") == large
    assert os.getxattr(p / "d", "user.large") == large
    assert sorted(os.listxattr(f)) == ["user.a", "user.large", "user.small"]
    with open(f, "ab") as fh:  # a content upload keeps them
        fh.write(b"+")
    os.rename(f, p / "g")  # and so does a rename
    mounted.remount()
    g = p / "g"
    assert g.read_bytes() == b"content+"
    assert os.getxattr(g, "user.large") == large
    assert os.getxattr(g, "user.small") == small
    os.removexattr(p / "d", "user.large")
    os.removexattr(g, "user.large")
    assert len(overflow_keys(store_keys(mounted, request)) - before) == 1  # 4 KiB still overflow
    mounted.remount()
    assert sorted(os.listxattr(g)) == ["user.a", "user.small"]
    assert os.getxattr(g, "user.small") == small
    os.removexattr(g, "user.small")
    assert overflow_keys(store_keys(mounted, request)) == before  # nothing left behind
    assert os.listxattr(g) == ["user.a"]


# -- several mounts, durability --------------------------------------------------------------


def test_close_to_open_between_mounts(make_mount):
    a = make_mount()
    b = make_mount(spec=a.spec)
    (a.path / "f").write_bytes(b"v1")
    assert (b.path / "f").read_bytes() == b"v1"
    assert os.stat(b.path / "f").st_size == 2  # (now the kernel caches B's attributes)
    (a.path / "f").write_bytes(b"version 2, longer than the first")
    assert (b.path / "f").read_bytes() == b"version 2, longer than the first"
    (a.path / "f").write_bytes(b"v3")
    assert (b.path / "f").read_bytes() == b"v3"
    assert os.stat(b.path / "f").st_size == 2
    os.unlink(a.path / "f")  # another file under the same name
    (a.path / "f").write_bytes(b"a new file by that name")
    assert (b.path / "f").read_bytes() == b"a new file by that name"
    with open(b.path / "f", "ab") as f:
        f.write(b", appended by B")
    assert (a.path / "f").read_bytes() == b"a new file by that name, appended by B"
    (b.path / "d").mkdir()
    (b.path / "d" / "from-b").write_bytes(b"hello from b")
    assert (a.path / "d" / "from-b").read_bytes() == b"hello from b"
    os.rename(b.path / "d" / "from-b", b.path / "moved")
    assert (a.path / "moved").read_bytes() == b"hello from b"
    assert sorted(os.listdir(a.path)) == ["d", "f", "moved"]


def test_directory_removed_by_another_mount_stays_removed(make_mount):
    a = make_mount()
    b = make_mount(spec=a.spec)
    (a.path / "d").mkdir()
    (a.path / "d" / "f").write_bytes(b"x")  # A now has the directory's new times to write
    os.unlink(b.path / "d" / "f")
    os.rmdir(b.path / "d")
    a.unmount()  # writes what is pending
    assert os.listdir(b.path) == []
    a.mount()
    assert os.listdir(a.path) == []


def test_local_store_is_synced_to_disk_by_fsync_not_by_close(make_mount, store_kind):
    """On a file:// store, close() puts each object in place whole (it
    survives a crash of the daemon), and so do chmod and utime, and fsync()
    makes everything durable with one syncfs of the store, as on a local
    filesystem: watched with strace on the daemon."""
    if store_kind != "local":
        pytest.skip("S3 acknowledges durable writes; there is nothing to sync")
    m = make_mount()
    [pid] = daemon_pids(m.path)
    out = m.cache_dir.parent / f"strace-{pid}.txt"
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,syncfs", "-o", str(out), "-p", str(pid)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30  # strace is attached once the daemon's threads stop for it
        while "TracerPid:\t0" in Path(f"/proc/{pid}/status").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(20):
            (m.path / f"f{i}").write_bytes(os.urandom(5000))
            os.chmod(m.path / f"f{i}", 0o600)
            os.utime(m.path / f"f{i}", (1_700_000_000, 1_700_000_000 + i))
        # (a window, not a wait: the kernel sends the releases after close()
        # returns, and what they must not do, sync, has nothing to wait for)
        time.sleep(0.5)
        closes_only = out.read_text()
        with open(m.path / "f0", "r+b") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
        wait_for(lambda: "syncfs(" in out.read_text(), "strace to log the syncfs of the fsync", 30)
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
    assert "fsync(" not in closes_only and "syncfs(" not in closes_only, closes_only
    assert out.read_text().count("syncfs(") == 1, out.read_text()


def test_truncate_by_path_reaches_the_store_while_the_file_is_open(mounted):
    """truncate(path) is done when it returns, even with a descriptor open.
    (The case that lost a truncate, a close whose release had not reached
    the daemon yet, depends on timing: tests/reliability/test_crash.py
    found it.)"""
    fd = os.open(mounted.path / "t", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 300_000)
        os.truncate(mounted.path / "t", 1000)
        out = sealfs("cat", mounted.url, "/t", *mounted.store_args()).stdout
        assert out == b"x" * 1000
    finally:
        os.close(fd)
    (mounted.path / "u").write_bytes(b"y" * 200_000)
    os.truncate(mounted.path / "u", 10)  # right after close
    assert sealfs("cat", mounted.url, "/u", *mounted.store_args()).stdout == b"y" * 10


def test_fsync_reaches_the_store(mounted):
    data = os.urandom(300_000)
    fd = os.open(mounted.path / "synced", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        # the file is still open: only fsync can have put it in the store
        out = sealfs("cat", mounted.url, "/synced", *mounted.store_args()).stdout
        assert out == data
        os.write(fd, b"more")
        os.fdatasync(fd)
        assert sealfs("cat", mounted.url, "/synced", *mounted.store_args()).stdout == data + b"more"
    finally:
        os.close(fd)
    (mounted.path / "d").mkdir()
    (mounted.path / "d" / "f").write_bytes(b"")
    dfd = os.open(mounted.path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # a directory's fsync works too
    finally:
        os.close(dfd)
    assert sealfs("ls", mounted.url, "/d", *mounted.store_args()).stdout.split() == [b"f"]
