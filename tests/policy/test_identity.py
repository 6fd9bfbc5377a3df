"""Caller identity from /proc, on real processes: a Python script, a copied
binary (deleted, replaced), a process under strace, one with LD_PRELOAD, a
thread, one that exits.  No FUSE mount is needed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sealfs.policy.hashing import HashCache
from sealfs.policy.identity import Identifier
from sealfs.policy.interpreters import interpreter_family, script_argument
from sealfs.policy.programs import ProgramReader

from .policyhelp import CLEAN_ENV

PYTHON = os.path.realpath(sys.executable)
SLEEP = shutil.which("sleep")
WAIT = 10.0


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _wait_exe(pid: int, exe: str) -> None:
    """Until process ``pid`` has exec'd ``exe`` and the exec is done: the
    kernel names the new executable before it has laid out the new
    program's arguments and environment (its environ reads empty then)."""
    deadline = time.monotonic() + WAIT
    while True:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe") == exe and Path(f"/proc/{pid}/environ").read_bytes():
                return
        assert time.monotonic() < deadline, f"process {pid} did not exec {exe}"
        time.sleep(0.01)


@contextlib.contextmanager
def running(argv, *, exe: str | None = None, ready: bool = False, env=None, cwd=None):
    """A process running ``argv`` until the block ends.  ``ready``: wait
    for it to print a line; else wait until it exec'd ``exe`` (realpath of
    argv[0] by default)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env or CLEAN_ENV, cwd=cwd)
    try:
        if ready:
            assert proc.stdout.readline(), "the process exited before it was ready"
        else:
            _wait_exe(proc.pid, exe or os.path.realpath(argv[0]))
        yield proc
    finally:
        proc.kill()
        proc.wait()


WAITER = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"


@pytest.fixture
def ident():
    """An Identifier without the exec-stable cache (each call reads /proc)."""
    return Identifier(stable_ttl=0)


def test_python_script(tmp_path, ident):
    script = tmp_path / "service.py"
    script.write_text(WAITER)
    with running([PYTHON, "-X", "dev", "-W", "ignore", "-B", str(script)], ready=True) as p:
        i = ident.identify(p.pid, os.getuid(), os.getgid())
    assert i.valid, i.problem
    assert i.exe == PYTHON and i.exe_sha256 == sha(PYTHON)
    assert i.script == str(script) and i.script_sha256 == sha(script)
    assert (i.uid, i.gid, i.tracer_pid, i.preload) == (os.getuid(), os.getgid(), 0, ())
    assert i.start_time and i.cgroup and i.cgroup.startswith("/")
    assert not (i.exe_deleted or i.exe_replaced)


def test_relative_script_resolves_against_the_process_cwd(tmp_path, ident):
    (tmp_path / "rel.py").write_text(WAITER)
    with running([PYTHON, "rel.py"], ready=True, cwd=tmp_path) as p:
        i = ident.identify(p.pid, os.getuid(), os.getgid())
    assert i.script == str(tmp_path / "rel.py") and i.script_sha256 == sha(tmp_path / "rel.py")


def test_no_script_for_inline_code(ident):
    with running([PYTHON, "-c", WAITER], ready=True) as p:
        assert ident.identify(p.pid, os.getuid(), os.getgid()).script is None


def test_a_fifo_named_as_script_is_not_opened(tmp_path, ident):
    """The daemon is root and the name comes from an untrusted command
    line: only a regular file is opened (a FIFO would block it)."""
    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)
    with running([PYTHON, str(fifo)]) as p:
        start = time.monotonic()
        i = ident.identify(p.pid, os.getuid(), os.getgid())
        assert time.monotonic() - start < 5
    assert i.valid and i.exe == PYTHON and i.script is None


def test_copied_binary_then_deleted_then_replaced(tmp_path, ident):
    copy = tmp_path / "svc"
    shutil.copy2(SLEEP, copy)
    with running([str(copy), "60"]) as p:
        i = ident.identify(p.pid, os.getuid(), os.getgid())
        assert i.exe == str(copy) and i.exe_sha256 == sha(copy) and not i.exe_deleted and not i.exe_replaced
        assert i.script is None  # not an interpreter
        original = sha(copy)
        copy.unlink()
        i = ident.identify(p.pid, os.getuid(), os.getgid())
        assert i.exe == str(copy) and i.exe_deleted and i.exe_replaced and i.exe_sha256 == original
        copy.write_bytes(b"#!/bin/sh\nexit 0\n")  # another file at the same path
        i = ident.identify(p.pid, os.getuid(), os.getgid())
        assert i.exe == str(copy) and i.exe_replaced and i.exe_deleted
        assert i.exe_sha256 == original, "the hash must be of the running binary, not of the path"


def test_hashes_are_cached_by_stat_and_recomputed_on_change(tmp_path):
    hashes = HashCache()
    ident = Identifier(stable_ttl=0, hashes=hashes)
    copy = tmp_path / "svc"
    shutil.copy2(SLEEP, copy)
    with running([str(copy), "60"]) as p:
        ident.identify(p.pid, os.getuid(), os.getgid())
        ident.identify(p.pid, os.getuid(), os.getgid())
    assert hashes.computed == 1
    data = copy.read_bytes()
    copy.unlink()
    copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a changed binary (new inode, other content)
    copy.chmod(0o755)
    with running([str(copy), "60"]) as p:
        i = ident.identify(p.pid, os.getuid(), os.getgid())
    assert hashes.computed == 2 and i.exe_sha256 == sha(copy)


def test_hash_cache_is_bounded(tmp_path):
    hashes = HashCache(entries=2)
    for n in range(5):
        f = tmp_path / f"f{n}"
        f.write_bytes(b"x" * n)
        fd = os.open(f, os.O_RDONLY)
        try:
            assert hashes.of_fd(fd) == sha(f)
        finally:
            os.close(fd)
    assert len(hashes) == 2 and hashes.computed == 5


def test_traced_process(ident):
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed (scripts/setup installs it)")
    tracer = subprocess.Popen([strace, "-f", "-qq", "-o", "/dev/null", SLEEP, "60"], env=CLEAN_ENV)
    try:
        deadline = time.monotonic() + WAIT
        child = None
        while child is None:
            assert time.monotonic() < deadline, "strace started no child"
            with contextlib.suppress(OSError, ValueError):
                kids = Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split()
                if kids and os.readlink(f"/proc/{kids[0]}/exe") == os.path.realpath(SLEEP):
                    child = int(kids[0])
            time.sleep(0.01)
        i = ident.identify(child, os.getuid(), os.getgid())
        assert i.valid and i.traced and i.tracer_pid == tracer.pid
    finally:
        tracer.kill()
        tracer.wait()
    with running([SLEEP, "60"]) as p:
        assert not ident.identify(p.pid, os.getuid(), os.getgid()).traced


def test_tracer_of_another_thread_counts(ident):
    """The calling thread is not traced, but another thread of its process
    is: the process is traced (a debugger on one thread owns them all).
    Checked on the identity of a thread of this very test process."""
    tid = threading.get_native_id()
    other = {}
    started, stop = threading.Event(), threading.Event()

    def worker():
        other["tid"] = threading.get_native_id()
        started.set()
        stop.wait(WAIT)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert started.wait(WAIT), "the thread did not start"
        i = ident.identify(other["tid"], os.getuid(), os.getgid())
        assert i.valid and i.exe == PYTHON and not i.traced
        assert ident.identify(tid, os.getuid(), os.getgid()).valid
    finally:
        stop.set()
        t.join()


def test_preload_and_interpreter_variables(tmp_path, ident):
    lib = tmp_path / "libnoop.so"
    (tmp_path / "noop.c").write_text("void noop(void) {}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "noop.c")], check=True)
    with running([SLEEP, "60"], env={**CLEAN_ENV, "LD_PRELOAD": str(lib)}) as p:
        assert ident.identify(p.pid, os.getuid(), os.getgid()).preload == ("LD_PRELOAD",)
    with running([SLEEP, "60"], env={**CLEAN_ENV, "LD_LIBRARY_PATH": str(tmp_path), "PYTHONPATH": "/x"}) as p:
        # PYTHONPATH means nothing to sleep; LD_LIBRARY_PATH does
        assert ident.identify(p.pid, os.getuid(), os.getgid()).preload == ("LD_LIBRARY_PATH",)
    with running([PYTHON, "-c", WAITER], ready=True, env={**CLEAN_ENV, "PYTHONPATH": "/x"}) as p:
        assert ident.identify(p.pid, os.getuid(), os.getgid()).preload == ("PYTHONPATH",)
    with running([SLEEP, "60"], env={**CLEAN_ENV, "LD_PRELOAD": ""}) as p:
        assert ident.identify(p.pid, os.getuid(), os.getgid()).preload == ()


def test_invalid_identities(ident):
    assert not ident.identify(0, 0, 0).valid
    with running([SLEEP, "60"]) as p:
        pid = p.pid
        wrong = ident.identify(pid, os.getuid() + 1, os.getgid())
        assert not wrong.valid and "not as the request said" in wrong.problem
    gone = ident.identify(pid, os.getuid(), os.getgid())
    assert not gone.valid and "exited" in gone.problem


def test_pid_reused_while_identifying(monkeypatch, ident):
    """The start time is read before and after; a change means the pid now
    belongs to another process."""
    real = ProgramReader._read_stat
    calls = []

    def flaky(self, base):
        st = real(self, base)
        calls.append(st)
        return st if len(calls) == 1 else type(st)(st.start_time + 1, st.vsize)

    monkeypatch.setattr(ProgramReader, "_read_stat", flaky)
    i = ident.identify(os.getpid(), os.getuid(), os.getgid())
    assert not i.valid and "reused" in i.problem


def test_exec_stable_part_is_cached_but_credentials_are_not():
    """Warm calls reuse exe/script/environ; a changed fsuid is seen at once."""
    ident = Identifier(stable_ttl=3600)
    with running([SLEEP, "60"]) as p:
        first = ident.identify(p.pid, os.getuid(), os.getgid())
        assert ident.identify(p.pid, os.getuid(), os.getgid()).exe == first.exe
        assert not ident.identify(p.pid, os.getuid() + 1, os.getgid()).valid


@pytest.mark.parametrize(
    "exe, family",
    [
        ("/usr/bin/python3.11", "python"),
        ("/usr/bin/python3", "python"),
        ("/usr/bin/pypy3", "python"),
        ("/usr/bin/node", "node"),
        ("/bin/bash", "sh"),
        ("/bin/dash", "sh"),
        ("/usr/bin/perl5.36.0", "perl"),
        ("/usr/bin/ruby3.1", "ruby"),
        ("/usr/bin/sleep", None),
        ("/usr/bin/shred", None),
        (None, None),
    ],
)
def test_interpreter_family(exe, family):
    assert interpreter_family(exe) == family


@pytest.mark.parametrize(
    "family, argv, script",
    [
        ("python", ["python3", "app.py", "-x"], "app.py"),
        ("python", ["python3", "-u", "-W", "error", "-X", "dev", "app.py"], "app.py"),
        ("python", ["python3", "-Wignore", "app.py"], "app.py"),
        ("python", ["python3", "-c", "print(1)", "app.py"], None),
        ("python", ["python3", "-Bc", "print(1)"], None),
        ("python", ["python3", "-m", "http.server"], None),
        ("python", ["python3", "--", "-odd.py"], "-odd.py"),
        ("python", ["python3", "-"], None),
        ("python", ["python3"], None),
        ("sh", ["bash", "-e", "-o", "pipefail", "run.sh", "arg"], "run.sh"),
        ("sh", ["bash", "+o", "errexit", "run.sh"], "run.sh"),
        ("sh", ["sh", "-c", "echo hi"], None),
        ("sh", ["sh", "-xc", "echo hi"], None),
        ("node", ["node", "--require", "./hook.js", "server.js"], "server.js"),
        ("node", ["node", "--max-old-space-size=512", "server.js"], "server.js"),
        ("node", ["node", "-e", "1"], None),
        ("perl", ["perl", "-w", "tool.pl"], "tool.pl"),
        ("php", ["php", "-f", "index.php"], "index.php"),
    ],
)
def test_script_argument(family, argv, script):
    cmdline = b"\0".join(a.encode() for a in argv) + b"\0"
    got = script_argument(family, cmdline)
    assert (got.decode() if got is not None else None) == script


def test_held_descriptors_are_bounded_and_closed(monkeypatch):
    """stat/status/maps stay open for the last few callers only; evicted ones
    and close() release their descriptors."""
    from sealfs.policy import handles

    monkeypatch.setattr(handles, "HANDLE_CACHE_ENTRIES", 2)
    ident = Identifier()
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(running([SLEEP, "60"])) for _ in range(4)]
        fds_before = len(os.listdir("/proc/self/fd"))
        for p in procs:
            assert ident.identify(p.pid, os.getuid(), os.getgid()).valid
        for p in procs:  # again, evicting each other: still right
            assert ident.identify(p.pid, os.getuid(), os.getgid()).exe == os.path.realpath(SLEEP)
        assert len(ident._handles) == 2
        assert len(os.listdir("/proc/self/fd")) == fds_before + 2 * 3, "two processes, stat + status + maps each"
        ident.close()
        assert not ident._handles
        assert len(os.listdir("/proc/self/fd")) == fds_before


def test_eviction_while_other_threads_identify_never_fails_them(monkeypatch):
    """Handles evicted by one request while another still reads them stay
    open until it is done: every identity is valid, none is taken for an
    exec, and no descriptor is left behind."""
    from sealfs.policy import handles

    monkeypatch.setattr(handles, "HANDLE_CACHE_ENTRIES", 2)
    ident = Identifier(stable_ttl=0)
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(running([SLEEP, "60"])) for _ in range(5)]
        fds_before = len(os.listdir("/proc/self/fd"))
        bad = []

        def work(k: int) -> None:
            for n in range(40):
                i = ident.identify(procs[(k + n) % len(procs)].pid, os.getuid(), os.getgid())
                if not i.valid or i.exe != os.path.realpath(SLEEP):
                    bad.append(i.describe())

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad, bad[:3]
        ident.close()
        assert len(os.listdir("/proc/self/fd")) == fds_before
