"""Writing a new version of a file object in one go: its segments (fresh
ciphertext, or ciphertext reused from the version it replaces) put in one
PUT, streamed in one pass, or uploaded in parts, copied server-side where
whole parts are unchanged.  The metadata comes in sealed; the new etag
goes out."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from ..codec.blocks import MAX_FILE_SIZE, MAX_MAP_EXTENTS, BlockMap, FileCipher
from ..codec.entry import Entry
from ..codec.header import HEADER_SIZE
from ..errors import FsError
from ..store.base import MAX_PARTS
from .context import FileIO
from .reader import FileReader


class Blocks(Protocol):
    """The blocks of a new version, as its writer asks for them: once per
    block, in increasing order (so they may stream)."""

    def new_block(self, index: int) -> bytes | None:
        """The new plaintext of block ``index`` (exactly the block's length
        in the new file), or None where it is unchanged from the base (or
        a hole, read as zeros, past its end)."""

    def sealed_block(self, index: int, cipher: FileCipher) -> bytes | None:
        """Whole block ``index`` (not the last) already sealed by
        ``cipher``, to be stored as it is (blocks spooled to disk: see
        sealfs.fs.spool); None if it is not at hand sealed."""


class PlainBlocks:
    """:class:`Blocks` from a function giving each block's new plaintext
    (or None: unchanged), none of them at hand sealed."""

    def __init__(self, new_block: Callable[[int], bytes | None]):
        self.new_block = new_block

    def sealed_block(self, index: int, cipher: FileCipher) -> bytes | None:
        return None


class ContentWriter:
    """Builds and uploads a new version of a file object.

    The new object is described as a sequence of segments in object order:
    ``("bytes", data)`` for fresh ciphertext (header or a re-sealed block)
    and ``("copy", start, end)`` for ciphertext reused from the base object
    at the same offsets.  Parts whose every byte is a copy become
    UploadPartCopy; others are assembled and uploaded.

    ``blocks`` has the new version's blocks, ``base`` (if given) is the
    version it replaces; ``extents``, if given, are the runs of blocks to
    store, in order (see BlockMap): the others are holes, and ``blocks`` is
    asked only for blocks in a run.  Unless they cover the whole file, the
    version is stored sparse, with a block map.
    """

    def __init__(
        self,
        io: FileIO,
        e: Entry,
        size: int,
        blocks: Blocks,
        base: FileReader | None,
        extents: list[tuple[int, int]] | None = None,
    ):
        if not 0 <= size <= MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, f"file size {size} is above the maximum ({MAX_FILE_SIZE})")
        self.io = io
        self.e = e
        self.size = size
        self.blocks = blocks
        self.base = base
        self.layout = io.layout
        if base is not None:  # (a new header for the new version: same data key)
            self.cipher = base.cipher()
            self.header = io.new_header(e.id, self.cipher.dek)
        else:
            self.cipher, self.header = io.new_key(e)
        n = self.layout.block_count(size)
        self.extents = [(0, n)] if extents is None else extents
        #: Holes are left out: the version is stored with a block map.
        self.sparse = self.extents != [(0, n)]
        if self.sparse:
            if len(self.extents) > MAX_MAP_EXTENTS:
                raise FsError(
                    errno.EFBIG,
                    f"{len(self.extents)} runs of data between holes is above the maximum ({MAX_MAP_EXTENTS})",
                )
            self.map = self.cipher.seal_map(size, self.extents)
            self.block_map = BlockMap(self.layout, size, self.extents, HEADER_SIZE + len(self.map))
            self.object_size = self.block_map.end
        else:
            self.object_size = self.layout.object_size_for(size)

    def segments(self) -> Iterator[tuple]:
        yield ("bytes", self.header)
        if self.sparse:
            yield ("bytes", self.map)
        lay = self.layout
        n = lay.block_count(self.size)
        base_n = self.base.block_count() if self.base is not None else 0
        # A base block is reusable as ciphertext when its length and its
        # last-block flag are the same in both versions: then its bytes and
        # associated data agree.  That is every block below the last of
        # either version, and the last block too when the size is unchanged.
        reusable_stop = 0
        if self.base is not None:
            same_size = self.base.size == self.size
            reusable_stop = n if same_size else min(n - 1, base_n - 1)
        for i in (i for a, b in self.extents for i in range(a, b)):
            if i < n - 1:
                sealed = self.blocks.sealed_block(i, self.cipher)
                if sealed is not None:
                    yield ("bytes", sealed)
                    continue
            plain = self.blocks.new_block(i)
            where = self.base.block_range(i) if plain is None and i < reusable_stop else None  # type: ignore[union-attr]
            if where is not None:
                yield ("copy", *where)
                continue
            if plain is None:
                want = lay.plain_block_len(i, self.size)
                plain = self.base.read_blocks(i, i + 1)[0] if i < base_n else b""  # type: ignore[union-attr]
                plain = plain[:want] + bytes(want - len(plain[:want]))
            yield ("bytes", self.cipher.seal_block(i, i == n - 1, plain))

    def _merged(self) -> Iterator[tuple]:
        """Segments with adjacent copies merged."""
        pending = None
        for seg in self.segments():
            if seg[0] == "copy" and pending is not None and pending[2] == seg[1]:
                pending = ("copy", pending[1], seg[2])
                continue
            if pending is not None:
                yield pending
            pending = seg if seg[0] == "copy" else None
            if pending is None:
                yield seg
        if pending is not None:
            yield pending

    def _part_size(self) -> int:
        return max(self.io.part_size, self.io.store.min_part_size, -(-self.object_size // (MAX_PARTS - 1)))

    def upload(
        self, md: dict[str, str], *, if_match: str | None, if_none_match: bool, progress: Callable[[int], None] | None
    ) -> str:
        """Upload the new version with sealed user metadata ``md``, on the
        given condition; its etag.  ``progress(n)`` hears of every ``n``
        bytes sent."""
        store = self.io.store
        key = self.e.key
        if self.object_size <= self.io.single_put_max:
            body = bytearray()
            for seg in self._merged():
                body += self._segment_bytes(seg)
            if len(body) != self.object_size:
                raise AssertionError("object assembled to the wrong size")
            etag = store.put(key, body, md, if_match=if_match, if_none_match=if_none_match)
            if progress:
                progress(self.size)
            return etag
        if store.streaming_put:
            return store.put_chunks(key, self._chunks(progress), md, if_match=if_match, if_none_match=if_none_match)
        return self._multipart(md, if_match, if_none_match, progress)

    def _segment_bytes(self, seg: tuple) -> bytes:
        """The bytes of one segment: fresh ciphertext, or read from the base."""
        return seg[1] if seg[0] == "bytes" else self.base.read_sealed_range(seg[1], seg[2])  # type: ignore[union-attr]

    def _chunks(self, progress: Callable[[int], None] | None) -> Iterator[bytes]:
        """The new object's bytes in order, no piece longer than a part."""
        for part in _cut_parts(self._merged(), self.io.part_size):
            for seg in part:
                piece = self._segment_bytes(seg)
                yield piece
                if progress:
                    progress(len(piece))

    def _multipart(self, md, if_match, if_none_match, progress) -> str:
        store = self.io.store
        key = self.e.key
        part_size = self._part_size()
        upload_id = store.create_multipart(key, md)
        futures = []
        # (parts grow past 8 MiB for objects over 80 GB: keep at most
        # max(IN_FLIGHT_BYTES, one part) of them in memory)
        inflight = threading.BoundedSemaphore(max(1, min(4, self.io.in_flight_bytes // part_size)))
        try:
            number = 0
            for part in _cut_parts(self._merged(), part_size):
                number += 1
                inflight.acquire()
                futures.append(self.io.pool.submit(self._send_part, upload_id, number, part, inflight, progress))
            parts = [f.result() for f in futures]
            return store.complete_multipart(key, upload_id, parts, if_match=if_match, if_none_match=if_none_match)
        except BaseException:
            for f in futures:
                f.cancel()
            try:
                store.abort_multipart(key, upload_id)
            except Exception:
                pass
            raise

    def _send_part(self, upload_id: str, number: int, part: list[tuple], inflight, progress) -> tuple[int, str]:
        store = self.io.store
        try:
            if len(part) == 1 and part[0][0] == "copy":
                _, start, end = part[0]
                etag = store.upload_part_copy(self.e.key, upload_id, number, self.base.entry.key, start, end)  # type: ignore[union-attr]
                n = end - start
            else:
                buf = bytearray()
                for seg in part:
                    buf += self._segment_bytes(seg)
                etag = store.upload_part(self.e.key, upload_id, number, buf)
                n = len(buf)
            if progress:
                progress(n)
            return number, etag
        finally:
            inflight.release()


def _cut_parts(segments: Iterator[tuple], part_size: int) -> Iterator[list[tuple]]:
    """Regroup segments into parts of exactly ``part_size`` bytes (the last
    may be shorter), splitting segments at part boundaries."""
    part: list[tuple] = []
    filled = 0
    for seg in segments:
        while True:
            length = len(seg[1]) if seg[0] == "bytes" else seg[2] - seg[1]
            room = part_size - filled
            if length <= room:
                part.append(seg)
                filled += length
                break
            if seg[0] == "bytes":
                head, seg = ("bytes", seg[1][:room]), ("bytes", seg[1][room:])
            else:
                head, seg = ("copy", seg[1], seg[1] + room), ("copy", seg[1] + room, seg[2])
            part.append(head)
            yield part
            part, filled = [], 0
        if filled == part_size:
            yield part
            part, filled = [], 0
    if part:
        yield part
