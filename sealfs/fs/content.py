"""The contents of one regular file while the mount works on it.

A :class:`FileContent` starts from a stored version of the file (the
*base*, read through the block cache with readahead) and collects local
changes: dirty blocks in memory, spilled to a :class:`Spool` (sealed as
they will be stored) past a memory budget.  :meth:`FileContent.upload` writes a new version in
which unchanged blocks are reused as ciphertext.

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
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import replace

from ..codec.blocks import MAX_FILE_SIZE, FileCipher
from ..errors import FsError, PreconditionFailed, StoreError, WouldBlock
from ..fileio.reader import FileReader, join_range
from ..fileio.streams import AppendStream, PartStream, stream_class
from ..fileio.writer import ContentWriter
from ..volume import Entry, Volume
from .cache import BlockCache, block_key
from .readahead import BaseReads
from .spool import Spool

log = logging.getLogger(__name__)


class DirtyBudget:
    """The dirty blocks in memory of all files of a mount together: past
    ``limit`` bytes, a write spills its own file's blocks to the spool (as
    past the file's own ``dirty_limit``), so that many files written at
    once do not hold many times one file's budget."""

    def __init__(self, limit: int):
        self.limit = limit
        self._files: weakref.WeakSet[FileContent] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, content: FileContent) -> None:
        with self._lock:
            self._files.add(content)

    def over(self) -> bool:
        with self._lock:
            files = list(self._files)
        return sum(len(c.dirty) * c.block_size for c in files) > self.limit


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
        self.budget = budget
        if budget is not None:
            budget.add(self)
        self.cache = cache
        self.spool_dir = spool_dir
        self.dirty_limit = dirty_limit
        self.block_size = vol.layout.block_size
        #: Changed blocks: a bytearray, or a memoryview of bytes written whole.
        self.dirty: dict[int, bytearray | memoryview] = {}
        self.spool: Spool | None = None
        self.reads = BaseReads(vol, cache)
        #: The upload of a sequential rewrite, sent while it is written.
        self._parts: PartStream | AppendStream | None = None
        self._set_base(vol.new_reader(entry) if new else vol.reader(entry))
        #: Not yet in the store (created here): its first upload creates
        #: the object, if the name is still free; until then it has
        #: something to upload, itself.
        self.unstored = self.changed = new

    def _set_base(self, reader: FileReader) -> None:
        self.reads.set_base(reader)
        self._abort_parts()
        self.base = reader
        self.size = reader.size
        self._stream_parts = True
        self._valid_base = -(-reader.size // self.block_size)
        #: Local changes not yet uploaded.
        self.changed = False

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
        parts = self._parts
        if parts is not None and not parts.keeps_sent and index < parts.next_block:
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
        return self._parts.block(index)  # type: ignore[union-attr]

    def extents(self) -> list[tuple[int, int]]:
        """The runs of blocks (``(first, stop)``, in order) that the next
        version stores: those written here and those kept from the base.
        The others are holes: unless the runs cover every block, the
        version is stored sparse (see ContentWriter)."""
        n = self.vol.layout.block_count(self.size)
        if self.size == 0:
            return [(0, 1)]  # (the empty last block of an empty file)
        runs = [(a, min(b, self._valid_base)) for a, b in self.base.extents() if a < self._valid_base]
        if self._parts is not None:
            runs.append((0, self._parts.next_block))
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
        return self._parts is None and self.spool is None and self.reads.idle

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
        if self._parts is not None and offset < self._parts.next_block * bs:
            self._abort_parts()  # rewriting what was sent: upload it all at flush
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
        self._spill()
        self._send_parts()
        return len(view)

    def _writes_in_memory(self, offset: int, end: int) -> bool:
        """Whether writing ``[offset, end)`` needs neither the store nor the
        disk: the blocks it only partly covers are in memory, the dirty
        blocks stay within budget, and no part upload starts or stops."""
        bs = self.block_size
        if self._parts is not None and offset < self._parts.next_block * bs:
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
        if len(self.dirty.keys() | touched) * bs > self.dirty_limit or (self.budget is not None and self.budget.over()):
            return False
        return not (
            self._rewritten_in_parts() and max(self.size, end) > self._parts_class().blocks_per_part(self.vol.io) * bs
        )

    def _parts_class(self) -> type[PartStream | AppendStream] | None:
        return stream_class(self.vol.io)

    def _rewritten_in_parts(self) -> bool:
        """Whether parts of this file are sent while it is written (see
        :meth:`_send_parts`)."""
        return self._valid_base == 0 and self._stream_parts and self._parts_class() is not None

    def truncate(self, new_size: int) -> None:
        if not 0 <= new_size <= MAX_FILE_SIZE:
            raise FsError(
                errno.EFBIG if new_size > 0 else errno.EINVAL,
                f"size {new_size} is outside 0 to the maximum file size, {MAX_FILE_SIZE}",
            )
        bs = self.block_size
        if self._parts is not None and new_size <= self._parts.next_block * bs:
            self._abort_parts()  # a sent block would become the last, or go
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

    def _spill(self) -> None:
        """Move dirty blocks to the encrypted spool while over budget (the
        highest block, likely still being appended to, stays), or while
        the files of the mount together are over theirs."""
        if len(self.dirty) * self.block_size <= self.dirty_limit and (
            len(self.dirty) <= 1 or self.budget is None or not self.budget.over()
        ):
            return
        spool = self._spool()
        top = max(self.dirty)
        for i in sorted(self.dirty):
            if i != top:
                # (dropped from memory only once spooled: a full cache_dir
                # fails the write with ENOSPC, never loses the block)
                spool.put(i, self.dirty[i])
                del self.dirty[i]

    def _spool(self) -> Spool:
        if self.spool is None:
            self.spool = Spool(self.spool_dir, self._spool_cipher())
        return self.spool

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

    def _sendable(self, index: int) -> bool:
        place = self.where(index)
        if place is Place.DIRTY:
            return len(self.dirty[index]) == self.block_size
        return place is Place.SPOOLED and self.spool.is_full(index)  # type: ignore[union-attr]

    def _send_parts(self) -> None:
        """A file rewritten from its start (new, or truncated to zero) on a
        store that can take it while it is written: send each part as soon
        as its blocks and the one after are written (so none of them is the
        last).  Where the store can read them back (AppendStream), the
        blocks sent leave memory and the spool."""
        if not self._rewritten_in_parts():
            return
        cls = self._parts_class()
        per_part = cls.blocks_per_part(self.vol.io)
        start = self._parts.next_block if self._parts is not None else 0
        while self.size > (start + per_part) * self.block_size and all(
            self._sendable(i) for i in range(start, start + per_part + 1)
        ):
            try:
                if self._parts is None:
                    self._parts = self.vol.start_stream(self.base.entry, self.base.cipher())
                self._parts.send(self)
            except StoreError as exc:
                # The store cannot take it now (or the version we opened is
                # gone: another mount): the blocks stay here, and the flush
                # stores the file whole, or reports the error or conflict.
                log.info("%s: not sent while written (%s)", self.base.name, exc)
                self._abort_parts()
                self._stream_parts = False
                return
            if not self._parts.keeps_sent:
                for i in range(start, self._parts.next_block):
                    self.dirty.pop(i, None)
                    if self.spool is not None:
                        self.spool.discard(i)
            start = self._parts.next_block

    def _abort_parts(self, keep: bool = True) -> None:
        """Stop sending this file while it is written: it is stored whole at
        its next flush.  ``keep``: blocks that only the stream holds move to
        the spool first (if that fails, nothing changed); else they are
        being thrown away."""
        parts = self._parts
        if parts is None:
            return
        if keep and not parts.keeps_sent:
            spool = self._spool()
            for i in range(parts.next_block):
                spool.put_sealed(i, parts.sealed(i))
        self._parts = None
        self._stream_parts = False  # (not again from the start at each write)
        parts.abort()

    def upload(self, entry: Entry, progress: Callable[[int], None] | None = None) -> Entry:
        """Write the current contents as a new version with ``entry``'s
        metadata.  PreconditionFailed if the stored object changed under us
        (another mount wrote it); local changes are then kept."""
        cond = {"if_match": None, "if_none_match": True} if self.unstored else {"if_match": self.base.etag}
        if self._parts is not None and self.extents() != [(0, self.vol.layout.block_count(self.size))]:
            self._abort_parts()  # it has holes: stored sparse, by a ContentWriter
        if self._parts is not None:
            try:
                new = self.vol.finish_stream(self._parts, entry, self.size, self, **cond)
            except BaseException:
                self._abort_parts()  # every block is still here for the next try
                raise
            self._parts = None
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
        self._drop_spool()
        self._set_base(reader)
        self.unstored = False
        return new

    def _drop_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def close(self) -> None:
        self._abort_parts(keep=False)
        self.reads.close()
        self._drop_spool()
        self.dirty.clear()
