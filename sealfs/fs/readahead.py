"""The base version of a file read through the block cache: a readahead
window that doubles on sequential reads, one streaming GET for a long
sequential run, and the next window read in the background meanwhile."""

from __future__ import annotations

import logging
from concurrent.futures import Future

from ..errors import IntegrityError, PreconditionFailed, StoreError, WouldBlock
from ..fileio.reader import BlockStream, FileReader
from ..volume import Entry, Volume
from .cache import BlockCache, block_key

log = logging.getLogger("sealfs.fs.content")  # (the name its log lines had before they moved here)

#: Readahead starts at one block and doubles on sequential reads up to this.
MAX_READAHEAD_BYTES = 8 * 1024 * 1024
#: Once the readahead window reaches this many blocks, reads come from one
#: streaming GET rather than a ranged GET per window.
STREAM_AFTER_BLOCKS = 4

#: A read starting this close to where the previous one ended still counts
#: as sequential: the kernel sends readahead requests in parallel, and they
#: reach us in any order.
SEQUENTIAL_SLACK_BYTES = 4 * 1024 * 1024


class BaseReads:
    """Reads of one file's base version (:meth:`set_base`) for its
    FileContent, which says up to which block the base still holds the
    file (``valid``)."""

    def __init__(self, vol: Volume, cache: BlockCache):
        self.vol = vol
        self.cache = cache
        self.block_size = vol.layout.block_size
        self.base: FileReader | None = None
        self._stream: BlockStream | None = None
        self._prefetch: Future | None = None
        self._next_block = -1
        self._window = 1
        self._read_stop = 0

    def set_base(self, reader: FileReader) -> None:
        self.close()  # it reads the previous base
        self.base = reader

    @property
    def idle(self) -> bool:
        """Whether no stream is open and no background read runs."""
        return self._stream is None and (self._prefetch is None or self._prefetch.done())

    def key(self, index: int) -> tuple:
        """The block cache's key of block ``index`` of the base."""
        return block_key(self.base.entry.id, self.base.etag, self.base.entry.header_hash, index)

    def block(self, index: int, valid: int, nowait: bool = False) -> bytes:
        """Plaintext of block ``index`` of the base, from the cache or read
        with what lies ahead of it below block ``valid`` (``nowait``: from
        the cache, else WouldBlock)."""
        key = self.key(index)
        data = self.cache.get(key)
        if data is None:
            if nowait:
                raise WouldBlock
            self._fetch(index, valid)
            data = self.cache.get(key)
            if data is None:  # the cache is smaller than one block
                data = self.base.read_blocks(index, index + 1)[0]
        return data

    def _fetch(self, index: int, valid: int) -> None:
        """Bring blocks from ``index`` on into the cache: on a sequential
        run from one streaming GET, else with one ranged GET of the window."""
        self._wait_prefetch()
        if self.cache.get(self.key(index)) is not None:
            return  # the prefetch brought it
        stop = min(valid, max(index + self._window, self._read_stop))
        blocks, first = None, index
        stream = self._stream
        # The kernel's readahead requests reach us in any order: a block a
        # little ahead of the stream is read through the stream (caching
        # what lies between), one behind it with a ranged read; only a real
        # seek starts a new stream (on S3 each GET costs a request, on moto
        # a copy of the whole object).
        behind = stream is not None and index < stream.next
        if self._window >= STREAM_AFTER_BLOCKS and not behind and not self.base.sparse:
            try:
                if stream is not None and index <= stream.next + self._window:
                    first = stream.next
                else:
                    self.close()
                    self._stream = self.base.stream(index)
                blocks = self._stream.read_blocks(stop)
            except (PreconditionFailed, IntegrityError):
                self.close()
                raise
            except StoreError as exc:  # a broken stream: ranged reads retry
                log.info("streaming read of %s failed (%s); reading by ranges", self.base.name, exc)
                self.close()
                blocks, first = None, index
        if blocks is None:
            blocks = self.base.read_blocks(index, min(stop, stream.next) if behind else stop)
        for i, data in enumerate(blocks, start=first):
            self.cache.put(self.key(i), data)

    def preload(self, entry: Entry, body: bytes) -> None:
        """Cache the base's blocks from ``body``, the start of ``entry``'s
        object read at open (see :meth:`Volume.load`), if that is the base
        and ``body`` holds all its blocks."""
        if (entry.key, entry.etag) != (self.base.entry.key, self.base.etag):
            return
        try:
            blocks = self.base.preload(body) or ()
        except IntegrityError:
            return  # (the read reports it, with the block; the open succeeds as it would without this)
        for i, data in enumerate(blocks):
            self.cache.put(self.key(i), data)

    def close(self) -> None:
        """Close the stream (once its background read is done)."""
        self._wait_prefetch()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def reading(self, first: int, stop: int) -> None:
        """A read of blocks ``first..stop-1`` begins: on a sequential run the
        window doubles, else it starts again at one block."""
        slack = max(1, SEQUENTIAL_SLACK_BYTES // self.block_size)
        if self._next_block >= 0 and abs(first - self._next_block) <= slack:
            self._window = min(self._window * 2, max(1, MAX_READAHEAD_BYTES // self.block_size))
            self._next_block = max(self._next_block, stop)
        else:
            self._window = 1
            self._next_block = stop
        self._read_stop = stop

    def read_ahead(self, valid: int) -> None:
        """During a streaming run, read the next window (below block
        ``valid``) in the background while the kernel consumes this one
        (fetching and decrypting overlap with FUSE replies)."""
        stream = self._stream
        if stream is None or self._prefetch is not None or stream.next >= valid:
            return
        if stream.next - self._next_block > self._window // 2:
            return  # far enough ahead already
        stop = min(valid, stream.next + self._window)
        start, base = stream.next, self.base

        def work() -> None:
            for i, data in enumerate(stream.read_blocks(stop), start=start):
                self.cache.put(block_key(base.entry.id, base.etag, base.entry.header_hash, i), data)

        self._prefetch = self.vol.submit(work)

    def _wait_prefetch(self) -> None:
        """Let a background read finish before the stream is used or closed;
        if it failed, drop the stream (the next read reopens or uses ranges)."""
        future, self._prefetch = self._prefetch, None
        if future is None:
            return
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - the foreground read reports its own errors
            log.info("background read of %s failed (%s)", self.base.name, exc)
            if self._stream is not None:
                self._stream.close()
                self._stream = None
