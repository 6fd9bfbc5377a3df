"""The next version of an open file sent while it is still being written:
a file rewritten from its start, on a store that can take it, goes out
part by part as its blocks fill (an AppendStream or PartStream, see
sealfs.fileio.streams), and its flush sends only the rest."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import StoreError
from ..fileio.streams import AppendStream, PartStream, stream_class
from ..volume import Entry

if TYPE_CHECKING:
    from .content import FileContent

log = logging.getLogger("sealfs.fs.content")  # (the name its log lines had before they moved here)


class PartSender:
    """The parts of ``content``'s next version sent while it is written,
    and whether they may be (see :meth:`send`)."""

    def __init__(self, content: FileContent):
        self.content = content
        #: The upload of a sequential rewrite, sent while it is written.
        self.stream: PartStream | AppendStream | None = None
        #: False once sending stopped, until the next base (see :meth:`reset`).
        self._enabled = True

    def reset(self) -> None:
        """Stop sending (as :meth:`abort`) for a new base; its rewrite from
        the start may be sent again."""
        self.abort()
        self._enabled = True

    @property
    def sent(self) -> int:
        """How many blocks from the start the stream has sent (0 without
        one)."""
        return self.stream.next_block if self.stream is not None else 0

    def holds(self, index: int) -> bool:
        """Whether block ``index`` was sent and only the stream has it now
        (:meth:`block` reads it back from the store)."""
        stream = self.stream
        return stream is not None and not stream.keeps_sent and index < stream.next_block

    def block(self, index: int) -> bytes:
        return self.stream.block(index)  # type: ignore[union-attr]

    def _stream_class(self) -> type[PartStream | AppendStream] | None:
        return stream_class(self.content.vol.io)

    def _rewritten(self) -> bool:
        """Whether parts of the file are sent while it is written (see
        :meth:`send`)."""
        return self.content.rewritten and self._enabled and self._stream_class() is not None

    def may_send(self, size: int) -> bool:
        """Whether a write that leaves the file ``size`` bytes long may have
        a part sent (and so need the store)."""
        c = self.content
        return self._rewritten() and size > self._stream_class().blocks_per_part(c.vol.io) * c.block_size  # type: ignore[union-attr]

    def send(self) -> None:
        """A file rewritten from its start (new, or truncated to zero) on a
        store that can take it while it is written: send each part as soon
        as its blocks and the one after are written (so none of them is the
        last).  Where the store can read them back (AppendStream), the
        blocks sent leave memory and the spool."""
        if not self._rewritten():
            return
        c = self.content
        per_part = self._stream_class().blocks_per_part(c.vol.io)  # type: ignore[union-attr]
        start = self.sent
        while c.size > (start + per_part) * c.block_size and all(
            c.whole(i) for i in range(start, start + per_part + 1)
        ):
            try:
                if self.stream is None:
                    self.stream = c.vol.start_stream(c.base.entry, c.base.cipher())
                self.stream.send(c)
            except StoreError as exc:
                # The store cannot take it now (or the version we opened is
                # gone: another mount): the blocks stay here, and the flush
                # stores the file whole, or reports the error or conflict.
                log.info("%s: not sent while written (%s)", c.base.name, exc)
                self.abort()
                self._enabled = False
                return
            if not self.stream.keeps_sent:
                for i in range(start, self.stream.next_block):
                    c.dirty.pop(i, None)
                    if c.spool is not None:
                        c.spool.discard(i)
            start = self.stream.next_block

    def abort(self, keep: bool = True) -> None:
        """Stop sending the file while it is written: it is stored whole at
        its next flush.  ``keep``: blocks that only the stream holds move to
        the spool first (if that fails, nothing changed); else they are
        being thrown away."""
        stream = self.stream
        if stream is None:
            return
        if keep and not stream.keeps_sent:
            spool = self.content.spill.open()
            for i in range(stream.next_block):
                spool.put_sealed(i, stream.sealed(i))
        self.stream = None
        self._enabled = False  # (not again from the start at each write)
        stream.abort()

    def finish(self, entry: Entry, **cond) -> Entry | None:
        """The new version, with ``entry``'s metadata, made of the parts sent
        and the rest (``cond``: as Volume.finish_stream takes it); None if
        none was sent, or the file has holes (it is stored sparse, by a
        ContentWriter)."""
        c = self.content
        if self.stream is not None and c.extents() != [(0, c.vol.layout.block_count(c.size))]:
            self.abort()
        if self.stream is None:
            return None
        try:
            new = c.vol.finish_stream(self.stream, entry, c.size, c, **cond)
        except BaseException:
            self.abort()  # every block is still here for the next try
            raise
        self.stream = None
        return new
