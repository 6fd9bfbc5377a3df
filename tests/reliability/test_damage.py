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

import re
import subprocess
from collections.abc import Callable

import pytest

from sealfs.errors import DamagedObject, IntegrityError, NotFound, StoreError, StoreUnavailable
from sealfs.store.s3 import S3Store

from .faultproxy import FaultProxy

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
            body = re.sub(rb"<Contents>.*?</Contents>", lambda m: change(m.group(0).decode()).encode(), body,
                          flags=re.S)
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
        proxy: FaultProxy, s3_bucket: str, how: str) -> None:
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
        proxy: FaultProxy, s3_bucket: str, how: str) -> None:
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
    proxy.rewrite(lambda method, path, status, headers, body: (
        status, [(k, v) for k, v in headers if k.lower() != "etag" or method != "PUT"], body))
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

    calls = [lambda: store.head("d/a"), lambda: store.get("d/a"), lambda: store.list("d/"),
             lambda: store.put("d/new", b"x", if_none_match=True), lambda: store.put("t/rec", b"x"),
             lambda: store.create_multipart("d/big"), lambda: store.copy("d/a", "d/b", {}),
             lambda: store.put("d/a", b"x", if_match="0123")]
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
