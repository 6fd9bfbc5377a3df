"""A file uploaded in parts keeps the mtime of its last write without a
server-side copy of the whole object: its metadata, fixed when the upload
starts, names a times record ``t/<id>.<nonce>`` written just before the
upload completes (docs/FORMAT.md, "Times records").

Most tests run the local store in S3's shape (multipart, server-side
copies) with small parts; the copy count is checked against moto.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
from test_volume import CountingStore  # tests/test_volume.py

from sealfs.errors import IntegrityError, PreconditionFailed, StoreError, StoreUnavailable
from sealfs.fileio import context
from sealfs.fs.cache import BlockCache
from sealfs.fs.content import FileContent
from sealfs.fsck import check
from sealfs.keys.slots import KeyFile
from sealfs.store.local import LocalStore
from sealfs.volume import ROOT_ID, Volume, now_ns, times_key

BS = 4096
KEY = KeyFile("k", os.urandom(64))


@pytest.fixture
def vols(tmp_path, monkeypatch):
    """A volume on a local store that uploads like S3 (parts of 4 blocks),
    and a second volume on the same bucket: another mount."""
    monkeypatch.setattr(context, "PART_SIZE", 4 * BS)
    monkeypatch.setattr(context, "SINGLE_PUT_MAX", 4 * BS)

    def open_store(create=False):
        store = LocalStore(str(tmp_path / "bucket"), create=create)
        store.min_part_size = 1
        store.server_side_copy = True
        store.streaming_put = False
        return CountingStore(store)

    vol = Volume.create(open_store(create=True), KEY, block_size=BS)
    other = Volume.open(open_store(), [KEY])
    yield vol, other
    vol.close()
    other.close()


def write_in_parts(vol: Volume, tmp_path, e, data: bytes):
    """Write ``data`` as a program does, in 3000-byte writes, and close:
    parts go out while it writes.  The entry as uploaded."""
    content = FileContent(vol, e, BlockCache(64 * BS), str(tmp_path / "spool"), 64 * BS)
    try:
        content.truncate(0)
        for pos in range(0, len(data), 3000):
            content.write(pos, data[pos : pos + 3000])
            e = replace(e, mtime_ns=now_ns(), ctime_ns=now_ns())
        assert content.parts.stream is not None, "parts were not sent while writing"
        return content.upload(e)
    finally:
        content.close()


def written_not_closed(vol: Volume, tmp_path):
    """A new file "big" of 12 blocks written block by block and not yet
    flushed: (its entry, its contents, the data)."""
    e = vol.create_file(ROOT_ID, b"big", 0o644, 0, 0)
    content = FileContent(vol, e, BlockCache(64 * BS), str(tmp_path / "spool"), 64 * BS)
    data = os.urandom(12 * BS)
    for pos in range(0, len(data), BS):
        content.write(pos, data[pos : pos + BS])
    return e, content, data


def times_objects(vol: Volume) -> list[str]:
    return [o.key for o in vol.store.list_all("t/")]


def test_a_file_written_in_parts_has_its_last_write_time(vols, tmp_path):
    vol, other = vols
    e = vol.create_file(ROOT_ID, b"big", 0o644, 0, 0)
    started = e.mtime_ns
    time.sleep(0.01)  # the clock must move: the last write time must differ from the creation's
    vol.store.calls.clear()
    new = write_in_parts(vol, tmp_path, e, os.urandom(20 * BS + 5))
    assert vol.store.calls.get("copy", 0) == 0
    assert new.times_record is not None and times_objects(vol) == [times_key(new.id, new.times_record)]
    seen = other.lookup(ROOT_ID, b"big")
    assert (seen.mtime_ns, seen.ctime_ns) == (new.mtime_ns, new.ctime_ns)
    assert seen.mtime_ns > started and seen.times_record == new.times_record
    assert [x.mtime_ns for x in other.listdir(ROOT_ID)] == [new.mtime_ns]
    # the record is read once per mount: it never changes under its name
    other.store.calls.clear()
    other.lookup(ROOT_ID, b"big")
    assert other.store.calls == {"head": 1}


def test_a_metadata_change_while_writing_is_a_new_version_and_no_record(vols, tmp_path):
    """The metadata of the completed upload is replaced by a version of its
    own (a new header: docs/FORMAT.md, "Version binding"), not by a copy
    with other metadata on the same content."""
    vol, other = vols
    e, content, data = written_not_closed(vol, tmp_path)
    vol.store.calls.clear()
    new = content.upload(replace(e, mode=e.mode & ~0o777 | 0o600))
    content.close()
    assert vol.store.calls.get("complete_multipart") == 2 and "copy" not in vol.store.calls
    assert new.times_record is None and times_objects(vol) == []
    seen = other.lookup(ROOT_ID, b"big")
    assert seen.mode & 0o777 == 0o600 and seen.mtime_ns == new.mtime_ns and seen.times_record is None
    assert seen.header_hash == new.header_hash and seen.version == new.version
    assert other.reader(seen).read(0, len(data)) == data


@pytest.mark.parametrize("change", ["chmod", "rename", "rewrite", "rewrite in parts", "remove", "unlink while open"])
def test_the_record_goes_with_the_version_that_named_it(vols, tmp_path, change):
    vol, other = vols
    e = write_in_parts(vol, tmp_path, vol.create_file(ROOT_ID, b"big", 0o644, 0, 0), os.urandom(10 * BS))
    old = times_key(e.id, e.times_record)
    if change == "chmod":
        e = vol.set_meta(e, mode=e.mode & ~0o777 | 0o600)
    elif change == "rename":
        e = vol.rename(e, ROOT_ID, b"moved")
    elif change == "rewrite":
        e = vol.write_content(e, 3, lambda i: b"new", if_match=e.etag)
    elif change == "rewrite in parts":
        e = write_in_parts(vol, tmp_path, e, os.urandom(9 * BS))
    elif change == "remove":
        vol.remove(e)
    else:
        vol.remove(vol.orphan(e))
    left = times_objects(vol)
    assert old not in left
    assert left == ([times_key(e.id, e.times_record)] if change == "rewrite in parts" else [])
    if change not in ("remove", "unlink while open"):
        seen = other.lookup(ROOT_ID, e.name)
        assert (seen.mtime_ns, seen.ctime_ns, seen.mode) == (e.mtime_ns, e.ctime_ns, e.mode)


def test_a_tampered_missing_or_swapped_record_fails_authentication(vols, tmp_path):
    vol, other = vols
    a = write_in_parts(vol, tmp_path, vol.create_file(ROOT_ID, b"a", 0o644, 0, 0), os.urandom(10 * BS))
    b = write_in_parts(vol, tmp_path, vol.create_file(ROOT_ID, b"b", 0o644, 0, 0), os.urandom(10 * BS))
    store = vol.store.inner
    ka, kb = times_key(a.id, a.times_record), times_key(b.id, b.times_record)
    rec_a, rec_b = store.get(ka), store.get(kb)

    def fresh() -> Volume:  # no record remembered
        return Volume.open(store, [KEY])

    store.put(ka, rec_a[:-1] + bytes([rec_a[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="a"):
        fresh().lookup(ROOT_ID, b"a")
    store.put(ka, rec_b)  # b's record under a's name
    with pytest.raises(IntegrityError):
        fresh().lookup(ROOT_ID, b"a")
    store.delete(ka)
    with pytest.raises(IntegrityError, match="times record is missing"):
        fresh().lookup(ROOT_ID, b"a")
    # a listing reports it and goes on with the others
    bad = []
    listed = fresh().listdir(ROOT_ID, on_error=lambda key, exc: bad.append(str(exc)))
    assert [x.name for x in listed] == [b"b"] and len(bad) == 1 and "a" in bad[0]
    store.put(ka, rec_a)
    assert fresh().lookup(ROOT_ID, b"a").mtime_ns == a.mtime_ns


def test_a_record_removed_by_a_newer_version_meanwhile_is_read_again(vols, tmp_path):
    """Another mount replaces the file between this mount's HEAD and its
    GET of the record (which the replacement removed): the lookup reads
    the entry again and gets the new version, not an error."""
    vol, other = vols
    e = write_in_parts(vol, tmp_path, vol.create_file(ROOT_ID, b"big", 0o644, 0, 0), os.urandom(10 * BS))
    real_head = other.store.inner.head
    replaced = []

    def head_then_replace(key):
        info = real_head(key)
        if not replaced:
            replaced.append(vol.set_meta(e, mode=e.mode & ~0o777 | 0o600))
        return info

    other.store.inner.head = head_then_replace
    seen = other.lookup(ROOT_ID, b"big")
    assert seen.mode & 0o777 == 0o600 and seen.etag == replaced[0].etag and seen.times_record is None


def test_a_failed_metadata_rewrite_leaves_the_file_readable(vols, tmp_path, monkeypatch):
    """A chmod while the file was written needs a new version after the
    upload completes; if that fails, the completed version still has its
    times record (written before the completion), so it reads."""
    vol, other = vols
    e, content, data = written_not_closed(vol, tmp_path)
    real = vol.store.complete_multipart
    completions = []

    def second_fails(*args, **kwargs):
        completions.append(args[0])
        if len(completions) > 1:
            raise StoreUnavailable("the store went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(vol.store, "complete_multipart", second_fails)
    with pytest.raises(StoreError):
        content.upload(replace(e, mode=e.mode & ~0o777 | 0o600, mtime_ns=e.mtime_ns + 5))
    content.close()
    seen = other.lookup(ROOT_ID, b"big")
    assert seen.mtime_ns == e.mtime_ns + 5 and seen.times_record is not None
    assert other.reader(seen).read(0, len(data)) == data


def test_a_completion_whose_answer_was_lost_keeps_its_record(vols, tmp_path, monkeypatch):
    """Only a refused completion removes the record: an error may hide a
    completion that happened, whose object names it."""
    vol, other = vols
    e = vol.create_file(ROOT_ID, b"big", 0o644, 0, 0)
    real = vol.store.complete_multipart

    def completes_then_fails(*args, **kwargs):
        real(*args, **kwargs)
        raise StoreUnavailable("no answer")

    monkeypatch.setattr(vol.store, "complete_multipart", completes_then_fails)
    with pytest.raises(StoreError):
        write_in_parts(vol, tmp_path, e, os.urandom(10 * BS))
    seen = other.lookup(ROOT_ID, b"big")
    assert seen.size == 10 * BS and times_objects(vol) == [times_key(seen.id, seen.times_record)]


def test_a_lost_completion_leaves_no_record(vols, tmp_path):
    """Another mount changed the file while this one wrote it in parts:
    the completion is refused, and the record written for it is removed."""
    vol, other = vols
    e = write_in_parts(vol, tmp_path, vol.create_file(ROOT_ID, b"big", 0o644, 0, 0), os.urandom(10 * BS))
    content = FileContent(vol, e, BlockCache(64 * BS), str(tmp_path / "spool"), 64 * BS)
    content.truncate(0)
    for pos in range(0, 12 * BS, BS):
        content.write(pos, os.urandom(BS))
    theirs = other.lookup(ROOT_ID, b"big")
    other.write_content(theirs, 6, lambda i: b"theirs", if_match=theirs.etag)
    with pytest.raises(PreconditionFailed):
        content.upload(e)
    content.close()
    assert times_objects(vol) == []
    assert not vol.store.list_multipart_uploads()


def test_a_file_replaced_again_and_again_while_read_is_read_again(vols, tmp_path):
    """Each replacement removes the record the reader was about to read:
    the lookup goes on with the newer version until one holds still."""
    vol, other = vols
    e = write_in_parts(vol, tmp_path, vol.create_file(ROOT_ID, b"big", 0o644, 0, 0), os.urandom(10 * BS))
    real_head = other.store.inner.head
    versions = [e]

    def head_then_replace(key):
        info = real_head(key)
        if len(versions) < 4:
            versions.append(write_in_parts(vol, tmp_path, versions[-1], os.urandom(9 * BS + len(versions))))
        return info

    other.store.inner.head = head_then_replace
    seen = other.lookup(ROOT_ID, b"big")
    assert seen.etag == versions[-1].etag and seen.size == versions[-1].size


def test_fsck_keeps_the_record_of_a_damaged_entry(vols, tmp_path):
    """An entry that fails to load (its record tampered with) is damage,
    reported; its record is the evidence, not a leftover to delete."""
    vol, _ = vols
    e = write_in_parts(vol, tmp_path, vol.create_file(ROOT_ID, b"big", 0o644, 0, 0), os.urandom(10 * BS))
    key = times_key(e.id, e.times_record)
    record = vol.store.get(key)
    vol.store.put(key, record[:-1] + bytes([record[-1] ^ 1]))
    fresh = Volume.open(vol.store, [KEY])
    report = check(fresh, stale_seconds=0)
    assert report.damaged and not report.leftovers
    check(fresh, repair=True, stale_seconds=0)
    assert times_objects(vol) == [key]


def test_fsck_removes_records_no_version_names_after_a_grace_period(vols, tmp_path):
    vol, _ = vols
    e = write_in_parts(vol, tmp_path, vol.create_file(ROOT_ID, b"big", 0o644, 0, 0), os.urandom(10 * BS))
    stray = times_key(e.id, bytes(16))  # as a crash between writing a record and completing leaves
    vol.store.put(stray, b"x")
    assert not check(vol).leftovers  # (too young: an upload may be completing)
    report = check(vol, stale_seconds=0)
    assert report.leftovers == [(stray, "times record of no entry version")]
    check(vol, repair=True, stale_seconds=0)
    assert times_objects(vol) == [times_key(e.id, e.times_record)]
    assert Volume.open(vol.store, [KEY]).lookup(ROOT_ID, b"big").mtime_ns == e.mtime_ns


def test_on_s3_a_file_written_in_parts_is_not_copied_at_close(make_bucket, moto_server, tmp_path):
    from sealfs.store.s3 import S3Store

    bucket = make_bucket()
    store = CountingStore(S3Store(bucket, "pfx", endpoint=moto_server, path_style=True))
    vol = Volume.create(store, KEY, block_size=64 * 1024)
    try:
        e = vol.create_file(ROOT_ID, b"big", 0o644, 0, 0)
        store.calls.clear()
        content = FileContent(vol, e, BlockCache(1 << 24), str(tmp_path / "spool"), 1 << 24)
        data = os.urandom(3 * context.PART_SIZE + 100)
        for pos in range(0, len(data), 1 << 20):
            content.write(pos, data[pos : pos + (1 << 20)])
        assert content.parts.stream is not None
        e = replace(e, mtime_ns=now_ns())
        new = content.upload(e)
        content.close()
        assert store.calls.get("copy", 0) == 0 and store.calls.get("complete_multipart") == 1
        other = Volume.open(S3Store(bucket, "pfx", endpoint=moto_server, path_style=True), [KEY])
        seen = other.lookup(ROOT_ID, b"big")
        assert seen.mtime_ns == new.mtime_ns and seen.size == len(data)
        assert other.reader(seen).read(0, len(data)) == data
        other.close()
    finally:
        vol.close()
