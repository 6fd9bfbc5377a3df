"""One unprivileged user must not be able to flood the audit log or stall
the mount for others: real attacking programs (C, built here with cc) run
as another user with setpriv against a real mount."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from sealfs.policy.audit import IDENTITY_BURST

from .policyhelp import CLEAN_ENV, fs_helpers, run_as

wait_for = fs_helpers.wait_for

local_only = pytest.mark.parametrize("store_kind", ["local"])

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


@local_only
def test_a_denied_process_making_new_names_cannot_flood_the_audit_log(make_policy_mount, shop, users):
    """Every create is refused and counted: at most IDENTITY_BURST lines
    per window for the flooder, then one summary line naming its uid and
    executable and how many denials it dropped."""
    front = users["frontend"]
    creator = build(shop, "creator", CREATOR_C)
    m = open_drop_box(
        make_policy_mount,
        f"""
[workloads.frontend]
uid = {front.uid}
[[rule]]
paths = ["/**"]
workloads = ["frontend"]
allow = ["list"]
""",
    )
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


# -- hashing is bounded (issue 13 item 8) ----------------------------------------------


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def hash_of(hashes, path: Path, uid: int | None = None) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return hashes.of_fd(fd, uid)
    finally:
        os.close(fd)


def test_a_file_above_the_limit_is_refused_without_being_read(tmp_path):
    from sealfs.policy.hashing import HashCache, HashRefused

    hashes = HashCache(max_bytes=1 << 20)
    with pytest.raises(HashRefused, match=r"it is 1\.0 GiB, above the 1\.0 MiB that sealfs hashes"):
        hash_of(hashes, sparse(tmp_path / "huge", 1 << 30))
    assert hashes.computed == 0
    assert hash_of(hashes, sparse(tmp_path / "small", 1 << 20)) == hashlib.sha256(bytes(1 << 20)).hexdigest()


def test_one_file_is_hashed_once_however_many_ask_at_the_same_time(tmp_path):
    from sealfs.policy.hashing import HashCache

    hashes = HashCache(jobs=8, jobs_per_uid=8)
    f = sparse(tmp_path / "big", 200 << 20)
    start = threading.Barrier(6)
    got = []

    def ask():
        start.wait()
        got.append(hash_of(hashes, f, 1000))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got) == 6
    assert hashes.computed == 1


def test_one_uid_cannot_take_more_than_its_share_of_hashing(tmp_path):
    """While a uid has its share of hashes running, its next one is refused
    at once (not queued: a queued job would hold a worker thread); other
    uids still get theirs, up to the limit in all."""
    from sealfs.policy.hashing import HashCache, HashRefused

    hashes = HashCache(max_bytes=1 << 40, jobs=2, jobs_per_uid=1)
    long_one = sparse(tmp_path / "long", 4 << 30)
    worker = threading.Thread(target=hash_of, args=(hashes, long_one, 5))
    worker.start()
    try:
        wait_for(lambda: hashes.busy(5) == 1 or not worker.is_alive(), "the first hash to start")
        if not worker.is_alive():
            pytest.fail("hashing 4 GiB ended before the test could look: the machine is too fast for this test")
        with pytest.raises(HashRefused, match="uid 5 is at its limit of 1 hashes in progress"):
            hash_of(hashes, sparse(tmp_path / "other", 1 << 20), 5)
        assert hash_of(hashes, tmp_path / "other", 6) == hashlib.sha256(bytes(1 << 20)).hexdigest()
    finally:
        worker.join()
    assert hash_of(hashes, sparse(tmp_path / "later", 1 << 10), 5)  # its share is back


def test_files_the_policy_cannot_need_are_not_hashed(tmp_path):
    from sealfs.policy.identity import Identifier
    from sealfs.policy.rules import parse_policy

    policy = parse_policy(
        f'[workloads.a]\nuid = 4321\nexe_sha256 = "{"0" * 64}"\n'
        f'[workloads.b]\nexe = "/opt/b"\nexe_sha256 = "{"0" * 64}"\n'
        '[[rule]]\npaths = ["/**"]\nworkloads = ["a", "b"]\nallow = ["read"]\n'
    )
    assert policy.needs_hash("exe", 4321, "/usr/bin/anything")
    assert policy.needs_hash("exe", 1, "/opt/b") and not policy.needs_hash("exe", 1, "/usr/bin/cat")
    assert not policy.needs_hash("script", 4321, "/x.py")
    ident = Identifier(stable_ttl=0)
    ident.needs_hash = policy.needs_hash
    me = ident.identify(os.getpid(), os.getuid(), os.getgid())
    assert me.valid and me.exe and me.exe_sha256 is None and ident.hashes.computed == 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


ATTACK_SH = r"""
i=0
while :; do
    i=$((i + 1))
    truncate -s $((SIZE + i)) "$FILE"
    "$PROG" "$FILE" "$DIR" >/dev/null 2>>"$ERR"
done
"""


@local_only
def test_an_attacker_hashing_huge_files_does_not_stall_an_allowed_reader(make_policy_mount, shop, users, tmp_path):
    """A copy of ls named like an interpreter, run as another user in many
    parallel loops on sparse files that grow at every call (so each one
    must be hashed afresh), while the policy pins a script hash for that
    user: the attacker is refused (EACCES, audit lines naming the limit),
    and an allowed reader's reads complete while the attack goes on."""
    front = users["frontend"]
    cat = os.path.realpath(shutil.which("cat"))
    m = make_policy_mount(None)
    for j in range(12):
        (m.path / f"d{j}").mkdir()
    (m.path / "data").write_text("the allowed reader's data\n")
    m.set_policy(f"""
max_hash_mib = 64
[workloads.reader]
exe = "{cat}"
uid = 0
[workloads.tool]
user = "{front.name}"
script_sha256 = "{"0" * 64}"
[[rule]]
paths = ["/**"]
workloads = ["reader", "tool"]
allow = ["read", "list"]
""")
    m.remount()
    huge = shop.dir / "huge"
    huge.mkdir(mode=0o777, exist_ok=True)
    huge.chmod(0o1777)
    ls = os.path.realpath(shutil.which("ls"))
    progs = {}
    for name in ("python3", "python3.99"):  # an interpreter's name: its first argument is taken as its script
        progs[name] = shop.bin / name
        shutil.copy(ls, progs[name])
        progs[name].chmod(0o755)
    err = huge / "attack.err"
    err.touch(mode=0o666)
    err.chmod(0o666)
    loops = []
    try:
        for j in range(12):
            size, prog = ((48 << 20), progs["python3"]) if j else ((1 << 30), progs["python3.99"])
            env = {
                **CLEAN_ENV,
                "SIZE": str(size),
                "FILE": str(huge / f"f{j}"),
                "PROG": str(prog),
                "DIR": str(m.path / f"d{j}"),
                "ERR": str(err),
            }
            loops.append(
                subprocess.Popen(
                    [
                        "setpriv",
                        f"--reuid={front.uid}",
                        f"--regid={front.gid}",
                        "--clear-groups",
                        "sh",
                        "-c",
                        ATTACK_SH,
                    ],
                    env=env,
                    cwd="/",
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

        def refused(words: str):
            return [a for a in m.denials(uid=front.uid) if words in a["reason"]]

        wait_for(lambda: refused("hashes in progress"), "the attacker to be refused by the hashing budget")
        wait_for(lambda: refused("above the 64.0 MiB that sealfs hashes"), "a refusal by the size limit")
        for _ in range(3):
            got = run_as(None, [cat, str(m.path / "data")])
            assert got.returncode == 0 and got.stdout == "the allowed reader's data\n", got
        assert all(p.poll() is None for p in loops), "the attack was still running during the reads"
        assert "Permission denied" in err.read_text()
    finally:
        for p in loops:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for p in loops:  # (and every ls it started: none may keep the mount busy)
            pgid = p.pid
            wait_for(lambda pgid=pgid: not group_alive(pgid), "the attack's processes to exit")
    assert refused("was not hashed")[0]["reason"].startswith("the caller cannot be identified: the script ")


def test_a_file_that_grows_while_it_is_hashed_is_refused_and_not_read_on(tmp_path):
    """A writer that extends the file during the hash (here: to 64 GiB,
    sparse) does not make the hash read on past the size it started with;
    the file changed, so it has no hash."""
    from sealfs.policy.hashing import HashCache, HashRefused

    hashes = HashCache(max_bytes=1 << 40)
    f = sparse(tmp_path / "growing", 2 << 30)
    grown = threading.Event()

    def grow():
        wait_for(lambda: hashes.busy(7) == 1, "the hash to start")
        os.truncate(f, 64 << 30)
        grown.set()

    t = threading.Thread(target=grow)
    before = bytes_read()
    t.start()
    try:
        with pytest.raises(HashRefused, match="it changed while it was being hashed"):
            hash_of(hashes, f, 7)
    finally:
        t.join()
    assert grown.is_set()
    assert bytes_read() - before < (2 << 30) + (64 << 20), "the hash read on past the size the file had"
    assert hashes.computed == 0 and len(hashes) == 0


def bytes_read() -> int:
    """Bytes this process has read so far (all threads): /proc/self/io rchar."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_max_hash_mib_is_checked_and_applied_at_mount_and_reload(tmp_path):
    from sealfs.policy.guard import Guard
    from sealfs.policy.rules import PolicyError, load_policy, parse_policy

    body = '[workloads.w]\nuid = 0\n[[rule]]\npaths = ["/**"]\nworkloads = ["w"]\nallow = ["read"]\n'
    for bad in ("0", "1.5", '"64M"', "true", "16385"):
        with pytest.raises(
            PolicyError,
            match=r"^p\.toml:1: max_hash_mib = .*: give a whole number of MiB from 1 "
            r"to 16384",
        ):
            parse_policy(f"max_hash_mib = {bad}\n" + body, "p.toml")
    f = tmp_path / "policy.toml"
    f.write_text("max_hash_mib = 1\n" + body)
    guard = Guard(load_policy(str(f)), policy_file=str(f))
    assert guard.identifier.hashes.max_bytes == 1 << 20
    f.write_text(body)
    assert guard.reload()
    assert guard.identifier.hashes.max_bytes == 256 << 20
    guard.close()
