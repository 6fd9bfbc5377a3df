"""The contents of one regular file while the mount works on it.

A :class:`FileContent` starts from a stored version of the file (the
*base*, read through the block cache with readahead) and collects local
changes: dirty blocks in memory, spilled to a :class:`Spool` (sealed as
they will be stored) past a memory budget (see sealfs.fs.spool).
:meth:`FileContent.upload` writes a new version in which unchanged blocks
are reused as ciphertext; a file rewritten from its start may have most of
it sent already, while it was written (see sealfs.fs.parts).

Truncation invalidates base blocks without touching the store: only blocks
below ``_valid_base`` may still come from the base; later ones are holes
(zeros) unless written again.  A hole costs nothing: it reads as zeros
without memory or a request, and the next version leaves it out (it is
stored sparse, see :meth:`FileContent.extents`), so truncating to any size
up to MAX_FILE_SIZE is cheap; beyond it, EFBIG.

Not thread-safe by itself: the filesystem core holds the node's lock.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from dataclasses import replace

from ..codec.blocks import MAX_FILE_SIZE, FileCipher
from ..errors import FsError, PreconditionFailed, WouldBlock
from ..fileio.reader import FileReader, join_range
from ..fileio.writer import ContentWriter
from ..volume import Entry, Volume
from .cache import BlockCache, block_key
from .parts import PartSender
from .readahead import BaseReads
from .spool import DirtyBudget, Spill, Spool


class Place(enum.Enum):
    """Where the current content of a block lives (see FileContent.where)."""

    #: In memory, changed here.
    DIRTY = "dirty"
    #: Changed here and spilled to the spool (sealed, on disk).
    SPOOLED = "spooled"
    #: In a part of the new version already sent, read back from the store.
    SENT = "sent"
    #: In the base object, unchanged.
    BASE = "base"
    #: A hole of a sparse base: zeros, not stored.
    HOLE = "hole"
    #: Past what the base still holds (truncated away, or beyond its end):
    #: zeros until written.
    ZEROS = "zeros"


class FileContent:
    """One file's contents: its base version and the changes made here.  As
    the :class:`~sealfs.fileio.writer.Blocks` of its next version, it tells
    the writer which blocks changed."""

    def __init__(
        self,
        vol: Volume,
        entry: Entry,
        cache: BlockCache,
        spool_dir: str,
        dirty_limit: int,
        new: bool = False,
        budget: DirtyBudget | None = None,
    ):
        self.vol = vol
        self.cache = cache
        self.block_size = vol.layout.block_size
        #: Changed blocks: a bytearray, or a memoryview of bytes written whole.
        self.dirty: dict[int, bytearray | memoryview] = {}
        self.spill = Spill(spool_dir, dirty_limit, self.block_size, budget, self._spool_cipher)
        self.reads = BaseReads(vol, cache)
        self.parts = PartSender(self)
        self._set_base(vol.new_reader(entry) if new else vol.reader(entry))
        #: Not yet in the store (created here): its first upload creates
        #: the object, if the name is still free; until then it has
        #: something to upload, itself.
        self.unstored = self.changed = new
        if budget is not None:  # (last: another file's write may count this one's blocks from now on)
            budget.add(self)

    def _set_base(self, reader: FileReader) -> None:
        self.reads.set_base(reader)
        self.parts.reset()
        self.base = reader
        self.size = reader.size
        self._valid_base = -(-reader.size // self.block_size)
        #: Local changes not yet uploaded.
        self.changed = False

    @property
    def spool(self) -> Spool | None:
        """Where dirty blocks past the budgets went (see Spill); None until
        the first."""
        return self.spill.spool

    @property
    def etag(self) -> str:
        return self.base.etag

    def rebase(self, entry: Entry) -> None:
        """The stored object moved or got new metadata (same content): keep
        local changes, read the base from its new key/etag."""
        old = self.base
        reader = self.vol.reader(entry)
        reader.adopt(old, same_content=True)
        size, changed, valid = self.size, self.changed, self._valid_base
        self._set_base(reader)
        if changed:
            self.size, self.changed, self._valid_base = size, changed, valid

    # -- reading ------------------------------------------------------------------

    def _block_len(self, index: int) -> int:
        return self.vol.layout.plain_block_len(index, self.size)

    def _fits(self, data: bytes | bytearray | memoryview, index: int) -> bytes:
        want = self._block_len(index)
        if len(data) == want:
            return data if type(data) is bytes else bytes(data)  # (a block from the cache is not copied)
        data = bytes(data[:want])
        return data + bytes(want - len(data)) if len(data) < want else data

    def preload(self, entry: Entry, body: bytes) -> None:
        """See BaseReads.preload."""
        self.reads.preload(entry, body)

    def where(self, index: int, nowait: bool = False) -> Place:
        """Where the current content of block ``index`` lives.  A sparse
        base's holes are known once its block map is read (with its
        header): ``nowait``, WouldBlock until then."""
        if index in self.dirty:
            return Place.DIRTY
        if self.spool is not None and index in self.spool:
            return Place.SPOOLED
        if self.parts.holds(index):
            return Place.SENT
        if index >= self._valid_base:
            return Place.ZEROS
        if self.base.sparse:
            if nowait and not self.base.loaded:
                raise WouldBlock
            if self.base.is_hole(index):
                return Place.HOLE
        return Place.BASE

    def block(self, index: int, nowait: bool = False) -> bytes:
        """Current plaintext of block ``index``, exactly its length
        (``nowait``: from memory, else WouldBlock)."""
        place = self.where(index, nowait)
        if place is Place.DIRTY:
            return self._fits(self.dirty[index], index)
        if place is Place.BASE:
            return self._fits(self.reads.block(index, self._valid_base, nowait), index)
        if place in (Place.HOLE, Place.ZEROS):
            return bytes(self._block_len(index))
        if nowait:
            raise WouldBlock
        if place is Place.SPOOLED:
            return self._fits(self.spool.get(index), index)  # type: ignore[union-attr]
        return self.parts.block(index)

    def extents(self) -> list[tuple[int, int]]:
        """The runs of blocks (``(first, stop)``, in order) that the next
        version stores: those written here and those kept from the base.
        The others are holes: unless the runs cover every block, the
        version is stored sparse (see ContentWriter)."""
        n = self.vol.layout.block_count(self.size)
        if self.size == 0:
            return [(0, 1)]  # (the empty last block of an empty file)
        runs = [(a, min(b, self._valid_base)) for a, b in self.base.extents() if a < self._valid_base]
        runs.append((0, self.parts.sent))
        written = set(self.dirty)
        if self.spool is not None:
            written.update(self.spool.indices())
        runs += [(i, i + 1) for i in written]
        merged: list[tuple[int, int]] = []
        for a, b in sorted(runs):
            b = min(b, n)
            if a >= b:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    @property
    def idle(self) -> bool:
        """Whether :meth:`close` has nothing to wait for (no upload, stream,
        background read or spool file)."""
        return self.parts.stream is None and self.spool is None and self.reads.idle

    def read(self, offset: int, length: int, nowait: bool = False) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        bs = self.block_size
        first, stop = offset // bs, -(-end // bs)
        # (nowait: every block from memory, or WouldBlock before the
        # readahead state below changes)
        blocks = [self.block(i, nowait=True) for i in range(first, stop)] if nowait else None
        self.reads.reading(first, stop)
        if blocks is None:
            blocks = [self.block(i) for i in range(first, stop)]
        self.reads.read_ahead(self._valid_base)
        return join_range(blocks, offset - first * bs, end - first * bs)

    # -- changing -----------------------------------------------------------------

    def write(self, offset: int, data: bytes | memoryview, nowait: bool = False) -> int:
        bs = self.block_size
        view = memoryview(data)
        if not len(view):
            return 0
        if offset + len(view) > MAX_FILE_SIZE:  # (as the kernel does at its own limit: a short write)
            if offset >= MAX_FILE_SIZE:
                raise FsError(errno.EFBIG, f"write beyond the maximum file size ({MAX_FILE_SIZE})")
            view = view[: MAX_FILE_SIZE - offset]
        end = offset + len(view)
        if nowait and not self._writes_in_memory(offset, end):
            raise WouldBlock
        new_size = max(self.size, end)
        if offset < self.parts.sent * bs:
            self.parts.abort()  # rewriting what was sent: upload it all at flush
        # A whole block of immutable bytes (what FUSE hands over) is kept as a
        # view of them, copied only if a later write changes part of it.
        keep_views = isinstance(data, bytes)
        pos = offset
        while pos < end:
            index, within = divmod(pos, bs)
            take = min(bs - within, end - pos)
            piece = view[pos - offset : pos - offset + take]
            if within == 0 and take == bs:
                buf = piece if keep_views else bytearray(piece)  # (fully overwritten: nothing to read)
            else:
                buf = self.dirty.get(index)
                if buf is None:
                    buf = bytearray(self.block(index))
                elif not isinstance(buf, bytearray):
                    buf = bytearray(buf)
                if len(buf) < within:
                    buf.extend(bytes(within - len(buf)))
                buf[within : within + take] = piece
            self.dirty[index] = buf
            if self.spool is not None:
                self.spool.discard(index)
            pos += take
        self.size = new_size
        self.changed = True
        self.spill.spill(self.dirty)
        self.parts.send()
        return len(view)

    def _writes_in_memory(self, offset: int, end: int) -> bool:
        """Whether writing ``[offset, end)`` needs neither the store nor the
        disk: the blocks it only partly covers are in memory, the dirty
        blocks stay within budget, and no part upload starts or stops."""
        bs = self.block_size
        if offset < self.parts.sent * bs:
            return False
        first, last = offset // bs, (end - 1) // bs
        for index in {first, last}:
            covered = index * bs >= offset and (index + 1) * bs <= end  # (as write() decides)
            if index not in self.dirty and not covered:
                try:
                    self.block(index, nowait=True)
                except WouldBlock:
                    return False
        touched = set(range(first, last + 1))
        if self.spill.over(len(self.dirty.keys() | touched)):
            return False
        return not self.parts.may_send(max(self.size, end))

    @property
    def rewritten(self) -> bool:
        """Whether the file is written again from its start (new, or
        truncated to zero): no block comes from the base."""
        return self._valid_base == 0

    def truncate(self, new_size: int) -> None:
        if not 0 <= new_size <= MAX_FILE_SIZE:
            raise FsError(
                errno.EFBIG if new_size > 0 else errno.EINVAL,
                f"size {new_size} is outside 0 to the maximum file size, {MAX_FILE_SIZE}",
            )
        bs = self.block_size
        if new_size <= self.parts.sent * bs:
            self.parts.abort()  # a sent block would become the last, or go
        if new_size < self.size:
            keep = -(-new_size // bs)
            if new_size % bs:
                last = new_size // bs
                self.dirty[last] = bytearray(self.block(last)[: new_size % bs])
                if self.spool is not None:
                    self.spool.discard(last)
            for i in [i for i in self.dirty if i >= keep]:
                del self.dirty[i]
            if self.spool is not None:
                self.spool.discard_from(keep)
            self._valid_base = min(self._valid_base, new_size // bs)
        self.size = new_size
        self.changed = True

    # -- uploading ------------------------------------------------------------------

    def new_block(self, index: int) -> bytes | None:
        """Block ``index`` for the next version (see Blocks.new_block): None
        where the base has it."""
        return None if self.where(index) in (Place.BASE, Place.HOLE) else self.block(index)

    def sealed_block(self, index: int, cipher: FileCipher) -> bytes | None:
        """Block ``index`` as ``cipher`` seals a whole block, if the spool
        holds just that (see Spool.sealed)."""
        if self.where(index) is not Place.SPOOLED:
            return None
        return self.spool.sealed(index, cipher)  # type: ignore[union-attr]

    def _spool_cipher(self):
        """The base's cipher, so that spooled blocks are stored as they are;
        if the base is gone from the store (another mount replaced it: the
        upload reports the conflict), a key of the spool's own."""
        try:
            return self.base.cipher()
        except PreconditionFailed:
            return self.vol.new_reader(self.base.entry).cipher()

    def whole(self, index: int) -> bool:
        """Whether block ``index`` is written here and whole (in memory or
        the spool)."""
        place = self.where(index)
        if place is Place.DIRTY:
            return len(self.dirty[index]) == self.block_size
        return place is Place.SPOOLED and self.spool.is_full(index)  # type: ignore[union-attr]

    def upload(self, entry: Entry, progress: Callable[[int], None] | None = None) -> Entry:
        """Write the current contents as a new version with ``entry``'s
        metadata.  PreconditionFailed if the stored object changed under us
        (another mount wrote it); local changes are then kept."""
        cond = {"if_match": None, "if_none_match": True} if self.unstored else {"if_match": self.base.etag}
        new = self.parts.finish(entry, **cond)
        if new is not None:
            if progress:
                progress(self.size)
        else:
            writer = ContentWriter(self.vol.io, entry, self.size, self, self.base, self.extents())
            new = self.vol.install(entry, replace(entry), writer, progress=progress, **cond)
        reader = self.vol.reader(new)
        reader.adopt(self.base)
        for i, data in self.dirty.items():
            if len(data) == self.vol.layout.plain_block_len(i, self.size):
                self.cache.put(block_key(new.id, new.etag, new.header_hash, i), bytes(data))
        self.dirty.clear()
        self.spill.close()
        self._set_base(reader)
        self.unstored = False
        return new

    def close(self) -> None:
        self.parts.abort(keep=False)
        self.reads.close()
        self.spill.close()
        self.dirty.clear()
