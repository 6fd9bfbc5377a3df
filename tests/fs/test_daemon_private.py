"""What the running daemon shows other processes (issue 14, item 4).

* No secret in the daemon's /proc/PID/environ (what ``ps e`` shows) nor in
  its /proc/PID/cmdline nor in its log, whichever way the passphrase came
  (SEALFS_PASSPHRASE, passfile=, extpass=) and whichever way the daemon
  started (``sealfs mount``, ``sealfs mount -f``, mount.sealfs); nor the
  secret half of AWS credentials, which the daemon still uses.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SEALFS, UNMOUNT_TIMEOUT, is_mounted, sealfs, wait_for

from sealfs.daemon import daemon_pid

FAST_KDF = ["--argon2-memory", "8192", "--argon2-iterations", "1"]
MOUNT_TIMEOUT = 60.0


# -- item 4: secrets ---------------------------------------------------------------------

STARTS = {
    "mount": [*SEALFS, "mount"],
    "foreground": [*SEALFS, "mount", "-f"],
    "mount.sealfs": [sys.executable, "-m", "sealfs.cli.mounthelper"],
}


@pytest.mark.parametrize(
    ("start", "source"),
    [
        ("mount", "env"),
        ("mount", "passfile"),
        ("mount", "extpass"),
        ("foreground", "env"),
        ("mount.sealfs", "env"),
    ],
)
def test_no_secret_in_the_daemons_environment_argv_or_log(
    make_store_spec, store_kind, tmp_path: Path, start: str, source: str
):
    passphrase = b"bounds-pass-" + secrets.token_hex(12).encode()
    spec = make_store_spec()
    store_opts = [f"{k}={v}" for k, v in spec.options.items()]
    env = {**os.environ, "SEALFS_PASSPHRASE": passphrase.decode(), "BOUNDS_VISIBLE": "not-a-secret"}
    hidden = [passphrase]
    if store_kind == "s3":  # moto accepts any credentials; these must reach S3 but not /proc
        aws_secret, token = f"bounds-aws-{secrets.token_hex(12)}", f"bounds-token-{secrets.token_hex(12)}"
        env.update(AWS_SECRET_ACCESS_KEY=aws_secret, AWS_SESSION_TOKEN=token)
        hidden += [aws_secret.encode(), token.encode()]
    init = sealfs("init", spec.url, *FAST_KDF, *(["-o", ",".join(store_opts)] if store_opts else []), env=env)
    assert init.returncode == 0
    passfile = tmp_path / "pass"
    passfile.write_bytes(passphrase + b"\n")
    passfile.chmod(0o600)
    key_opts = {"env": [], "passfile": [f"passfile={passfile}"], "extpass": [f"extpass=cat {passfile}"]}[source]
    if source != "env":
        del env["SEALFS_PASSPHRASE"]
    mnt, log = tmp_path / "mnt", tmp_path / "daemon.log"
    mnt.mkdir()
    opts = ",".join([f"log={log}", f"cache_dir={tmp_path / 'cache'}", *key_opts, *store_opts])
    argv = [*STARTS[start], spec.url, str(mnt), "-o", opts]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = None
    try:
        if start == "foreground":
            wait_for(
                lambda: is_mounted(mnt) or proc.poll() is not None, "the foreground daemon to mount", MOUNT_TIMEOUT
            )
        else:
            out, err = proc.communicate(timeout=MOUNT_TIMEOUT)
            assert proc.returncode == 0, err.decode(errors="replace")
        assert is_mounted(mnt), proc.stderr.read().decode(errors="replace") if proc.poll() else "not mounted"
        pid = daemon_pid(str(mnt))
        assert pid is not None
        if start == "foreground":
            assert pid == proc.pid  # the process we started is the daemon
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"BOUNDS_VISIBLE=not-a-secret" in environ  # (the right process, its environment readable)
        assert str(mnt).encode() in cmdline
        if shutil.which("ps"):
            ps = subprocess.run(["ps", "eww", "-p", str(pid)], capture_output=True, check=True).stdout
            assert b"BOUNDS_VISIBLE" in ps
        else:
            ps = b""
        for secret in hidden:
            assert secret not in environ, f"{secret!r} is in /proc/{pid}/environ"
            assert secret not in cmdline, f"{secret!r} is in /proc/{pid}/cmdline"
            assert secret not in ps
        # the daemon still works with the store (on S3 with the credentials it no longer shows)
        (mnt / "f").write_bytes(b"written through the mount")
        with open(mnt / "f", "rb") as f:
            os.fsync(f.fileno())
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        if pid is not None:
            wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), "the daemon to exit", UNMOUNT_TIMEOUT)
        if proc.poll() is None:
            proc.wait(timeout=UNMOUNT_TIMEOUT)
    assert proc.returncode == 0
    text = log.read_bytes()
    for secret in hidden:
        assert secret not in text, "a secret is in the daemon log"
    cat_env = {**env, "SEALFS_PASSPHRASE": passphrase.decode()}
    got = sealfs("cat", spec.url, "/f", *(["-o", ",".join(store_opts)] if store_opts else []), env=cat_env)
    assert got.stdout == b"written through the mount"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
