"""The workload's own memory, attacked by real processes (issue 13, items 2, 3).

A same-uid attacker does not need to pass the policy itself: it changes
the code or data of an allowed process, or reads plaintext out of it.
``victim`` is an allowed program: at each line on stdin it opens the file
named by its global ``path`` and reads it into its global ``buf``, and it
never prints what it read.  (It prints the two addresses at start: a real
attacker reads them from /proc/PID/maps and the ELF symbols; printing them
only saves the test that work.)  ``attack`` is the attacker, in C, with
three ways in: ``mem`` (/proc/PID/mem pread/pwrite, no ptrace attach, so
TracerPid stays 0), ``vm`` (process_vm_readv/writev) and ``ptrace``
(PTRACE_ATTACH, PEEKDATA/POKEDATA, PTRACE_DETACH), and ``seize`` (a tracer
that stays attached until told).

This kernel has no Yama (the tests check it and say so): the attacks work
on a dumpable victim, whatever untraced/no_preload/exe_sha256 say, and
fail on one that is not dumpable (a setgid program, or one that called
prctl(PR_SET_DUMPABLE, 0)), which ``nondumpable = true`` requires.
"""

from __future__ import annotations

import errno
import grp
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sealfs.policy import host

from .policyhelp import CLEAN_ENV, sealfs, sha256_of, wait_exec

LOCAL = pytest.mark.parametrize("store_kind", ["local"])

SECRET = "card 4111-1111-1111-1111\n"
PUBLIC = "opening hours 9-17\n"
GROUP = "sealfs-protected"

VICTIM_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

char path[4096];   /* the file it reads at each request */
char buf[4096];    /* what it read last: never printed */

int main(int argc, char **argv) {
    char line[64];
    int hold = argc > 3 && !strcmp(argv[3], "hold");   /* keep the file open after reading it */
    if (argc > 2 && !strcmp(argv[2], "prctl") && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return 99;
    strncpy(path, argv[1], sizeof path - 1);
    printf("%p %p\n", (void *)path, (void *)buf);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            printf("errno %d\n", errno);
        } else {
            ssize_t n;
            memset(buf, 0, sizeof buf);
            n = read(fd, buf, sizeof buf - 1);
            if (hold) printf("fd %d ", fd); else close(fd);
            printf("read %zd\n", n);
        }
        fflush(stdout);
    }
    return 0;
}
"""

ATTACK_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* attack METHOD PID write ADDR TEXT | attack METHOD PID read ADDR LEN | attack seize PID
   | attack getfd PID FD (take a descriptor of the process with pidfd_getfd and read the file through it)
   | attack spawn EXE ARG... (run EXE as a traced child, PTRACE_TRACEME, and let go of it at its exec)
   Exit status: 0, or the errno of the call that failed. */

static int fail(const char *what) {
    int e = errno ? errno : 100;
    fprintf(stderr, "attack: %s: %s\n", what, strerror(e));
    return e;
}

static int with_mem(pid_t pid, int writing, unsigned long addr, char *data, size_t len) {
    char name[64];
    snprintf(name, sizeof name, "/proc/%d/mem", (int)pid);
    int fd = open(name, writing ? O_RDWR : O_RDONLY);
    if (fd < 0) return fail("open /proc/PID/mem");
    ssize_t n = writing ? pwrite(fd, data, len, (off_t)addr) : pread(fd, data, len, (off_t)addr);
    if (n != (ssize_t)len) return fail(writing ? "pwrite" : "pread");
    close(fd);
    return 0;
}

static int with_vm(pid_t pid, int writing, unsigned long addr, char *data, size_t len) {
    struct iovec local = {data, len}, remote = {(void *)addr, len};
    ssize_t n = writing ? process_vm_writev(pid, &local, 1, &remote, 1, 0)
                        : process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n != (ssize_t)len) return fail(writing ? "process_vm_writev" : "process_vm_readv");
    return 0;
}

static int with_ptrace(pid_t pid, int writing, unsigned long addr, char *data, size_t len) {
    int status;
    if (ptrace(PTRACE_ATTACH, pid, 0, 0) != 0) return fail("PTRACE_ATTACH");
    if (waitpid(pid, &status, __WALL) < 0) return fail("waitpid");
    for (size_t off = 0; off < len; off += sizeof(long)) {
        errno = 0;
        long word = ptrace(PTRACE_PEEKDATA, pid, (void *)(addr + off), 0);
        if (errno) return fail("PTRACE_PEEKDATA");
        size_t n = len - off < sizeof(long) ? len - off : sizeof(long);
        if (writing) {
            memcpy(&word, data + off, n);
            if (ptrace(PTRACE_POKEDATA, pid, (void *)(addr + off), (void *)word) != 0) return fail("PTRACE_POKEDATA");
        } else {
            memcpy(data + off, &word, n);
        }
    }
    if (ptrace(PTRACE_DETACH, pid, 0, 0) != 0) return fail("PTRACE_DETACH");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "seize")) {
        pid_t pid = (pid_t)atoi(argv[2]);
        char line[8];
        if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) return fail("PTRACE_SEIZE");
        printf("seized\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) return 0;  /* exiting detaches */
        return 0;
    }
    if (argc > 2 && !strcmp(argv[1], "spawn")) {
        int status;
        pid_t child = fork();
        if (child < 0) return fail("fork");
        if (child == 0) {
            if (ptrace(PTRACE_TRACEME, 0, 0, 0) != 0) _exit(fail("PTRACE_TRACEME"));
            execv(argv[2], &argv[2]);
            _exit(fail("execv"));
        }
        if (waitpid(child, &status, 0) < 0 || !WIFSTOPPED(status)) return fail("waitpid (exec stop)");
        if (ptrace(PTRACE_DETACH, child, 0, 0) != 0) return fail("PTRACE_DETACH");
        waitpid(child, &status, 0);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "getfd")) {
        char data[4096] = {0};
        int pidfd = (int)syscall(SYS_pidfd_open, atoi(argv[2]), 0);
        if (pidfd < 0) return fail("pidfd_open");
        int fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(argv[3]), 0);
        if (fd < 0) return fail("pidfd_getfd");
        ssize_t n = pread(fd, data, sizeof data - 1, 0);
        if (n < 0) return fail("pread");
        fwrite(data, 1, (size_t)n, stdout);
        return 0;
    }
    if (argc != 6) return 100;
    pid_t pid = (pid_t)atoi(argv[2]);
    int writing = !strcmp(argv[3], "write");
    unsigned long addr = strtoul(argv[4], NULL, 16);
    char data[4096] = {0};
    size_t len;
    if (writing) {
        len = strlen(argv[5]) + 1;
        memcpy(data, argv[5], len);
    } else {
        len = (size_t)atoi(argv[5]);
    }
    int (*how)(pid_t, int, unsigned long, char *, size_t) =
        !strcmp(argv[1], "mem") ? with_mem : !strcmp(argv[1], "vm") ? with_vm : with_ptrace;
    int rc = how(pid, writing, addr, data, len);
    if (rc == 0 && !writing) fwrite(data, 1, strnlen(data, len), stdout);
    return rc;
}
"""


@dataclass
class Lab:
    victim: Path  # an ordinary binary: dumpable
    protected: Path  # the same program, setgid GROUP: not dumpable from its exec
    attack: Path
    gid: int  # of GROUP


@pytest.fixture(scope="session")
def lab(shop) -> Lab:
    proc = subprocess.run(["groupadd", "--system", GROUP], capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 9):  # 9: it exists
        pytest.fail(f"groupadd {GROUP} failed: {proc.stderr.strip()}")
    gid = grp.getgrnam(GROUP).gr_gid
    d = shop.dir / "mem"
    d.mkdir(mode=0o755, exist_ok=True)
    for name, src in (("victim", VICTIM_C), ("attack", ATTACK_C)):
        (d / f"{name}.c").write_text(src)
        subprocess.run(["gcc", "-O0", "-o", str(d / name), str(d / f"{name}.c")], check=True, capture_output=True)
        (d / name).chmod(0o755)
    protected = d / "victim-setgid"
    shutil.copyfile(d / "victim", protected)
    os.chown(protected, 0, gid)
    protected.chmod(0o2755)
    return Lab(d / "victim", protected, d / "attack", gid)


def _policy(lab: Lab, users, *, nondumpable: bool) -> str:
    pay = users["payments"]
    exes = [str(lab.victim), str(lab.protected)]
    hashes = [sha256_of(lab.victim)]
    return f"""
[workloads.admin]
uid = 0

[workloads.victim]
user = "{pay.name}"
exe = {exes!r}
exe_sha256 = {hashes!r}
untraced = true
no_preload = true
{"nondumpable = true" if nondumpable else ""}

[[rule]]
paths = ["/**"]
workloads = ["admin"]
allow = ["read", "write", "create", "list", "setattr"]

[[rule]]
paths = ["/**"]
workloads = ["victim"]
allow = ["read", "list"]
""".replace("'", '"')


class Victim:
    """The victim program running as ``user`` (through setpriv)."""

    def __init__(
        self, user, exe: Path, path: Path, *, prctl: bool = False, hold: bool = False, wrapper: tuple[str, ...] = ()
    ):
        argv = [
            "setpriv",
            f"--reuid={user.uid}",
            f"--regid={user.gid}",
            "--clear-groups",
            *wrapper,
            str(exe),
            str(path),
            "prctl" if prctl else "-",
            "hold" if hold else "-",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/"
        )
        first = self.proc.stdout.readline().split()
        assert len(first) == 2, f"the victim did not start: {first}"
        self.path_addr, self.buf_addr = first
        self.pid = self.proc.pid

    def request(self) -> str:
        """Ask it to read its file: ``read N`` or ``errno E``."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()  # (a victim that is not our child, see spawn, ends at EOF)
        self.proc.kill()
        self.proc.wait()


def _attack(user, lab: Lab, *args: str) -> subprocess.CompletedProcess:
    argv = [str(lab.attack), *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=CLEAN_ENV, cwd="/", timeout=60, check=False)


def _steal(user, lab: Lab, method: str, v: Victim, secret: Path) -> subprocess.CompletedProcess:
    """Point the victim at ``secret``, let it read, read its buffer."""
    wrote = _attack(user, lab, method, str(v.pid), "write", v.path_addr, str(secret))
    if wrote.returncode != 0:
        return wrote
    assert v.request() == f"read {len(SECRET)}", "the victim, pointed at the secret, did not read it"
    return _attack(user, lab, method, str(v.pid), "read", v.buf_addr, "4000")


def _mount(make_policy_mount, lab, users, *, nondumpable: bool):
    m = make_policy_mount(None)
    for name, text in (("secret", SECRET), ("public", PUBLIC)):
        (m.path / name).mkdir()
        (m.path / name / "f.txt").write_text(text)
    m.set_policy(_policy(lab, users, nondumpable=nondumpable))
    m.remount()
    return m


def test_this_kernel_leaves_same_uid_memory_open():
    """The premise of the tests below, stated: no Yama here (so the
    kernel's own rules are all there is).  On a host with Yama the
    dumpable-victim attacks would fail for another reason."""
    assert host.ptrace_scope() is None, "this host has Yama: the attacks on dumpable victims are not what they test"
    assert host.suid_dumpable() in (0, 2)


@LOCAL
@pytest.mark.parametrize("method", ["mem", "vm", "ptrace"])
def test_same_uid_steals_from_a_dumpable_workload(make_policy_mount, lab, users, method):
    """exe, exe_sha256, untraced and no_preload all hold at every request,
    and a process of the same uid still gets the plaintext: the victim's
    requests are allowed (it is the workload), its memory is not its own."""
    m = _mount(make_policy_mount, lab, users, nondumpable=False)
    pay = users["payments"]
    secret = m.path / "secret" / "f.txt"
    refused = subprocess.run(
        ["setpriv", f"--reuid={pay.uid}", f"--regid={pay.gid}", "--clear-groups", "cat", str(secret)],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        check=False,
    )
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, "cat, as the same user, is refused"
    v = Victim(pay, lab.victim, m.path / "public" / "f.txt")
    try:
        assert v.request() == f"read {len(PUBLIC)}"
        got = _steal(pay, lab, method, v, secret)
        assert got.returncode == 0, got.stderr
        assert got.stdout == SECRET, "the attacker read the secret out of the allowed process"
    finally:
        v.close()


@LOCAL
@pytest.mark.parametrize("method", ["mem", "vm", "ptrace"])
def test_another_uid_cannot_touch_a_dumpable_workload(make_policy_mount, lab, users, method):
    """Against another uid the kernel refuses all three, Yama or not."""
    m = _mount(make_policy_mount, lab, users, nondumpable=False)
    v = Victim(users["payments"], lab.victim, m.path / "public" / "f.txt")
    try:
        got = _steal(users["frontend"], lab, method, v, m.path / "secret" / "f.txt")
        assert got.returncode in (errno.EPERM, errno.EACCES), (got.returncode, got.stderr)
        assert v.request() == f"read {len(PUBLIC)}", "the victim still reads its own file"
    finally:
        v.close()


@LOCAL
def test_nondumpable_refuses_a_dumpable_process(make_policy_mount, lab, users):
    m = _mount(make_policy_mount, lab, users, nondumpable=True)
    v = Victim(users["payments"], lab.victim, m.path / "secret" / "f.txt")
    try:
        assert v.request() == f"errno {errno.EACCES}"
    finally:
        v.close()
    lines = m.denials(path="/secret/f.txt", uid=users["payments"].uid)
    assert lines and "it is dumpable" in lines[-1]["reason"], m.audit()[-3:]


@LOCAL
@pytest.mark.parametrize("how", ["setgid", "prctl"])
@pytest.mark.parametrize("method", ["mem", "vm", "ptrace"])
def test_a_nondumpable_workload_is_closed_to_its_own_uid(make_policy_mount, lab, users, method, how):
    """A setgid program (non-dumpable from its exec) or one that calls
    prctl(PR_SET_DUMPABLE, 0): allowed with nondumpable = true, and the same
    uid can neither write nor read its memory."""
    m = _mount(make_policy_mount, lab, users, nondumpable=True)
    pay = users["payments"]
    exe = lab.protected if how == "setgid" else lab.victim
    v = Victim(pay, exe, m.path / "public" / "f.txt", prctl=how == "prctl")
    try:
        assert v.request() == f"read {len(PUBLIC)}", "the non-dumpable workload is allowed"
        owner = os.stat(f"/proc/{v.pid}/stat").st_uid
        assert owner == 0, "the kernel shows a non-dumpable process's files as root's"
        assert os.stat(f"/proc/{v.pid}").st_uid == pay.uid, "(but not its directory: that is why a file is read)"
        got = _steal(pay, lab, method, v, m.path / "secret" / "f.txt")
        assert got.returncode in (errno.EPERM, errno.EACCES), (got.returncode, got.stdout, got.stderr)
        assert SECRET not in got.stdout
        assert v.request() == f"read {len(PUBLIC)}", "its path was not changed"
        # root is out of scope, and this shows why: it reads the buffer anyway
        as_root = _attack(None, lab, method, str(v.pid), "read", v.buf_addr, "4000")
        assert as_root.returncode == 0 and as_root.stdout == PUBLIC, as_root.stderr
    finally:
        v.close()


@LOCAL
def test_a_setgid_program_ignores_ld_preload(make_policy_mount, lab, users, tmp_path):
    """The loader runs a setgid program in secure mode: LD_PRELOAD is not
    loaded (and not reported: the loader ignored it, sealfs still sees it
    in the environment and no_preload refuses it, which errs on the safe
    side)."""
    m = _mount(make_policy_mount, lab, users, nondumpable=True)
    pay = users["payments"]
    lib = Path(lab.attack).parent / "libmark.so"
    src = tmp_path / "mark.c"
    src.write_text(
        '#include <stdio.h>\n__attribute__((constructor)) static void m(void) { fprintf(stderr, "PRELOADED\\n"); }\n'
    )
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    lib.chmod(0o755)
    for exe, loaded in ((lab.victim, True), (lab.protected, False)):
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={pay.uid}",
                f"--regid={pay.gid}",
                "--clear-groups",
                "env",
                f"LD_PRELOAD={lib}",
                str(exe),
                str(m.path / "public" / "f.txt"),
            ],
            input="go\n",
            capture_output=True,
            text=True,
            env=CLEAN_ENV,
            check=False,
        )
        assert ("PRELOADED" in proc.stderr) == loaded, (exe, proc.stderr)
        assert f"errno {errno.EACCES}" in proc.stdout, "no_preload refuses either"


@LOCAL
def test_traced_once_is_refused_until_it_execs(make_policy_mount, lab, users):
    """A tracer seen at one request is remembered for the life of the
    program: after it detached, the process is still refused; a new
    process of the same program is not."""
    m = _mount(make_policy_mount, lab, users, nondumpable=False)
    pay = users["payments"]
    v = Victim(pay, lab.victim, m.path / "public" / "f.txt")
    fresh = None
    try:
        assert v.request() == f"read {len(PUBLIC)}"
        tracer = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={pay.uid}",
                f"--regid={pay.gid}",
                "--clear-groups",
                str(lab.attack),
                "seize",
                str(v.pid),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=CLEAN_ENV,
        )
        try:
            assert tracer.stdout.readline() == "seized\n"
            assert v.request() == f"errno {errno.EACCES}", "refused while traced"
        finally:
            tracer.stdin.close()
            assert tracer.wait(timeout=60) == 0
        status = Path(f"/proc/{v.pid}/status").read_text()
        assert "TracerPid:\t0\n" in status, "the tracer is gone"
        assert v.request() == f"errno {errno.EACCES}", "still refused: it was traced since its exec"
        lines = m.denials(path="/public/f.txt", uid=pay.uid)
        assert "since it started its program" in lines[-1]["reason"], lines[-1]
        fresh = Victim(pay, lab.victim, m.path / "public" / "f.txt")
        assert fresh.request() == f"read {len(PUBLIC)}", "a new process of the program is not refused"
    finally:
        v.close()
        if fresh is not None:
            fresh.close()


def test_policy_check_warns_about_open_memory(lab, users, tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(_policy(lab, users, nondumpable=False))
    proc = sealfs("policy", "check", str(f))
    assert "workload victim tells processes of one uid apart, but this kernel has no Yama" in proc.stderr.decode()
    f.write_text(_policy(lab, users, nondumpable=True))
    proc = sealfs("policy", "check", str(f))
    assert "Yama" not in proc.stderr.decode(), "a nondumpable workload is not exposed"


@LOCAL
@pytest.mark.parametrize("how", ["dumpable", "setgid"])
def test_taking_an_open_descriptor(make_policy_mount, lab, users, how):
    """pidfd_getfd: a process of the same uid takes the allowed process's
    open descriptor and reads the file through it, which asks no open.
    Refused by the kernel for a non-dumpable process."""
    m = _mount(make_policy_mount, lab, users, nondumpable=how == "setgid")
    pay = users["payments"]
    v = Victim(pay, lab.victim if how == "dumpable" else lab.protected, m.path / "secret" / "f.txt", hold=True)
    try:
        answer = v.request()
        assert answer.endswith(f"read {len(SECRET)}"), answer
        fd = answer.split()[1]
        got = _attack(pay, lab, "getfd", str(v.pid), fd)
        if how == "dumpable":
            assert got.returncode == 0 and got.stdout == SECRET, got.stderr
        else:
            assert got.returncode == errno.EPERM and SECRET not in got.stdout, (got.returncode, got.stderr)
    finally:
        v.close()


@LOCAL
def test_prctl_inside_a_user_namespace_does_not_count(make_policy_mount, lab, users):
    """A process in a user namespace that its uid made is traceable by that
    uid even after prctl(PR_SET_DUMPABLE, 0) (the uid holds CAP_SYS_PTRACE
    in the namespace); its /proc files show the namespace's root, not root,
    so nondumpable does not match it."""
    m = _mount(make_policy_mount, lab, users, nondumpable=True)
    pay = users["payments"]
    v = Victim(
        pay, lab.victim, m.path / "public" / "f.txt", prctl=True, wrapper=("unshare", "--user", "--map-root-user")
    )
    try:
        assert os.stat(f"/proc/{v.pid}/stat").st_uid == pay.uid, "the namespace's root is the user itself"
        assert v.request() == f"errno {errno.EACCES}", "nondumpable does not match it"
        wrote = _attack(pay, lab, "mem", str(v.pid), "write", v.path_addr, "/elsewhere")
        assert wrote.returncode == 0, wrote.stderr
        back = _attack(pay, lab, "mem", str(v.pid), "read", v.path_addr, "64")
        assert back.stdout == "/elsewhere", "the same uid writes its memory, as it would a dumpable process's"
    finally:
        v.close()
    lines = m.denials(path="/public/f.txt", uid=pay.uid)
    assert lines and "it is dumpable" in lines[-1]["reason"], m.audit()[-3:]


def test_a_root_process_is_never_seen_as_nondumpable():
    """Its /proc files are root's either way: dumpable is unknown (None),
    and nondumpable does not match it."""
    from sealfs.policy.identity import Identifier

    sleep = os.path.realpath("/usr/bin/sleep")
    proc = subprocess.Popen([sleep, "60"], env=CLEAN_ENV)
    try:
        wait_exec(proc.pid, sleep)
        i = Identifier(stable_ttl=0).identify(proc.pid, 0, 0)
        assert i.valid and i.exe == sleep and i.dumpable is None
    finally:
        proc.kill()
        proc.wait()


@LOCAL
def test_nondumpable_after_a_reload(make_policy_mount, lab, users):
    """The daemon reads whether a process is dumpable only while a workload
    requires it: a reload that adds nondumpable turns it on, one that drops
    it turns it off."""
    m = _mount(make_policy_mount, lab, users, nondumpable=False)
    pay = users["payments"]
    public = m.path / "public" / "f.txt"
    m.reload(_policy(lab, users, nondumpable=True))
    for exe, answer in ((lab.protected, f"read {len(PUBLIC)}"), (lab.victim, f"errno {errno.EACCES}")):
        v = Victim(pay, exe, public)
        try:
            assert v.request() == answer, exe
        finally:
            v.close()
    m.reload(_policy(lab, users, nondumpable=False))
    v = Victim(pay, lab.victim, public)
    try:
        assert v.request() == f"read {len(PUBLIC)}"
    finally:
        v.close()


THREADS_PY = """
import sys, threading
ready = threading.Event()
def worker():
    print(threading.get_native_id(), flush=True)
    ready.wait()
t = threading.Thread(target=worker)
t.start()
sys.stdin.readline()
ready.set()
"""


class _Seized:
    """A tracer (``attack seize``, as root) on thread ``tid`` until closed."""

    def __init__(self, lab: Lab, tid: int):
        self.proc = subprocess.Popen(
            [str(lab.attack), "seize", str(tid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=CLEAN_ENV,
        )
        assert self.proc.stdout.readline() == "seized\n"

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def test_a_tracer_seen_on_one_thread_counts_for_every_thread(lab):
    """The memory of tracers is per process (thread group) and exec: a
    tracer seen on the worker thread, gone since, still marks the main
    thread and the worker."""
    from sealfs.policy.identity import Identifier

    py = os.path.realpath("/usr/bin/python3")
    proc = subprocess.Popen(
        [py, "-c", THREADS_PY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=CLEAN_ENV
    )
    try:
        worker = int(proc.stdout.readline())
        ident = Identifier(stable_ttl=0)
        assert not ident.identify(proc.pid, 0, 0).traced_since_exec
        tracer = _Seized(lab, worker)
        try:
            now = ident.identify(proc.pid, 0, 0)
            assert now.traced and now.traced_since_exec == tracer.proc.pid
        finally:
            tracer.close()
        for tid in (proc.pid, worker):
            later = ident.identify(tid, 0, 0)
            assert later.valid and not later.traced and later.traced_since_exec == tracer.proc.pid, tid
        assert not Identifier(stable_ttl=0).identify(proc.pid, 0, 0).traced_since_exec, "another mount never saw it"
    finally:
        proc.kill()
        proc.wait()


def test_the_memory_of_tracers_is_bounded_and_keeps_live_processes(lab, monkeypatch):
    """Past TRACED_ENTRIES, processes that are gone are forgotten first."""
    from sealfs.policy import identity, tracers

    monkeypatch.setattr(tracers, "TRACED_ENTRIES", 2)
    ident = identity.Identifier(stable_ttl=0)
    sleep = os.path.realpath("/usr/bin/sleep")
    procs = []
    try:
        for _ in range(3):
            p = subprocess.Popen([sleep, "60"], env=CLEAN_ENV)
            procs.append(p)
            wait_exec(p.pid, sleep)
            t = _Seized(lab, p.pid)
            try:
                assert ident.identify(p.pid, 0, 0).traced_since_exec == t.proc.pid
            finally:
                t.close()
            if len(procs) == 2:  # the second is gone when the third comes: it goes, not the oldest
                procs[1].kill()
                procs[1].wait()
        assert len(ident._tracers) == 2
        for p in (procs[0], procs[2]):
            assert ident.identify(p.pid, 0, 0).traced_since_exec, "a live process stays remembered"
    finally:
        for p in procs:
            p.kill()
            p.wait()


LEADER_EXITS_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *worker(void *arg) {
    char line[8];
    (void)arg;
    printf("%ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    fgets(line, sizeof line, stdin);   /* the leader exits after this line */
    fgets(line, sizeof line, stdin);   /* and the worker waits on */
    return NULL;
}

int main(void) {
    pthread_t t;
    char line[8];
    pthread_create(&t, NULL, worker, NULL);
    fgets(line, sizeof line, stdin);
    pthread_exit(NULL);
}
"""


def test_a_tracer_seen_on_the_leader_counts_after_it_exited(lab, tmp_path):
    """The main thread was seen traced, then ended (pthread_exit) while a
    worker goes on: the worker is still marked.  (A zombie leader's stat
    shows no memory addresses: the key takes them from the live thread.)"""
    from sealfs.policy.identity import Identifier

    exe = tmp_path / "leader"
    (tmp_path / "leader.c").write_text(LEADER_EXITS_C)
    subprocess.run(["gcc", "-pthread", "-o", str(exe), str(tmp_path / "leader.c")], check=True, capture_output=True)
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=CLEAN_ENV)
    try:
        worker = int(proc.stdout.readline())
        ident = Identifier(stable_ttl=0)
        tracer = _Seized(lab, proc.pid)
        try:
            assert ident.identify(proc.pid, 0, 0).traced_since_exec == tracer.proc.pid
        finally:
            tracer.close()
        proc.stdin.write("x\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while "State:\tZ" not in Path(f"/proc/{proc.pid}/status").read_text():
            assert time.monotonic() < deadline, "the leader did not exit"
            time.sleep(0.01)
        later = ident.identify(worker, 0, 0)
        assert later.valid and later.traced_since_exec == tracer.proc.pid, later
    finally:
        proc.kill()
        proc.wait()


@LOCAL
def test_a_setgid_program_started_under_a_tracer_stays_dumpable(make_policy_mount, lab, users):
    """The same uid starts the setgid program as its own traced child
    (PTRACE_TRACEME) and lets go of it at the exec, before any request:
    the kernel does not apply set-group-ID under a tracer, so the program
    stays dumpable, and nondumpable refuses it (untraced cannot: no tracer
    is left to see)."""
    m = _mount(make_policy_mount, lab, users, nondumpable=True)
    pay = users["payments"]
    v = Victim(pay, lab.protected, m.path / "public" / "f.txt", wrapper=(str(lab.attack), "spawn"))
    try:
        assert v.request() == f"errno {errno.EACCES}"
    finally:
        v.close()
    lines = m.denials(path="/public/f.txt", uid=pay.uid)
    assert lines and "it is dumpable" in lines[-1]["reason"], m.audit()[-3:]
