"""Careless files and host settings (issue 13, item 7): warnings at mount,
reload and ``sealfs policy check`` for a policy file that others may
change, key files that others may read, an ``exe`` that is a symbolic
link; and ``sealfs doctor``.  Files are given to other users with chown
and chmod, as a careless admin would."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .policyhelp import CLEAN_ENV, sealfs, wait_exec

LOCAL = pytest.mark.parametrize("store_kind", ["local"])

SAFE = """
[workloads.admin]
uid = 0

[[rule]]
paths = ["/**"]
workloads = ["admin"]
allow = ["read", "list"]
"""


def _check(f: Path) -> str:
    proc = sealfs("policy", "check", str(f))
    return proc.stderr.decode()


def test_a_policy_file_others_may_change(tmp_path, users):
    f = tmp_path / "p.toml"
    f.write_text(SAFE)
    f.chmod(0o644)
    assert _check(f) == "", "a root-owned 0644 file in root's directories: no warning"
    f.chmod(0o666)
    err = _check(f)
    assert f"{f} is writable by its group and others (mode 0666)" in err and "next reload" in err, err
    f.chmod(0o644)
    os.chown(f, users["frontend"].uid, 0)
    assert f"{f} is owned by uid {users['frontend'].uid}" in _check(f)


def test_a_directory_above_it_that_others_may_write(tmp_path, users):
    d = tmp_path / "conf"
    d.mkdir()
    f = d / "p.toml"
    f.write_text(SAFE)
    d.chmod(0o777)
    assert f"its directory {d} is writable by its group and others (mode 0777)" in _check(f)
    d.chmod(0o1777)  # sticky and root's, like /tmp: others cannot replace root's file
    assert _check(f) == ""
    d.chmod(0o755)
    os.chown(d, users["frontend"].uid, 0)
    assert f"its directory {d} is owned by uid {users['frontend'].uid}" in _check(f)
    os.chown(d, 0, 0)
    # a symbolic link into a directory someone else owns: the target's directories count
    other = tmp_path / "theirs"
    other.mkdir()
    (other / "real.toml").write_text(SAFE)
    os.chown(other, users["frontend"].uid, 0)
    link = d / "link.toml"
    link.symlink_to(other / "real.toml")
    assert f"its directory {other} is owned by uid {users['frontend'].uid}" in _check(link)


def test_an_exe_that_is_a_symbolic_link(tmp_path):
    target = os.path.realpath("/usr/bin/python3")
    assert target != "/usr/bin/python3", "this test needs /usr/bin/python3 to be a symbolic link"
    f = tmp_path / "p.toml"
    f.write_text(
        SAFE + '\n[workloads.py]\nexe = "/usr/bin/python3"\nuid = 0\n\n[[rule]]\npaths = ["/x"]\n'
        'workloads = ["py"]\nallow = ["read"]\n'
    )
    err = _check(f)
    assert (
        f"exe '/usr/bin/python3' of workload 'py' is a symbolic link to {target}" in err
        and f'write exe = "{target}"' in err
    ), err


@LOCAL
def test_warnings_at_mount_and_at_reload(make_policy_mount):
    m = make_policy_mount(None)
    m.unmount()
    m.set_policy(SAFE)
    m.policy_file.chmod(0o666)
    m.keyfile.chmod(0o644)
    proc = sealfs("mount", m.url, str(m.path), "-o", m.options())
    err = proc.stderr.decode()
    assert f"{m.policy_file} is writable by its group and others" in err, err
    assert f"key file {m.keyfile}: {m.keyfile} is readable by its group and others (mode 0644)" in err, err
    log = m.log.read_text()
    assert f"policy: {m.policy_file}: the policy file: {m.policy_file} is writable" in log
    m.policy_file.chmod(0o644)
    m.keyfile.chmod(0o600)
    m.reload(SAFE)
    before = m.log.read_text().count("the policy file:")
    m.policy_file.chmod(0o646)
    m.reload(SAFE)
    assert m.log.read_text().count("the policy file:") == before + 1, "the reload warns"
    assert f"{m.policy_file} is writable by others (mode 0646)" in m.log.read_text()
    m.policy_file.chmod(0o644)
    m.reload(
        SAFE + '\n[workloads.sh]\nexe = "/usr/bin/dash"\nuid = 0\n\n[[rule]]\npaths = ["/x"]\n'
        'workloads = ["sh"]\nallow = ["read"]\n'
    )
    assert "workload sh tells processes of one uid apart, but this kernel has no Yama" in m.log.read_text()


def test_key_and_pass_files_others_may_read(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(64))
    key.chmod(0o600)
    store = f"file://{tmp_path}/store"
    quiet = sealfs("init", store, "--keyfile", str(key))
    assert b"warning" not in quiet.stderr
    key.chmod(0o640)
    err = sealfs("ls", store, "--keyfile", str(key)).stderr.decode()
    assert f"key file {key}: {key} is readable by its group (mode 0640); chmod 600 {key}" in err, err
    pf = tmp_path / "pass"
    pf.write_text("a passphrase\n")
    pf.chmod(0o604)
    got = sealfs("ls", store, "--passfile", str(pf), check=False).stderr.decode()  # (no such slot: exit 3)
    assert f"pass file {pf}: {pf} is readable by others (mode 0604)" in got, got


def _doctor(*args: str) -> subprocess.CompletedProcess:
    return sealfs("doctor", *args, check=False)


def test_doctor(tmp_path, users, shop):
    pay = users["payments"]
    f = tmp_path / "p.toml"
    key = tmp_path / "key"
    key.write_bytes(os.urandom(64))
    key.chmod(0o600)
    f.write_text(SAFE)
    clean = _doctor("-o", f"policy={f},keyfile={key}")
    out = clean.stdout.decode()
    assert clean.returncode == 0, out
    assert "info: kernel: no Yama" in out and "ok: fs.suid_dumpable = 0" in out
    assert f"ok: key file {key}: readable and writable by trusted users only" in out
    assert out.strip().endswith("0 warnings")

    exe = shop.exe("payments")
    f.write_text(
        SAFE + f'\n[workloads.pay]\nexe = "{exe}"\nuser = "{pay.name}"\n\n[[rule]]\npaths = ["/p/**"]\n'
        'workloads = ["pay"]\nallow = ["read"]\n'
    )
    key.chmod(0o644)
    sleeper = subprocess.Popen(
        ["setpriv", f"--reuid={pay.uid}", f"--regid={pay.gid}", "--clear-groups", "sleep", "60"], env=CLEAN_ENV
    )
    try:
        wait_exec(sleeper.pid, os.path.realpath("/usr/bin/sleep"))
        bad = _doctor("--policy", str(f), "-o", f"keyfile={key}")
    finally:
        sleeper.kill()
        sleeper.wait()
    out = bad.stdout.decode()
    assert bad.returncode == 1, out
    assert f"warning: key file {key}: {key} is readable by its group and others" in out
    assert "warning: workload pay: this kernel has no Yama" in out and "add nondumpable = true" in out
    assert (
        f"warning: workload pay: uid {pay.uid} also runs other programs ({os.path.realpath('/usr/bin/sleep')}" in out
    ), out
    assert f"ok: workload pay: exe {exe} is writable by trusted users only" in out
    exe.chmod(0o777)
    try:
        out = _doctor("--policy", str(f)).stdout.decode()
    finally:
        exe.chmod(0o755)
    assert f"warning: workload pay: exe {exe} is writable by its group and others (mode 0777)" in out, out
    assert "(no sha256 pinned)" in out


def test_doctor_on_setgid_programs(tmp_path, users, shop):
    """A program setgid to another group is non-dumpable from its exec (ok);
    setgid to its user's own group it stays dumpable (a warning), which a
    run of it shows."""
    pay = users["payments"]
    exe = shop.dir / "payments-setgid"
    shutil.copyfile(shop.exe("payments"), exe)
    f = tmp_path / "p.toml"
    f.write_text(
        SAFE + f'\n[workloads.pay]\nexe = "{exe}"\nuser = "{pay.name}"\nnondumpable = true\n\n'
        '[[rule]]\npaths = ["/p/**"]\nworkloads = ["pay"]\nallow = ["read"]\n'
    )
    fifo = shop.dir / "payments-fifo"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    try:
        for group, dumpable in ((users["customer"].gid, False), (pay.gid, True)):
            os.chown(exe, 0, group)
            exe.chmod(0o2755)
            out = _doctor("--policy", str(f)).stdout.decode()
            if dumpable:
                assert f"warning: workload pay: exe {exe} is setgid to its users' own group" in out, out
            else:
                assert f"ok: workload pay: exe {exe} is setgid: not dumpable from its exec" in out, out
            # what the kernel does with it: the program waits, opening a fifo nobody writes
            proc = subprocess.Popen(
                ["setpriv", f"--reuid={pay.uid}", f"--regid={pay.gid}", "--clear-groups", str(exe), "read", str(fifo)],
                env=CLEAN_ENV,
            )
            try:
                wait_exec(proc.pid, str(exe))
                owner = os.stat(f"/proc/{proc.pid}/stat").st_uid
            finally:
                proc.kill()
                proc.wait()
            assert (owner == pay.uid) == dumpable, (group, owner)
    finally:
        exe.unlink()
        fifo.unlink()
