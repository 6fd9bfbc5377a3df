"""The volume library: layout promises that hold at any depth and size."""

from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from sealfs.errors import FsError, IntegrityError
from sealfs.keys.slots import KeyFile
from sealfs.store.base import Store
from sealfs.store.local import LocalStore
from sealfs.volume import ROOT_ID, Volume


class CountingStore(Store):
    """Wraps a store and counts every call by name."""

    WRITES = ("put", "put_chunks", "copy", "delete", "delete_many", "complete_multipart")

    def __init__(self, inner: Store):
        self.inner = inner
        self.url = inner.url
        self.min_part_size = inner.min_part_size
        self.max_put_size = inner.max_put_size
        self.server_side_copy = inner.server_side_copy
        self.streaming_put = inner.streaming_put
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _call(self, name: str, *args, **kwargs):
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self.inner, name)(*args, **kwargs)

    def writes(self) -> int:
        return sum(n for k, n in self.calls.items() if k in self.WRITES)

    def get(self, *args, **kwargs):
        return self._call("get", *args, **kwargs)

    def get_object(self, *args, **kwargs):
        return self._call("get_object", *args, **kwargs)

    def get_stream(self, *args, **kwargs):
        return self._call("get_stream", *args, **kwargs)

    def head(self, *args, **kwargs):
        return self._call("head", *args, **kwargs)

    def list(self, *args, **kwargs):
        return self._call("list", *args, **kwargs)

    def put(self, *args, **kwargs):
        return self._call("put", *args, **kwargs)

    def put_chunks(self, *args, **kwargs):
        return self._call("put_chunks", *args, **kwargs)

    def open_put(self, *args, **kwargs):
        return self._call("open_put", *args, **kwargs)

    def temporaries(self, *args, **kwargs):
        return self._call("temporaries", *args, **kwargs)

    def remove_temporary(self, *args, **kwargs):
        return self._call("remove_temporary", *args, **kwargs)

    def copy(self, *args, **kwargs):
        return self._call("copy", *args, **kwargs)

    def delete(self, *args, **kwargs):
        return self._call("delete", *args, **kwargs)

    def delete_many(self, *args, **kwargs):
        return self._call("delete_many", *args, **kwargs)

    def create_multipart(self, *args, **kwargs):
        return self._call("create_multipart", *args, **kwargs)

    def upload_part(self, *args, **kwargs):
        return self._call("upload_part", *args, **kwargs)

    def upload_part_copy(self, *args, **kwargs):
        return self._call("upload_part_copy", *args, **kwargs)

    def complete_multipart(self, *args, **kwargs):
        return self._call("complete_multipart", *args, **kwargs)

    def abort_multipart(self, *args, **kwargs):
        return self._call("abort_multipart", *args, **kwargs)

    def list_multipart_uploads(self, *args, **kwargs):
        return self._call("list_multipart_uploads", *args, **kwargs)

    def check(self, *args, **kwargs):
        return self._call("check", *args, **kwargs)


@pytest.fixture
def vol(store):
    v = Volume.create(store, KeyFile("k", os.urandom(64)), block_size=64 * 1024)
    yield v
    v._pool.shutdown()


def test_path_of_4096_bytes_through_60_levels(vol, store):
    d = vol.root()
    names = []
    for level in range(60):
        name = (f"level{level:02d}-" + "x" * 80)[:67].encode()
        names.append(name)
        d = vol.mkdir(d.id, name, 0o755, 0, 0)
    path = b"/" + b"/".join(names)
    assert len(path) >= 4096 - 68
    leaf_name = b"leaf-" + b"y" * (4096 - len(path) - 1 - 5)
    leaf = vol.new_file_entry(d.id, leaf_name, 0o644, 0, 0)
    vol.write_content(leaf, 5, lambda i: b"hello", if_none_match=True)
    full = path + b"/" + leaf_name
    assert len(full) == 4096
    e = vol.resolve(full)
    assert b"".join(vol.reader(e).iter_chunks()) == b"hello"
    longest = max(len(o.key.encode()) for o in store.list_all(""))
    assert longest < 200, "object keys must not grow with depth"


def test_renaming_a_directory_with_10000_descendants_rewrites_one_entry(tmp_path):
    # On the local store only: 10,000 creates take minutes on moto, and the
    # layout (hence the number of writes) is the same on both stores.
    counting = CountingStore(LocalStore(str(tmp_path / "s"), create=True))
    vol = Volume.create(counting, KeyFile("k", os.urandom(64)), block_size=64 * 1024)
    top = vol.mkdir(ROOT_ID, b"top", 0o755, 0, 0)
    subdirs = [vol.mkdir(top.id, f"sub{i}".encode(), 0o755, 0, 0) for i in range(10)]

    def make(i: int) -> None:
        d = subdirs[i % 10]
        vol.create_file(d.id, f"file{i}".encode(), 0o644, 0, 0)

    with ThreadPoolExecutor(32) as ex:
        list(ex.map(make, range(9990)))
    counting.calls.clear()
    moved = vol.rename(top, ROOT_ID, b"renamed")
    assert counting.writes() == 2, counting.calls  # the new entry, and removing the old one
    assert counting.calls.get("put", 0) == 1 and counting.calls.get("delete", 0) == 1
    assert moved.id == top.id
    assert len(vol.listdir(vol.resolve("/renamed/sub3").id)) == 999
    with pytest.raises(FsError) as err:
        vol.resolve("/top")
    assert err.value.errno == errno.ENOENT
    vol._pool.shutdown()


def test_names_up_to_255_bytes_of_any_byte_but_slash_and_nul(vol):
    odd = bytes(b for b in range(1, 256) if b != ord("/"))  # 254 bytes
    for name in (odd, odd + b"x", b"\xff\xfe invalid utf-8 \x80", b"-", b" leading space", b"."[:0] + b"..."):
        e = vol.mkdir(ROOT_ID, name, 0o700, 1, 2)
        assert vol.lookup(ROOT_ID, name).id == e.id
    names = {e.name for e in vol.listdir(ROOT_ID)}
    assert odd in names and odd + b"x" in names
    with pytest.raises(FsError) as err:
        vol.mkdir(ROOT_ID, odd + b"xy", 0o700, 0, 0)
    assert err.value.errno == errno.ENAMETOOLONG
    for bad in (b"a/b", b"a\0b", b".", b".."):
        with pytest.raises(FsError) as err:
            vol.mkdir(ROOT_ID, bad, 0o700, 0, 0)
        assert err.value.errno == errno.EINVAL


def test_large_xattrs_overflow_the_metadata_limit_and_come_back(vol, store):
    e = vol.create_file(ROOT_ID, b"f", 0o644, 0, 0)
    big = {b"user.a": os.urandom(4000), b"user.b": b"small"}
    e = vol.set_meta(e, xattrs=big)
    again = vol.lookup(ROOT_ID, b"f")
    assert again.xattrs == big
    assert again.overflow
    assert any(o.key.startswith("x/") for o in store.list_all("x/"))
    # shrinking them back under the limit removes the overflow object
    vol.set_meta(again, xattrs={b"user.b": b"small"})
    assert vol.lookup(ROOT_ID, b"f").xattrs == {b"user.b": b"small"}
    assert not [o for o in store.list_all("x/")]


def test_entry_metadata_moved_to_another_key_is_refused(vol, store):
    a = vol.create_file(ROOT_ID, b"a", 0o600, 0, 0)
    b = vol.create_file(ROOT_ID, b"b", 0o644, 0, 0)
    meta_a = store.head(a.key).metadata
    store.copy(b.key, b.key, meta_a)  # b's content with a's (sealed) metadata
    with pytest.raises(IntegrityError):
        vol.lookup(ROOT_ID, b"b")
    seen: list[str] = []
    listed = vol.listdir(ROOT_ID, on_error=lambda key, exc: seen.append(key))
    assert [e.name for e in listed] == [b"a"] and seen == [b.key]


def test_file_body_swapped_between_files_is_refused(vol, store):
    a = vol.new_file_entry(ROOT_ID, b"a", 0o644, 0, 0)
    a = vol.write_content(a, 10, lambda i: b"aaaaaaaaaa", if_none_match=True)
    b = vol.new_file_entry(ROOT_ID, b"b", 0o644, 0, 0)
    b = vol.write_content(b, 10, lambda i: b"bbbbbbbbbb", if_none_match=True)
    store.put(b.key, store.get(a.key), store.head(b.key).metadata)
    with pytest.raises(IntegrityError, match="another file"):
        vol.reader(vol.lookup(ROOT_ID, b"b")).read(0, 10)
