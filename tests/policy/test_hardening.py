"""The daemon holds keys and plaintext: other users must not read its
/proc entries or attach a debugger, and it writes no core dumps.

``harden()`` itself is checked where it makes a difference one can see:
in a process of an ordinary user, whose /proc entries that same user may
read and whose memory he may ptrace — unless it made itself non-dumpable.
The control (the same process without harden) shows the test can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .policyhelp import CLEAN_ENV, run_as

CHILD = """
import ctypes, os, sys
from sealfs.daemon import harden
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # dumpable again, as after any exec (setuid cleared it)
if sys.argv[3] == "harden":
    harden()
print("ready", flush=True)
sys.stdin.read()
"""


def _gdb() -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.fail("gdb is not installed (scripts/setup installs it)")
    return gdb


def _attach(user, pid: int) -> subprocess.CompletedProcess:
    return run_as(user, [_gdb(), "-nx", "-batch", "-p", str(pid), "-ex", "detach"], timeout=120)


@pytest.mark.parametrize("hardened", [True, False], ids=["harden", "control"])
def test_harden_makes_a_process_unreadable_even_for_its_own_user(users, hardened):
    user = users["frontend"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(user.uid), str(user.gid), "harden" if hardened else "control"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**CLEAN_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert proc.stdout.readline() == b"ready\n"
        pid = proc.pid
        owner = os.stat(f"/proc/{pid}/environ").st_uid
        environ = run_as(user, ["cat", f"/proc/{pid}/environ"])
        attach = _attach(user, pid)
        limits = Path(f"/proc/{pid}/limits").read_text()
    finally:
        proc.kill()
        proc.wait()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size")).split()
    if hardened:
        assert owner == 0, "a non-dumpable process's /proc entries belong to root"
        assert environ.returncode != 0 and "Permission denied" in environ.stderr
        assert "Operation not permitted" in attach.stdout + attach.stderr, attach
        assert core[4:6] == ["0", "0"], core
    else:
        assert owner == user.uid
        assert environ.returncode == 0, environ.stderr
        assert attach.returncode == 0 and "Operation not permitted" not in attach.stdout + attach.stderr, attach
        assert f"(process {pid}) detached" in attach.stdout, attach


@pytest.mark.parametrize("store_kind", ["local"])
def test_the_daemon_is_closed_to_other_users(make_policy_mount, users):
    m = make_policy_mount(None)
    pid = m.daemon_pid()
    stranger = users["frontend"]
    for entry in ("environ", "mem", "maps", "cmdline"):
        got = run_as(stranger, ["cat", f"/proc/{pid}/{entry}"])
        if entry == "cmdline":  # readable by design (ps shows it): it holds no secret, keys never come from argv
            assert got.returncode == 0 and "keyfile=" in got.stdout
            continue
        assert got.returncode != 0 and "Permission denied" in got.stderr, (entry, got)
    attach = _attach(stranger, pid)
    assert "Operation not permitted" in attach.stdout + attach.stderr, attach
    limits = Path(f"/proc/{pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size")).split()
    assert core[4:6] == ["0", "0"], f"core dumps are not disabled: {core}"
    assert "non-dumpable" not in m.log.read_text(), "harden() reported a failure"
