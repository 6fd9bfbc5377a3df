"""Bad input through a real mount, on both stores (issue 6, item 5): each
gives a clear errno and a log line, and nothing is lost.

* damaged objects (a flipped byte in a block or the header, truncated,
  extended, one file's object or body copied onto another's, an object of
  another volume) read through the mount: EIO and a log line naming the
  file, while every other file reads back; putting the original object
  back makes the file readable again;
* names of 255 bytes and of odd bytes (newline, non-UTF-8, leading dash,
  control characters) through the mount, after a remount and offline;
* extended attributes past the store's metadata limit by far: many values
  of 64 KiB, the kernel's limit on the list of names;
* a full cache directory (a 2 MiB tmpfs): ENOSPC, never corruption, and
  the mount works again once space is freed;
* a store that refuses writes (local: a read-only bind mount of the store
  directory; S3: a bucket policy denying PutObject and DeleteObject, which
  moto enforces): reads work, writes fail with EIO and a log line, nothing
  stored changes.

Already covered elsewhere: an unreachable S3 endpoint at mount time
(tests/fs/test_mount_cli.py::test_unreachable_s3_endpoint_at_mount_time),
a wrong key and a damaged config (test_mount_failures_are_one_clear_line,
tests/test_cli.py), one 64 KiB xattr and E2BIG above it
(tests/fs/test_posix.py::test_xattrs), a 255-byte ASCII name
(test_posix.py::test_errnos).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from sealfs.codec.blocks import BLOCK_OVERHEAD
from sealfs.codec.header import HEADER_SIZE

from .conftest import fs_helpers, raises_errno, sealfs

ROOT_ID = bytes(16)


@contextlib.contextmanager
def offline(m):
    """The mount's volume opened as a library, behind the mount's back."""
    from sealfs import open_volume
    from sealfs.keys.slots import KeyFile
    from sealfs.keys.sources import read_keyfile

    vol = open_volume(m.url, [KeyFile(str(m.keyfile), read_keyfile(str(m.keyfile)))], m.store_options)
    try:
        yield vol
    finally:
        vol.close()


def log_lines(m, needle: str) -> list[str]:
    return [line for line in m.log.read_text(errors="replace").splitlines() if needle in line]


def read_file(path: Path | bytes) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


# -- damaged objects ----------------------------------------------------------------


def test_damaged_objects_give_eio_naming_the_file(make_mount, tmp_path):
    m = make_mount()
    p = m.path
    bs = 65536
    contents = {
        name: os.urandom(3 * bs + 5000)
        for name in (
            "good-big",
            "flipped-block",
            "flipped-header",
            "truncated-tag",
            "truncated-odd",
            "truncated-block",
            "extended",
            "swapped-whole",
            "swapped-body",
            "foreign-whole",
            "foreign-body",
        )
    }
    contents["good-small"] = b"small and intact\n"
    for name, data in contents.items():
        (p / name).write_bytes(data)
    (p / "dir").mkdir()
    (p / "dir" / "inner").write_bytes(b"inner")
    m.unmount()

    # A foreign volume (a local store, whatever this test's kind) with a file
    # of the same name and size.
    foreign = tmp_path / "foreign-store"
    fkey = tmp_path / "foreign.key"
    sealfs("init", foreign.as_uri(), "--keyfile", str(fkey))
    src = tmp_path / "foreign-src"
    src.write_bytes(os.urandom(3 * bs + 5000))
    sealfs("put", foreign.as_uri(), str(src), "/foreign-whole", "-o", f"keyfile={fkey}")
    fm = dataclasses.replace(m, url=foreign.as_uri(), store_options={}, keyfile=fkey)

    originals = {}
    with offline(fm) as fvol:
        fkey_of = fvol.entry_key(ROOT_ID, b"foreign-whole")[0]
        foreign_body, foreign_info = fvol.store.get_object(fkey_of)
    with offline(m) as vol:
        assert vol.layout.block_size == bs
        store = vol.store
        key = {name: vol.entry_key(ROOT_ID, name.encode())[0] for name in contents}
        for name in contents:
            originals[name] = store.get_object(key[name])

        def body(name):
            return originals[name][0]

        def md(name):
            return originals[name][1].metadata

        sealed = bs + BLOCK_OVERHEAD
        b = bytearray(body("flipped-block"))
        b[HEADER_SIZE + sealed + 1000] ^= 0x01  # in block 1
        store.put(key["flipped-block"], bytes(b), md("flipped-block"))
        b = bytearray(body("flipped-header"))
        b[HEADER_SIZE // 2] ^= 0x80
        store.put(key["flipped-header"], bytes(b), md("flipped-header"))
        store.put(key["truncated-tag"], body("truncated-tag")[:-100], md("truncated-tag"))  # a valid size
        store.put(
            key["truncated-odd"], body("truncated-odd")[: -(5000 + BLOCK_OVERHEAD - 10)], md("truncated-odd")
        )  # no valid size
        store.put(key["truncated-block"], body("truncated-block")[: HEADER_SIZE + 3 * sealed], md("truncated-block"))
        store.put(
            key["extended"], body("extended") + body("extended")[HEADER_SIZE : HEADER_SIZE + sealed], md("extended")
        )
        store.put(key["swapped-whole"], body("good-big"), md("good-big"))  # object and metadata of another file
        store.put(key["swapped-body"], body("good-big"), md("swapped-body"))  # only the content
        store.put(key["foreign-whole"], foreign_body, foreign_info.metadata)
        store.put(key["foreign-body"], foreign_body, md("foreign-body"))

    m.expected_log += [r"integrity failure in \w+: ", r"skipping damaged directory entry"]
    m.mount()
    # The listing leaves out the entries whose metadata fails, and lists the rest.
    unlisted = {"swapped-whole", "foreign-whole", "truncated-odd"}
    assert set(os.listdir(p)) == (set(contents) - unlisted) | {"dir"}
    for name in unlisted:
        with raises_errno(errno.EIO):
            os.stat(p / name)
    for name in (
        "flipped-block",
        "flipped-header",
        "truncated-tag",
        "truncated-block",
        "extended",
        "swapped-body",
        "foreign-body",
    ):
        with raises_errno(errno.EIO):
            read_file(p / name)
    with open(p / "flipped-block", "rb", buffering=0) as f:  # block 0 is intact
        assert f.read(bs) == contents["flipped-block"][:bs]
    # Every failure is logged with the file's name.
    for name in set(contents) - {"good-big", "good-small"}:
        assert [line for line in log_lines(m, name) if " ERROR " in line], (
            f"no error line names {name}:\n{m.log.read_text()[-3000:]}"
        )
    # The rest of the volume is untouched.
    assert read_file(p / "good-big") == contents["good-big"]
    assert read_file(p / "good-small") == contents["good-small"]
    assert read_file(p / "dir" / "inner") == b"inner"

    # Damage while mounted, after the file was read (its blocks are cached):
    # the next open sees the new object and refuses it.
    with offline(m) as vol:
        k = vol.entry_key(ROOT_ID, b"good-big")[0]
        b = bytearray(originals["good-big"][0])
        b[-50] ^= 0x04
        vol.store.put(k, bytes(b), originals["good-big"][1].metadata)
    with raises_errno(errno.EIO):
        read_file(p / "good-big")

    # Putting the original objects back repairs every file, through the same mount.
    with offline(m) as vol:
        for name, (data, info) in originals.items():
            vol.store.put(vol.entry_key(ROOT_ID, name.encode())[0], data, info.metadata)
    time.sleep(1.1)  # the kernel's attribute and entry caches (1 s)
    for name, data in contents.items():
        assert read_file(p / name) == data, name
    assert set(os.listdir(p)) == set(contents) | {"dir"}


# -- names ----------------------------------------------------------------------------


ODD_NAMES = [
    b"new\nline",
    b"\xff\xfe not utf-8 \x80",
    b"-leading-dash",
    b"--",
    b"-rf",
    b" spaces ",
    b"tab\tcr\rbell\x07",
    b"\x01\x1b[31m\x7f",
    b"...",
    b"back\\slash",
    "é".encode() * 127 + b"x",  # 255 bytes, two-byte characters
    bytes(c for c in range(1, 256) if c != ord("/")) + b"x",  # 255 bytes: every byte but / and NUL
    b"n" * 255,
]


def test_odd_names_through_the_mount(make_mount):
    m = make_mount()
    root = os.fsencode(m.path)
    assert all(1 <= len(n) <= 255 for n in ODD_NAMES)

    def path(*parts: bytes) -> bytes:
        return os.path.join(root, *parts)

    odd_dir = b"dir\n\xff-"
    os.mkdir(path(odd_dir))
    for i, name in enumerate(ODD_NAMES):
        with open(path(name), "wb") as f:
            f.write(name * 300)  # several blocks for the long names
        with open(path(odd_dir, name), "wb") as f:
            f.write(b"%d" % i)
        os.setxattr(path(name), b"user.\xff\n" + name[:200], name)
    os.symlink(ODD_NAMES[1], path(b"-link\n"))
    os.rename(path(odd_dir, ODD_NAMES[0]), path(odd_dir, b"-renamed\xfe\n"))
    os.unlink(path(odd_dir, ODD_NAMES[2]))
    for op in (lambda q: os.open(q, os.O_WRONLY | os.O_CREAT, 0o644), os.mkdir):
        with raises_errno(errno.ENAMETOOLONG):
            op(path(ODD_NAMES[-2] + b"y"))  # 256 bytes

    def check() -> None:
        assert set(os.listdir(root)) == set(ODD_NAMES) | {odd_dir, b"-link\n"}
        for name in ODD_NAMES:
            assert read_file(path(name)) == name * 300
            assert os.getxattr(path(name), b"user.\xff\n" + name[:200]) == name
        inner = {n: read_file(path(odd_dir, n)) for n in os.listdir(path(odd_dir))}
        want = {n: b"%d" % i for i, n in enumerate(ODD_NAMES) if i not in (0, 2)}
        want[b"-renamed\xfe\n"] = b"0"
        assert inner == want
        assert os.readlink(path(b"-link\n")) == ODD_NAMES[1]
        assert read_file(path(b"-link\n")) == ODD_NAMES[1] * 300

    check()
    m.remount()
    check()
    # Offline, by plaintext path, as bytes on the command line.
    for name in (ODD_NAMES[0], ODD_NAMES[1], ODD_NAMES[2], ODD_NAMES[-2]):
        out = subprocess.run(
            [*fs_helpers.SEALFS, "cat", m.url, b"/" + name, *m.store_args()],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == name * 300


# -- extended attributes ----------------------------------------------------------------


def test_xattrs_far_past_the_store_metadata_limit(make_mount):
    """Sixteen values of 64 KiB (1 MiB of attributes, in the overflow
    object x/<id>) on a file of several blocks, plus names up to the
    kernel's 64 KiB limit on the list of names."""
    m = make_mount()
    f = m.path / "f"
    data = os.urandom(200_000)
    f.write_bytes(data)
    values = {f"user.big{i}": os.urandom(65536) for i in range(16)}
    for name, value in values.items():
        os.setxattr(f, name, value)
    with raises_errno(errno.E2BIG):
        os.setxattr(f, "user.too-big", bytes(65537))
    longest = "user." + "n" * 250
    os.setxattr(f, longest, b"255-byte name")
    with raises_errno(errno.ERANGE):
        os.setxattr(f, longest + "n", b"256-byte name")
    # 256 names of 255 bytes: with their NULs, exactly the kernel's 64 KiB
    # limit on the list of names (XATTR_LIST_MAX).
    names = [f"user.{i:03d}" + "x" * (255 - 8) for i in range(256)]
    g = m.path / "g"
    g.write_bytes(b"g")
    for name in names:
        os.setxattr(g, name, b"v")
    assert sorted(os.listxattr(g)) == sorted(names)
    # One more: the list no longer fits, which the kernel refuses cleanly
    # (E2BIG); each attribute still reads, and nothing else changes.
    os.setxattr(g, "user.one-more" + "y" * (255 - 13), b"w")
    with raises_errno(errno.E2BIG):
        os.listxattr(g)
    assert os.getxattr(g, "user.one-more" + "y" * (255 - 13)) == b"w" and os.getxattr(g, names[0]) == b"v"
    os.removexattr(g, "user.one-more" + "y" * (255 - 13))

    def check() -> None:
        assert f.read_bytes() == data
        assert g.read_bytes() == b"g"
        assert sorted(os.listxattr(f)) == sorted([*values, longest])
        for name, value in values.items():
            assert os.getxattr(f, name) == value
        assert sorted(os.listxattr(g)) == sorted(names)

    check()
    m.remount()
    check()
    for name in values:
        os.removexattr(f, name)
    assert os.listxattr(f) == [longest]
    m.remount()
    assert f.read_bytes() == data and os.listxattr(f) == [longest]


# -- a full cache directory -------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_full_cache_directory(make_mount, tmp_path):
    """Dirty data past dirty_size spills to cache_dir; with cache_dir on a
    2 MiB tmpfs, a 4 MiB file fails with ENOSPC.  What the writer was told
    was written is stored intact, earlier files are intact, and once space
    is freed the mount writes again."""
    with tmpfs(tmp_path / "tmpfs", "2m") as cache:
        m = make_mount([f"cache_dir={cache}", "dirty_size=256K"])
        try:
            earlier = {f"e{i}": os.urandom(n) for i, n in enumerate((100, 70_000, 1_000_000))}
            for name, data in earlier.items():
                (m.path / name).write_bytes(data)
            filler = cache / "filler"
            filler.write_bytes(bytes(1536 * 1024))  # leaves about 512 KiB

            data = os.urandom(4 << 20)
            chunk = 65536
            acked = 0
            failure = None
            fd = os.open(m.path / "big", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while acked < len(data):
                    acked += os.write(fd, data[acked : acked + chunk])
            except OSError as exc:
                failure = exc
            finally:
                try:
                    os.close(fd)
                except OSError as exc:
                    failure = failure or exc
            assert failure is not None and failure.errno == errno.ENOSPC, failure
            assert acked < len(data)
            assert "cache directory" in m.log.read_text()  # the operator learns why
            stored = (m.path / "big").read_bytes()
            # What close() stored: everything acknowledged, and nothing but
            # the data written (the failed write may or may not be in it).
            assert len(stored) >= acked and stored == data[: len(stored)], (
                f"{acked} bytes acknowledged, {len(stored)} stored, first difference at "
                f"{next((i for i in range(len(stored)) if stored[i] != data[i]), None)}"
            )
            for name, value in earlier.items():
                assert (m.path / name).read_bytes() == value

            filler.unlink()
            again = os.urandom(1536 * 1024)
            (m.path / "after").write_bytes(again)
            assert (m.path / "after").read_bytes() == again
            m.remount()
            assert (m.path / "after").read_bytes() == again
            assert (m.path / "big").read_bytes() == stored
            for name, value in earlier.items():
                assert (m.path / name).read_bytes() == value
        finally:
            m.unmount()  # before the tmpfs goes (the make_mount fixture checks the log)


# -- a store that refuses writes --------------------------------------------------------------


def _local_root(m) -> Path:
    return Path(urllib.parse.urlparse(m.url).path)


def test_store_that_refuses_writes(make_mount, store_kind, tmp_path, request):
    m = make_mount()
    p = m.path
    data = os.urandom(300_000)
    (p / "f").write_bytes(data)
    (p / "d").mkdir()
    os.setxattr(p / "f", "user.k", b"v")
    m.unmount()

    def snapshot() -> dict[str, str]:
        with offline(m) as vol:
            return {o.key: o.etag for o in vol.store.list_all("") if not isinstance(o, str)}

    before = snapshot()
    undo = []
    try:
        if store_kind == "local":
            # (root ignores file modes: a read-only bind mount of the store directory)
            ro = tmp_path / "ro-store"
            ro.mkdir()
            subprocess.run(["mount", "--bind", str(_local_root(m)), str(ro)], check=True)
            undo.append(lambda: subprocess.run(["umount", str(ro)], check=True))
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
            refused = dataclasses.replace(m, url=ro.as_uri(), log=tmp_path / "ro.log", expected_log=[])
        else:
            # moto enforces a bucket policy's Deny of PutObject (also CopyObject)
            # and DeleteObject; it does not refuse CreateMultipartUpload.
            client = request.getfixturevalue("moto_s3")
            bucket = m.url[len("s3://") :].split("/")[0]
            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": ["s3:PutObject", "s3:DeleteObject"],
                        "Resource": f"arn:aws:s3:::{bucket}/*",
                    }
                ],
            }
            client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
            undo.append(lambda: client.delete_bucket_policy(Bucket=bucket))
            refused = dataclasses.replace(m, log=tmp_path / "refused.log", expected_log=[])
        refused.expected_log += [
            r"store failure in \w+: ",
            r"discarding changes to (f|new) ",
            r"cannot write the times of directory / ",
        ]
        refused.mount()
        try:
            assert (p / "f").read_bytes() == data
            assert os.getxattr(p / "f", "user.k") == b"v"
            with raises_errno(errno.EIO):
                (p / "new").write_bytes(b"x")
            with raises_errno(errno.EIO):
                os.mkdir(p / "d2")
            with raises_errno(errno.EIO):
                os.unlink(p / "f")
            with raises_errno(errno.EIO):
                os.rename(p / "f", p / "g")
            with raises_errno(errno.EIO):
                os.chmod(p / "f", 0o600)
            with raises_errno(errno.EIO):
                os.setxattr(p / "f", "user.k", b"changed")
            with raises_errno(errno.EIO), open(p / "f", "r+b") as fh:
                fh.write(b"changed")
            # The kernel sends the release after close() returned: the
            # changes are discarded then, and must not show any more.
            deadline = time.monotonic() + 10
            while not log_lines(refused, "discarding changes to f "):
                assert time.monotonic() < deadline, "no release of f"
                time.sleep(0.05)
            assert (p / "f").read_bytes() == data
            time.sleep(2.5)  # the timer tries the directory's new times twice more
            assert sorted(os.listdir(p)) == ["d", "f"]
        finally:
            refused.unmount()
        problems = refused.log_problems()
        assert not problems, problems
        failures = log_lines(refused, "store failure in ")
        assert len(failures) >= 7, failures
        # (the failed create of "new" changed the root's times, which cannot
        # be written either: said once, not every second)
        assert len(log_lines(refused, "cannot write the times of directory")) == 1
    finally:
        for action in undo:
            action()
    assert snapshot() == before, "a refused write changed the store"
    m.mount()
    assert (p / "f").read_bytes() == data
    assert os.getxattr(p / "f", "user.k") == b"v"
    (p / "new").write_bytes(b"writable again")
    assert sorted(os.listdir(p)) == ["d", "f", "new"]


def test_a_name_cannot_forge_a_log_line(make_mount, store_kind):
    """File names are user input: one holding a newline is escaped in the
    daemon's log, never a line of its own."""
    if store_kind != "local":
        pytest.skip("the log format does not depend on the store")
    m = make_mount()
    name = "x\n2026-01-01 00:00:00,000 ERROR sealfs: forged"
    m.expected_log.append("integrity failure")
    (m.path / name).write_bytes(b"secret" * 1000)
    m.unmount()
    root = _local_root(m)
    [obj] = [p for p in (root / "objects").rglob("*") if p.is_file() and p.stat().st_size > 4096 + 6000]
    raw = bytearray(obj.read_bytes())
    raw[-20] ^= 1
    obj.write_bytes(bytes(raw))
    m.mount()
    with pytest.raises(OSError):
        (m.path / name).read_bytes()
    m.unmount()
    lines = m.log.read_text().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert any("x\\x0a2026-01-01" in line for line in lines)
