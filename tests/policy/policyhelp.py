"""Helpers and fixtures for the access policy tests (conftest.py registers
the fixtures; test modules import the helpers from here).

* ``users``: the four service users of the scenario (created with useradd
  when missing), as :class:`User`.
* ``shop``: a world-readable directory (outside pytest's 0700 temp tree,
  so other users can reach it) with the scenario's programs: three small C
  programs built with gcc (``customer``, ``payments``, ``frontend``: each
  its own binary, so each has its own sha256), a Python script
  ``business.py`` and a harmless shared library ``libnoop.so`` for
  LD_PRELOAD.  Every program takes ``OP PATH [TEXT]`` (read, write, list,
  mkdir) and exits with the errno of a failed call.
* ``make_policy_mount``: like ``make_mount`` of tests/fs, but the
  mountpoint is in a world-traversable directory, the mount has
  ``allow_other``, and the returned :class:`PolicyMount` knows its policy
  file, audit log and daemon.

Helpers of tests/fs/conftest.py (Mount, sealfs, …) are loaded from that
file under another module name, not copied.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fs_helpers import fs_helpers  # tests/fs_helpers.py

Mount = fs_helpers.Mount
sealfs = fs_helpers.sealfs
daemon_pids = fs_helpers.daemon_pids
is_mounted = fs_helpers.is_mounted

ROOT = Path(__file__).resolve().parent.parent.parent
MAN_POLICY = ROOT / "man" / "sealfs-policy.5"
WORKLOADS = ("customer", "payments", "business", "frontend")
#: The interpreter of business.py: a system one that every user may run.
SYSTEM_PYTHON = "/usr/bin/python3"
#: A clean environment for the programs: nothing from pytest's own.
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
RELOAD_TIMEOUT = 30.0

PROGRAM_C = r"""
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* One byte of this string is changed to make a tampered copy. */
static const char tag[] = "sealfs-test-workload:" WORKLOAD;

static int fail(const char *what, const char *path) {
    int e = errno;
    fprintf(stderr, "%s: %s %s: %s\n", tag, what, path, strerror(e));
    return e;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s read|write|list|mkdir PATH [TEXT]\n", tag);
        return 100;
    }
    const char *op = argv[1], *path = argv[2];
    if (!strcmp(op, "read")) {
        char buf[4096];
        ssize_t n;
        int fd = open(path, O_RDONLY);
        if (fd < 0) return fail("open", path);
        while ((n = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, (size_t)n, stdout);
        if (n < 0) return fail("read", path);
        close(fd);
        return 0;
    }
    if (!strcmp(op, "write")) {
        const char *text = argc > 3 ? argv[3] : "";
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        if (fd < 0) return fail("open", path);
        if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) return fail("write", path);
        if (close(fd) != 0) return fail("close", path);
        return 0;
    }
    if (!strcmp(op, "list")) {
        DIR *d = opendir(path);
        struct dirent *e;
        if (!d) return fail("opendir", path);
        while ((e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) printf("%s\n", e->d_name);
        closedir(d);
        return 0;
    }
    if (!strcmp(op, "mkdir")) {
        if (mkdir(path, 0777) != 0) return fail("mkdir", path);
        return 0;
    }
    fprintf(stderr, "%s: unknown operation %s\n", tag, op);
    return 100;
}
"""

BUSINESS_PY = """\
import os
import sys

op, path = sys.argv[1], sys.argv[2]
try:
    if op == "read":
        with open(path) as f:
            sys.stdout.write(f.read())
    elif op == "write":
        with open(path, "w") as f:
            f.write(sys.argv[3] if len(sys.argv) > 3 else "")
    elif op == "list":
        print("\\n".join(sorted(os.listdir(path))))
    elif op == "mkdir":
        os.mkdir(path, 0o777)
    else:
        sys.exit(100)
except OSError as exc:
    print(f"business: {exc}", file=sys.stderr)
    sys.exit(exc.errno)
"""


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="session")
def users() -> dict[str, User]:
    """workload name -> its service user ``sealfs-<workload>``."""
    if os.geteuid() != 0:
        pytest.skip("the policy scenario runs programs as other users: run the tests as root")
    out = {}
    for w in WORKLOADS:
        name = f"sealfs-{w}"
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            proc = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode not in (0, 9):  # 9: created meanwhile by another session
                pytest.fail(f"useradd {name} failed: {proc.stderr.strip()}")
            pw = pwd.getpwnam(name)
        out[w] = User(name, pw.pw_uid, pw.pw_gid)
    return out


@dataclass
class Shop:
    """The scenario's programs, in a directory every user can read."""

    dir: Path
    bin: Path
    mounts: Path

    def exe(self, workload: str) -> Path:
        return self.bin / ("business.py" if workload == "business" else workload)

    @property
    def noop_lib(self) -> Path:
        return self.bin / "libnoop.so"

    def argv(self, workload: str, *args: str) -> list[str]:
        if workload == "business":
            return [SYSTEM_PYTHON, str(self.exe("business")), *args]
        return [str(self.exe(workload)), *args]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/setup installs it)")
    return path


@pytest.fixture(scope="session")
def shop() -> Iterator[Shop]:
    gcc = _tool("gcc")
    _tool("setpriv")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(
            f"{SYSTEM_PYTHON} is missing (the business script needs an interpreter every user may run; "
            "scripts/setup installs python3)"
        )
    top = Path(tempfile.mkdtemp(prefix="sealfs-policy-", dir="/tmp"))
    try:
        top.chmod(0o755)
        bindir = top / "bin"
        mounts = top / "mnt"
        bindir.mkdir(mode=0o755)
        mounts.mkdir(mode=0o755)
        src = top / "program.c"
        src.write_text(PROGRAM_C)
        for w in ("customer", "payments", "frontend"):
            subprocess.run(
                [gcc, "-O1", "-o", str(bindir / w), f'-DWORKLOAD="{w}"', str(src)], check=True, capture_output=True
            )
        (top / "noop.c").write_text("void sealfs_test_noop(void) {}\n")
        subprocess.run(
            [gcc, "-shared", "-fPIC", "-o", str(bindir / "libnoop.so"), str(top / "noop.c")],
            check=True,
            capture_output=True,
        )
        (bindir / "business.py").write_text(BUSINESS_PY)
        for p in bindir.iterdir():
            p.chmod(0o755)
        yield Shop(top, bindir, mounts)
    finally:
        for m in top.glob("mnt/*"):
            if is_mounted(m):
                subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True, check=False)
        shutil.rmtree(top, ignore_errors=True)


def run_as(
    user: User | None,
    argv: list[str],
    *,
    env: dict | None = None,
    wrapper: list[str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``user`` (setpriv: uid, gid, no supplementary
    groups), in a clean environment plus ``env``, with umask 0 (files it
    creates are writable by all, so the file modes never refuse);
    ``wrapper`` (such as strace) runs between setpriv and the program."""
    cmd = list(wrapper or []) + list(argv)
    if user is not None:
        cmd = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *cmd]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, **(env or {})},
        timeout=timeout,
        cwd="/",
        umask=0,
        check=False,
    )


def wait_exec(pid: int, exe: str) -> None:
    """Until process ``pid`` runs ``exe`` (it may be a wrapper first:
    setpriv) and its exec is done (the kernel names the new executable
    before it lays out the new program's environment, which reads empty
    until then)."""
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        try:
            if os.readlink(f"/proc/{pid}/exe") == exe and Path(f"/proc/{pid}/environ").read_bytes():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"process {pid} did not exec {exe}"
        time.sleep(0.01)


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def man_page_example() -> str:
    """The policy in the EXAMPLE section of sealfs-policy(5), as a reader
    copies it from the rendered page (roff escapes undone)."""
    text = MAN_POLICY.read_text()
    section = text[text.index("\n.SH EXAMPLE") :]
    body = section[section.index("\n.EX\n") + 5 : section.index("\n.EE\n")]
    for esc, plain in ((r"\-", "-"), (r"\e", "\\"), (r"\&", ""), (r"\(em", "\u2014")):
        body = body.replace(esc, plain)
    return body + "\n"


@dataclass
class PolicyMount(Mount):
    """A mount with a policy (or none yet): its files and daemon."""

    policy_file: Path | None = None
    audit_file: Path | None = None

    def set_policy(self, text: str | None) -> None:
        """Use ``text`` as the policy from the next (re)mount; None: none."""
        self.extra = [o for o in self.extra if not o.startswith(("policy=", "audit_log="))]
        if text is not None:
            self.policy_file.write_text(text)
            self.extra += [f"policy={self.policy_file}", f"audit_log={self.audit_file}"]

    def daemon_pid(self) -> int:
        pids = daemon_pids(self.path)
        assert len(pids) == 1, f"expected one daemon for {self.path}, found {pids}"
        return pids[0]

    def reload(self, text: str, *, expect_ok: bool = True) -> None:
        """Rewrite the policy file, SIGHUP the daemon, wait for its verdict."""
        marker = "policy reloaded" if expect_ok else "policy NOT reloaded"
        before = self.log.read_text(errors="replace").count(marker)
        self.policy_file.write_text(text)
        os.kill(self.daemon_pid(), signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while self.log.read_text(errors="replace").count(marker) == before:
            assert time.monotonic() < deadline, f"the daemon did not log {marker!r} after SIGHUP"
            time.sleep(0.02)

    def audit(self) -> list[dict]:
        if not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines() if line.strip()]

    def denials(self, **match) -> list[dict]:
        """Audit denials whose fields equal ``match`` (``path`` inside the volume)."""
        return [a for a in self.audit() if a.get("decision") == "deny" and all(a.get(k) == v for k, v in match.items())]


@pytest.fixture
def make_policy_mount(make_store_spec, store_kind, shop: Shop, tmp_path: Path, request) -> Iterator:
    """``make_policy_mount(policy_text, extra=[...])``: a fresh volume of the
    current store kind, mounted with ``allow_other`` on a directory every
    user can reach, with ``policy_text`` (None: no policy) and an audit
    log.  Unmounted at the end; the daemon must have logged no error the
    test did not declare in ``expected_log``."""
    if store_kind == "s3":
        request.getfixturevalue("make_bucket")
    mounts: list[PolicyMount] = []
    counter = iter(range(1000))

    def make(policy_text: str | None, extra: list[str] | None = None) -> PolicyMount:
        n = next(counter)
        spec = make_store_spec()
        keyfile = tmp_path / f"key{n}"
        sealfs(
            "init",
            spec.url,
            "--keyfile",
            str(keyfile),
            *(["-o", ",".join(f"{k}={v}" for k, v in spec.options.items())] if spec.options else []),
        )
        mnt = Path(tempfile.mkdtemp(prefix=f"{store_kind}-", dir=shop.mounts))
        mnt.chmod(0o755)
        m = PolicyMount(
            mnt,
            spec.url,
            dict(spec.options),
            keyfile,
            tmp_path / f"daemon{n}.log",
            tmp_path / f"cache{n}",
            ["allow_other", *(extra or [])],
            spec=spec,
            policy_file=tmp_path / f"policy{n}.toml",
            audit_file=tmp_path / f"audit{n}.log",
        )
        m.set_policy(policy_text)
        mounts.append(m)
        m.mount()
        return m

    def remove_mountpoint(m: Mount) -> None:
        if not is_mounted(m.path):
            shutil.rmtree(m.path, ignore_errors=True)

    try:
        yield make
    finally:
        fs_helpers.unmount_all(mounts, after_each=remove_mountpoint)


def errno_name(code: int) -> str:
    import errno

    return errno.errorcode.get(code, str(code))


def assert_refused(proc: subprocess.CompletedProcess, code: int, what: str) -> None:
    """The program failed with errno ``code`` (its exit status)."""
    assert proc.returncode == code, (
        f"{what}: expected {errno_name(code)}, got exit status {proc.returncode}; "
        f"stdout {proc.stdout!r}, stderr {proc.stderr!r}"
    )


def assert_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what}: exit status {proc.returncode}, stderr {proc.stderr!r}"


def rewrite_workloads(text: str, values: dict[str, dict[str, str]]) -> str:
    """``text`` with, in each ``[workloads.NAME]`` table, the keys named in
    ``values[NAME]`` set to new string values (the rest untouched)."""
    out, current = [], None
    for line in text.splitlines():
        m = re.match(r"\s*\[workloads\.([A-Za-z0-9_.-]+)\]\s*$", line)
        if m:
            current = m.group(1)
        elif re.match(r"\s*\[", line):
            current = None
        k = re.match(r"(\s*)([a-z_0-9]+)\s*=", line)
        if current in values and k and k.group(2) in values[current]:
            line = f"{k.group(1)}{k.group(2)} = {json.dumps(values[current][k.group(2)])}"
        out.append(line)
    return "\n".join(out) + "\n"
