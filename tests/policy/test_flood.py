"""One unprivileged user must not be able to flood the audit log or stall
the mount for others: real attacking programs (C, built here with cc) run
as another user with setpriv against a real mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sealfs.policy.audit import IDENTITY_BURST

from .policyhelp import run_as

pytestmark = pytest.mark.parametrize("store_kind", ["local"])

#: Creates N new names in DIR, each one refused; exits 0 only if every one
#: was refused with EACCES (prints how many were not).
CREATOR_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = atoi(argv[2]), other = 0;
    char name[4096];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s/flood-%d", argv[1], i);
        int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) { close(fd); other++; }
        else if (errno != EACCES) other++;
    }
    printf("%d\n", other);
    return other != 0;
}
"""


def build(shop, name: str, source: str) -> str:
    src = shop.dir / f"{name}.c"
    exe = shop.bin / name
    if not exe.exists():
        src.write_text(source)
        subprocess.run(["cc", "-O1", "-o", str(exe), str(src)], check=True, capture_output=True)
        exe.chmod(0o755)
    return str(exe)


def open_drop_box(make_policy_mount, policy: str):
    """A mount with a directory /box that everyone may write to as far as
    the file modes go (made before the policy is in force), so that what
    refuses is the policy."""
    m = make_policy_mount(None)
    (m.path / "box").mkdir()
    (m.path / "box").chmod(0o777)
    m.set_policy(policy)
    m.remount()
    return m


def test_a_denied_process_making_new_names_cannot_flood_the_audit_log(make_policy_mount, shop, users):
    """Every create is refused and counted: at most IDENTITY_BURST lines
    per window for the flooder, then one summary line naming its uid and
    executable and how many denials it dropped."""
    front = users["frontend"]
    creator = build(shop, "creator", CREATOR_C)
    m = open_drop_box(make_policy_mount, f"""
[workloads.frontend]
uid = {front.uid}
[[rule]]
paths = ["/**"]
workloads = ["frontend"]
allow = ["list"]
""")
    tries = 3000
    proc = run_as(front, [creator, str(m.path / "box"), str(tries)], timeout=600)
    assert proc.returncode == 0, f"a create was not refused with EACCES: {proc.stdout} {proc.stderr}"
    m.unmount()  # (the daemon writes what is pending as it closes the audit log)
    size = m.audit_file.stat().st_size
    audit = m.audit()
    written = [a for a in audit if "event" not in a and a["uid"] == front.uid]
    summaries = [a for a in audit if a.get("event") == "suppressed" and a.get("scope") == "caller"]
    assert summaries, f"no summary of what was dropped: {audit[-3:]}"
    assert len(written) + sum(s["count"] for s in summaries) == tries, "each denial is written or counted"
    assert len(written) <= IDENTITY_BURST * (len(summaries) + 1)
    assert len(written) < tries // 10 and size < 400 * (len(written) + len(audit)), size
    s = summaries[0]
    assert (s["uid"], s["exe"], s["decision"]) == (front.uid, os.path.realpath(creator), "deny")
    assert f"denials of uid {front.uid} exe {os.path.realpath(creator)} dropped in the last" in s["message"]
