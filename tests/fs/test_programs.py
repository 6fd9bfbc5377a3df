"""Unmodified programs on a mounted volume: git, sqlite, tar, rsync, cp,
venv, scripts, and the file operations they rely on (O_APPEND, mmap,
sparse files, truncate, flock, large files).

Each test runs on both stores (``mounted`` is parametrized by store kind)
and, where it matters, checks the result again after a remount: what a
program wrote must be in the store, not only in the daemon's memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import need  # tests/fs/conftest.py

T0 = 1_600_000_000_000_000_000  # a fixed mtime in the past (ns)


def run(*argv, cwd=None, env=None, input: bytes | None = None, timeout: float = 120) -> str:
    """Run a program; fail the test with its output if it fails."""
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, input=input, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout.decode(errors='replace')}"
        f"\n{proc.stderr.decode(errors='replace')}"
    )
    return proc.stdout.decode(errors="replace")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path) -> dict[bytes, tuple]:
    """What a copy must preserve, per relative path (bytes): type, mode
    bits (not for symlinks), mtime (ns), and content hash or link target."""
    out: dict[bytes, tuple] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, broot)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, sha256(Path(os.fsdecode(full))))
    return out


def build_tree(root: Path) -> None:
    """A tree with nested directories, assorted modes, symlinks, an empty
    file, a file of several blocks and fixed mtimes (set last, bottom up)."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    files = {
        "top.txt": (b"top\n", 0o644),
        "a/script.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "a/secret": (b"s" * 1000, 0o600),
        "a/b/big.bin": (hashlib.shake_128(b"big").digest(300_000), 0o640),
        "a/b/c/empty": (b"", 0o444),
        "a/b/c/deep.txt": (b"deep\n" * 100, 0o664),
    }
    for rel, (data, mode) in files.items():
        (root / rel).write_bytes(data)
        os.chmod(root / rel, mode)
    os.symlink("b/big.bin", root / "a" / "rel-link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.chmod(root / "a" / "b", 0o750)
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(p, ns=(T0 + i * 1_000_000_007, T0 + i * 1_000_000_007), follow_symlinks=False)


def git_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test Author",
        GIT_AUTHOR_EMAIL="author@example.com",
        GIT_COMMITTER_NAME="Test Committer",
        GIT_COMMITTER_EMAIL="committer@example.com",
        GIT_AUTHOR_DATE="2020-01-01T00:00:00Z",
        GIT_COMMITTER_DATE="2020-01-01T00:00:00Z",
        LC_ALL="C",
    )
    return env


# -- git ---------------------------------------------------------------------------------


def test_git_init_commit_clone(mounted, tmp_path):
    git = need("git")
    home = tmp_path / "home"
    home.mkdir()
    env = git_env(home)
    repo = mounted.path / "repo"
    run(git, "init", "-q", "-b", "main", repo, env=env)
    (repo / "README").write_text("hello\n")
    (repo / "src").mkdir()
    for i in range(20):
        (repo / "src" / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    run(git, "add", "-A", cwd=repo, env=env)
    run(git, "commit", "-q", "-m", "first", cwd=repo, env=env)
    (repo / "README").write_text("hello again\n")
    (repo / "src" / "f0.txt").unlink()
    run(git, "commit", "-q", "-a", "-m", "second", cwd=repo, env=env)
    log = run(git, "log", "--format=%s", cwd=repo, env=env)
    assert log.split() == ["second", "first"]
    assert run(git, "status", "--porcelain", cwd=repo, env=env) == ""
    run(git, "fsck", "--strict", cwd=repo, env=env)

    clone = mounted.path / "clone"
    run(git, "clone", "-q", repo, clone, env=env)
    assert run(git, "log", "--format=%s", cwd=clone, env=env).split() == ["second", "first"]
    assert (clone / "README").read_text() == "hello again\n"
    assert not (clone / "src" / "f0.txt").exists()
    assert (clone / "src" / "f7.txt").read_text() == "file 7\n" * 8

    mounted.remount()
    run(git, "fsck", "--strict", cwd=repo, env=env)
    assert run(git, "status", "--porcelain", cwd=clone, env=env) == ""
    assert run(git, "rev-parse", "HEAD", cwd=repo, env=env) == run(git, "rev-parse", "HEAD", cwd=clone, env=env)


# -- sqlite ------------------------------------------------------------------------------


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite(mounted, journal):
    db = mounted.path / "db" / "test.sqlite"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    try:
        assert con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        for batch in range(10):
            with con:
                con.executemany(
                    "INSERT INTO t (name, blob) VALUES (?, ?)",
                    [(f"row {batch}-{i}", os.urandom(200)) for i in range(300)],
                )
        with con:
            con.execute("DELETE FROM t WHERE id % 7 = 0")
            con.execute("UPDATE t SET name = name || ' updated' WHERE id % 5 = 0")
        with pytest.raises(sqlite3.IntegrityError), con:  # a rolled-back transaction
            con.execute("INSERT INTO t (name) VALUES ('doomed')")
            con.execute("INSERT INTO t (id) VALUES (1)")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = con.execute("SELECT count(*) FROM t").fetchone()[0]
        updated = con.execute("SELECT count(*) FROM t WHERE name LIKE '% updated'").fetchone()[0]
    finally:
        con.close()
    assert count == 3000 - 3000 // 7
    mounted.remount()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == count
        assert con.execute("SELECT count(*) FROM t WHERE name LIKE '% updated'").fetchone()[0] == updated
        assert con.execute("SELECT count(*) FROM t WHERE name = 'doomed'").fetchone()[0] == 0
        with con:
            con.execute("INSERT INTO t (name) VALUES ('after remount')")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


def test_sqlite3_cli(mounted):
    cli = need("sqlite3")
    db = mounted.path / "cli.db"
    script = "PRAGMA journal_mode=wal;\nCREATE TABLE t(x);\nBEGIN;\n"
    script += "".join(f"INSERT INTO t VALUES ({i});\n" for i in range(2000))
    script += "COMMIT;\nSELECT count(*), sum(x) FROM t;\nPRAGMA integrity_check;\n"
    out = run(cli, db, input=script.encode()).split()
    assert out == ["wal", "2000|1999000", "ok"]
    mounted.remount()
    assert run(cli, db, input=b"SELECT count(*) FROM t; PRAGMA integrity_check;").split() == ["2000", "ok"]


# -- copying trees in and out -----------------------------------------------------------


def test_tar_round_trip(mounted, tmp_path):
    tar = need("tar")
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    want = snapshot(src)
    archive = tmp_path / "in.tar"
    run(tar, "--format=posix", "-cf", archive, "-C", src, ".")
    dest = mounted.path / "extracted"
    dest.mkdir()
    run(tar, "-xpf", archive, "-C", dest)
    assert snapshot(dest) == want
    mounted.remount()
    assert snapshot(dest) == want
    out_archive = tmp_path / "out.tar"
    run(tar, "--format=posix", "-cf", out_archive, "-C", dest, ".")
    back = tmp_path / "back"
    back.mkdir()
    run(tar, "-xpf", out_archive, "-C", back)
    assert snapshot(back) == want

    def listing(archive: Path) -> list[tuple[str, str]]:
        """(mode string, name) of each member, as tar -tv shows them."""
        return sorted((f[0], f[-1]) for f in (line.split(None, 5) for line in run(tar, "-tvf", archive).splitlines()))

    assert listing(out_archive) == listing(archive)


@pytest.mark.parametrize("tool", ["rsync", "cp"])
def test_copy_tree_preserves(mounted, tmp_path, tool):
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    want = snapshot(src)
    dest = mounted.path / "copy"
    if tool == "rsync":
        run(need("rsync"), "-a", f"{src}/", f"{dest}/")
    else:
        run(need("cp"), "-a", src, dest)
    assert snapshot(dest) == want
    # a second rsync finds nothing to do (sizes and mtimes match)
    if tool == "rsync":
        out = run(need("rsync"), "-a", "--itemize-changes", f"{src}/", f"{dest}/")
        assert out == "", out
    mounted.remount()
    assert snapshot(dest) == want
    back = tmp_path / "back"
    run(need("cp"), "-a", dest, back)
    assert snapshot(back) == want


# -- running programs from the mount ------------------------------------------------------


def test_venv_inside_mount(mounted):
    venv = mounted.path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, timeout=300)
    py = venv / "bin" / "python"
    assert run(py, "-c", "print(42)").strip() == "42"
    assert run(py, "-c", "import sys; print(sys.prefix)").strip() == str(venv)
    mounted.remount()
    assert run(py, "-c", "print(42)").strip() == "42"


def test_script_chmod_exec(mounted):
    script = mounted.path / "hello.sh"
    script.write_text('#!/bin/sh\necho "hello $1"\n')
    with pytest.raises(PermissionError):
        subprocess.run([script, "x"], capture_output=True)
    os.chmod(script, 0o755)
    assert run(script, "world") == "hello world\n"
    script.write_text("#!/bin/sh\necho changed\n")  # rewritten: the new content runs
    assert run(script) == "changed\n"
    mounted.remount()
    assert run(script) == "changed\n"


# -- file operations programs rely on -------------------------------------------------------


APPENDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(int(sys.argv[3])):
    line = f"{sys.argv[2]} {i:05d} ".encode() + b"x" * (i % 97) + b"\\n"
    assert os.write(fd, line) == len(line)
os.close(fd)
"""


def test_concurrent_o_append(mounted):
    path = mounted.path / "log.txt"
    path.write_bytes(b"header\n")
    n = 1500
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), w, str(n)]) for w in ("A", "B")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]

    def check() -> None:
        lines = path.read_bytes().split(b"\n")
        assert lines[0] == b"header" and lines[-1] == b""
        for w in (b"A", b"B"):
            mine = [ln for ln in lines[1:-1] if ln.startswith(w + b" ")]
            assert mine == [f"{w.decode()} {i:05d} ".encode() + b"x" * (i % 97) for i in range(n)]
        assert len(lines) == 2 * n + 2

    check()
    mounted.remount()
    check()


def test_mmap_write_read(mounted):
    path = mounted.path / "mapped.bin"
    size = 300_000
    path.write_bytes(bytes(size))
    pattern = hashlib.shake_128(b"mmap").digest(size)
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), size) as m:
            m[:] = pattern
            m[100:105] = b"HELLO"
            m.flush()
    want = pattern[:100] + b"HELLO" + pattern[105:]
    assert path.read_bytes() == want
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == want
    mounted.remount()
    assert path.read_bytes() == want
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        assert m[:] == want
        m[-3:] = b"end"
    assert path.read_bytes() == want[:-3] + b"end"


def test_sparse_file(mounted):
    path = mounted.path / "sparse"
    hole = 10 * 1024 * 1024 + 12345
    with open(path, "wb") as f:
        f.write(b"start")
        f.seek(hole)
        f.write(b"end")
    assert path.stat().st_size == hole + 3

    def check() -> None:
        with open(path, "rb") as f:
            assert f.read(5) == b"start"
            left = hole - 5
            while left:
                chunk = f.read(min(left, 1 << 20))
                assert chunk.count(0) == len(chunk)
                left -= len(chunk)
            assert f.read() == b"end"

    check()
    mounted.remount()
    assert path.stat().st_size == hole + 3
    check()


def test_truncate_up_and_down(mounted):
    path = mounted.path / "t"
    data = hashlib.shake_128(b"trunc").digest(200_000)  # several 64 KiB blocks
    path.write_bytes(data)
    os.truncate(path, 100_000)
    assert path.read_bytes() == data[:100_000]
    os.truncate(path, 150_000)
    assert path.read_bytes() == data[:100_000] + bytes(50_000)
    with open(path, "r+b") as f:
        os.ftruncate(f.fileno(), 70_000)
        f.seek(0)
        assert f.read() == data[:70_000]
        os.ftruncate(f.fileno(), 140_000)
        f.seek(130_000)
        f.write(b"tail")
        os.ftruncate(f.fileno(), 131_000)
        f.seek(0)
        want = data[:70_000] + bytes(60_000) + b"tail" + bytes(996)
        assert f.read() == want
    assert path.read_bytes() == want
    os.truncate(path, 0)
    assert path.read_bytes() == b""
    os.truncate(path, 65_536)
    want = bytes(65_536)
    assert path.read_bytes() == want
    mounted.remount()
    assert path.stat().st_size == 65_536
    assert path.read_bytes() == want


FLOCKER = """
import fcntl, sys
with open(sys.argv[1], "rb") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("busy", flush=True)
    else:
        print("locked", flush=True)
    if sys.argv[2] == "wait":
        fcntl.flock(f, fcntl.LOCK_EX)
        print("got it", flush=True)
"""


def test_flock_between_processes(mounted):
    path = mounted.path / "lockfile"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert run(sys.executable, "-c", FLOCKER, path, "nb").strip() == "busy"
        waiter = subprocess.Popen([sys.executable, "-c", FLOCKER, path, "wait"], stdout=subprocess.PIPE)
        assert waiter.stdout.readline() == b"busy\n"
        time.sleep(0.3)  # a window, not a wait: the blocked flock must not return within it
        assert waiter.poll() is None, "the blocking flock returned while the lock was held"
        fcntl.flock(f, fcntl.LOCK_UN)
        out, _ = waiter.communicate(timeout=30)
        assert out == b"got it\n"
    assert run(sys.executable, "-c", FLOCKER, path, "nb").strip() == "locked"


LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
except OSError:
    print("busy", flush=True)
else:
    print("locked", flush=True)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 10)  # a range nobody holds
print("other range", flush=True)
"""


def test_fcntl_record_locks(mounted):
    path = mounted.path / "records"
    path.write_bytes(bytes(100))
    with open(path, "r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX, 10, 0)
        assert run(sys.executable, "-c", LOCKER, path).split() == ["busy", "other", "range"]
        fcntl.lockf(f, fcntl.LOCK_UN, 10, 0)
        assert run(sys.executable, "-c", LOCKER, path).split() == ["locked", "other", "range"]


SQLITE_WRITER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=60)
for i in range(int(sys.argv[3])):
    with con:
        con.execute("INSERT INTO t VALUES (?, ?)", (sys.argv[2], i))
con.close()
"""


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_two_processes(mounted, journal):
    """Two processes write one database at once: sqlite's locks (fcntl)
    and, in WAL mode, its shared-memory file (mmap) work across processes."""
    db = mounted.path / "shared.db"
    con = sqlite3.connect(db)
    assert con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
    con.execute("CREATE TABLE t (who TEXT, n INTEGER)")
    con.commit()
    n = 100
    procs = [subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, db, w, str(n)]) for w in ("A", "B")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert con.execute("SELECT who, count(*), sum(n) FROM t GROUP BY who ORDER BY who").fetchall() == [
        ("A", n, n * (n - 1) // 2),
        ("B", n, n * (n - 1) // 2),
    ]
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    mounted.remount()
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 2 * n
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


GIB = 1 << 30
MIB = 1 << 20


def _pattern_chunk(base: bytes, index: int) -> bytes:
    """1 MiB chunk ``index`` of a deterministic pattern: pseudo-random bytes
    with each 4 KiB stamped with its own offset, so no two 4 KiB pieces of
    the file are equal (a misplaced block changes the hash)."""
    chunk = bytearray(base)
    for k in range(0, MIB, 4096):
        chunk[k : k + 8] = (index * MIB + k).to_bytes(8, "big")
    return bytes(chunk)


@pytest.mark.slow
def test_one_gib_file(mounted):
    path = mounted.path / "big.bin"
    base = hashlib.shake_128(b"sealfs 1 GiB").digest(MIB)
    want = hashlib.sha256()
    t0 = time.monotonic()
    with open(path, "wb") as f:
        for i in range(GIB // MIB):
            chunk = _pattern_chunk(base, i)
            want.update(chunk)
            f.write(chunk)
    t_write = time.monotonic() - t0
    mounted.unmount()
    t_unmount = time.monotonic() - t0 - t_write
    mounted.check_log()
    mounted.mount()
    t1 = time.monotonic()
    assert path.stat().st_size == GIB
    assert sha256(path) == want.hexdigest()
    t_read = time.monotonic() - t1
    print(f"1 GiB: write+close {t_write:.1f} s, unmount {t_unmount:.1f} s, read back {t_read:.1f} s")


# -- everything survives a remount ------------------------------------------------------------


def test_everything_survives_remount(mounted):
    p = os.fsencode(mounted.path)
    names = [
        b"plain.txt",
        b"caf\xc3\xa9 \xe2\x98\x83.txt",  # UTF-8
        b"latin1-\xe9\xff\x80",  # not UTF-8
        b"x" * 255,  # NAME_MAX
        b"\xfe" * 255,  # NAME_MAX, not UTF-8
        b" spaces and\nnewline\t",
        b"-dash",
    ]
    d = os.path.join(p, b"\xff-dir")
    os.mkdir(d, 0o711)
    want: dict[bytes, bytes] = {}
    for i, name in enumerate(names):
        for parent in (p, d):
            path = os.path.join(parent, name)
            data = hashlib.shake_128(name).digest(i * 50_000)
            with open(path, "wb") as f:
                f.write(data)
            want[path] = data
            os.chmod(path, 0o600 + i)
            os.setxattr(path, b"user.n\xc3\xa4me", name)
            os.utime(path, ns=(T0 + i, T0 + i * 1_000_003))
    os.symlink(b"\xff-dir/latin1-\xe9\xff\x80", os.path.join(p, b"link-\xfe"))
    os.symlink(b"x" * 4095, os.path.join(d, b"long-target"))
    os.setxattr(d, b"user.dir", b"d" * 1000)
    os.setxattr(d, b"user.\xff\xfe", b"not UTF-8 in the name")
    os.symlink(b"x" * 255, os.path.join(d, b"\xfd" * 255))  # a long name, renamed below
    os.rename(os.path.join(d, b"\xfd" * 255), os.path.join(d, b"long-link-" + b"\xfc" * 245))
    os.utime(d, ns=(T0, T0 + 42))
    os.chmod(p, 0o751)  # the root directory's own metadata
    os.setxattr(p, b"user.root", b"r")
    os.utime(p, ns=(T0, T0 + 7))

    def check() -> None:
        assert sorted(os.listdir(p)) == sorted([*names, b"\xff-dir", b"link-\xfe"])
        assert sorted(os.listdir(d)) == sorted([*names, b"long-target", b"long-link-" + b"\xfc" * 245])
        assert os.readlink(os.path.join(d, b"long-link-" + b"\xfc" * 245)) == b"x" * 255
        assert os.getxattr(d, b"user.\xff\xfe") == b"not UTF-8 in the name"
        root = os.stat(p)
        assert (stat.S_IMODE(root.st_mode), root.st_mtime_ns) == (0o751, T0 + 7)
        assert os.getxattr(p, b"user.root") == b"r"
        for i, name in enumerate(names):
            for parent in (p, d):
                path = os.path.join(parent, name)
                with open(path, "rb") as f:
                    assert f.read() == want[path], name
                st = os.stat(path)
                assert stat.S_IMODE(st.st_mode) == 0o600 + i
                assert st.st_mtime_ns == T0 + i * 1_000_003
                assert os.getxattr(path, b"user.n\xc3\xa4me") == name
        assert os.readlink(os.path.join(p, b"link-\xfe")) == b"\xff-dir/latin1-\xe9\xff\x80"
        with open(os.path.join(p, b"link-\xfe"), "rb") as f:
            assert f.read() == want[os.path.join(d, b"latin1-\xe9\xff\x80")]
        assert os.readlink(os.path.join(d, b"long-target")) == b"x" * 4095
        assert os.getxattr(d, b"user.dir") == b"d" * 1000
        st = os.stat(d)
        assert stat.S_IMODE(st.st_mode) == 0o711
        assert st.st_mtime_ns == T0 + 42

    check()
    mounted.remount()
    check()
