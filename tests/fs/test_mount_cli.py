"""Mounting as operators do it: sealfs mount/umount, fstab, failures, signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import SEALFS as SEALFS_CMD
from conftest import daemon_pids, is_mounted, sealfs


def _fstab_line(m, fstype: str, extra: str = "") -> str:
    opts = m.options() + (("," + extra) if extra else "")
    return f"{m.url} {m.path} {fstype} {opts} 0 0\n"


@pytest.mark.parametrize("fstype", ["fuse.sealfs", "sealfs"])
def test_fstab_mount_with_mount_T(make_mount, tmp_path, fstype):
    if not shutil.which("sealfs") or not os.path.exists("/sbin/mount.sealfs"):
        pytest.fail("sealfs is not installed on the PATH and in /sbin: run scripts/setup")
    m = make_mount()
    (m.path / "before.txt").write_text("written before\n")
    m.unmount()
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# test fstab\n" + _fstab_line(m, fstype, "_netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30")
    )
    out = subprocess.run(["mount", "-T", str(fstab), str(m.path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert is_mounted(m.path)
    assert (m.path / "before.txt").read_text() == "written before\n"
    (m.path / "after.txt").write_text("written through fstab\n")
    out = subprocess.run(["umount", str(m.path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 60
    while daemon_pids(m.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not daemon_pids(m.path)
    m.mount()
    assert (m.path / "after.txt").read_text() == "written through fstab\n"
    m.check_log()


def test_mount_failures_are_one_clear_line(make_mount, tmp_path):
    m = make_mount()
    # mountpoint busy
    proc = sealfs("mount", m.url, str(m.path), "-o", m.options(), check=False)
    assert proc.returncode == 8
    assert "busy" in proc.stderr.decode()
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    # not a directory
    proc = sealfs("mount", m.url, str(tmp_path / "nonexistent"), "-o", m.options(), check=False)
    assert proc.returncode == 8 and "does not exist" in proc.stderr.decode()
    other = tmp_path / "other"
    other.mkdir()
    # wrong key
    bad_key = tmp_path / "badkey"
    bad_key.write_bytes(os.urandom(64))
    opts = m.options().replace(f"keyfile={m.keyfile}", f"keyfile={bad_key}")
    proc = sealfs("mount", m.url, str(other), "-o", opts, check=False)
    assert proc.returncode == 3 and "no key slot opens" in proc.stderr.decode()
    # not a volume
    empty = tmp_path / "emptystore"
    empty.mkdir()
    (empty / "objects").mkdir()
    proc = sealfs("mount", empty.as_uri(), str(other), "-o", f"keyfile={m.keyfile}", check=False)
    assert proc.returncode == 5 and "no sealfs volume" in proc.stderr.decode()
    # unknown option
    proc = sealfs("mount", m.url, str(other), "-o", m.options() + ",colour=blue", check=False)
    assert proc.returncode == 2 and "unknown mount option 'colour'" in proc.stderr.decode()
    for p in (proc,):
        assert len(p.stderr.decode().strip().splitlines()) == 1
    assert not is_mounted(other)


def test_unreachable_s3_endpoint_at_mount_time(tmp_path):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    other = tmp_path / "m"
    other.mkdir()
    key = tmp_path / "k"
    key.write_bytes(os.urandom(64))
    t0 = time.monotonic()
    proc = sealfs(
        "mount",
        "s3://nobucket/x",
        str(other),
        "-o",
        f"endpoint=http://127.0.0.1:{port},keyfile={key}",
        check=False,
        timeout=120,
    )
    assert proc.returncode == 6, proc.stderr
    assert "cannot reach" in proc.stderr.decode()
    assert time.monotonic() - t0 < 60
    assert not is_mounted(other)


def test_sigterm_uploads_pending_data_and_unmounts(make_mount):
    m = make_mount()
    fd = os.open(m.path / "pending.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    data = os.urandom(3 * 1024 * 1024 + 17)
    os.write(fd, data)
    (pid,) = daemon_pids(m.path)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while (daemon_pids(m.path) or is_mounted(m.path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_mounted(m.path)
    try:
        os.close(fd)
    except OSError:
        pass
    out = sealfs("cat", m.url, "/pending.bin", *m.store_args())
    assert out.stdout == data
    m.mount()
    assert (m.path / "pending.bin").read_bytes() == data


def test_umount_command_waits_for_the_daemon(make_mount):
    m = make_mount()
    (m.path / "f").write_bytes(b"x" * 100000)
    # given as a relative path, from another directory than the mount's
    proc = subprocess.run([*SEALFS_CMD, "umount", m.path.name], cwd=m.path.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not is_mounted(m.path)
    assert not daemon_pids(m.path)
    proc = sealfs("umount", str(m.path), check=False)
    assert proc.returncode != 0 and "not a mount point" in proc.stderr.decode()


def test_read_only_mount(make_mount):
    m = make_mount()
    (m.path / "f").write_text("data")
    m.unmount()
    m.extra.append("ro")
    m.mount()
    assert (m.path / "f").read_text() == "data"
    with pytest.raises(OSError) as err:
        (m.path / "g").write_text("nope")
    assert err.value.errno == 30  # EROFS
    with pytest.raises(OSError):
        (m.path / "f").write_text("nope")
