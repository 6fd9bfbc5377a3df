"""One damaged object, or a store that went away (issue 14 items 3 and 5).

Every parser of bytes that come from a store raises only the integrity
error (DamagedObject, or IntegrityError above the store) for one bad
object: S3 answers whose headers or listing entries do not parse (made by
the fault proxy in front of moto, since moto never sends them), and every
object kind of a real small volume truncated or flipped.  A store that is
gone or was replaced (a local directory deleted, moved or swapped; an S3
bucket deleted, or deleted and made again empty) fails every request with
EIO and writes nothing, on a real mount.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sealfs import fsck
from sealfs.codec.header import HEADER_SIZE
from sealfs.errors import (
    BadKeyError,
    ConfigError,
    DamagedObject,
    IntegrityError,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from sealfs.keys.slots import CONFIG_KEY, KeyFile
from sealfs.store.s3 import S3Store
from sealfs.volume import ROOT_ID, Volume, dir_prefix, overflow_key, times_key

from .conftest import raises_errno, sealfs
from .faultproxy import FaultProxy
from .test_bad_input import _local_root, log_lines, offline

PFX = "pfx/"


@pytest.fixture
def proxy(moto_server: str):
    with FaultProxy(moto_server) as p:
        yield p


def _header_rewrite(target: str, change: Callable[[dict[str, str]], None]):
    """A rewrite of the answers about object ``target`` (a HEAD or GET of
    it): ``change(headers)`` edits its headers (lowercase names)."""

    def rewrite(method, path, status, headers, body):
        if method in ("HEAD", "GET") and path.split("?")[0].endswith("/" + PFX + target):
            h = {k.lower(): v for k, v in headers}
            change(h)
            headers = list(h.items())
        return status, headers, body

    return rewrite


def _listing_rewrite(change: Callable[[str], str]):
    """A rewrite of listings: ``change(xml of one <Contents>)`` per entry."""

    def rewrite(method, path, status, headers, body):
        if method == "GET" and "list-type=2" in path and status == 200:
            body = re.sub(
                rb"<Contents>.*?</Contents>", lambda m: change(m.group(0).decode()).encode(), body, flags=re.DOTALL
            )
        return status, headers, body

    return rewrite


def _drop(name: str) -> Callable[[dict[str, str]], None]:
    return lambda h: h.pop(name, None)


def _set(name: str, value: str) -> Callable[[dict[str, str]], None]:
    return lambda h: h.__setitem__(name, value)


GARBLED_HEADERS = {
    "no ETag": _drop("etag"),
    "empty ETag": _set("etag", '""'),
    "Last-Modified not a date": _set("last-modified", "yesterday, around noon"),
    "no Last-Modified": _drop("last-modified"),
    "Content-Length not a number": _set("content-length", "many"),
    "Content-Length negative": _set("content-length", "-5"),
    "Content-Range not a range": _set("content-range", "bytes 0-2/lots"),
}


@pytest.mark.parametrize("how", list(GARBLED_HEADERS))
def test_s3_answer_about_one_object_that_does_not_parse_is_that_object_damaged(
    proxy: FaultProxy, s3_bucket: str, how: str
) -> None:
    """HEAD and GET of the object with a garbled answer raise DamagedObject
    (never a KeyError or ValueError); its neighbours are unaffected and the
    listing still lists all three."""
    store = S3Store(s3_bucket, "pfx", endpoint=proxy.url, path_style=True)
    for key in ("d/a", "d/b", "d/c"):
        store.put(key, key.encode() * 10, {"m": "x"})
    proxy.rewrite(_header_rewrite("d/b", GARBLED_HEADERS[how]))
    calls = [lambda: store.head("d/b"), lambda: store.get_object("d/b", 3), lambda: store.get_object("d/b")]
    if how.startswith("Content-Range"):
        calls = [lambda: store.get_object("d/b", 3)]  # (only a ranged GET has one)
    if how.startswith("Content-Length"):
        # (on a GET it frames the body: a garbled one is a broken
        # connection, StoreUnavailable, not something said of the object)
        calls = [lambda: store.head("d/b")]
    for call in calls:
        with pytest.raises(DamagedObject, match="d/b"):
            call()
    for key in ("d/a", "d/c"):
        assert store.head(key).size == 30 and store.get(key) == key.encode() * 10
    assert [o.key for o in store.list("d/").objects] == ["d/a", "d/b", "d/c"]
    proxy.clear()
    assert store.get_object("d/b")[0] == b"d/b" * 10
    store.close()


GARBLED_ENTRIES = {
    "Size not a number": lambda x: re.sub(r"<Size>\d+</Size>", "<Size>big</Size>", x),
    "Size negative": lambda x: re.sub(r"<Size>\d+</Size>", "<Size>-1</Size>", x),
    "no Size": lambda x: re.sub(r"<Size>\d+</Size>", "", x),
    "LastModified not a date": lambda x: re.sub(r"<LastModified>[^<]*<", "<LastModified>soon<", x),
    "no ETag": lambda x: re.sub(r"<ETag>[^<]*</ETag>", "", x),
    "no Key": lambda x: re.sub(r"<Key>[^<]*</Key>", "", x),
    "Key outside the prefix": lambda x: re.sub(r"<Key>[^<]*</Key>", "<Key>elsewhere/b</Key>", x),
}


@pytest.mark.parametrize("how", list(GARBLED_ENTRIES))
def test_s3_listing_with_one_entry_that_does_not_parse_lists_the_others(
    proxy: FaultProxy, s3_bucket: str, how: str
) -> None:
    """A listing whose entry for d/b does not parse still lists d/a and d/c
    with their true fields; d/b is listed with what parses (size -1, etag
    "" where unknown: a caller reads it to know more) or, without a usable
    key, left out."""
    store = S3Store(s3_bucket, "pfx", endpoint=proxy.url, path_style=True)
    etags = {key: store.put(key, key.encode() * 10) for key in ("d/a", "d/b", "d/c")}
    change = GARBLED_ENTRIES[how]
    proxy.rewrite(_listing_rewrite(lambda x: change(x) if f"<Key>{PFX}d/b</Key>" in x else x))
    listed = {o.key: o for o in store.list("d/").objects}
    if how.endswith("Key") or how.startswith("Key"):
        assert sorted(listed) == ["d/a", "d/c"]
    else:
        assert sorted(listed) == ["d/a", "d/b", "d/c"]
        b = listed["d/b"]
        assert (b.size, b.etag) in ((-1, etags["d/b"]), (30, ""), (30, etags["d/b"]))
        assert (b.size, b.etag, b.mtime > 0) != (30, etags["d/b"], True)  # (something is unknown)
    for key in ("d/a", "d/c"):
        assert (listed[key].size, listed[key].etag) == (30, etags[key]) and listed[key].mtime > 0
    assert [o.key for o in store.list_all("d/")] == sorted(listed)
    store.close()


def test_s3_listing_of_uploads_with_one_bad_entry(proxy: FaultProxy, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "pfx", endpoint=proxy.url, path_style=True)
    first = store.create_multipart("u/one")
    store.create_multipart("u/two")

    def rewrite(method, path, status, headers, body):
        if method == "GET" and "uploads" in path and status == 200:
            body = body.replace(f"<UploadId>{first}</UploadId>".encode(), b"")
        return status, headers, body

    proxy.rewrite(rewrite)
    assert [u.key for u in store.list_multipart_uploads("u/")] == ["u/two"]
    store.close()


def test_s3_write_answer_without_etag_is_damage_not_a_key_error(proxy: FaultProxy, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "pfx", endpoint=proxy.url, path_style=True)
    proxy.rewrite(
        lambda method, path, status, headers, body: (
            status,
            [(k, v) for k, v in headers if k.lower() != "etag" or method != "PUT"],
            body,
        )
    )
    with pytest.raises(DamagedObject, match="ETag"):
        store.put("w", b"data")
    store.close()


def test_s3_store_replaced_under_a_watched_store(moto_s3, moto_server: str, s3_bucket: str) -> None:
    """With the config watched: a bucket deleted and made again empty makes
    a lookup, a listing and a new write StoreUnavailable, and nothing is
    written into the new bucket; the config changed to another volume's
    too; the same config back, or one changed by a key command, passes."""
    store = S3Store(s3_bucket, "pfx", endpoint=moto_server, path_style=True)
    etag = store.put("sealfs.json", b"volume-1 v1")
    store.put("d/a", b"a")
    store.watch("sealfs.json", etag, lambda raw: raw.startswith(b"volume-1 "))
    with pytest.raises(NotFound):
        store.head("d/missing")  # the config is there: a missing object is missing
    assert store.list("e/").objects == []
    store.put("sealfs.json", b"volume-1 v2")  # (a key command changed it)
    with pytest.raises(NotFound):
        store.head("d/missing")

    def delete_bucket() -> None:
        keys = [{"Key": o["Key"]} for o in moto_s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
        if keys:
            moto_s3.delete_objects(Bucket=s3_bucket, Delete={"Objects": keys})
        moto_s3.delete_bucket(Bucket=s3_bucket)

    calls = [
        lambda: store.head("d/a"),
        lambda: store.get("d/a"),
        lambda: store.list("d/"),
        lambda: store.put("d/new", b"x", if_none_match=True),
        lambda: store.put("t/rec", b"x"),
        lambda: store.create_multipart("d/big"),
        lambda: store.copy("d/a", "d/b", {}),
        lambda: store.put("d/a", b"x", if_match="0123"),
    ]
    delete_bucket()
    for call in calls:  # (no bucket: a clear store error)
        with pytest.raises(StoreError):
            call()
    moto_s3.create_bucket(Bucket=s3_bucket)
    for call in calls:
        with pytest.raises(StoreUnavailable, match="no longer holds the volume"):
            call()
    assert moto_s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    moto_s3.put_object(Bucket=s3_bucket, Key="pfx/sealfs.json", Body=b"volume-2 v1")  # another volume
    for call in calls:
        with pytest.raises(StoreUnavailable, match="another volume"):
            call()
    assert [o["Key"] for o in moto_s3.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["pfx/sealfs.json"]
    moto_s3.put_object(Bucket=s3_bucket, Key="pfx/sealfs.json", Body=b"volume-1 v3")  # ours, put back
    moto_s3.put_object(Bucket=s3_bucket, Key="pfx/d/a", Body=b"a")
    assert store.get("d/a") == b"a"
    store.put("d/new", b"x", if_none_match=True)
    store.close()


# -- on a live mount ----------------------------------------------------------------


def _keys(vol, dir_id: bytes, names) -> dict[str, str]:
    return {name: vol.entry_key(dir_id, name.encode())[0] for name in names}


def _eio(call: Callable[[], object]) -> None:
    """``call`` fails with EIO -- once the kernel's caches of attributes
    and names (1 s) no longer answer it without asking the daemon."""
    deadline = time.monotonic() + 10
    while True:
        try:
            call()
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
            return
        assert time.monotonic() < deadline, f"{call} kept succeeding"
        time.sleep(0.05)


def _wait_for_log(m, needle: str) -> None:
    deadline = time.monotonic() + 30
    while not log_lines(m, needle):
        assert time.monotonic() < deadline, f"no log line with {needle!r}:\n{m.log.read_text()[-3000:]}"
        time.sleep(0.05)


def test_one_damaged_entry_leaves_its_directory_working(make_mount, store_kind):
    """Entries damaged in each way (sealed metadata garbled, the object cut
    to an impossible size, its overflow metadata deleted, and on the local
    store the object file cut inside the store's own header): each alone is
    EIO with a log line naming it and is left out of listings; ls, find,
    du and cat of the intact siblings work; rm -r removes every intact
    entry and stops only at the damaged ones (rmdir: not empty), which
    stay in the store for fsck (exit 4)."""
    m = make_mount()
    d = m.path / "d"
    d.mkdir()
    intact = {f"f{i}": os.urandom(100 + 1000 * i) for i in range(8)}
    damaged = ["garbled-meta", "cut-short", "overflow-gone"] + (["local-header"] if store_kind == "local" else [])
    for name, data in {**intact, **{n: b"doomed " + n.encode() for n in damaged}}.items():
        (d / name).write_bytes(data)
    for i in range(16):  # (far past what fits in the object's own metadata)
        os.setxattr(d / "overflow-gone", f"user.big{i}", os.urandom(60_000))
    (d / "sub").mkdir()
    (d / "sub" / "inner").write_bytes(b"inner")
    os.symlink("f1", d / "link")
    m.unmount()

    with offline(m) as vol:
        dir_id = vol.lookup(ROOT_ID, b"d").id
        key = _keys(vol, dir_id, damaged)
        body, info = vol.store.get_object(key["garbled-meta"])
        vol.store.put(key["garbled-meta"], body, {**info.metadata, "m": "AAAA" + info.metadata["m"][8:]})
        body, info = vol.store.get_object(key["cut-short"])
        vol.store.put(key["cut-short"], body[: HEADER_SIZE + 7], info.metadata)
        vol.store.delete(overflow_key(vol.lookup(dir_id, b"overflow-gone").id))
        if store_kind == "local":
            path = _local_root(m) / "objects" / key["local-header"].replace("/", "~/")
            assert path.is_file(), path
            os.truncate(path, 100)
    m.expected_log += [r"skipping damaged directory entry", r"integrity failure in \w+: "]
    m.mount()

    listed = set(os.listdir(d))
    assert listed == set(intact) | {"sub", "link"}
    for name in damaged:
        with raises_errno(errno.EIO):
            os.stat(d / name)
        assert [line for line in log_lines(m, name) if " ERROR " in line], name
    for name, data in intact.items():
        assert (d / name).read_bytes() == data
    assert os.readlink(d / "link") == "f1"
    found = subprocess.run(["find", str(d)], capture_output=True, text=True, check=False)
    assert found.returncode == 0, found.stderr
    assert {Path(p).name for p in found.stdout.split()} == listed | {"d", "inner"}
    du = subprocess.run(["du", "-s", "-b", str(d)], capture_output=True, text=True, check=False)
    assert du.returncode == 0, du.stderr
    assert int(du.stdout.split()[0]) >= sum(map(len, intact.values()))

    rm = subprocess.run(["rm", "-r", str(d)], capture_output=True, text=True, check=False)
    assert rm.returncode != 0 and "not empty" in rm.stderr.lower(), rm.stderr
    assert os.listdir(d) == []  # every intact entry removed
    for name in damaged:
        with raises_errno(errno.EIO):
            os.stat(d / name)
    m.unmount()
    with offline(m) as vol:
        assert sorted(o.key for o in vol.store.list_all(dir_prefix(dir_id))) == sorted(key.values())
    check = sealfs("fsck", m.url, *m.store_args(), check=False)
    assert check.returncode == 4, check.stderr
    out = check.stdout.decode() + check.stderr.decode()
    for name in ("garbled-meta", "cut-short", "overflow-gone"):  # (named where the name authenticates)
        assert name in out or key[name] in out, out
    assert "overflow metadata" in out and "is missing" in out, out
    m.mount()


def test_s3_answer_that_does_not_parse_on_a_live_mount(make_mount, store_kind, proxy, make_store_spec):
    """Through the proxy, the HEAD of one entry comes back without an ETag
    and with a garbled Last-Modified: that entry is EIO with a log line and
    left out of the listing; its siblings are listed and read."""
    if store_kind != "s3":
        pytest.skip("an S3 answer")
    m = make_mount()
    for name in ("a", "b", "c"):
        (m.path / name).write_bytes(name.encode() * 100)
    m.unmount()
    with offline(m) as vol:
        key = vol.entry_key(ROOT_ID, b"b")[0]
    spec = dataclasses.replace(m.spec, options={**m.spec.options, "endpoint": proxy.url})
    garble = _header_rewrite(key, lambda h: (h.pop("etag", None), h.__setitem__("last-modified", "noon")))
    proxy.rewrite(garble)
    p = make_mount(spec=spec)
    p.expected_log += [r"skipping damaged directory entry", r"integrity failure in \w+: "]
    assert sorted(os.listdir(p.path)) == ["a", "c"]
    with raises_errno(errno.EIO):
        os.stat(p.path / "b")
    assert (p.path / "a").read_bytes() == b"a" * 100
    assert (p.path / "c").read_bytes() == b"c" * 100
    assert log_lines(p, "ETag that does not parse")
    proxy.clear()
    assert (p.path / "b").read_bytes() == b"b" * 100


def test_local_store_gone_while_mounted(make_mount, store_kind, tmp_path):
    """The store directory deleted, moved away, or replaced by another
    volume's store while mounted: every request is EIO with a log line
    (never an empty volume) and nothing is written, to the old path or to
    the other store; moved back, the same mount works again."""
    if store_kind != "local":
        pytest.skip("a local store directory")
    m = make_mount()
    (m.path / "f").write_bytes(b"kept")
    (m.path / "d").mkdir()
    other = make_mount()
    (other.path / "theirs").write_bytes(b"another volume")
    other.unmount()
    m.remount()  # (nothing pending: the directory times are written)
    m.expected_log += [r"local store .* (is gone|was replaced)"]
    root, away, theirs = _local_root(m), tmp_path / "away", _local_root(other)

    def every_request_fails() -> None:
        for call in (
            lambda: os.listdir(m.path),
            lambda: os.stat(m.path / "f"),
            lambda: (m.path / "f").read_bytes(),
            lambda: os.mkdir(m.path / "new-dir"),
            lambda: (m.path / "new-file").write_bytes(b"x"),
            lambda: os.unlink(m.path / "f"),
            lambda: os.rename(m.path / "f", m.path / "g"),
            lambda: os.listdir(m.path / "d"),
        ):
            _eio(call)

    def tree(path: Path) -> dict[str, bytes]:
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}

    root.rename(away)
    every_request_fails()
    assert not root.exists()
    _wait_for_log(m, "is gone")
    before = tree(theirs)
    theirs.rename(root)  # another volume's store where ours was
    every_request_fails()
    assert tree(root) == before
    _wait_for_log(m, "was replaced")
    root.rename(theirs)
    away.rename(root)  # ours back
    assert sorted(os.listdir(m.path)) == ["d", "f"]
    assert (m.path / "f").read_bytes() == b"kept"
    shutil.copytree(root, away)  # (a copy, to put back: then deleted for good)
    shutil.rmtree(root)
    every_request_fails()
    assert not root.exists()
    shutil.copytree(away, root)  # a copy is another directory: replaced
    every_request_fails()
    assert tree(root) == tree(away)


def test_s3_bucket_deleted_while_mounted(make_mount, store_kind, moto_s3):
    """The bucket deleted while mounted: EIO; made again, empty: still
    EIO, never an empty volume, and nothing is written into it; its
    objects put back, the same mount works again."""
    if store_kind != "s3":
        pytest.skip("an S3 bucket")
    m = make_mount()
    (m.path / "f").write_bytes(b"kept")
    (m.path / "d").mkdir()
    m.remount()  # (nothing pending)
    m.expected_log += [r"store failure in \w+: .*(does not exist|no longer holds the volume)"]
    bucket = m.url[len("s3://") :].split("/")[0]
    saved = {
        o["Key"]: moto_s3.get_object(Bucket=bucket, Key=o["Key"])
        for o in moto_s3.list_objects_v2(Bucket=bucket)["Contents"]
    }
    saved = {k: (r["Body"].read(), r["Metadata"]) for k, r in saved.items()}

    def every_request_fails() -> None:
        for call in (
            lambda: os.listdir(m.path),
            lambda: os.stat(m.path / "f"),
            lambda: (m.path / "f").read_bytes(),
            lambda: os.mkdir(m.path / "new-dir"),
            lambda: (m.path / "new-file").write_bytes(b"x"),
            lambda: os.symlink("f", m.path / "new-link"),
            lambda: os.listdir(m.path / "d"),
            lambda: os.rename(m.path / "f", m.path / "g"),
        ):
            _eio(call)

    for k in saved:
        moto_s3.delete_object(Bucket=bucket, Key=k)
    moto_s3.delete_bucket(Bucket=bucket)
    every_request_fails()
    _wait_for_log(m, "does not exist")
    moto_s3.create_bucket(Bucket=bucket)
    every_request_fails()
    _wait_for_log(m, "no longer holds the volume")
    assert moto_s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    for k, (body, md) in saved.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=body, Metadata=md)
    assert sorted(os.listdir(m.path)) == ["d", "f"]
    assert (m.path / "f").read_bytes() == b"kept"
    (m.path / "new-file").write_bytes(b"works again")


# -- every object kind of a small volume, damaged --------------------------------


def _small_volume(store):
    """A small volume with an object of every kind; (volume, credential,
    {path: (kind, content)}, {path: the keys it depends on})."""
    cred = KeyFile("k", os.urandom(64))
    vol = Volume.create(store, cred, block_size=4096)
    want: dict[str, tuple[str, bytes | None]] = {}
    deps: dict[str, set[str]] = {}

    def file(dir_id: bytes, parent: str, name: bytes, data: bytes):
        e = vol.new_file_entry(dir_id, name, 0o640, 0, 0)
        e = vol.write_content(e, len(data), lambda i: data[i * 4096 : (i + 1) * 4096] or None, if_none_match=True)
        want[parent + name.decode()] = ("f", data)
        deps[parent + name.decode()] = deps.get(parent.rstrip("/"), set()) | {e.key}
        return e

    file(ROOT_ID, "/", b"small", b"small file")
    file(ROOT_ID, "/", b"multi", os.urandom(3 * 4096 + 100))
    sub = vol.mkdir(ROOT_ID, b"dir", 0o755, 0, 0)
    want["/dir"], deps["/dir"] = ("d", None), {sub.key}
    file(sub.id, "/dir/", b"inner", b"inner file")
    file(sub.id, "/dir/", b"long-" + b"n" * 200, b"a file with a long name")
    link = vol.symlink(ROOT_ID, b"link", b"dir/inner", 0, 0)
    want["/link"], deps["/link"] = ("l", b"dir/inner"), {link.key}
    x = file(ROOT_ID, "/", b"xattrs", b"with large xattrs")
    vol.set_meta(x, xattrs={f"user.v{i}".encode(): os.urandom(900) for i in range(4)})
    assert vol.lookup(ROOT_ID, b"xattrs").overflow
    deps["/xattrs"].add(overflow_key(x.id))
    t = file(ROOT_ID, "/", b"timed", b"with a times record")
    nonce = os.urandom(16)  # (as a file uploaded in parts has: see Volume.start_stream)
    vol.sealed.put_times(t, nonce)
    store.copy(t.key, t.key, vol.sealed.seal(t, nonce))
    assert vol.lookup(ROOT_ID, b"timed").times_record == nonce
    deps["/timed"].add(times_key(t.id, nonce))
    vol.close()
    return cred, want, deps


def _probe(spec, cred, want, deps, damaged: set[str], what: str, renamed: bool = False) -> None:
    """Open the volume and read all of it: only integrity errors (or, for
    the config, the errors of a damaged config) are raised, every path
    that does not depend on a damaged object lists and reads as written,
    and one that does either reads as written or fails: never other
    bytes.  fsck runs to its end."""
    store = spec.open()
    try:
        vol = Volume.open(store, [cred])
    except (ConfigError, BadKeyError, IntegrityError):
        assert CONFIG_KEY in damaged, what
        store.close()
        return
    try:
        got: dict[str, tuple[str, bytes | None] | str] = {}
        reported: set[str] = set()  # entries left out of a listing, with a log line

        def walk(dir_id: bytes, path: str) -> None:
            for e in vol.listdir(dir_id, on_error=lambda key, exc: reported.add(key)):
                p = path + e.name.decode()
                try:
                    if e.is_dir:
                        got[p] = ("d", None)
                        walk(e.id, p + "/")
                    elif e.is_link:
                        got[p] = ("l", vol.readlink(e))
                    else:
                        got[p] = ("f", b"".join(vol.reader(e).iter_chunks()))
                except IntegrityError:
                    got[p] = "damaged"

        try:
            vol.root()
        except IntegrityError:
            assert "root" in damaged, what
        walk(ROOT_ID, "/")
        for path, expected in want.items():
            if deps[path] & damaged:
                assert got.get(path, "damaged") in ("damaged", expected), f"{what}: {path} read other bytes"
                # Gone from its listing: said, not silent -- unless its key
                # was changed (a missing entry is a deletion: see FORMAT.md).
                assert path in got or deps[path] & reported or renamed, f"{what}: {path} vanished silently"
            else:
                assert got.get(path) == expected, f"{what}: intact {path} is {str(got.get(path))[:80]}"
        assert set(got) <= set(want), f"{what}: {set(got) - set(want)} appeared"
        fsck.check(vol)
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{what}: {exc!r}") from exc
    finally:
        vol.close()


def _mutations(data: bytes, rnd: random.Random, flips: int):
    """(name, bytes) of ``data`` cut short and with bytes flipped."""
    n = len(data)
    cuts = {0, 1, 7, 31, HEADER_SIZE - 1, HEADER_SIZE, n // 2, n - 17, n - 1} if flips > 3 else {0, n // 2, n - 1}
    for cut in sorted(cuts & set(range(n))):
        yield f"cut to {cut}", data[:cut]
    yield "one byte more", data + b"\0"
    for _ in range(flips if n else 0):
        at, bit = rnd.randrange(n), 1 << rnd.randrange(8)
        raw = bytearray(data)
        raw[at] ^= bit
        yield f"bit {bit:#x} of byte {at} flipped", bytes(raw)


def _text_mutations(text: str, rnd: random.Random, flips: int):
    yield from ((name, raw.decode("latin-1")) for name, raw in _mutations(text.encode("latin-1"), rnd, 0))
    for _ in range(flips):
        at = rnd.randrange(len(text))
        c = rnd.choice("AZaz09+/=_-.~ \x7f")
        yield f"character {at} made {c!r}", text[:at] + c + text[at + 1 :]


@pytest.mark.parametrize("store_kind", ["local", "s3"], indirect=True)
def test_every_object_kind_damaged(store_spec, store_kind):
    """Each object of a small volume (config, root entry, directory, files
    with short and long names, symlink, overflow metadata, times record)
    with its bytes cut short and flipped, its metadata values cut, flipped
    and dropped, its key changed, and on the local store its object file
    itself (the store's header and all) cut and flipped: see _probe."""
    rnd = random.Random(14)
    # (on S3 fewer: the volume sees the same bytes as on a local store, and
    # each probe costs about forty requests)
    flips = 12 if store_kind == "local" else 1
    # (each probe opens the store afresh, as a new mount does: a store
    # opened by a volume checks its config before each write, which the
    # damage done here to the config would fail)
    store = store_spec.open(create=True)
    cred, want, deps = _small_volume(store)
    store = store_spec.open()
    probe = functools.partial(_probe, store_spec, cred, want, deps)
    keys = [o.key for o in store.list_all("") if not isinstance(o, str)]
    kinds = {k.split("/")[0] for k in keys}
    assert {"sealfs.json", "root", "d", "x", "t"} <= kinds, kinds
    if store_kind == "s3":  # (one entry object of each kind)
        entries = {k for path in ("/link", "/dir/long-" + "n" * 200) for k in deps[path]}
        keys = [k for k in keys if not k.startswith("d/") or k in entries]
    for key in keys:
        body, info = store.get_object(key)
        md = dict(info.metadata or {})

        def restore(key=key, body=body, md=md) -> None:
            store.put(key, body, md)

        for how, bad in _mutations(body, rnd, flips):
            store.put(key, bad, md)
            probe({key}, f"{key}: body {how}")
        for field in sorted(md):
            for how, value in [("dropped", None), *_text_mutations(md[field], rnd, flips)]:
                changed = {k: v for k, v in md.items() if k != field}
                if value is not None:
                    changed[field] = value
                try:
                    store.put(key, body, changed)
                except ValueError:
                    continue  # (metadata no store takes)
                probe({key}, f"{key}: metadata {field} {how}")
        restore()
        head, _, last = key.rpartition("/")
        if head:
            moved = head + "/" + ("b" if last[0] != "b" else "c") + last[1:]
            store.put(moved, body, md)
            store.delete(key)
            probe({key, moved}, f"{key}: renamed to {moved}", renamed=key.startswith("d/"))
            store.delete(moved)
            restore()
        if store_kind == "local":
            path = Path(store.root) / "objects" / key.replace("/", "~/")
            raw = path.read_bytes()
            for how, bad in _mutations(raw, rnd, flips * 2):
                path.write_bytes(bad)
                probe({key}, f"{key}: local object file {how}")
            path.write_bytes(raw)
    probe(set(), "all restored")
    store.close()


def test_fsck_goes_on_past_a_damaged_root_entry(store_spec, tmp_path):
    """The root's own entry object damaged: fsck says so and still checks
    every entry below it (finding the damage deeper down), exit 4."""
    store = store_spec.open(create=True)
    keyfile = tmp_path / "key"
    keyfile.write_bytes(os.urandom(64))
    vol = Volume.create(store, KeyFile(str(keyfile), keyfile.read_bytes()), block_size=4096)
    sub = vol.mkdir(ROOT_ID, b"dir", 0o755, 0, 0)
    for parent, name in ((ROOT_ID, b"top"), (sub.id, b"deep"), (sub.id, b"fine")):
        e = vol.new_file_entry(parent, name, 0o600, 0, 0)
        vol.write_content(e, 5000, lambda i: bytes([i + 1]) * (4096 if i == 0 else 904), if_none_match=True)
    body, info = store.get_object("root")
    store.put("root", body, {"m": info.metadata["m"][:-6] + "AAAAAA"})
    deep = vol.lookup(sub.id, b"deep")
    raw, info = store.get_object(deep.key)
    store.put(deep.key, raw[:-1] + bytes([raw[-1] ^ 1]), info.metadata)
    report = fsck.check(vol)
    vol.close()
    where = [w for w, _ in report.damaged]
    assert where[0] == "/" and "root directory entry" in report.damaged[0][1], report.damaged
    assert where[1:] == ["/dir/deep"], report.damaged
    assert (report.files, report.dirs) == (3, 2)
    opts = [f"keyfile={keyfile}"] + [f"{k}={v}" for k, v in store_spec.options.items()]
    proc = sealfs("fsck", store_spec.url, "-o", ",".join(opts), check=False)
    assert proc.returncode == 4, proc.stderr
    out = proc.stdout.decode()
    assert "root directory entry" in out and "/dir/deep" in out, out


def test_s3_answer_fields_fuzzed(proxy: FaultProxy, s3_bucket: str) -> None:
    """Any text in the ETag, Last-Modified, Content-Length, Content-Range
    and user-metadata headers of one object's answers, and in the fields of
    its listing entry: DamagedObject or an answer, never another exception;
    a listing lists its neighbours as they are."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    store = S3Store(
        s3_bucket, "pfx", endpoint=proxy.url, path_style=True, max_attempts=1, read_timeout=1, call_timeout=2
    )
    etags = {k: store.put(k, b"0123456789", {"m": "v"}) for k in ("d/a", "d/b", "d/c")}
    header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
    xml_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="<>&"), max_size=40)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(
        st.sampled_from(["etag", "last-modified", "content-length", "content-range", "x-amz-meta-m"]),
        header_text,
        st.sampled_from(["Size", "ETag", "LastModified", "Key"]),
        xml_text,
    )
    def fuzzed(header: str, value: str, field: str, text: str) -> None:
        proxy.rewrite(_header_rewrite("d/b", _set(header, value)))
        calls = [lambda: store.head("d/b")]
        if header != "content-length":  # (on a GET it frames the body: see above)
            calls.append(lambda: store.get_object("d/b", 4))
        for call in calls:
            try:
                call()
            except DamagedObject:
                pass

        def garble(x: str) -> str:
            if f"<Key>{PFX}d/b</Key>" not in x:
                return x
            return re.sub(f"<{field}>[^<]*</{field}>", lambda _: f"<{field}>{text}</{field}>", x)

        proxy.rewrite(_listing_rewrite(garble))
        listed = {o.key: o for o in store.list("d/").objects}
        for key in ("d/a", "d/c"):
            assert (listed[key].size, listed[key].etag) == (10, etags[key])

    fuzzed()
    proxy.clear()
    store.close()


def test_s3_config_answer_that_does_not_parse_is_a_damaged_config(proxy: FaultProxy, s3_bucket: str) -> None:
    """The volume config's answer without an ETag: ConfigError (exit 5,
    'damaged'), as for damaged config bytes, not a KeyError."""
    store = S3Store(s3_bucket, "pfx", endpoint=proxy.url, path_style=True)
    cred = KeyFile("k", os.urandom(64))
    Volume.create(store, cred, block_size=4096).close()
    store = S3Store(s3_bucket, "pfx", endpoint=proxy.url, path_style=True)
    proxy.rewrite(_header_rewrite(CONFIG_KEY, _drop("etag")))
    with pytest.raises(ConfigError, match="damaged"):
        Volume.open(store, [cred])
    proxy.clear()
    Volume.open(store, [cred]).close()
