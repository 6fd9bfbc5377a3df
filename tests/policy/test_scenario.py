"""The scenario of issue 4, end to end, on each store.

Four services on one host, each its own program run as its own user:
customer and payments write under /customers and /payments, business (a
Python script) reads both and writes /reports, frontend reads /reports
only.  The policy is the EXAMPLE of sealfs-policy(5), with this test's
program paths, hashes and users put in.  The file modes let everyone do
everything (0777/0666), so every refusal below is the policy's, and each
one must have its audit line.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from .policyhelp import (
    assert_ok,
    assert_refused,
    man_page_example,
    rewrite_workloads,
    run_as,
    sha256_of,
)


def _policy_for(shop, users) -> str:
    real = {w: os.path.realpath(shop.exe(w)) for w in ("customer", "payments", "business", "frontend")}
    return rewrite_workloads(
        man_page_example(),
        {
            "customer": {
                "exe": real["customer"],
                "exe_sha256": sha256_of(shop.exe("customer")),
                "user": users["customer"].name,
            },
            "payments": {
                "exe": real["payments"],
                "exe_sha256": sha256_of(shop.exe("payments")),
                "user": users["payments"].name,
            },
            "business": {
                "script": real["business"],
                "script_sha256": sha256_of(shop.exe("business")),
                "user": users["business"].name,
            },
            "frontend": {"exe": real["frontend"], "user": users["frontend"].name},
        },
    )


def _grant_frontend_payments(policy: str) -> str:
    return policy + '\n[[rule]]\npaths = ["/payments/**"]\nworkloads = ["frontend"]\nallow = ["read"]\n'


def _tampered(original: bytes, tag: bytes) -> bytes:
    at = original.index(tag) + len(tag) - 1
    return original[:at] + bytes([original[at] ^ 0x01]) + original[at + 1 :]


def _install(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (a new inode, as a package upgrade does)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, path)


def test_four_workloads(make_policy_mount, shop, users):
    m = make_policy_mount(None)
    for d in ("customers", "payments", "reports"):
        (m.path / d).mkdir()
        (m.path / d).chmod(0o777)
    m.set_policy(_policy_for(shop, users))
    m.remount()
    mnt = m.path
    cust, pay, biz, front = (users[w] for w in ("customer", "payments", "business", "frontend"))
    p1 = str(mnt / "payments" / "p1")

    # -- what the policy allows ------------------------------------------------------
    assert_ok(
        run_as(cust, shop.argv("customer", "write", str(mnt / "customers" / "alice"), "alice\n")),
        "customer writes /customers/alice",
    )
    assert_ok(run_as(pay, shop.argv("payments", "write", p1, "42.00\n")), "payments writes /payments/p1")
    got = run_as(biz, shop.argv("business", "read", p1))
    assert_ok(got, "business reads /payments/p1")
    assert got.stdout == "42.00\n"
    assert run_as(biz, shop.argv("business", "read", str(mnt / "customers" / "alice"))).stdout == "alice\n"
    assert run_as(biz, shop.argv("business", "list", str(mnt / "payments"))).stdout.split() == ["p1"]
    assert_ok(
        run_as(biz, shop.argv("business", "write", str(mnt / "reports" / "r1"), "total 42.00\n")),
        "business writes /reports/r1",
    )
    got = run_as(front, shop.argv("frontend", "read", str(mnt / "reports" / "r1")))
    assert_ok(got, "frontend reads /reports/r1")
    assert got.stdout == "total 42.00\n"
    assert not m.denials(), f"nothing was refused yet, but the audit log has denials: {m.denials()}"

    # -- what it refuses -----------------------------------------------------------------
    assert_refused(run_as(front, shop.argv("frontend", "read", p1)), errno.EACCES, "frontend reads /payments/p1")
    lines = m.denials(op="read", path="/payments/p1", exe=os.path.realpath(shop.exe("frontend")))
    assert lines, f"no audit line for frontend reading /payments/p1: {m.audit()}"
    assert lines[0]["uid"] == front.uid and lines[0]["workload"] == ["frontend"]
    assert lines[0]["sha256"] is None, "no workload pins the front end's hash: its binary is not hashed"
    assert "default deny" in lines[0]["reason"]

    assert_refused(
        run_as(biz, shop.argv("business", "write", str(mnt / "payments" / "p2"), "x")),
        errno.EACCES,
        "business writes /payments/p2",
    )
    assert m.denials(op="create", path="/payments/p2", workload=["business"])
    assert_refused(
        run_as(biz, shop.argv("business", "write", p1, "0.00\n")), errno.EACCES, "business overwrites /payments/p1"
    )
    assert m.denials(op="write", path="/payments/p1", workload=["business"])

    # hidden from the front end, even right after business looked the name up
    assert_ok(run_as(biz, shop.argv("business", "read", str(mnt / "customers" / "alice"))), "business reads alice")
    assert_refused(
        run_as(front, shop.argv("frontend", "read", str(mnt / "customers" / "alice"))),
        errno.ENOENT,
        "frontend reads the hidden /customers/alice",
    )
    assert m.denials(op="lookup", path="/customers", workload=["frontend"], hide=True)

    # root is refused too: it is in no workload
    with pytest.raises(PermissionError):
        os.listdir(mnt / "payments")

    # the same user running another program
    got = run_as(pay, ["cat", p1])
    assert got.returncode != 0 and "Permission denied" in got.stderr, got
    assert m.denials(op="read", path="/payments/p1", exe=os.path.realpath("/usr/bin/cat"), uid=pay.uid)

    # a copy of the payments binary with one byte changed, at the same path
    real = shop.exe("payments")
    original = real.read_bytes()
    _install(real, _tampered(original, b"sealfs-test-workload:payments"))
    try:
        assert_refused(run_as(pay, shop.argv("payments", "read", p1)), errno.EACCES, "tampered payments reads")
        tampered = m.denials(path="/payments/p1", sha256=sha256_of(real), workload=[])
        assert tampered and "payments: exe sha256" in tampered[-1]["reason"], m.audit()[-3:]
    finally:
        _install(real, original)
    assert_ok(run_as(pay, shop.argv("payments", "read", p1)), "the restored payments binary reads")

    # the real payments binary, traced
    strace = [os.path.realpath(p) for p in ("/usr/bin/strace",) if os.path.exists(p)]
    if not strace:
        pytest.fail("strace is not installed (scripts/setup installs it)")
    traced_front = run_as(
        front,
        shop.argv("frontend", "read", str(mnt / "reports" / "r1")),
        wrapper=[strace[0], "-f", "-qq", "-o", "/dev/null"],
    )
    assert_ok(traced_front, "strace works for this user (frontend, which need not be untraced)")
    assert_refused(
        run_as(pay, shop.argv("payments", "read", p1), wrapper=[strace[0], "-f", "-qq", "-o", "/dev/null"]),
        errno.EACCES,
        "payments under strace",
    )
    assert any("payments: it is traced" in a["reason"] for a in m.denials(path="/payments/p1", uid=pay.uid))

    # the real payments binary with LD_PRELOAD
    assert_refused(
        run_as(pay, shop.argv("payments", "read", p1), env={"LD_PRELOAD": str(shop.noop_lib)}),
        errno.EACCES,
        "payments with LD_PRELOAD",
    )
    assert any("sets LD_PRELOAD" in a["reason"] for a in m.denials(path="/payments/p1", uid=pay.uid))
    assert_ok(run_as(pay, shop.argv("payments", "read", p1)), "payments itself, untraced and without LD_PRELOAD")

    # -- a reload grants the front end read on /payments, without remounting ------------------
    granted = _grant_frontend_payments(m.policy_file.read_text())
    m.reload(granted)
    got = run_as(front, shop.argv("frontend", "read", p1))
    assert_ok(got, "frontend reads /payments/p1 after the reload")
    assert got.stdout == "42.00\n"
    assert_refused(
        run_as(front, shop.argv("frontend", "write", p1, "x")),
        errno.EACCES,
        "frontend still may not write /payments/p1",
    )

    # an invalid policy is refused; the one in force stays
    m.expected_log.append("policy NOT reloaded")
    m.reload(granted.replace('allow = ["read"]', 'allow = ["raed"]'), expect_ok=False)
    assert "unknown operation 'raed'" in m.log.read_text()
    assert_ok(run_as(front, shop.argv("frontend", "read", p1)), "frontend still reads /payments/p1")
    assert_refused(
        run_as(biz, shop.argv("business", "write", p1, "x")), errno.EACCES, "business still may not write /payments/p1"
    )
