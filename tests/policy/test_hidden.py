"""A name hidden from a workload is indistinguishable from an absent one,
for every call, and probing it never changes the store (issue 13 item 10).

A C program run as the hidden-from user tries each call on hidden names
that exist (a directory, a file, a symlink) and on one that does not, all
matched by the same hiding rule; the answers must be the same, and the
objects of the store (keys, etags, metadata) the same before and after."""

# ruff: noqa: E501 (the C prober below keeps one operation per line)

from __future__ import annotations

import errno
import subprocess

from .policyhelp import run_as

PROBE_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE 1
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE 2
#endif

/* probe VISIBLE OP PATH: try OP on PATH (VISIBLE: a visible file of the
   caller, for the calls that need a second name); print the errno (0). */
static int try(const char *op, const char *p, const char *vis) {
    struct stat st;
    char buf[256], other[4096];
    int fd;
    snprintf(other, sizeof other, "%s.moved", vis);
    if (!strcmp(op, "stat")) return stat(p, &st);
    if (!strcmp(op, "lstat")) return lstat(p, &st);
    if (!strcmp(op, "access")) return access(p, F_OK);
    if (!strcmp(op, "open_read")) { fd = open(p, O_RDONLY); if (fd >= 0) close(fd); return fd < 0 ? -1 : 0; }
    if (!strcmp(op, "open_write")) { fd = open(p, O_WRONLY); if (fd >= 0) close(fd); return fd < 0 ? -1 : 0; }
    if (!strcmp(op, "open_dir")) { DIR *d = opendir(p); if (d) closedir(d); return d ? 0 : -1; }
    if (!strcmp(op, "create_excl")) { fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644); if (fd >= 0) close(fd); return fd < 0 ? -1 : 0; }
    if (!strcmp(op, "create")) { fd = open(p, O_WRONLY | O_CREAT, 0644); if (fd >= 0) close(fd); return fd < 0 ? -1 : 0; }
    if (!strcmp(op, "create_trunc")) { fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644); if (fd >= 0) close(fd); return fd < 0 ? -1 : 0; }
    if (!strcmp(op, "mkdir")) return mkdir(p, 0755);
    if (!strcmp(op, "mknod")) return mknod(p, S_IFREG | 0644, 0);
    if (!strcmp(op, "mkfifo")) return mkfifo(p, 0644);
    if (!strcmp(op, "symlink")) return symlink("target", p);
    if (!strcmp(op, "readlink")) return readlink(p, buf, sizeof buf) < 0 ? -1 : 0;
    if (!strcmp(op, "link_to")) return link(vis, p);
    if (!strcmp(op, "link_from")) return link(p, other);
    if (!strcmp(op, "rename_to")) return rename(vis, p);
    if (!strcmp(op, "rename_to_noreplace")) return syscall(SYS_renameat2, AT_FDCWD, vis, AT_FDCWD, p, RENAME_NOREPLACE);
    if (!strcmp(op, "rename_exchange")) return syscall(SYS_renameat2, AT_FDCWD, vis, AT_FDCWD, p, RENAME_EXCHANGE);
    if (!strcmp(op, "rename_from")) return rename(p, other);
    if (!strcmp(op, "unlink")) return unlink(p);
    if (!strcmp(op, "rmdir")) return rmdir(p);
    if (!strcmp(op, "truncate")) return truncate(p, 0);
    if (!strcmp(op, "chmod")) return chmod(p, 0600);
    if (!strcmp(op, "chown")) return chown(p, getuid(), getgid());
    if (!strcmp(op, "utimes")) return utimes(p, NULL);
    if (!strcmp(op, "setxattr")) return setxattr(p, "user.probe", "x", 1, 0);
    if (!strcmp(op, "getxattr")) return getxattr(p, "user.probe", buf, sizeof buf) < 0 ? -1 : 0;
    if (!strcmp(op, "listxattr")) return listxattr(p, buf, sizeof buf) < 0 ? -1 : 0;
    if (!strcmp(op, "removexattr")) return removexattr(p, "user.probe");
    if (!strcmp(op, "child_stat")) { snprintf(other, sizeof other, "%s/x", p); return stat(other, &st); }
    if (!strcmp(op, "child_create")) { snprintf(other, sizeof other, "%s/x", p); fd = open(other, O_WRONLY | O_CREAT | O_EXCL, 0644); if (fd >= 0) close(fd); return fd < 0 ? -1 : 0; }
    if (!strcmp(op, "child_mkdir")) { snprintf(other, sizeof other, "%s/x", p); return mkdir(other, 0755); }
    fprintf(stderr, "unknown op %s\n", op);
    exit(100);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--list")) {
        /* probe --list DIR: each name with the offset of the entry after it */
        DIR *d = opendir(argv[2]);
        struct dirent *e;
        if (!d) return errno;
        while ((e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) printf("%s %lld\n", e->d_name, (long long)e->d_off);
        closedir(d);
        return 0;
    }
    /* probe VISIBLE OP PATH [OP PATH ...] */
    for (int i = 2; i + 1 < argc; i += 2) {
        errno = 0;
        int r = try(argv[i], argv[i + 1], argv[1]);
        printf("%s %s %d\n", argv[i], argv[i + 1], r == 0 ? 0 : errno);
    }
    return 0;
}
"""

OPS = [
    "stat",
    "lstat",
    "access",
    "open_read",
    "open_write",
    "open_dir",
    "create_excl",
    "create",
    "create_trunc",
    "mkdir",
    "mknod",
    "mkfifo",
    "symlink",
    "readlink",
    "link_to",
    "link_from",
    "rename_to",
    "rename_to_noreplace",
    "rename_exchange",
    "rename_from",
    "unlink",
    "rmdir",
    "truncate",
    "chmod",
    "chown",
    "utimes",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "child_stat",
    "child_create",
    "child_mkdir",
]
#: What an absent name under the hidden tree answers (and so what a hidden
#: existing one must answer): the kernel's lookup says ENOENT, except for
#: the calls that create the name, which the policy refuses with EACCES.
#: (link is EPERM: sealfs has no hard links; mkfifo: no FIFOs either, but
#: the policy refuses the create first.)
EXPECTED = (
    {op: errno.ENOENT for op in OPS}
    | {
        op: errno.EACCES
        for op in (
            "create_excl",
            "create",
            "create_trunc",
            "mkdir",
            "mknod",
            "mkfifo",
            "symlink",
            "rename_to",
            "rename_to_noreplace",
        )
    }
    | {"link_to": errno.EPERM}
)


def snapshot(spec) -> list[tuple]:
    """Every object of the store: key, size, etag and metadata."""
    store = spec.open()
    try:
        return sorted(
            (o.key, o.size, o.etag, tuple(sorted(store.head(o.key).metadata.items()))) for o in store.list_all("")
        )
    finally:
        store.close()


def test_hidden_names_answer_as_absent_ones_and_leave_the_store_alone(make_policy_mount, shop, users):
    front = users["frontend"]
    src = shop.dir / "probe.c"
    probe = shop.bin / "probe"
    if not probe.exists():
        src.write_text(PROBE_C)
        subprocess.run(["cc", "-O1", "-o", str(probe), str(src)], check=True, capture_output=True)
        probe.chmod(0o755)
    m = make_policy_mount(None)
    box = m.path / "box"
    box.mkdir()
    box.chmod(0o777)
    (box / "secret-dir").mkdir()
    (box / "secret-dir").chmod(0o777)
    (box / "secret-dir" / "x").write_text("x")
    (box / "secret-file").write_text("secret")
    (box / "secret-file").chmod(0o666)
    (box / "secret-link").symlink_to("secret-file")
    (box / "mine").write_text("mine")
    (box / "mine").chmod(0o666)
    for d, names in (("with", ["m1", "secret-x", "secret-y", "t2"]), ("without", ["m1", "t2"]), ("only", ["secret-z"])):
        (box / d).mkdir()
        for n in names:
            (box / d / n).write_text(n)
    m.set_policy(f"""
[workloads.frontend]
uid = {front.uid}
[[rule]]
paths = ["/**"]
workloads = ["frontend"]
allow = ["read", "write", "create", "delete", "list", "rename", "setattr", "xattr"]
[[rule]]
paths = ["/box/secret*", "/box/secret*/**", "/box/*/secret*"]
workloads = ["frontend"]
deny = ["read", "list"]
hide = true
""")
    m.unmount()
    before = snapshot(m.spec)
    m.mount()
    names = {
        "dir": box / "secret-dir",
        "file": box / "secret-file",
        "link": box / "secret-link",
        "absent": box / "secret-none",
    }
    results: dict[str, dict[str, int]] = {}
    for what, path in names.items():
        args = [str(probe), str(box / "mine")]
        for op in OPS:
            args += [op, str(path)]
        got = run_as(front, args)
        assert got.returncode == 0, got.stderr
        results[what] = {line.split()[0]: int(line.split()[2]) for line in got.stdout.splitlines()}
    absent = results["absent"]
    assert absent == EXPECTED, {op: errno.errorcode.get(e, e) for op, e in absent.items() if EXPECTED[op] != e}
    for what in ("dir", "file", "link"):
        differ = {
            op: (errno.errorcode.get(results[what][op]), errno.errorcode.get(absent[op]))
            for op in OPS
            if results[what][op] != absent[op]
        }
        assert not differ, f"the hidden {what} answers otherwise than an absent name: {differ}"
    listing = run_as(front, ["ls", "-A1", str(box)])
    assert listing.stdout.split() == ["mine", "only", "with", "without"], listing
    offsets = [run_as(front, [str(probe), "--list", str(box / d)]).stdout for d in ("with", "without")]
    assert offsets[0] == offsets[1] and offsets[0].split()[::2] == ["m1", "t2"], (
        f"the offsets of a listing show where hidden names are: {offsets}"
    )
    # The documented limit: a directory that holds only hidden names looks
    # empty, but cannot be removed (its hidden files are not deleted).
    only = run_as(front, [str(probe), str(box / "mine"), "open_dir", str(box / "only"), "rmdir", str(box / "only")])
    assert only.stdout.split() == [
        "open_dir",
        str(box / "only"),
        "0",
        "rmdir",
        str(box / "only"),
        str(errno.ENOTEMPTY),
    ], only
    assert run_as(front, ["ls", "-A", str(box / "only")]).stdout == ""
    visible = run_as(front, ["stat", "-c", "%h", str(box)])
    assert visible.stdout.strip() == "1", "the link count of /box would count its hidden subdirectory"
    creates = [a for a in m.denials(uid=front.uid, op="create") if a["hide"]]
    assert creates and all("cannot be created" in a["reason"] for a in creates)
    m.unmount()
    assert snapshot(m.spec) == before, "probing hidden names changed the store"
    assert "changed by another mount" not in m.log.read_text()


def test_a_caller_that_cannot_be_identified_sees_nothing_any_rule_hides(make_policy_mount, shop, users):
    """A way to make one's identity invalid (here: naming a script too large
    to hash, as a copy of ls called python3) must not be a way around
    hiding: such a caller might be any workload, so what any rule hides is
    hidden from it."""
    import shutil

    from sealfs.policy.identity import Identity
    from sealfs.policy.rules import parse_policy

    text = f"""
max_hash_mib = 1
[workloads.frontend]
uid = {users["frontend"].uid}
script_sha256 = "{"0" * 64}"
[workloads.other]
uid = {users["business"].uid}
[[rule]]
paths = ["/**"]
workloads = ["frontend", "other"]
allow = ["read", "list"]
[[rule]]
paths = ["/box/secret*"]
workloads = ["other"]
deny = ["read", "list"]
hide = true
"""
    invalid = Identity(pid=1, uid=5, gid=5, problem="the process exited before it could be identified")
    d = parse_policy(text).hiding(invalid, "/box/secret-file")
    assert d is not None and d.hide and "the caller cannot be identified" in d.reason
    m = make_policy_mount(None)
    (m.path / "box").mkdir()
    (m.path / "box").chmod(0o777)
    (m.path / "box" / "secret-file").write_text("secret")
    m.set_policy(text)
    m.remount()
    ls = shop.bin / "python3"  # (a copy of ls with an interpreter's name: its first argument is its "script")
    shutil.copy(shutil.which("ls"), ls)
    ls.chmod(0o755)
    huge = shop.dir / "huge-script"
    with open(huge, "wb") as f:
        f.truncate(8 << 20)
    huge.chmod(0o644)
    got = run_as(users["frontend"], [str(ls), str(huge), str(m.path / "box" / "secret-file")])
    assert got.returncode != 0 and "No such file" in got.stderr, got
    assert any("cannot be identified" in a["reason"] and a["hide"] for a in m.denials(uid=users["frontend"].uid))
