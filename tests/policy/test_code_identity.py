"""Identity from what the process cannot rewrite, tried as an attacker who
has a shell as the workload's own user (issue 13, items 1, 4, 5, 6).

Each attack is a real process of that user (setpriv), with small C
programs and libraries compiled here, owned by the attacker.  The
identity is read by an :class:`Identifier` as the daemon reads it, and
decided by a policy parsed from TOML; the two attacks of the issue that
read a secret go through a real mount as well.  Each attack first shows
that it works against what it fools (the environment shows no
LD_PRELOAD, ``/proc/PID/exe`` names the allowed path, …), so that the
refusal is the new check's."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sealfs.policy.identity import Identifier, Identity
from sealfs.policy.interpreters import python_startup
from sealfs.policy.rules import parse_policy

from .policyhelp import (
    CLEAN_ENV,
    SYSTEM_PYTHON,
    User,
    assert_ok,
    assert_refused,
    run_as,
)

WAIT = 20.0
SLEEP = os.path.realpath(shutil.which("sleep"))
CAT = os.path.realpath(shutil.which("cat"))
PYTHON = os.path.realpath(SYSTEM_PYTHON)
LDSO = os.path.realpath("/lib64/ld-linux-x86-64.so.2")

# The allowed program: says it is ready (constructors of preloads have run
# by then), then waits for stdin to close.
WAITER_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { char c; puts("ready"); fflush(stdout); while (read(0, &c, 1) > 0) {} return 0; }
"""
# A preload that erases LD_PRELOAD= from its own process's environment.
HIDER_C = r"""
#include <string.h>
extern char **environ;
__attribute__((constructor)) static void hide(void) {
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, "LD_PRELOAD=", 11)) memset(*e, 'x', strlen(*e));
}
"""
# Erases LD_LIBRARY_PATH= from its own environment when told to.
ERASER_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
extern char **environ;
int main(void) {
    char c;
    puts("ready"); fflush(stdout);
    if (read(0, &c, 1) != 1) return 1;
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, "LD_LIBRARY_PATH=", 16)) memset(*e, 'x', strlen(*e));
    puts("erased"); fflush(stdout);
    while (read(0, &c, 1) > 0) {}
    return 0;
}
"""
# A vfork child (sharing its parent's address space) that says its pid,
# waits for a line, then execs argv[1].
VFORKER_C = r"""
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char c, line[32];
    pid_t pid = vfork();
    if (pid == 0) {
        snprintf(line, sizeof line, "%d\n", (int)getpid());
        write(1, line, strlen(line));
        if (read(0, &c, 1) != 1) _exit(1);
        execv(argv[1], argv + 1);
        _exit(1);
    }
    waitpid(pid, NULL, 0);
    return 0;
}
"""
# An rtld-audit module (LD_AUDIT): loaded by ld.so before the program.
AUDIT_C = r"""
#define _GNU_SOURCE
#include <link.h>
unsigned int la_version(unsigned int v) { return LAV_CURRENT; }
"""
# Copies a program into a memfd and runs that (fexecve): no file on disk.
MEMFD_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    int in = open(argv[1], O_RDONLY), out = memfd_create("innocent", 0);
    struct stat st;
    if (in < 0 || out < 0 || fstat(in, &st) || sendfile(out, in, NULL, st.st_size) != st.st_size) return 1;
    fexecve(out, argv + 1, environ);
    perror("fexecve");
    return 1;
}
"""
# Anonymous executable memory (what a JIT, or injected code, has).
ANON_C = r"""
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    char c;
    void *p = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    puts("ready"); fflush(stdout);
    while (read(0, &c, 1) > 0) {}
    return 0;
}
"""
# Loads a library later, when told to (dlopen after the first look), and
# unloads it at the next line.
DLOPEN_C = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char c;
    puts("ready"); fflush(stdout);
    if (read(0, &c, 1) != 1) return 1;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { puts(dlerror()); return 1; }
    puts("loaded"); fflush(stdout);
    if (read(0, &c, 1) != 1) return 1;
    dlclose(h);  /* unmapped again */
    puts("closed"); fflush(stdout);
    while (read(0, &c, 1) > 0) {}
    return 0;
}
"""
# Waits for a line, then execs argv[1] with the same arguments.
EXECER_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char c;
    puts("ready"); fflush(stdout);
    if (read(0, &c, 1) != 1) return 1;
    execv(argv[1], argv);  /* the same argv: the same stack layout */
    return 1;
}
"""


@dataclass
class Lab:
    """Programs of root (``bin``, the allowed ones) and of the attacker
    (``own``: his home, his files)."""

    bin: Path
    own: Path
    attacker: User

    def prog(self, name: str) -> str:
        return str(self.bin / name)

    def mine(self, name: str) -> str:
        return str(self.own / name)


def _cc(out: Path, source: str, *flags: str) -> None:
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run(["cc", "-O1", "-o", str(out), str(src), *flags], check=True, capture_output=True)


@pytest.fixture(scope="module")
def lab(users) -> Iterator[Lab]:
    attacker = users["customer"]
    top = Path(tempfile.mkdtemp(prefix="sealfs-code-", dir="/tmp"))
    try:
        top.chmod(0o755)
        bindir, own = top / "bin", top / "home"
        bindir.mkdir(mode=0o755)
        own.mkdir(mode=0o755)
        for name, src in (
            ("waiter", WAITER_C),
            ("anon", ANON_C),
            ("dlopener", DLOPEN_C),
            ("execer", EXECER_C),
            ("execee", WAITER_C),
            ("eraser", ERASER_C),
            ("vforker", VFORKER_C),
        ):
            _cc(bindir / name, src, "-ldl")
        _cc(own / "libhider.so", HIDER_C, "-shared", "-fPIC")
        _cc(own / "libaudit.so", AUDIT_C, "-shared", "-fPIC")
        _cc(own / "memfdexec", MEMFD_C)
        _cc(own / "libplain.so", "int sealfs_plain(void) { return 1; }\n", "-shared", "-fPIC")
        shutil.copy(LDSO, own / "ld.so")
        for p in bindir.iterdir():
            p.chmod(0o755)
        for p in own.iterdir():
            os.chown(p, attacker.uid, attacker.gid)
        os.chown(own, attacker.uid, attacker.gid)
        yield Lab(bindir, own, attacker)
    finally:
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def attack(
    user: User | None, argv: list[str], *, env: dict | None = None, ready: bool = True, exe: str | None = None
) -> Iterator[subprocess.Popen]:
    """``argv`` running as ``user`` until the block ends, with ``env``
    added to its environment (by env(1), so that a preload is not the
    one of setpriv); waits for its "ready" line, or (``ready=False``)
    until it runs ``exe``."""
    cmd = ["env", *(f"{k}={v}" for k, v in (env or {}).items()), *argv]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=CLEAN_ENV, cwd="/")
    try:
        if ready:
            assert proc.stdout.readline() == b"ready\n", "the attacking process exited before it was ready"
        else:
            wait_exe(proc.pid, exe)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def wait_exe(pid: int, exe: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe") == exe:
                return
        assert time.monotonic() < deadline, f"process {pid} did not exec {exe}"
        time.sleep(0.01)


def policy(lab: Lab, **selectors: str) -> str:
    body = "\n".join(f"{k} = {v}" for k, v in selectors.items())
    return f"""
[workloads.w]
user = "{lab.attacker.name}"
{body}

[[rule]]
paths = ["/**"]
workloads = ["w"]
allow = ["read"]
"""


def verdict(text: str, ident) -> str | None:
    """None when the identity is in workload ``w``, else why not."""
    assert ident.valid, ident.problem
    return parse_policy(text).workloads["w"].mismatch(ident)


def identify(proc: subprocess.Popen, user: User, ident: Identifier | None = None):
    return (ident or Identifier()).identify(proc.pid, user.uid, user.gid)


# -- item 1: a preload that hides itself; other loaders ---------------------------------------


def test_a_preload_that_erases_itself_from_the_environment_is_refused(lab):
    text = policy(lab, exe=f'"{lab.prog("waiter")}"', no_preload="true")
    with attack(lab.attacker, [lab.prog("waiter")]) as p:
        assert verdict(text, identify(p, lab.attacker)) is None, "control: the program itself is in the workload"
    with attack(lab.attacker, [lab.prog("waiter")], env={"LD_PRELOAD": lab.mine("libhider.so")}) as p:
        assert b"LD_PRELOAD" not in Path(f"/proc/{p.pid}/environ").read_bytes(), "the library did not hide itself"
        i = identify(p, lab.attacker)
    assert i.preload == (), "the environment check sees nothing: the refusal must come from the mappings"
    why = verdict(text, i)
    assert why and "libhider.so" in why and "neither root's" in why


def test_a_loader_variable_seen_once_stays_seen_for_that_exec(lab):
    """The environment is looked at again (here at every request); a
    variable erased after the first look still counts, also after a policy
    reload."""
    ident = Identifier(stable_ttl=0)
    text = policy(lab, exe=f'"{lab.prog("eraser")}"', no_preload="true")
    with attack(lab.attacker, [lab.prog("eraser")], env={"LD_LIBRARY_PATH": "/nonexistent"}) as p:
        assert "LD_LIBRARY_PATH" in verdict(text, identify(p, lab.attacker, ident))
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"erased\n"
        assert b"LD_LIBRARY_PATH" not in Path(f"/proc/{p.pid}/environ").read_bytes()
        assert verdict(text, identify(p, lab.attacker)) is None, "control: a first look now sees nothing"
        assert "LD_LIBRARY_PATH" in verdict(text, identify(p, lab.attacker, ident))
        ident.forget()  # what a policy reload does: everything is gathered again, and what was seen stays seen
        assert "LD_LIBRARY_PATH" in verdict(text, identify(p, lab.attacker, ident))


def test_a_library_pinned_by_hash_is_allowed_and_only_with_that_hash(lab):
    lib = lab.mine("libplain.so")
    digest = hashlib.sha256(Path(lib).read_bytes()).hexdigest()
    with attack(lab.attacker, [lab.prog("dlopener"), lib]) as p:
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"loaded\n"
        i = identify(p, lab.attacker)
    assert verdict(policy(lab, no_preload="true"), i) is not None
    assert verdict(policy(lab, no_preload="true", libraries=f'{{"{lib}" = "{digest}"}}'), i) is None
    why = verdict(policy(lab, no_preload="true", libraries=f'{{"{lib}" = "{"0" * 64}"}}'), i)
    assert why and lib in why and digest in why


def test_a_policy_naming_a_library_that_does_not_exist_warns_and_refuses(lab):
    text = policy(lab, no_preload="true", libraries=f'{{"/nonexistent/libx.so" = "{"a" * 64}"}}')
    p = parse_policy(text)
    assert any("/nonexistent/libx.so" in w and "cannot be read" in w for w in p.warnings)
    device = parse_policy(policy(lab, no_preload="true", libraries=f'{{"/dev/zero" = "{"a" * 64}"}}'))
    assert any("/dev/zero" in w and "not a regular file" in w for w in device.warnings)
    with attack(lab.attacker, [lab.prog("dlopener"), lab.mine("libplain.so")]) as proc:
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"loaded\n"
        why = p.workloads["w"].mismatch(identify(proc, lab.attacker))
    assert why and "libplain.so" in why


def test_a_library_loaded_after_the_first_look_is_seen_at_the_next_request(lab):
    """dlopen maps new code: the virtual size changes, so the maps are read
    again even while the exec-stable part is still cached."""
    ident = Identifier(stable_ttl=3600)
    text = policy(lab, exe=f'"{lab.prog("dlopener")}"', no_preload="true")
    with attack(lab.attacker, [lab.prog("dlopener"), lab.mine("libplain.so")]) as p:
        assert verdict(text, identify(p, lab.attacker, ident)) is None
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"loaded\n"
        why = verdict(text, identify(p, lab.attacker, ident))
        assert why and "libplain.so" in why
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"closed\n"
        assert lab.mine("libplain.so").encode() not in Path(f"/proc/{p.pid}/maps").read_bytes()
        why = verdict(text, identify(p, lab.attacker, ident))
    assert why and "libplain.so" in why, "code that ran in this exec keeps it refused"


def test_a_root_owned_library_on_a_nosuid_file_system_is_not_roots(lab):
    """A user's FUSE mount may claim any owner for its files, and is always
    mounted nosuid: ownership by root means nothing there."""
    where = lab.bin.parent / "nosuid"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,mode=0755", "tmpfs", str(where)], check=True)
    try:
        lib = where / "libroot.so"
        shutil.copy(lab.mine("libplain.so"), lib)
        lib.chmod(0o755)
        assert (lib.stat().st_uid, lib.stat().st_mode & 0o022) == (0, 0)
        with attack(lab.attacker, [lab.prog("waiter")], env={"LD_PRELOAD": str(lib)}) as p:
            i = identify(p, lab.attacker)
        assert [path for path, _, _ in i.foreign_code] == [str(lib)]
        # control: the same file on the root file system is root's
        shutil.copy(lib, lab.bin / "libroot.so")
        with attack(lab.attacker, [lab.prog("waiter")], env={"LD_PRELOAD": str(lab.bin / "libroot.so")}) as p:
            assert identify(p, lab.attacker).foreign_code == ()
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


@pytest.mark.parametrize("how", ["LD_AUDIT", "ld.so --preload", "copied ld.so", "ld.so --audit"])
def test_other_loaders_are_refused(lab, how):
    """The loader's own ways to run code before the program, and a loader of
    the attacker's: each maps a file that is not root's."""
    plain = policy(lab, no_preload="true")
    pinned = policy(lab, exe=f'"{SLEEP}"', no_preload="true")
    argv, env = {
        "LD_AUDIT": ([SLEEP, "60"], {"LD_AUDIT": lab.mine("libaudit.so")}),
        "ld.so --preload": ([LDSO, "--preload", lab.mine("libplain.so"), SLEEP, "60"], {}),
        "copied ld.so": ([lab.mine("ld.so"), SLEEP, "60"], {}),
        "ld.so --audit": ([LDSO, "--audit", lab.mine("libaudit.so"), SLEEP, "60"], {}),
    }[how]
    exe = lab.mine("ld.so") if how == "copied ld.so" else (SLEEP if how == "LD_AUDIT" else LDSO)
    with attack(lab.attacker, argv, env=env, ready=False, exe=exe) as p:
        deadline = time.monotonic() + WAIT
        while not Path(f"/proc/{p.pid}/syscall").read_text().startswith("230 "):  # sleep sleeps: loading is done
            assert time.monotonic() < deadline, "sleep did not start sleeping"
            time.sleep(0.01)
        i = identify(p, lab.attacker)
    assert any(path.startswith(str(lab.own)) for path, _, _ in i.foreign_code), i.foreign_code
    why = verdict(plain, i)
    assert why and ("neither root's" in why or "LD_AUDIT" in why), why
    assert verdict(pinned, i) is not None


def test_memfd_and_fexecve_are_refused(lab):
    """A program run from memory: its exe is a memfd, which no path names."""
    with attack(lab.attacker, [lab.mine("memfdexec"), lab.prog("waiter")]) as p:
        i = identify(p, lab.attacker)
    assert i.exe.startswith("/memfd:") and i.exe_deleted
    assert "memory-only" in verdict(policy(lab, no_preload="true"), i)
    assert "deleted or replaced" in verdict(policy(lab, exe=f'"{lab.prog("waiter")}"'), i)
    # the same program, its hash pinned (the copy is byte for byte the same): still refused, it has no file
    digest = hashlib.sha256(Path(lab.prog("waiter")).read_bytes()).hexdigest()
    assert "memory-only" in verdict(policy(lab, exe_sha256=f'"{digest}"', no_preload="true"), i)


def test_anonymous_executable_memory_needs_jit(lab):
    with attack(lab.attacker, [lab.prog("anon")]) as p:
        i = identify(p, lab.attacker)
    assert i.memory_code and "anonymous executable memory" in i.memory_code[0]
    assert "does not say jit = true" in verdict(policy(lab, exe=f'"{lab.prog("anon")}"', no_preload="true"), i)
    assert verdict(policy(lab, exe=f'"{lab.prog("anon")}"', no_preload="true", jit="true"), i) is None


IDENTIFY_AS = """
import os, subprocess, sys
from sealfs.policy.identity import Identifier
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
p = subprocess.Popen([sys.argv[3]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
assert p.stdout.readline() == b"ready\\n"
i = Identifier().identify(p.pid, uid, gid)
print(i.valid, i.exe, i.code_problem, sep="\\n")
p.kill()
"""


def test_a_daemon_that_cannot_read_map_files_trusts_no_code(lab):
    """map_files needs CAP_SYS_ADMIN: a daemon without it (here: an
    Identifier run as the attacker's uid, on his own process) cannot tell
    whose code runs, and says so; no_preload then refuses."""
    out = subprocess.run(
        [sys.executable, "-c", IDENTIFY_AS, str(lab.attacker.uid), str(lab.attacker.gid), lab.prog("waiter")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    valid, exe, problem = out.stdout.splitlines()
    assert (valid, exe) == ("True", lab.prog("waiter"))
    assert "cannot inspect its executable mappings" in problem
    ident = Identity(1, lab.attacker.uid, lab.attacker.gid, exe=exe, code_problem=problem)
    why = verdict(policy(lab, exe=f'"{lab.prog("waiter")}"', no_preload="true"), ident)
    assert why and "cannot inspect" in why
    assert verdict(policy(lab, exe=f'"{lab.prog("waiter")}"'), ident) is None, "workloads without no_preload do not ask"


@pytest.mark.parametrize("what", ["exits", "execs"])
def test_a_process_that_exits_or_execs_while_it_is_looked_at_is_refused(lab, monkeypatch, what):
    """The process really exits (SIGKILL) or execs another program between
    the first read of its maps and the end of the look: the identity is
    invalid, never the new program's facts under the old one's name."""
    from sealfs.policy import mappings

    real = mappings.inspect
    proc = {}

    def meanwhile(*args, **kwargs):
        p = proc["p"]
        if what == "exits":
            p.kill()
            deadline = time.monotonic() + WAIT
            while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        else:
            p.stdin.write(b"\n")
            p.stdin.flush()
            assert p.stdout.readline() == b"ready\n"
        return real(*args, **kwargs)

    monkeypatch.setattr(mappings, "inspect", meanwhile)
    with attack(lab.attacker, [lab.prog("execer"), lab.prog("execee")]) as p:
        proc["p"] = p
        i = identify(p, lab.attacker)
    assert not i.valid and ("exec'd" in i.problem or "exited" in i.problem), i


# -- item 4: a user namespace and a bind mount -------------------------------------------------


def test_a_bind_mount_in_a_user_namespace_cannot_lend_the_allowed_path(lab):
    allowed = lab.prog("waiter")
    text = policy(lab, exe=f'"{allowed}"')
    fake = ["unshare", "-Urm", "sh", "-c", f'mount --bind "{CAT}" "{allowed}" && exec "{allowed}"']
    with attack(lab.attacker, fake, ready=False, exe=allowed) as p:
        assert os.stat(f"/proc/{p.pid}/exe").st_ino == os.stat(CAT).st_ino, "cat runs under the allowed name"
        why = verdict(text, identify(p, lab.attacker))
    assert why and "deleted or replaced" in why
    # control: the real program in such a namespace is the program
    with attack(lab.attacker, ["unshare", "-Urm", allowed]) as p:
        assert verdict(text, identify(p, lab.attacker)) is None


def test_a_bind_mount_cannot_lend_the_allowed_script_path_either(lab):
    script = lab.bin / "service.py"
    script.write_text(SERVICE_PY)
    script.chmod(0o644)
    evil = lab.own / "evil.py"
    evil.write_text("print('ready', flush=True)\nimport sys\nsys.stdin.read()  # the attacker's\n")
    os.chown(evil, lab.attacker.uid, lab.attacker.gid)
    text = policy(lab, exe=f'"{PYTHON}"', script=f'"{script}"')
    with attack(lab.attacker, [PYTHON, "-I", str(script)]) as p:
        assert verdict(text, identify(p, lab.attacker)) is None, "control: the script itself"
    fake = ["unshare", "-Urm", "sh", "-c", f'mount --bind "{evil}" "{script}" && exec "{PYTHON}" -I "{script}"']
    with attack(lab.attacker, fake) as p:
        i = identify(p, lab.attacker)
    assert i.script_sha256 == hashlib.sha256(evil.read_bytes()).hexdigest()
    assert i.script is None
    assert "script (none)" in verdict(text, i)


# -- item 5: the exec-identity cache -------------------------------------------------------------


def test_an_exec_without_address_randomisation_gets_a_new_identity(lab):
    """``setarch -R``: the stack and argument addresses are the same for
    two programs with arguments of the same lengths, so they cannot tell
    the execs apart; the address space (held by an open maps) can."""
    ident = Identifier(stable_ttl=3600)
    text = policy(lab, exe=f'"{lab.prog("execer")}"')
    with attack(lab.attacker, ["setarch", "-R", lab.prog("execer"), lab.prog("execee")]) as p:
        assert verdict(text, identify(p, lab.attacker, ident)) is None
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"ready\n"
        i = identify(p, lab.attacker, ident)
    assert i.exe == lab.prog("execee")
    assert verdict(text, i) is not None


def test_a_vfork_child_that_execs_gets_a_new_identity(lab):
    """A vfork child shares its parent's address space until it execs, so a
    maps descriptor opened on it then still reads afterwards (the parent
    keeps it alive): the new layout of the child tells the exec."""
    ident = Identifier(stable_ttl=3600)
    with attack(lab.attacker, [lab.prog("vforker"), lab.prog("execee")], ready=False, exe=lab.prog("vforker")) as p:
        child = int(p.stdout.readline())
        first = ident.identify(child, lab.attacker.uid, lab.attacker.gid)
        assert first.exe == lab.prog("vforker")
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"ready\n"
        assert os.readlink(f"/proc/{child}/exe") == lab.prog("execee")
        assert Path(f"/proc/{p.pid}/exe").exists(), "the parent (and the shared address space) lives on"
        second = ident.identify(child, lab.attacker.uid, lab.attacker.gid)
    assert second.exe == lab.prog("execee")


def test_exec_of_the_same_program_is_looked_at_again(lab):
    """Even an exec of the very same file starts a new look: what the new
    program maps is not what the old one did."""
    ident = Identifier(stable_ttl=3600)
    with attack(lab.attacker, [lab.prog("execer"), lab.prog("execer"), "/x"]) as p:
        first = identify(p, lab.attacker, ident)
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"ready\n"
        second = identify(p, lab.attacker, ident)
    assert first.valid and second.valid and first is not second


# -- item 6: Python workloads --------------------------------------------------------------------


SERVICE_PY = "print('ready', flush=True)\nimport sys\nsys.stdin.read()\n"
# code the attacker gets run, which then erases its traces from the environment and the command line
SNEAKY = "import os\nopen(os.environ.get('SEALFS_MARK', '/dev/null'), 'w').write('ran')\n"


def _python_lab(lab: Lab) -> tuple[Path, str]:
    script = lab.bin / "service.py"
    script.write_text(SERVICE_PY)
    script.chmod(0o644)
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    return script, policy(lab, exe=f'"{PYTHON}"', script=f'"{script}"', script_sha256=f'"{digest}"', no_preload="true")


def _attacker_home(lab: Lab, name: str) -> Path:
    """A HOME whose user site-packages hold a .pth and usercustomize."""
    home = lab.own / name
    ver = subprocess.run(
        [PYTHON, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    site = home / ".local" / "lib" / f"python{ver}" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    (site / "usercustomize.py").write_text(SNEAKY)
    (site / "evil.pth").write_text("import usercustomize\n")
    for p in [home, *home.rglob("*")]:
        os.chown(p, lab.attacker.uid, lab.attacker.gid)
    return home


@pytest.mark.parametrize("how", ["plain", "HOME with usercustomize", "PYTHONPATH", "PYTHONSTARTUP -i", "-I -i"])
def test_python_that_may_load_the_callers_code_is_refused(lab, how):
    script, text = _python_lab(lab)
    mark = lab.own / f"mark-{how.replace(' ', '_')}"
    pydir = lab.own / "pypath"
    pydir.mkdir(exist_ok=True)
    (pydir / "sitecustomize.py").write_text(SNEAKY)
    (lab.own / "startup.py").write_text(SNEAKY)
    env = {"SEALFS_MARK": str(mark)}
    argv = [PYTHON, str(script)]
    if how == "HOME with usercustomize":
        env["HOME"] = str(_attacker_home(lab, "home1"))
    elif how == "PYTHONPATH":
        env["PYTHONPATH"] = str(pydir)
    elif how == "PYTHONSTARTUP -i":
        env["PYTHONSTARTUP"] = str(lab.own / "startup.py")
        argv = [PYTHON, "-i", str(script)]
    elif how == "-I -i":
        argv = [PYTHON, "-I", "-i", str(script)]
    with attack(lab.attacker, argv, env=env) as p:
        i = identify(p, lab.attacker)
    assert i.script == str(script)
    why = verdict(text, i)
    assert why and "python" in why.lower() and ("no_preload" in why or "stdin" in why)
    if how in ("HOME with usercustomize", "PYTHONPATH"):
        assert mark.exists(), "control: the attacker's code ran"


def test_isolated_python_is_allowed_and_ignores_the_callers_files(lab):
    script, text = _python_lab(lab)
    home = _attacker_home(lab, "home2")
    mark = lab.own / "mark-isolated"
    with attack(
        lab.attacker,
        [PYTHON, "-I", str(script)],
        env={"HOME": str(home), "PYTHONPATH": str(home), "SEALFS_MARK": str(mark)},
    ) as p:
        i = identify(p, lab.attacker)
    assert not mark.exists(), "python -I ran the attacker's code"
    assert i.preload == (), "python -I ignores PYTHONPATH"
    assert verdict(text, i) is None
    with attack(lab.attacker, [PYTHON, "-I", str(script)], env={"HOME": str(home)}) as p:
        assert verdict(text, identify(p, lab.attacker)) is None
    with attack(lab.attacker, [PYTHON, "-E", "-s", str(script)]) as p:
        assert verdict(text, identify(p, lab.attacker)) is None


@pytest.mark.parametrize("how", ["-i", "PYTHONINSPECT", "control"])
def test_a_script_workload_refuses_python_that_reads_more_code_from_stdin(lab, how):
    """Without no_preload too: with -i (or PYTHONINSPECT), what runs is the
    script and then whatever comes on stdin."""
    script = lab.bin / "service.py"
    script.write_text(SERVICE_PY)
    script.chmod(0o644)
    text = policy(lab, script=f'"{script}"', script_sha256=f'"{hashlib.sha256(script.read_bytes()).hexdigest()}"')
    argv = [PYTHON, "-i", str(script)] if how == "-i" else [PYTHON, str(script)]
    env = {"PYTHONINSPECT": "1"} if how == "PYTHONINSPECT" else {}
    with attack(lab.attacker, argv, env=env) as p:
        i = identify(p, lab.attacker)
    assert i.script == str(script)
    why = verdict(text, i)
    if how == "control":
        assert why is None
    else:
        assert why and "reads code from stdin" in why


def test_policy_check_warns_that_python_with_no_preload_needs_minus_I(lab):
    p = parse_policy(policy(lab, exe=f'"{PYTHON}"', no_preload="true"))
    assert any("-I" in w for w in p.warnings)
    assert not any("-I" in w for w in parse_policy(policy(lab, exe=f'"{SLEEP}"', no_preload="true")).warnings)


@pytest.mark.parametrize(
    "argv, risks",
    [
        (["python3", "-I", "app.py"], 0),
        (["python3", "-Es", "app.py"], 0),
        (["python3", "-E", "-s", "-B", "app.py"], 0),
        (["python3", "-IWignore", "app.py"], 0),
        (["python3", "-W", "ignore", "-I", "app.py"], 0),
        (["python3", "app.py", "-I"], 1),  # an argument of the script, not of python
        (["python3", "-E", "app.py"], 1),
        (["python3", "-Ii", "app.py"], 1),
        (["python3", "-i", "app.py"], 2),
        (["python3", "-c", "-I"], 1),
        (["python3", "-X", "-I", "app.py"], 1),  # -I is the value of -X here
    ],
)
def test_python_startup_flags(argv, risks):
    assert len(python_startup(b"\0".join(a.encode() for a in argv) + b"\0")) == risks


# -- the same attacks through a real mount ---------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["local"])
def test_through_a_mount_the_hiding_preload_and_the_lent_path_read_nothing(lab, make_policy_mount):
    allowed = lab.prog("reader")
    _cc(
        lab.bin / "reader",
        r"""
#include <stdio.h>
int main(int argc, char **argv) {
    char buf[256]; size_t n; FILE *f = fopen(argv[1], "r");
    if (!f) { perror(argv[1]); return 13; }
    n = fread(buf, 1, sizeof buf, f); fwrite(buf, 1, n, stdout); return 0;
}
""",
    )
    os.chmod(allowed, 0o755)
    text = f"""
[workloads.setup]
exe = "{os.path.realpath(shutil.which("cp"))}"
uid = 0

[workloads.svc]
exe = "{allowed}"
user = "{lab.attacker.name}"
no_preload = true

[workloads.front]
exe = "{allowed}"
user = "{lab.attacker.name}"

[[rule]]
paths = ["/**"]
workloads = ["setup"]
allow = ["create", "write", "list"]

[[rule]]
paths = ["/svc/**"]
workloads = ["svc"]
allow = ["read", "list"]

[[rule]]
paths = ["/front/**"]
workloads = ["front"]
allow = ["read", "list"]
"""
    m = make_policy_mount(text)
    (lab.own / "tree").mkdir(exist_ok=True)
    (lab.own / "tree" / "secret").write_text("the secret\n")
    for d in ("svc", "front"):
        subprocess.run(["cp", "-r", str(lab.own / "tree"), str(m.path / d)], check=True, env=CLEAN_ENV)
    target = str(m.path / "svc" / "secret")
    assert_ok(run_as(lab.attacker, [allowed, target]), "control: the allowed program reads")
    hidden = run_as(lab.attacker, [allowed, target], wrapper=["env", f"LD_PRELOAD={lab.mine('libhider.so')}"])
    assert "the secret" not in hidden.stdout
    assert_refused(hidden, errno.EACCES, "the allowed program with a preload that hides itself")
    assert any("libhider.so" in a["reason"] for a in m.denials(path="/svc/secret"))
    target = str(m.path / "front" / "secret")
    assert_ok(run_as(lab.attacker, ["unshare", "-Urm", allowed, target]), "control: the program in a namespace")
    # the front workload (no hash, no no_preload): cat under the allowed name, in a namespace of its own
    lent = run_as(
        lab.attacker,
        ["unshare", "-Urm", "sh", "-c", f'mount --bind "{CAT}" "{allowed}" && exec "{allowed}" "{target}"'],
    )
    assert "the secret" not in lent.stdout
    assert lent.returncode != 0, lent
    assert any("deleted or replaced" in a["reason"] for a in m.denials(path="/front/secret"))
