"""Block arithmetic and block encryption of file objects.

A file of ``P`` plaintext bytes with block size ``B`` is stored as::

    header (HEADER_SIZE) || block 0 || block 1 || ... || block n-1

with ``n = max(1, ceil(P / B))``: every block but the last holds exactly
``B`` plaintext bytes, the last holds 1..B bytes, or 0 when the file is
empty.  An empty file still has its (empty) last block, so cutting every
block off an object is detected like any other truncation.

Each block is ``nonce(12) || AES-256-GCM ciphertext || tag(16)`` under the
block key for its index, with associated data
``file_id(16) || index(u64 BE) || last(u8)``.  So a block cannot be moved to
another index or file, and a block that claims (or fails) to be last betrays
truncation and appending.

Offset functions are named by direction and refuse sizes that cannot occur
rather than guessing.

A *sparse* version (one with holes: blocks never written, which read as
zeros) stores only some blocks, listed in a sealed block map after the
header (see :class:`BlockMap` and docs/FORMAT.md, "Sparse files")::

    header || u32(len(map)) || map || the stored blocks, in index order
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import IntegrityError
from .crypto import NONCE_SIZE, TAG_SIZE, block_key, block_map_key, seal, unseal
from .header import HEADER_SIZE

BLOCK_OVERHEAD = NONCE_SIZE + TAG_SIZE
#: The largest plaintext size of a file (1 EiB): far beyond any store, yet
#: every offset computed from it stays below 2**63 (the kernel's off_t).
MAX_FILE_SIZE = 1 << 60
#: Extents (runs of stored blocks) a block map may list: at most 16 MiB.
MAX_MAP_EXTENTS = 1 << 20
_MAP_HEAD = struct.Struct(">QQ")
_EXTENT = struct.Struct(">QQ")
_MAP_LEN = struct.Struct(">I")
MAP_LEN_SIZE = _MAP_LEN.size
#: The longest sealed block map (of MAX_MAP_EXTENTS extents), without its length.
MAX_MAP_SEALED = _MAP_HEAD.size + _EXTENT.size * MAX_MAP_EXTENTS + BLOCK_OVERHEAD


@dataclass(frozen=True)
class Layout:
    block_size: int
    header_size: int = HEADER_SIZE

    @property
    def sealed_block_size(self) -> int:
        return self.block_size + BLOCK_OVERHEAD

    def block_count(self, plain_size: int) -> int:
        """Number of blocks a file of ``plain_size`` bytes is stored in (>= 1)."""
        if plain_size < 0:
            raise ValueError("negative size")
        return max(1, -(-plain_size // self.block_size))

    def object_size_for(self, plain_size: int) -> int:
        """Object size of a file with ``plain_size`` plaintext bytes."""
        return self.header_size + plain_size + BLOCK_OVERHEAD * self.block_count(plain_size)

    def plain_size_for(self, object_size: int) -> int:
        """Plaintext size of an object of ``object_size`` bytes.  Raises
        IntegrityError for a size no genuine object can have."""
        body = object_size - self.header_size
        if body < BLOCK_OVERHEAD:
            raise IntegrityError(f"object of {object_size} bytes is too short to be a sealfs file")
        full, rest = divmod(body, self.sealed_block_size)
        if rest == 0:
            return full * self.block_size
        if rest < BLOCK_OVERHEAD or (rest == BLOCK_OVERHEAD and full > 0):
            raise IntegrityError(f"object size {object_size} is impossible for block size {self.block_size}")
        return full * self.block_size + rest - BLOCK_OVERHEAD

    def block_offset(self, index: int) -> int:
        """Object offset where sealed block ``index`` starts."""
        return self.header_size + index * self.sealed_block_size

    def sealed_range(self, first: int, stop: int, plain_size: int) -> tuple[int, int]:
        """Object byte range ``[start, end)`` holding blocks ``first..stop-1``
        of a file of ``plain_size`` bytes (the last block may be short)."""
        n = self.block_count(plain_size)
        if not 0 <= first < stop <= n:
            raise ValueError(f"blocks {first}..{stop} out of range for {n} blocks")
        return self.block_offset(first), min(self.block_offset(stop), self.object_size_for(plain_size))

    def plain_block_len(self, index: int, plain_size: int) -> int:
        """Plaintext bytes held by block ``index`` of a file of ``plain_size``."""
        return max(0, min(self.block_size, plain_size - index * self.block_size))


def map_aad(file_id: bytes) -> bytes:
    return b"sealfs block map " + file_id


class BlockMap:
    """Which blocks a sparse version stores, and where: ``extents`` are
    ``(first, stop)`` runs of block indices in increasing order, neither
    empty nor touching; every other block of the file is a hole.  Offsets
    are of the object: the stored blocks start at ``data_start``."""

    def __init__(self, layout: Layout, size: int, extents: list[tuple[int, int]], data_start: int):
        self.layout = layout
        self.size = size
        self.extents = extents
        self.data_start = data_start
        self.starts = [a for a, _ in extents]
        self.offsets = []
        pos = data_start
        for a, b in extents:
            self.offsets.append(pos)
            pos += self.run_bytes(a, b)
        self.end = pos  # the object's size

    def run_bytes(self, first: int, stop: int) -> int:
        """Sealed bytes of blocks ``first..stop-1`` (the last may be short)."""
        lay = self.layout
        return (stop - first - 1) * lay.sealed_block_size + lay.plain_block_len(stop - 1, self.size) + BLOCK_OVERHEAD

    def at_or_after(self, index: int) -> int | None:
        """The extent holding ``index`` or, if ``index`` is a hole, the next
        one; None when no block is stored from ``index`` on."""
        j = bisect_right(self.starts, index) - 1
        if j >= 0 and self.extents[j][1] > index:
            return j
        return j + 1 if j + 1 < len(self.extents) else None

    def is_hole(self, index: int) -> bool:
        j = self.at_or_after(index)
        return j is None or self.extents[j][0] > index

    def sealed_range(self, first: int, stop: int) -> tuple[int, int]:
        """Object byte range of stored blocks ``first..stop-1``, which must
        lie in one extent."""
        j = self.at_or_after(first)
        if j is None or not self.extents[j][0] <= first < stop <= self.extents[j][1]:
            raise ValueError(f"blocks {first}..{stop} are not stored together")
        a = self.extents[j][0]
        start = self.offsets[j] + (first - a) * self.layout.sealed_block_size
        return start, start + self.run_bytes(first, stop)


def block_aad(file_id: bytes, index: int, last: bool) -> bytes:
    return file_id + struct.pack(">QB", index, 1 if last else 0)


class FileCipher:
    """Seals and opens the blocks of one file (one DEK, one file id).

    Block keys are cached (HKDF per block costs more than sealing a small
    block); the cache is bounded.
    """

    _KEY_CACHE = 256

    def __init__(self, dek: bytes, file_id: bytes, layout: Layout, name: str = "file"):
        self.dek = dek
        self.file_id = file_id
        self.layout = layout
        self.name = name
        self._keys: OrderedDict[int, bytes] = OrderedDict()

    def _key(self, index: int) -> bytes:
        key = self._keys.get(index)
        if key is None:
            key = block_key(self.dek, self.file_id, index)
            self._keys[index] = key
            if len(self._keys) > self._KEY_CACHE:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(index)
        return key

    def seal_block(self, index: int, last: bool, plaintext: bytes | memoryview, nonce: bytes | None = None) -> bytes:
        if len(plaintext) > self.layout.block_size or (not last and len(plaintext) != self.layout.block_size):
            raise ValueError(f"block {index}: {len(plaintext)} bytes is not a valid block")
        return seal(self._key(index), plaintext, block_aad(self.file_id, index, last), nonce)

    def open_block(self, index: int, last: bool, sealed: bytes | memoryview) -> bytes:
        plain = unseal(self._key(index), sealed, block_aad(self.file_id, index, last), f"{self.name} block {index}")
        if len(plain) > self.layout.block_size or (not last and len(plain) != self.layout.block_size):
            raise IntegrityError(f"{self.name} block {index}: wrong length")
        return plain

    def open_span(self, first: int, sealed: bytes | memoryview, plain_size: int) -> list[bytes]:
        """Open consecutive sealed blocks starting at ``first`` as read from
        the object (``sealed`` is exactly their bytes)."""
        n = self.layout.block_count(plain_size)
        view = memoryview(sealed)
        out = []
        index, pos = first, 0
        while pos < len(view):
            if index >= n:
                raise IntegrityError(f"{self.name}: data past the last block")
            size = self.layout.plain_block_len(index, plain_size) + BLOCK_OVERHEAD
            chunk = view[pos : pos + size]
            if len(chunk) != size:
                raise IntegrityError(f"{self.name} block {index}: truncated")
            out.append(self.open_block(index, index == n - 1, chunk))
            index += 1
            pos += size
        return out

    def seal_map(self, size: int, extents: list[tuple[int, int]], nonce: bytes | None = None) -> bytes:
        """The block map of a sparse version of ``size`` bytes storing
        ``extents``, with its length in front, as it follows the header."""
        if len(extents) > MAX_MAP_EXTENTS:
            raise ValueError("too many extents")
        plain = _MAP_HEAD.pack(size, len(extents)) + b"".join(_EXTENT.pack(a, b) for a, b in extents)
        sealed = seal(block_map_key(self.dek, self.file_id), plain, map_aad(self.file_id), nonce)
        return _MAP_LEN.pack(len(sealed)) + sealed

    def open_map(self, sealed: bytes | memoryview, size: int) -> list[tuple[int, int]]:
        """The extents of the block map ``sealed`` (without its length),
        which must be of a file of ``size`` bytes."""
        what = f"{self.name} block map"
        plain = unseal(block_map_key(self.dek, self.file_id), sealed, map_aad(self.file_id), what)
        if len(plain) < _MAP_HEAD.size:
            raise IntegrityError(f"{what}: too short")
        mapped, count = _MAP_HEAD.unpack_from(plain)
        if mapped != size:
            raise IntegrityError(f"{what}: the file's size ({size}) is not the one sealed with its blocks ({mapped})")
        if count > MAX_MAP_EXTENTS or len(plain) != _MAP_HEAD.size + count * _EXTENT.size:
            raise IntegrityError(f"{what}: malformed")
        n = self.layout.block_count(size)
        extents, prev = [], -1
        for k in range(count):
            a, b = _EXTENT.unpack_from(plain, _MAP_HEAD.size + k * _EXTENT.size)
            if not prev < a < b <= n:
                raise IntegrityError(f"{what}: extents out of order or out of the file")
            extents.append((a, b))
            prev = b
        return extents

    def seal_all(self, data: bytes | memoryview) -> list[bytes]:
        """Seal a whole file's contents, block by block (used for small
        files and tests)."""
        view = memoryview(data)
        n = self.layout.block_count(len(view))
        bs = self.layout.block_size
        return [self.seal_block(i, i == n - 1, view[i * bs : (i + 1) * bs]) for i in range(n)]
