"""The filesystem core without a mount: what the hot requests cost.

A small file opened for reading is revalidated and read in one store
request; the requests the kernel sends most are answered without waiting
(``nowait``) when memory has the answer, and say WouldBlock, having changed
nothing, when it does not.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
from test_volume import CountingStore  # tests/test_volume.py

from sealfs.errors import FsError, IntegrityError, WouldBlock
from sealfs.fs.core import Filesystem, Options
from sealfs.fs.files import OPEN_READ_BYTES
from sealfs.fs.nodes import ROOT_INO, Ctx
from sealfs.keys.slots import KeyFile
from sealfs.store.local import LocalStore
from sealfs.volume import SETTLED_SECONDS, Volume

KEY = KeyFile("k", os.urandom(64))
CTX = Ctx(uid=0, gid=0, pid=os.getpid())


@pytest.fixture
def setup(tmp_path):
    store = CountingStore(LocalStore(str(tmp_path / "bucket"), create=True))
    vol = Volume.create(store, KEY, block_size=64 * 1024)
    fs = Filesystem(vol, Options(cache_dir=str(tmp_path / "cache")))
    other = Volume.open(LocalStore(str(tmp_path / "bucket")), [KEY])  # another mount of the bucket
    yield fs, store, other
    for v in (vol, other):
        v.close()


def write_file(fs: Filesystem, name: bytes, data: bytes) -> int:
    attr, fh = fs.create(ROOT_INO, name, 0o644, os.O_WRONLY, CTX)
    fs.write(fh, 0, data)
    fs.release(fh)
    return attr.ino


def read_file(fs: Filesystem, ino: int, n: int = 1 << 30) -> bytes:
    fh, _ = fs.open(ino, os.O_RDONLY, CTX)
    try:
        return fs.read(fh, 0, n)
    finally:
        fs.release(fh)


def test_a_small_file_is_opened_and_read_in_one_request(setup):
    fs, store, _ = setup
    data = os.urandom(100_000)  # two blocks
    ino = write_file(fs, b"small", data)
    fs.cache.drop_file(fs.nodes.get(ino).entry.id)  # as after a remount
    store.calls.clear()
    assert read_file(fs, ino) == data
    assert store.calls == {"get_object": 1}


def test_open_of_a_cached_file_only_revalidates(setup):
    fs, store, _ = setup
    ino = write_file(fs, b"small", b"hello")
    assert read_file(fs, ino) == b"hello"
    store.calls.clear()
    assert read_file(fs, ino) == b"hello"
    assert store.calls == {"head": 1}


def test_a_large_file_is_not_read_at_open_and_its_first_read_is_one_request(setup):
    fs, store, _ = setup
    data = os.urandom(OPEN_READ_BYTES + 1)
    ino = write_file(fs, b"large", data)
    fs.cache.drop_file(fs.nodes.get(ino).entry.id)
    store.calls.clear()
    fh, _ = fs.open(ino, os.O_RDONLY, CTX)
    assert store.calls == {"head": 1}
    store.calls.clear()
    assert fs.read(fh, 0, len(data)) == data
    assert store.calls == {"get": 1}  # (the header comes with the blocks)
    fs.release(fh)


def test_open_reads_the_version_stored_now(setup):
    fs, _, other = setup
    ino = write_file(fs, b"f", b"first version")
    assert read_file(fs, ino) == b"first version"
    e = other.lookup(other.root().id, b"f")
    other.write_content(e, 14, lambda i: b"second version", if_match=e.etag)
    assert read_file(fs, ino) == b"second version"


def test_a_file_grown_past_the_limit_since_lookup_is_read_by_ranges(setup):
    fs, store, other = setup
    ino = write_file(fs, b"f", b"small")
    fs.cache.drop_file(fs.nodes.get(ino).entry.id)
    big = os.urandom(4 * OPEN_READ_BYTES)
    e = other.lookup(other.root().id, b"f")
    bs = other.layout.block_size
    other.write_content(e, len(big), lambda i: big[i * bs : (i + 1) * bs], if_match=e.etag)
    store.calls.clear()
    assert read_file(fs, ino) == big
    assert store.calls["get_object"] == 1 and store.calls.get("get", 0) >= 1


def test_a_tampered_small_file_opens_and_its_read_fails(setup, tmp_path):
    fs, _, other = setup
    ino = write_file(fs, b"f", b"secret data")
    fs.cache.drop_file(fs.nodes.get(ino).entry.id)
    e = other.lookup(other.root().id, b"f")
    body = bytearray(other.store.get(e.key))
    body[-5] ^= 1
    other.store.put(e.key, bytes(body), other.store.head(e.key).metadata)
    fh, _ = fs.open(ino, os.O_RDONLY, CTX)
    with pytest.raises(IntegrityError):
        fs.read(fh, 0, 100)
    fs.release(fh)


def test_nowait_answers_from_memory(setup):
    fs, store, _ = setup
    ino = write_file(fs, b"f", b"hello")
    fh, _ = fs.open(ino, os.O_RDONLY, CTX)
    store.calls.clear()
    assert fs.getattr(ino, nowait=True).size == 5
    assert fs.read(fh, 0, 100, nowait=True) == b"hello"
    fs.flush(fh, nowait=True)
    fs.release(fh, nowait=True)
    assert store.calls == {}
    assert fs.nodes.get(ino).opens == 0 and fs.nodes.get(ino).content is None


def open_uncached(fs: Filesystem, data: bytes):
    """A stored file of ``data`` none of whose blocks is cached, opened
    read-write (so not read at open): (inode, node, handle)."""
    ino = write_file(fs, b"f", data)
    node = fs.nodes.get(ino)
    fs.cache.drop_file(node.entry.id)
    fh, _ = fs.open(ino, os.O_RDWR, CTX)
    return ino, node, fh


def while_held(lock, call):
    """What ``call()`` returns or raises in another thread while this one
    holds ``lock``."""
    outcome = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - returned to the test
            outcome.append(exc)

    with lock:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    return outcome[0]


def test_nowait_says_wouldblock_and_changes_nothing(setup):
    fs, _, _ = setup
    data = os.urandom(200_000)
    ino, node, fh = open_uncached(fs, data)
    with pytest.raises(WouldBlock):  # blocks not cached: the read needs the store
        fs.read(fh, 0, 4096, nowait=True)
    assert fs.read(fh, 0, 4096) == data[:4096]
    # a change to upload: flush and release need the store
    fs.write(fh, 0, b"X")
    for call in (fs.flush, fs.release):
        with pytest.raises(WouldBlock):
            call(fh, nowait=True)
        assert node.opens == 1 and node.content.changed
    # another thread holds the node
    fs.release(fh)
    assert isinstance(while_held(node.lock, lambda: fs.getattr(ino, nowait=True)), WouldBlock)
    assert read_file(fs, ino) == b"X" + data[1:]


def test_create_and_write_nowait(setup, tmp_path):
    fs, store, _ = setup
    store.calls.clear()
    attr, fh = fs.create(ROOT_INO, b"new", 0o644, os.O_WRONLY, CTX, nowait=True)
    assert fs.write(fh, 0, b"x" * 100_000, nowait=True) == 100_000
    assert store.calls == {}  # (stored at the first flush)
    fs.release(fh)
    assert read_file(fs, attr.ino) == b"x" * 100_000


def test_write_nowait_refuses_what_needs_the_store_or_the_disk(setup):
    fs, _, _ = setup
    data = os.urandom(200_000)
    ino, node, fh = open_uncached(fs, data)
    with pytest.raises(WouldBlock):  # a partial block of the stored version, not cached
        fs.write(fh, 10, b"abc", nowait=True)
    assert not node.content.dirty and not node.content.changed
    assert fs.write(fh, 0, b"y" * 65536, nowait=True) == 65536  # a whole block: nothing to read
    limit = fs.opts.dirty_bytes
    with pytest.raises(WouldBlock):  # past the dirty budget: the spool (disk)
        fs.write(fh, 0, b"z" * (limit + 65536), nowait=True)
    assert node.content.size == len(data)
    fs.release(fh)
    assert read_file(fs, ino) == b"y" * 65536 + data[65536:]


def test_create_nowait_waits_for_nothing_and_leaves_no_trace(setup):
    fs, _, _ = setup
    got = while_held(
        fs.nodes.get(ROOT_INO).lock, lambda: fs.create(ROOT_INO, b"late", 0o644, os.O_WRONLY, CTX, nowait=True)
    )
    assert isinstance(got, WouldBlock)
    assert not fs.nodes.unstored and not fs.files.handles
    with pytest.raises(FsError) as err:
        fs.lookup(ROOT_INO, b"late", CTX)
    assert err.value.errno == errno.ENOENT


# -- listings on S3: a HEAD per entry only for what may have changed ---------------------------


@pytest.fixture
def s3_setup(make_bucket, moto_server, tmp_path):
    from sealfs.store.s3 import S3Store

    bucket = make_bucket()

    def open_store():
        return S3Store(bucket, "pfx", endpoint=moto_server, path_style=True)

    store = CountingStore(open_store())
    vol = Volume.create(store, KEY, block_size=64 * 1024)
    fs = Filesystem(vol, Options(cache_dir=str(tmp_path / "cache")))
    other = Volume.open(open_store(), [KEY])
    yield fs, store, other
    for v in (vol, other):
        v.close()


def list_dir(fs: Filesystem, ino: int = ROOT_INO) -> dict[bytes, int]:
    """name -> mode, as ls -l sees them (giving back the lookups readdir took)."""
    fh = fs.opendir(ino, CTX)
    out, start = {}, 0
    while page := fs.readdir(fh, start):
        for name, attr, _ in page:
            out[name] = attr.mode & 0o7777
        start = page[-1][2]
        fs.forget([(attr.ino, 1) for _, attr, _ in page])
    fs.releasedir(fh)
    return out


def test_a_listing_heads_only_entries_that_may_have_changed(s3_setup):
    fs, store, other = s3_setup
    names = [f"f{i:02d}".encode() for i in range(12)]
    for name in names:
        write_file(fs, name, b"data")
    # keep the nodes known, as the kernel does for what it has listed
    inos = {name: fs.lookup(ROOT_INO, name, CTX).ino for name in names}
    time.sleep(SETTLED_SECONDS + 1.1)  # (a LastModified of the last second proves nothing)
    store.calls.clear()
    assert set(list_dir(fs)) == set(names)
    assert store.calls.get("head", 0) == len(names)  # what the writes told us has no LastModified
    store.calls.clear()
    assert list_dir(fs) == {name: 0o644 for name in names}
    assert store.calls.get("head", 0) == 0 and store.calls.get("list", 0) == 1

    # another mount changes only metadata (S3 keeps the etag): that entry is read again
    e = other.lookup(other.root().id, b"f03")
    other.set_meta(e, mode=(e.mode & ~0o7777) | 0o600)
    store.calls.clear()
    listed = list_dir(fs)
    assert listed[b"f03"] == 0o600 and listed[b"f04"] == 0o644
    assert store.calls.get("head", 0) == 1
    # changed again within the same second: still seen
    e = other.lookup(other.root().id, b"f03")
    other.set_meta(e, mode=(e.mode & ~0o7777) | 0o640)
    assert list_dir(fs)[b"f03"] == 0o640
    assert fs.getattr(inos[b"f03"]).mode & 0o7777 == 0o640


def count_seals(monkeypatch) -> list[int]:
    """The indices of the blocks sealed from now on, as they are sealed."""
    from sealfs.codec import blocks

    sealed = []
    real = blocks.FileCipher.seal_block

    def counting(self, index, last, plain, nonce=None):
        sealed.append(index)
        return real(self, index, last, plain, nonce)

    monkeypatch.setattr(blocks.FileCipher, "seal_block", counting)
    return sealed


def test_spooled_blocks_are_stored_as_they_were_sealed(setup, monkeypatch):
    """Blocks spilled to the spool are sealed once: the upload stores those
    very bytes, and nothing in the spool file is plaintext."""
    fs, _, _ = setup
    fs.opts.dirty_bytes = 4 * 65536
    sealed = count_seals(monkeypatch)
    data = os.urandom(20 * 65536 + 100)
    attr, fh = fs.create(ROOT_INO, b"big", 0o644, os.O_WRONLY, CTX)
    for off in reversed(range(65536, len(data), 65536)):  # (not front to back: nothing streams yet)
        fs.write(fh, off, data[off : off + 65536])
    spool = fs.nodes.get(attr.ino).content.spool
    assert spool is not None and len(spool) >= 10
    raw = b"".join(os.pread(spool._fd, 65536 + 28, i * spool.slot) for i in spool.indices())
    assert data[65536 : 65536 + 4096] not in raw
    fs.write(fh, 0, data[:65536])  # (now the spooled blocks can go into the new object as they are)
    fs.release(fh)
    assert sorted(sealed) == list(range(21)), "each block sealed once"
    fs.cache.drop_file(fs.nodes.get(attr.ino).entry.id)
    assert read_file(fs, attr.ino) == data


def test_a_file_written_front_to_back_goes_into_its_new_object_once(setup, tmp_path, monkeypatch):
    """On the local store a file written from its start is appended to its
    new object as it is written: each block sealed once, neither kept in
    memory nor spooled; readable meanwhile; a write behind what was sent
    moves the sent blocks to the spool and the file comes out right."""
    fs, store, _ = setup
    fs.opts.dirty_bytes = 24 * 65536  # (more than one append: 1 MiB)
    sealed = count_seals(monkeypatch)
    data = bytearray(os.urandom(40 * 65536 + 100))
    attr, fh = fs.create(ROOT_INO, b"big", 0o644, os.O_WRONLY, CTX)
    for off in range(0, len(data), 65536):
        fs.write(fh, off, bytes(data[off : off + 65536]))
        content = fs.nodes.get(attr.ino).content
        assert len(content.dirty) <= 24 and not content.spool
    assert content.parts.stream is not None and content.parts.stream.next_block >= 16
    (temp,) = os.listdir(store.inner._dir.tmp)
    with open(os.path.join(store.inner._dir.tmp, temp), "rb") as f:
        assert data[:4096] not in f.read()
    assert content.read(65536 * 3, 100) == data[65536 * 3 : 65536 * 3 + 100]  # (read back from the new object)
    fs.release(fh)
    assert sorted(sealed) == list(range(41)), "each block sealed once"
    assert os.listdir(store.inner._dir.tmp) == []
    fs.cache.drop_file(fs.nodes.get(attr.ino).entry.id)
    assert read_file(fs, attr.ino) == data

    # rewritten from the start, then a write behind what was sent
    fh, _ = fs.open(attr.ino, os.O_WRONLY | os.O_TRUNC, CTX)
    fs.setattr(attr.ino, CTX, size=0)
    data = bytearray(os.urandom(30 * 65536))
    for off in range(0, len(data), 65536):
        fs.write(fh, off, bytes(data[off : off + 65536]))
    content = fs.nodes.get(attr.ino).content
    assert content.parts.stream is not None
    fs.write(fh, 100, b"patched")
    data[100:107] = b"patched"
    assert content.parts.stream is None and len(content.spool) >= 14 and os.listdir(store.inner._dir.tmp) == []
    fs.release(fh)
    fs.cache.drop_file(fs.nodes.get(attr.ino).entry.id)
    assert read_file(fs, attr.ino) == data


@pytest.mark.parametrize("spool_full", [False, True])
def test_a_failed_install_of_a_streamed_file_loses_nothing(setup, monkeypatch, spool_full):
    """The new object cannot be installed (a store error): the blocks that
    only it holds move to the spool, or, if the spool cannot take them
    (its disk full), stay in the new object, which the next flush finishes."""
    from sealfs.errors import StoreError
    from sealfs.fs.spool import Spool
    from sealfs.store.local_files import LocalObjectWriter

    fs, store, _ = setup
    data = os.urandom(40 * 65536 + 100)
    attr, fh = fs.create(ROOT_INO, b"big", 0o644, os.O_WRONLY, CTX)
    for off in range(0, len(data), 65536):
        fs.write(fh, off, data[off : off + 65536])
    content = fs.nodes.get(attr.ino).content
    assert content.parts.stream is not None
    real_commit = LocalObjectWriter.commit

    def failing_commit(self, *args, **kwargs):
        raise StoreError("the store is gone")

    monkeypatch.setattr(LocalObjectWriter, "commit", failing_commit)
    if spool_full:

        def full(self, index, sealed):
            raise FsError(errno.ENOSPC, "cache directory is full")

        monkeypatch.setattr(Spool, "put_sealed", full)
    with pytest.raises((StoreError, FsError)):  # (the adapter answers EIO, or ENOSPC)
        fs.flush(fh)
    assert (content.parts.stream is not None) == spool_full
    assert content.read(0, len(data)) == data
    monkeypatch.setattr(LocalObjectWriter, "commit", real_commit)
    monkeypatch.undo()
    fs.release(fh)
    assert not content.changed
    fs.cache.drop_file(fs.nodes.get(attr.ino).entry.id)
    assert read_file(fs, attr.ino) == data
    assert os.listdir(store.inner._dir.tmp) == []


def test_a_store_error_while_sending_does_not_fail_the_write(setup, monkeypatch):
    """The new object cannot grow (its disk is full, say): the write still
    succeeds, the blocks stay in memory or the spool, and the flush stores
    the file whole (or reports the error)."""
    from sealfs.errors import StoreError
    from sealfs.store.local_files import LocalObjectWriter

    fs, store, _ = setup
    data = os.urandom(40 * 65536 + 100)
    attr, fh = fs.create(ROOT_INO, b"big", 0o644, os.O_WRONLY, CTX)
    real_append = LocalObjectWriter.append
    calls = []

    def fails_after_a_while(self, *chunks):
        calls.append(1)
        if len(calls) > 1:
            raise StoreError("no space left on the store's disk")
        real_append(self, *chunks)

    monkeypatch.setattr(LocalObjectWriter, "append", fails_after_a_while)
    for off in range(0, len(data), 65536):
        fs.write(fh, off, data[off : off + 65536])
    content = fs.nodes.get(attr.ino).content
    assert len(calls) == 2 and content.parts.stream is None and os.listdir(store.inner._dir.tmp) == []
    monkeypatch.undo()
    fs.release(fh)
    fs.cache.drop_file(fs.nodes.get(attr.ino).entry.id)
    assert read_file(fs, attr.ino) == data


def test_fsck_lists_what_a_crash_left_in_the_local_store_s_tmp(setup, tmp_path):
    from sealfs.fsck import check

    fs, store, _ = setup
    tmp = store.inner._dir.tmp
    os.makedirs(tmp, exist_ok=True)
    for name, age in (("put-old", 3 * 86400), ("put-new", 0)):
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(b"ciphertext")
        t = time.time() - age
        os.utime(os.path.join(tmp, name), (t, t))
    report = check(fs.vol)
    assert report.leftovers == [("temporary file put-old", "part of an object being written, left by a crash")]
    check(fs.vol, repair=True)
    assert os.listdir(tmp) == ["put-new"]


def test_setattr_nowait_only_while_a_writer_has_an_upload_pending(setup):
    fs, store, _ = setup
    attr, fh = fs.create(ROOT_INO, b"t", 0o600, os.O_WRONLY, CTX)
    fs.write(fh, 0, b"tar member")
    store.calls.clear()
    fs.setattr(attr.ino, CTX, mtime_ns=1_700_000_000 * 10**9, nowait=True)  # (tar, before close)
    fs.setattr(attr.ino, CTX, mode=0o644, nowait=True)
    assert store.calls == {}
    fs.release(fh)
    e = fs.nodes.get(attr.ino).entry
    assert (e.mode & 0o7777, e.mtime_ns) == (0o644, 1_700_000_000 * 10**9)
    assert store.writes() == 1  # the data and the metadata in one write
    with pytest.raises(WouldBlock):  # closed: a change is a store write
        fs.setattr(attr.ino, CTX, mode=0o600, nowait=True)
    fs.setattr(attr.ino, CTX, mode=0o600)
    fs.cache.drop_file(e.id)
    ino = attr.ino
    fh, _ = fs.open(ino, os.O_RDWR, CTX)
    with pytest.raises(WouldBlock):  # a truncate needs the store (its base block)
        fs.setattr(ino, CTX, size=3, fh=fh, nowait=True)
    fs.release(fh)
    assert read_file(fs, ino) == b"tar member"


def test_a_chmod_after_another_mount_made_the_file_sparse_keeps_its_content(setup):
    # Our metadata goes onto the version stored now (PreconditionFailed,
    # then again on the reloaded version): that version is read as what it
    # is, sparse, not as the dense one we had.
    fs, _, other = setup
    bs = 64 * 1024
    ino = write_file(fs, b"f", os.urandom(3 * bs))
    theirs = other.lookup(fs.nodes.get(ROOT_INO).entry.id, b"f")
    first, last = os.urandom(bs), os.urandom(bs)
    blocks = {0: first, 2: last}
    sparse = other.write_content(theirs, 3 * bs, blocks.get, if_match=theirs.etag, extents=[(0, 1), (2, 3)])
    assert sparse.sparse
    fs.setattr(ino, CTX, mode=0o600)
    stored = other.lookup(fs.nodes.get(ROOT_INO).entry.id, b"f")
    assert stored.mode & 0o7777 == 0o600
    assert other.reader(stored).read(0, 3 * bs) == first + bytes(bs) + last
