"""The audit log: one JSON object per line, rate-limited per (workload,
path, operation), to a file or syslog."""

from __future__ import annotations

import json
import socket

from sealfs.policy.audit import AuditLog
from sealfs.policy.decisions import Decision
from sealfs.policy.identity import Identity

FRONT = Identity(pid=4242, uid=33, gid=33, exe="/opt/shop/bin/frontend", exe_sha256="c" * 64, script=None)


def deny(path="/payments/jan.csv", op="read", workloads=("frontend",)) -> Decision:
    return Decision(
        False,
        op,
        path,
        tuple(workloads),
        None,
        None,
        False,
        "no rule allows read on this path to frontend (default deny)",
    )


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_denial_is_one_json_line_with_every_field(tmp_path):
    log = AuditLog(str(tmp_path / "audit.log"), wallclock=lambda: 1767225600.25)
    log.record(deny(), FRONT)
    allowed = Decision(True, "list", "/reports", ("frontend",), 5, 41, False, "rule 5 (line 41) allows list")
    log.record(allowed, FRONT)
    log.close()
    (a, b) = lines(tmp_path / "audit.log")
    assert a == {
        "time": "2026-01-01T00:00:00.250Z",
        "decision": "deny",
        "op": "read",
        "path": "/payments/jan.csv",
        "pid": 4242,
        "uid": 33,
        "gid": 33,
        "exe": "/opt/shop/bin/frontend",
        "sha256": "c" * 64,
        "script": None,
        "workload": ["frontend"],
        "rule": None,
        "rule_line": None,
        "hide": False,
        "reason": "no rule allows read on this path to frontend (default deny)",
    }
    assert (b["decision"], b["rule"], b["rule_line"]) == ("allow", 5, 41)


def test_paths_that_are_not_utf8_stay_one_valid_line(tmp_path):
    log = AuditLog(str(tmp_path / "audit.log"))
    odd = "/payments/caf\udce9\n.csv"  # a name with a raw 0xE9 byte and a newline
    log.record(deny(path=odd), FRONT)
    log.close()
    text = (tmp_path / "audit.log").read_text()
    assert text.count("\n") == 1
    assert json.loads(text)["path"] == odd


def test_rate_limit_per_key_with_a_count_of_what_was_left_out(tmp_path):
    clock = Clock()
    log = AuditLog(str(tmp_path / "audit.log"), burst=3, window=10.0, clock=clock)
    for _ in range(1000):  # a denied loop
        log.record(deny(), FRONT)
    log.record(deny(path="/payments/feb.csv"), FRONT)  # another key: not limited by the first
    log.record(deny(op="list"), FRONT)
    assert len(lines(tmp_path / "audit.log")) == 5
    clock.now += 5
    log.tick()  # the window has not ended
    assert len(lines(tmp_path / "audit.log")) == 5
    clock.now += 5
    log.tick()
    got = lines(tmp_path / "audit.log")
    assert len(got) == 6
    summary = got[-1]
    assert summary["event"] == "suppressed" and summary["count"] == 997
    assert (summary["op"], summary["path"], summary["workload"]) == ("read", "/payments/jan.csv", ["frontend"])
    log.record(deny(), FRONT)  # a new window
    assert len(lines(tmp_path / "audit.log")) == 7
    log.close()


def test_suppressed_counts_are_written_at_close_and_when_a_window_ends_on_the_next_line(tmp_path):
    clock = Clock()
    log = AuditLog(str(tmp_path / "audit.log"), burst=1, window=10.0, clock=clock)
    for _ in range(3):
        log.record(deny(), FRONT)
    clock.now += 11
    log.record(deny(), FRONT)  # closes the old window (2 left out), opens a new one
    log.record(deny(), FRONT)
    log.close()
    got = lines(tmp_path / "audit.log")
    assert [x.get("event") for x in got] == [None, "suppressed", None, "suppressed"]
    assert [x["count"] for x in got if "event" in x] == [2, 1]


def test_keys_are_bounded(tmp_path):
    clock = Clock()
    log = AuditLog(
        str(tmp_path / "audit.log"), burst=1, identity_burst=1000, uid_burst=1000, window=10.0, max_keys=10, clock=clock
    )
    for n in range(100):
        log.record(deny(path=f"/p/{n}"), FRONT)
        log.record(deny(path=f"/p/{n}"), FRONT)
    assert len(log._windows) <= 10
    log.close()
    got = lines(tmp_path / "audit.log")
    assert sum(1 for x in got if "event" not in x) == 100
    assert sum(x["count"] for x in got if x.get("event") == "suppressed") == 100


def test_a_caller_with_a_new_name_each_time_is_limited_and_told_what_was_dropped(tmp_path):
    """Per-path windows never fill when every name is new: the caller's own
    budget (uid + exe) does, and its summary says what it dropped."""
    clock = Clock()
    log = AuditLog(str(tmp_path / "audit.log"), identity_burst=20, uid_burst=1000, window=10.0, clock=clock)
    other = Identity(pid=7, uid=34, gid=34, exe="/usr/bin/cat")
    for n in range(5000):
        log.record(deny(path=f"/payments/{n}"), FRONT)
    log.record(deny(path="/payments/x"), other)  # someone else is not muted by it
    assert len(lines(tmp_path / "audit.log")) == 21
    clock.now += 10
    log.tick()
    got = lines(tmp_path / "audit.log")
    summary = got[-1]
    assert summary["event"] == "suppressed" and summary["scope"] == "caller"
    assert (summary["count"], summary["uid"], summary["exe"]) == (4980, 33, "/opt/shop/bin/frontend")
    assert summary["message"].startswith("4980 denials of uid 33 exe /opt/shop/bin/frontend dropped in the last 10s")
    log.record(deny(path="/payments/new"), FRONT)  # a new window
    log.close()
    assert lines(tmp_path / "audit.log")[-1]["path"] == "/payments/new"


def test_copies_of_a_program_under_new_names_share_their_uid_budget(tmp_path):
    log = AuditLog(str(tmp_path / "audit.log"), identity_burst=20, uid_burst=50)
    for n in range(1000):
        log.record(deny(path=f"/p/{n}", workloads=()), Identity(pid=n, uid=33, gid=33, exe=f"/tmp/copy{n % 100}"))
    log.close()
    got = lines(tmp_path / "audit.log")
    assert sum(1 for x in got if "event" not in x) == 50
    (summary,) = [x for x in got if x.get("scope") == "uid"]
    assert summary["count"] == 950 and summary["exe"] is None
    assert summary["message"].startswith("950 denials of uid 33 (any executable) dropped")


def test_allowed_lines_are_limited_per_path_only(tmp_path):
    """With audit = "all", a workload reading many files keeps its lines:
    the caller budget is for denials."""
    log = AuditLog(str(tmp_path / "audit.log"), identity_burst=5, uid_burst=5)
    for n in range(100):
        log.record(Decision(True, "read", f"/reports/{n}", ("frontend",), 5, 41, False, "allowed"), FRONT)
    log.close()
    assert len(lines(tmp_path / "audit.log")) == 100


def test_callers_in_no_workload_are_limited_by_their_executable(tmp_path):
    log = AuditLog(str(tmp_path / "audit.log"), burst=1)
    cat = Identity(pid=1, uid=1000, gid=1000, exe="/usr/bin/cat")
    less = Identity(pid=2, uid=1000, gid=1000, exe="/usr/bin/less")
    for who in (cat, cat, less):
        log.record(deny(workloads=()), who)
    log.close()
    assert [x["exe"] for x in lines(tmp_path / "audit.log") if "event" not in x] == ["/usr/bin/cat", "/usr/bin/less"]


def test_reopen_after_logrotate(tmp_path):
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    log.record(deny(path="/a"), FRONT)
    path.rename(tmp_path / "audit.log.1")
    log.reopen()
    log.record(deny(path="/b"), FRONT)
    log.close()
    assert [x["path"] for x in lines(tmp_path / "audit.log.1")] == ["/a"]
    assert [x["path"] for x in lines(path)] == ["/b"]


def test_syslog(tmp_path):
    address = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(5)
        log = AuditLog(syslog_address=address)
        log.record(deny(), FRONT)
        datagram = server.recv(65536).decode()
        log.close()
    # <priority>: facility authpriv (10) * 8 + warning (4) = 84
    assert datagram.startswith("<84>sealfs-audit: {")
    body = json.loads(datagram[len("<84>sealfs-audit: ") :].rstrip("\0"))
    assert body["decision"] == "deny" and body["path"] == "/payments/jan.csv"
