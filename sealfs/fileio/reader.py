"""Reading one version of a file object: its header opened and checked
against the metadata that names it, its blocks authenticated, by ranges
(:class:`FileReader`) or from one streaming GET (:class:`BlockStream`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

from ..codec.blocks import MAP_LEN_SIZE, MAX_MAP_SEALED, BlockMap, FileCipher
from ..codec.entry import Entry
from ..codec.header import HEADER_SIZE, header_hash, open_header, peek_header
from ..errors import IntegrityError, PreconditionFailed
from .context import FileIO


def _rewritten(name: str) -> PreconditionFailed:
    return PreconditionFailed(f"{name} was rewritten in the store (by another mount?) while open here")


class FileReader:
    """Authenticated random access to one version of a file object.

    A sparse version's block map is read and checked with its header (one
    ranged GET for both unless the map is large); its holes read as zeros
    without a request."""

    #: Bytes of a sparse object read after the header with it, in one GET.
    MAP_PEEK = 4096
    #: Most blocks :meth:`preload` gives (a small file read whole at open).
    PRELOAD_BLOCKS = 1024

    def __init__(self, io: FileIO, e: Entry):
        self.io = io
        self.entry = e
        self.size = e.size
        self.etag = e.etag
        self.layout = io.layout
        self.sparse = e.sparse
        self._cipher: FileCipher | None = None
        self._header: bytes = b""
        self._map: BlockMap | None = None
        self._lock = threading.Lock()

    @classmethod
    def new(cls, io: FileIO, e: Entry) -> FileReader:
        """The base of a file not yet in the store: empty, with a fresh data
        key; its first upload creates the object (If-None-Match)."""
        reader = cls(io, replace(e, size=0, etag=""))
        reader._cipher, reader._header = io.new_key(e)
        return reader

    @property
    def name(self) -> str:
        return self.entry.name.decode(errors="replace") or "/"

    def _prefix_len(self) -> int:
        """Bytes read at first access: the header, and a sparse object's map."""
        if not self.sparse:
            return HEADER_SIZE
        return min(self.entry.object_size, HEADER_SIZE + MAP_LEN_SIZE + self.MAP_PEEK)

    def _load_header(self, raw: bytes | memoryview | None = None) -> FileCipher:
        """Open the header (and a sparse version's map) from ``raw``, the
        start of the object, or read it."""
        with self._lock:
            if self._cipher is None:
                if raw is None:
                    raw = self._get(0, self._prefix_len())
                head = bytes(raw[:HEADER_SIZE])
                try:
                    header, dek = open_header(head, self.io.keyring.kek)
                except IntegrityError as exc:
                    raise IntegrityError(f"{self.name}: {exc}") from None
                if header.file_id != self.entry.id:
                    raise IntegrityError(f"{self.name}: content belongs to another file")
                if header.block_size != self.layout.block_size:
                    raise IntegrityError(f"{self.name}: block size differs from the volume's")
                self._check_binding(header, head)
                cipher = FileCipher(dek, header.file_id, self.layout, self.name)
                if self.sparse and self._map is None:
                    self._map = self._open_map(cipher, raw[HEADER_SIZE:])
                self._header = head
                self._cipher = cipher
            return self._cipher

    def _open_map(self, cipher: FileCipher, prefix: bytes | memoryview) -> BlockMap:
        """The block map of this sparse version from ``prefix``, the object's
        bytes after the header (read further if the map is longer)."""
        what = f"{self.name}: block map"
        obj = self.entry.object_size
        if len(prefix) < MAP_LEN_SIZE:
            raise IntegrityError(f"{what}: object is shorter than its size says")
        length = int.from_bytes(prefix[:MAP_LEN_SIZE], "big")
        need = MAP_LEN_SIZE + length
        if HEADER_SIZE + need > obj or length > MAX_MAP_SEALED:
            raise IntegrityError(f"{what}: its length is impossible")
        if len(prefix) < need:
            prefix = bytes(prefix) + self.read_sealed_range(HEADER_SIZE + len(prefix), HEADER_SIZE + need)
        extents = cipher.open_map(memoryview(prefix)[MAP_LEN_SIZE:need], self.size)
        block_map = BlockMap(self.layout, self.size, extents, HEADER_SIZE + need)
        if block_map.end != obj:
            raise IntegrityError(f"{what}: the object's size ({obj}) is not what its map says ({block_map.end})")
        return block_map

    @property
    def loaded(self) -> bool:
        """Whether the header (and a sparse version's map) is in memory."""
        return self._cipher is not None

    def block_map(self) -> BlockMap | None:
        """Where a sparse version's blocks are (None for a dense one)."""
        if not self.sparse:
            return None
        self.cipher()
        return self._map

    def extents(self) -> list[tuple[int, int]]:
        """The runs of blocks this version stores (a dense one: all)."""
        block_map = self.block_map()
        return list(block_map.extents) if block_map is not None else [(0, self.block_count())]

    def is_hole(self, index: int) -> bool:
        """Whether block ``index`` is a hole of a sparse version (zeros, not
        stored)."""
        block_map = self.block_map()
        return block_map is not None and block_map.is_hole(index)

    def block_range(self, index: int) -> tuple[int, int] | None:
        """The object byte range of stored block ``index``; None for a hole."""
        block_map = self.block_map()
        if block_map is None:
            return self.layout.sealed_range(index, index + 1, self.size)
        return None if block_map.is_hole(index) else block_map.sealed_range(index, index + 1)

    def _check_binding(self, header, raw: bytes | memoryview) -> None:
        """The entry's metadata and this header are of one version of the
        file (docs/FORMAT.md, "Version binding")."""
        named = self.entry.header_hash
        if named is not None and named != header_hash(raw):
            raise IntegrityError(
                f"{self.name}: its metadata is of another version of its content (older metadata put back on it?)"
            )
        if named is None and header.bound:
            raise IntegrityError(
                f"{self.name}: its content is bound to metadata that names it, and its "
                "metadata does not (older metadata put back on it?)"
            )

    def preload(self, body: bytes) -> list[bytes] | None:
        """Every block's plaintext from ``body``, the start of this version's
        object (as ``Volume.load`` read it); None if ``body`` does not
        hold the whole object."""
        end = self.entry.object_size if self.sparse else self.layout.object_size_for(self.size)
        if len(body) < end or self.block_count() > self.PRELOAD_BLOCKS:
            return None  # (or holes far larger than the body, which would all become zeros here)
        view = memoryview(body)
        self._load_header(view[:end])
        return self._open_blocks(0, self.block_count(), lambda start, stop: view[start:stop])

    def adopt(self, other: FileReader, same_content: bool = False) -> None:
        """Reuse ``other``'s authenticated header: same file, same DEK (a
        version this process wrote itself, or, ``same_content``, the same
        object moved or given new metadata, whose block map stays)."""
        if other._cipher is not None and other.entry.id == self.entry.id:
            if self.sparse and not (same_content and other.sparse and other._map is not None):
                return  # (the map is read with the header)
            self._map = other._map if self.sparse else None
            self._cipher, self._header = other._cipher, other._header

    def cipher(self) -> FileCipher:
        return self._cipher or self._load_header()

    def header(self):
        self.cipher()
        return peek_header(self._header)

    def block_count(self) -> int:
        return self.layout.block_count(self.size)

    def _get(self, start: int, end: int) -> bytes:
        """Bytes of *this* version of the object: never a mix of two."""
        try:
            return self.io.store.get(self.entry.key, start, end, if_match=self.etag or None)
        except PreconditionFailed:
            raise _rewritten(self.name) from None

    def read_sealed_range(self, start: int, end: int) -> bytes:
        """Raw object bytes ``[start, end)`` (ciphertext, for re-use)."""
        data = self._get(start, end)
        if len(data) != end - start:
            raise IntegrityError(f"{self.name}: object is shorter than its size says")
        return data

    def read_blocks(self, first: int, stop: int) -> list[bytes]:
        """Plaintext of blocks ``first..stop-1`` (clipped to the file).  The
        first read of a dense version brings its header in the same ranged
        GET when the blocks begin at most their own length after it."""
        stop = min(stop, self.block_count())
        if self._cipher is None and not self.sparse and first < stop:
            start, end = self.layout.sealed_range(first, stop, self.size)
            if start - HEADER_SIZE <= end - start:
                view = memoryview(self.read_sealed_range(0, end))
                self._load_header(view[:HEADER_SIZE])
                return self._open_blocks(first, stop, lambda a, b: view[a:b])
        return self._open_blocks(first, stop, self.read_sealed_range)

    def _open_blocks(self, first: int, stop: int, fetch: Callable[[int, int], bytes | memoryview]) -> list[bytes]:
        """Blocks ``first..stop-1`` (clipped), their stored bytes from
        ``fetch(start, end)``, one call per run of stored blocks; holes are
        zeros."""
        stop = min(stop, self.block_count())
        if first >= stop:
            return []
        cipher = self.cipher()
        block_map = self._map if self.sparse else None
        if block_map is None:
            return cipher.open_span(first, fetch(*self.layout.sealed_range(first, stop, self.size)), self.size)
        out: list[bytes] = []
        i = first
        while i < stop:
            j = block_map.at_or_after(i)
            run_first, run_stop = block_map.extents[j] if j is not None else (stop, stop)
            if run_first > i:  # a hole up to the next stored block
                hole_stop = min(stop, run_first)
                out += [bytes(self.layout.plain_block_len(k, self.size)) for k in range(i, hole_stop)]
                i = hole_stop
                continue
            run_stop = min(stop, run_stop)
            out += cipher.open_span(i, fetch(*block_map.sealed_range(i, run_stop)), self.size)
            i = run_stop
        return out

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        end = min(self.size, offset + length)
        bs = self.layout.block_size
        first, stop = offset // bs, -(-end // bs)
        return join_range(self.read_blocks(first, stop), offset - first * bs, end - first * bs)

    def stream(self, first: int) -> BlockStream:
        """Blocks ``first``, ``first+1``, … of this (dense) version from one request."""
        if self.sparse:
            raise ValueError("a sparse version is read by ranges")
        return BlockStream(self, first)

    def iter_chunks(self, chunk_blocks: int = 64, holes: bool = True) -> Iterator[bytes]:
        """The plaintext in order, at most ``chunk_blocks`` blocks at a time;
        without ``holes``, only the blocks stored (to check them all)."""
        for a, b in self.extents() if not holes else [(0, self.block_count())]:
            for first in range(a, b, chunk_blocks):
                yield b"".join(self.read_blocks(first, min(b, first + chunk_blocks)))


class BlockStream:
    """Consecutive authenticated blocks of one file version read from one
    streaming GET (on S3 and moto much cheaper than a ranged GET per window
    for sequential reads)."""

    def __init__(self, reader: FileReader, first: int):
        self.reader = reader
        self.next = first
        cipher = reader.cipher()  # the header first (a ranged read)
        self._cipher = cipher
        start = reader.layout.block_offset(first)
        try:
            self._stream = reader.io.store.get_stream(reader.entry.key, start, if_match=reader.etag or None)
        except PreconditionFailed:
            raise _rewritten(reader.name) from None

    def read_blocks(self, stop: int) -> list[bytes]:
        """Plaintext of blocks ``next..stop-1``; advances ``next``."""
        r = self.reader
        stop = min(stop, r.block_count())
        if self.next >= stop:
            return []
        start, end = r.layout.sealed_range(self.next, stop, r.size)
        want = end - start
        buf = self._stream.read(want)  # (mostly all of it: then not copied)
        if len(buf) < want:
            buf = bytearray(buf)
            while len(buf) < want:
                chunk = self._stream.read(want - len(buf))
                if not chunk:
                    raise IntegrityError(f"{r.name}: object is shorter than its size says")
                buf += chunk
        blocks = self._cipher.open_span(self.next, buf, r.size)
        self.next = stop
        return blocks

    def close(self) -> None:
        self._stream.close()


def join_range(blocks: list, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of consecutive ``blocks`` joined, copied once
    (a whole block not at all)."""
    if len(blocks) == 1:
        block = blocks[0]
        return (
            block if start == 0 and end == len(block) and type(block) is bytes else bytes(memoryview(block)[start:end])
        )
    if not blocks:
        return b""
    tail = end - sum(len(b) for b in blocks[:-1])
    return b"".join([memoryview(blocks[0])[start:], *blocks[1:-1], memoryview(blocks[-1])[:tail]])
