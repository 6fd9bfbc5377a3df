"""Each FUSE operation is checked against the policy, with the operation
sealfs-policy(5) says it needs.  The caller is this test process itself
(workload ``me``: its Python executable as root); the tree is made by
``setup`` (coreutils as root).  Every refusal must be the policy's: root
passes the file modes, and each one has its audit line."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from .policyhelp import is_mounted, run_as, sealfs

PY = os.path.realpath(sys.executable)
TOOLS = {t: os.path.realpath(shutil.which(t)) for t in ("mkdir", "cp", "ln")}
ALL = '["read", "write", "create", "delete", "list", "rename", "setattr", "xattr"]'

POLICY = f"""
[workloads.setup]
exe = {list(TOOLS.values())!r}
uid = 0

[workloads.me]
exe = "{PY}"
uid = 0

[[rule]]
paths = ["/**"]
workloads = ["setup"]
allow = {ALL}

[[rule]]
paths = ["/", "/rw/**"]
workloads = ["me"]
allow = ["read", "write", "create", "delete", "list", "rename", "setattr"]

[[rule]]
paths = ["/ro/**"]
workloads = ["me"]
allow = ["read", "list"]

[[rule]]
paths = ["/keep/**"]
workloads = ["me"]
allow = ["read", "write", "create", "list", "rename", "setattr"]

[[rule]]
paths = ["/x/**"]
workloads = ["me"]
allow = ["read", "list", "xattr"]

[[rule]]
paths = ["/rw/secret*"]
workloads = ["me"]
deny = ["read"]

[[rule]]
paths = ["/hidden/**"]
workloads = ["me"]
deny = ["read", "list"]
hide = true
""".replace("'", '"')


def refused(code: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, f"{fn.__name__}{args}: {info.value!r}, expected {errno.errorcode[code]}"


def test_each_operation_needs_its_permission(make_policy_mount, tmp_path):
    m = make_policy_mount(POLICY)
    mnt = m.path
    src = tmp_path / "src"
    src.write_text("data\n")
    setup = [
        [TOOLS["mkdir"], "-p", *(str(mnt / d) for d in ("rw", "ro", "keep/d", "x", "hidden"))],
    ]
    for f in ("ro/f", "rw/f", "rw/a", "rw/c", "rw/secret1", "keep/f", "x/f", "hidden/f"):
        setup.append([TOOLS["cp"], str(src), str(mnt / f)])
    setup.append([TOOLS["ln"], "-s", "f", str(mnt / "ro" / "link")])
    for argv in setup:
        proc = run_as(None, argv)
        assert proc.returncode == 0, f"{argv}: {proc.stderr}"

    # read-only tree
    assert (mnt / "ro" / "f").read_text() == "data\n"
    assert sorted(os.listdir(mnt / "ro")) == ["f", "link"]
    assert os.readlink(mnt / "ro" / "link") == "f"
    refused(errno.EACCES, os.open, mnt / "ro" / "f", os.O_WRONLY)
    refused(errno.EACCES, os.open, mnt / "ro" / "f", os.O_RDWR)
    refused(errno.EACCES, os.open, mnt / "ro" / "f", os.O_RDONLY | os.O_TRUNC)
    refused(errno.EACCES, os.truncate, mnt / "ro" / "f", 1)
    refused(errno.EACCES, os.chmod, mnt / "ro" / "f", 0o600)
    refused(errno.EACCES, os.chown, mnt / "ro" / "f", 1, 1)
    refused(errno.EACCES, os.utime, mnt / "ro" / "f", (1, 1))
    refused(errno.EACCES, os.open, mnt / "ro" / "new", os.O_WRONLY | os.O_CREAT, 0o644)
    refused(errno.EACCES, os.mkdir, mnt / "ro" / "d")
    refused(errno.EACCES, os.symlink, "f", mnt / "ro" / "s")
    refused(errno.EACCES, os.unlink, mnt / "ro" / "f")
    assert (mnt / "ro" / "f").read_text() == "data\n", "nothing changed"

    # full rights, but deny wins on secret*
    (mnt / "rw" / "new").write_text("new\n")
    os.chmod(mnt / "rw" / "new", 0o600)
    os.utime(mnt / "rw" / "new", (1, 1))
    os.truncate(mnt / "rw" / "new", 2)
    os.rename(mnt / "rw" / "new", mnt / "rw" / "renamed")
    os.mkdir(mnt / "rw" / "d")
    os.rmdir(mnt / "rw" / "d")
    os.unlink(mnt / "rw" / "renamed")
    refused(errno.EACCES, open, mnt / "rw" / "secret1")
    with open(mnt / "rw" / "secret1", "w") as f:  # write is not denied
        f.write("overwritten\n")

    # no delete in /keep: not by unlink, rmdir, or a rename away or over it
    refused(errno.EACCES, os.unlink, mnt / "keep" / "f")
    refused(errno.EACCES, os.rmdir, mnt / "keep" / "d")
    refused(errno.EACCES, os.rename, mnt / "keep" / "f", mnt / "rw" / "f2")
    refused(errno.EACCES, os.rename, mnt / "rw" / "c", mnt / "keep" / "f")
    refused(errno.EACCES, os.rename, mnt / "rw" / "a", mnt / "ro" / "a")  # no create in /ro
    os.rename(mnt / "rw" / "c", mnt / "keep" / "moved")  # delete in /rw, create + rename in /keep
    refused(errno.EACCES, os.rename, mnt / "keep" / "moved", mnt / "keep" / "again")
    assert sorted(os.listdir(mnt / "keep")) == ["d", "f", "moved"]
    with open(mnt / "keep" / "fresh", "w") as f:  # (not in the store until its first flush)
        f.write("not flushed yet\n")
        refused(errno.EACCES, os.rename, mnt / "rw" / "a", mnt / "keep" / "fresh")
    assert (mnt / "keep" / "fresh").read_text() == "not flushed yet\n"

    # xattrs
    refused(errno.EACCES, os.setxattr, mnt / "rw" / "f", "user.k", b"v")
    refused(errno.EACCES, os.listxattr, mnt / "rw" / "f")
    refused(errno.ENODATA, os.getxattr, mnt / "rw" / "f", "security.capability")  # asked by the kernel itself
    os.setxattr(mnt / "x" / "f", "user.k", b"v")
    assert os.getxattr(mnt / "x" / "f", "user.k") == b"v"
    assert os.listxattr(mnt / "x" / "f") == ["user.k"]

    # hidden: the name does not exist
    refused(errno.ENOENT, os.stat, mnt / "hidden")
    refused(errno.ENOENT, open, mnt / "hidden" / "f")
    assert sorted(os.listdir(mnt)) == ["keep", "ro", "rw", "x"]
    assert run_as(None, [TOOLS["cp"], str(mnt / "hidden" / "f"), str(tmp_path / "copy")]).returncode == 0, (
        "setup is not hidden from"
    )

    # root running another program is in no workload
    proc = run_as(None, ["cat", str(mnt / "rw" / "f")])
    assert proc.returncode != 0 and "Permission denied" in proc.stderr

    # every refusal above is in the audit log, with the operation that was missing
    seen = {(a["op"], a["path"]) for a in m.denials(workload=["me"])}
    for expected in [
        ("write", "/ro/f"),
        ("setattr", "/ro/f"),
        ("create", "/ro/new"),
        ("create", "/ro/d"),
        ("delete", "/ro/f"),
        ("read", "/rw/secret1"),
        ("delete", "/keep/f"),
        ("delete", "/keep/d"),
        ("delete", "/keep/moved"),
        ("rename", "/ro/a"),
        ("xattr", "/rw/f"),
        ("lookup", "/hidden"),
    ]:
        assert expected in seen, f"no audit line for {expected}: {sorted(seen)}"
    assert m.denials(op="read", path="/rw/f", exe=os.path.realpath(shutil.which("cat")), workload=[])


def test_mount_without_policy_says_so_and_refuses_audit_log_alone(make_policy_mount, tmp_path):
    m = make_policy_mount(None)
    assert "NO ACCESS POLICY" in m.log.read_text()
    (m.path / "f").write_text("x")  # modes only: root may
    other = tmp_path / "other"
    other.mkdir()
    proc = sealfs("mount", m.url, str(other), "-o", m.options() + f",audit_log={tmp_path / 'a.log'}", check=False)
    assert proc.returncode == 2 and "audit_log= needs policy=" in proc.stderr.decode()
    assert not is_mounted(other)


def test_an_invalid_policy_is_refused_before_mounting(make_policy_mount, tmp_path):
    m = make_policy_mount(None)
    bad = tmp_path / "bad.toml"
    bad.write_text('[workloads.w]\nuid = 1\n\n[[rule]]\npaths = ["/a/**"]\nworkloads = ["w"]\nallow = ["reed"]\n')
    other = tmp_path / "other"
    other.mkdir()
    proc = sealfs("mount", m.url, str(other), "-o", m.options() + f",policy={bad}", check=False)
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2, err
    assert (
        err == f"sealfs: {bad}:7: unknown operation 'reed' in allow of rule 1; operations are read, write, "
        "create, delete, list, rename, setattr, xattr"
    )
    assert not is_mounted(other)
    proc = sealfs("mount", m.url, str(other), "-o", m.options() + f",policy={tmp_path / 'missing.toml'}", check=False)
    assert proc.returncode == 2 and "cannot read the policy file" in proc.stderr.decode()
    assert not is_mounted(other)


def test_readdir_filters_only_what_is_hidden_from_the_opener(make_policy_mount, shop, users):
    """A directory handle keeps its opener: business lists /customers in
    full while the front end does not even see /customers."""
    text = f"""
[workloads.me]
exe = "{PY}"
uid = 0
[workloads.frontend]
uid = {users["frontend"].uid}
[[rule]]
paths = ["/**"]
workloads = ["me", "frontend"]
allow = ["read", "write", "create", "list"]
[[rule]]
paths = ["/customers/**", "/z*"]
workloads = ["frontend"]
deny = ["list"]
hide = true
"""
    m = make_policy_mount(text)
    for name in ("customers", "reports", "zeta", "alpha"):
        (m.path / name).mkdir()
    (m.path / "customers" / "alice").write_text("a")
    assert sorted(os.listdir(m.path)) == ["alpha", "customers", "reports", "zeta"]
    listing = run_as(users["frontend"], ["ls", "-1", str(m.path)])
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["alpha", "reports"]
    assert sorted(os.listdir(m.path)) == ["alpha", "customers", "reports", "zeta"], "still all there for me"
    gone = run_as(users["frontend"], ["ls", str(m.path / "customers")])
    assert gone.returncode != 0 and "No such file" in gone.stderr
    assert os.listdir(m.path / "customers") == ["alice"]


def test_kernel_requests_and_vanished_callers_are_denied():
    """pid 0 and a pid that no longer exists never get in; the daemon's own
    threads (it hashes a script that lives on its own mount) always do."""
    from sealfs.policy.guard import Guard, PolicyDenied
    from sealfs.policy.rules import parse_policy

    g = Guard(parse_policy(f'[workloads.w]\nuid = 0\n[[rule]]\npaths = ["/**"]\nworkloads = ["w"]\nallow = {ALL}\n'))
    g.check(os.getpid(), 0, 0, ("read",), "/x")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        g.check(sleeper.pid, 0, 0, ("read",), "/x")  # root's processes are in workload w
    finally:
        sleeper.kill()
        sleeper.wait()
    nobody = Guard(
        parse_policy('[workloads.w]\nuid = 12345\n[[rule]]\npaths = ["/**"]\nworkloads = ["w"]\nallow = ["read"]\n')
    )
    nobody.check(os.getpid(), 0, 0, ("read",), "/x")  # the daemon itself, though in no workload
    for pid in (0, sleeper.pid):
        for guard in (g, nobody):
            with pytest.raises(PolicyDenied) as info:
                guard.check(pid, 0, 0, ("read",), "/x")
            assert info.value.errno == errno.EACCES


@pytest.mark.parametrize("store_kind", ["local"])
def test_details_a_user_would_trip_on(make_policy_mount, shop, users):
    """A directory page of hidden names only does not end a listing; a
    writer that may not setattr still writes to a set-user-ID file (the
    kernel clears the bit by itself first, as part of the write)."""
    front = users["frontend"]
    m = make_policy_mount(f"""
[workloads.me]
exe = "{PY}"
uid = 0
[workloads.frontend]
uid = {front.uid}
[[rule]]
paths = ["/**"]
workloads = ["me"]
allow = {ALL}
[[rule]]
paths = ["/**"]
workloads = ["frontend"]
allow = ["read", "write", "list"]
[[rule]]
paths = ["/d/h*"]
workloads = ["frontend"]
deny = ["list"]
hide = true
""")
    (m.path / "d").mkdir()
    hidden = [f"h{n:03d}" for n in range(300)]  # more than one readdir page (256)
    for name in hidden + ["v1", "v2"]:
        (m.path / "d" / name).touch()
    listing = run_as(front, shop.argv("frontend", "list", str(m.path / "d")))
    assert listing.returncode == 0, listing.stderr
    assert sorted(listing.stdout.split()) == ["v1", "v2"]
    assert len(os.listdir(m.path / "d")) == 302

    f = m.path / "setuid"
    f.write_text("old\n")
    os.chown(f, front.uid, front.gid)  # its owner: the file modes would let it chmod
    os.chmod(f, 0o4666)
    wrote = run_as(front, ["/usr/bin/python3", "-c", f"f = open({str(f)!r}, 'r+'); f.write('new'); f.close()"])
    assert wrote.returncode == 0, wrote.stderr
    assert f.read_text() == "new\n"
    assert os.stat(f).st_mode & 0o7777 == 0o666, "the kernel cleared the set-user-ID bit"
    refused_chmod = run_as(front, ["/usr/bin/python3", "-c", f"import os; os.chmod({str(f)!r}, 0o644)"])
    assert refused_chmod.returncode != 0 and "Permission denied" in refused_chmod.stderr, refused_chmod.stderr
    assert m.denials(op="setattr", path="/setuid", workload=["frontend"])
