"""The daemon's log and the audit log hold plaintext paths, identities and
the names of damaged files: they are created mode 0600 whatever the umask,
an existing looser file is tightened (with a warning), and a file
reopened after logrotate is 0600 too."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from sealfs.policy.audit import AuditLog

from .test_audit import FRONT, deny

POLICY = "[workloads.nobody]\nuid = 54321\n"  # no rules: every request is denied, root's too


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_audit_log_is_private_new_existing_and_reopened(tmp_path, loose_umask, caplog):
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    log.record(deny(path="/a"), FRONT)
    assert mode(path) == 0o600
    path.rename(tmp_path / "audit.log.1")
    log.reopen()
    log.record(deny(path="/b"), FRONT)
    log.close()
    assert mode(path) == 0o600
    loose = tmp_path / "old.log"
    loose.write_text("")
    loose.chmod(0o644)
    AuditLog(str(loose)).close()
    assert mode(loose) == 0o600
    assert f"{loose} was mode 0644: made 0600" in caplog.text


def test_mount_creates_its_logs_private(make_policy_mount, store_kind, tmp_path, loose_umask):
    if store_kind != "local":
        pytest.skip("the log files do not depend on the store")
    loose_audit = tmp_path / "audit0.log"  # the fixture's first audit log: there before the mount, 0644
    loose_audit.write_text("")
    loose_audit.chmod(0o644)
    m = make_policy_mount(POLICY)
    with pytest.raises(PermissionError):
        os.listdir(m.path)
    deadline = time.monotonic() + 30
    while not m.denials():
        assert time.monotonic() < deadline, "no denial in the audit log"
        time.sleep(0.02)
    assert m.audit_file == loose_audit
    assert mode(m.log) == 0o600, "the daemon's log"
    assert mode(m.audit_file) == 0o600, "the audit log, tightened"
    # logrotate: move both files away, SIGHUP; the new files are private too
    m.audit_file.rename(tmp_path / "audit0.log.1")
    m.log.rename(tmp_path / "daemon0.log.1")
    os.kill(m.daemon_pid(), signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not (m.log.exists() and "policy reloaded" in m.log.read_text()):
        assert time.monotonic() < deadline, "the daemon's log was not reopened after SIGHUP"
        time.sleep(0.02)
    assert mode(m.log) == 0o600, "the daemon's log, reopened"
    assert "SIGHUP" not in (tmp_path / "daemon0.log.1").read_text(), "written to the rotated file"
    with pytest.raises(PermissionError):
        os.listdir(m.path)
    deadline = time.monotonic() + 30
    while not m.denials():
        assert time.monotonic() < deadline, "the audit log was not reopened after SIGHUP"
        time.sleep(0.02)
    assert mode(m.audit_file) == 0o600
