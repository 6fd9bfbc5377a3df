"""Random writes, truncates, uploads and re-opens through the block layer
equal a bytearray model.

Runs :class:`sealfs.fs.content.FileContent` (dirty blocks, the encrypted
spool, base-block reuse, multipart with UploadPartCopy) against a real
local store, with sizes shrunk so that every path is taken: 4 KiB blocks,
16 KiB parts, a 12 KiB dirty budget.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sealfs.fileio import context
from sealfs.fileio.streams import AppendStream
from sealfs.fs.cache import BlockCache
from sealfs.fs.content import FileContent
from sealfs.keys.slots import KeyFile
from sealfs.store.local import LocalStore
from sealfs.volume import ROOT_ID, Volume, times_key

BS = 4096
MAX_SIZE = 10 * BS


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(context, "SINGLE_PUT_MAX", 8 * BS)
    monkeypatch.setattr(context, "PART_SIZE", 4 * BS + 100)  # parts that straddle blocks
    monkeypatch.setattr(AppendStream, "APPEND_BYTES", 2 * BS + 100)


offsets = st.integers(min_value=0, max_value=MAX_SIZE)


class FileModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.model = bytearray()
        self.stored = bytearray()

    @initialize(mode=st.sampled_from(["append", "multipart", "multipart, one-pass put"]))
    def make_volume(self, mode):
        """How sequential rewrites go out while written: appended to the new
        object (the local store) or as multipart parts (S3); how whole
        uploads go: in one pass (the local store) or in multipart parts."""
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        store = LocalStore(os.path.join(self.tmp.name, "store"), create=True)
        store.min_part_size = 1
        store.server_side_copy = mode != "append"
        store.streaming_put = mode != "multipart"
        self.store = store
        self.vol = Volume.create(store, KeyFile("k", os.urandom(64)), block_size=BS)
        self.entry = self.vol.create_file(ROOT_ID, b"f", 0o644, 0, 0)
        self.cache = BlockCache(16 * BS)
        self.content = self._open()

    def _open(self) -> FileContent:
        return FileContent(self.vol, self.entry, self.cache, os.path.join(self.tmp.name, "spool"), 3 * BS)

    def teardown(self):
        if hasattr(self, "vol"):
            self.content.close()
            self.vol.close()
            self.tmp.cleanup()

    @rule(offset=offsets, data=st.binary(min_size=1, max_size=3 * BS + 7))
    def write(self, offset, data):
        self.content.write(offset, data)
        if offset > len(self.model):
            self.model.extend(bytes(offset - len(self.model)))
        self.model[offset : offset + len(data)] = data

    @rule(
        offset=offsets, fill=st.integers(min_value=1, max_value=255), length=st.integers(min_value=1, max_value=2 * BS)
    )
    def write_pattern(self, offset, fill, length):
        self.write(offset, bytes([fill]) * length)

    @rule(blocks=st.integers(min_value=1, max_value=9), tail=st.integers(min_value=0, max_value=BS))
    def rewrite_sequentially(self, blocks, tail):
        """Truncate to zero and write from the start in pieces: parts go
        out while writing (PartStream)."""
        self.truncate(0)
        data = os.urandom(blocks * BS + tail)
        for pos in range(0, len(data), 3000):
            self.write(pos, data[pos : pos + 3000])

    @rule(size=offsets)
    def truncate(self, size):
        self.content.truncate(size)
        if size < len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))

    @rule()
    def upload(self):
        self.entry = self.content.upload(replace(self.entry, mtime_ns=self.entry.mtime_ns + 1))
        self.stored = bytearray(self.model)
        assert not self.store.list_multipart_uploads(), "an upload was left behind"
        assert not self.content.parts.stream and not os.listdir(self.store._dir.tmp), "a new object was left behind"
        # the times record of this version (uploaded in parts), and no other
        records = [o.key for o in self.store.list_all("t/")]
        assert records == ([times_key(self.entry.id, self.entry.times_record)] if self.entry.times_record else [])
        assert self.vol.lookup(ROOT_ID, b"f").mtime_ns == self.entry.mtime_ns

    @rule()
    def reopen_after_upload(self):
        self.upload()
        self.content.close()
        self.entry = self.vol.lookup(ROOT_ID, b"f")
        self.content = self._open()

    @precondition(lambda self: self.content.changed)
    @rule()
    def drop_local_changes(self):
        """Another open of the stored version sees only what was uploaded."""
        other = self._open()
        assert other.read(0, MAX_SIZE * 2) == bytes(self.stored)
        other.close()

    @rule(offset=offsets, length=st.integers(min_value=0, max_value=4 * BS))
    def read(self, offset, length):
        assert self.content.read(offset, length) == bytes(self.model[offset : offset + length])

    @invariant()
    def size_matches(self):
        if hasattr(self, "content"):
            assert self.content.size == len(self.model)


FileModel.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestFileModel = FileModel.TestCase


@pytest.mark.parametrize("streaming_put", [True, False], ids=["one-pass", "multipart"])
def test_whole_file_read_back_from_the_store_matches(tmp_path, small_parts, streaming_put):
    """After uploads, an independent reader (offline path) sees the model."""
    store = LocalStore(str(tmp_path / "s"), create=True)
    store.min_part_size = 1
    store.streaming_put = streaming_put
    vol = Volume.create(store, KeyFile("k", os.urandom(64)), block_size=BS)
    entry = vol.create_file(ROOT_ID, b"f", 0o644, 0, 0)
    content = FileContent(vol, entry, BlockCache(1 << 20), str(tmp_path / "spool"), 2 * BS)
    model = bytearray(os.urandom(20 * BS + 5))
    content.write(0, model)
    entry = content.upload(entry)
    content.write(5 * BS + 3, b"x" * 10)
    model[5 * BS + 3 : 5 * BS + 13] = b"x" * 10
    content.truncate(15 * BS + 1)
    del model[15 * BS + 1 :]
    content.truncate(17 * BS)
    model.extend(bytes(17 * BS - len(model)))
    entry = content.upload(entry)
    fresh = vol.lookup(ROOT_ID, b"f")
    assert fresh.size == len(model)
    assert b"".join(vol.reader(fresh).iter_chunks()) == bytes(model)
    content.close()
    vol.close()
