"""A new version of a file stored while it is still being written: sent
part by part as its blocks fill, in order, and completed by the volume
(which seals its metadata) once the file is flushed."""

from __future__ import annotations

import logging

from ..codec.blocks import FileCipher
from ..codec.entry import Entry
from ..codec.header import header_hash
from .context import FileIO
from .writer import Blocks

log = logging.getLogger("sealfs.volume")  # (the name its log lines had before file I/O was a layer)


class _WhileWritten:
    """A new version of file ``e`` stored while it is still being written.

    Sequential writers fill blocks in order; every time more than a part's
    worth of whole blocks lies ahead of what was sent, the caller has
    :meth:`send` seal them (none of them can be the last block: a later one
    exists) and pass them to the store.  :meth:`send_rest` seals and passes
    the rest, the last block flagged, and the volume makes them the file's
    new version (If-Match the version it replaces).  A write behind what
    was sent, or a truncate, makes the caller :meth:`abort` it and store the
    file whole at its next flush.
    """

    #: Whether the caller must keep the blocks sent until the new version
    #: is complete (else :meth:`block` and :meth:`sealed` read them back).
    keeps_sent = True

    def __init__(self, io: FileIO, e: Entry, cipher: FileCipher):
        self.io = io
        self.key = e.key
        self.cipher = cipher
        #: The new version's header (same data key, sealed anew).
        self.header = io.new_header(e.id, cipher.dek)
        self.header_hash = header_hash(self.header)
        self.part_blocks = self.blocks_per_part(io)
        self.next_block = 0

    @staticmethod
    def blocks_per_part(io: FileIO) -> int:
        raise NotImplementedError

    def _emit(self, chunks: list[bytes]) -> None:
        """Pass the next stretch of the object, ``chunks`` in order, to the
        store."""
        raise NotImplementedError

    def _sealed(self, i: int, blocks: Blocks) -> bytes:
        """Whole block ``i`` (not the last) as stored: as ``blocks`` has it
        already sealed, else sealed now."""
        data = blocks.sealed_block(i, self.cipher)
        return data if data is not None else self.cipher.seal_block(i, False, blocks.new_block(i))  # type: ignore[arg-type]

    def send(self, blocks: Blocks) -> None:
        """Send the next part: blocks ``next_block .. +part_blocks``, which
        the caller has checked are complete and not the last."""
        chunks = [self.header] if self.next_block == 0 else []
        chunks += [self._sealed(i, blocks) for i in range(self.next_block, self.next_block + self.part_blocks)]
        self._emit(chunks)
        self.next_block += self.part_blocks

    def send_rest(self, size: int, blocks: Blocks) -> None:
        """Seal and send the blocks after ``next_block`` of a file of ``size``
        bytes, the last one flagged."""
        layout = self.io.layout
        n = layout.block_count(size)
        if n <= self.next_block:
            raise ValueError("the file ended inside what was already sent")
        chunks = [self.header] if self.next_block == 0 else []
        pending = len(chunks[0]) if chunks else 0
        for i in range(self.next_block, n):
            if i == n - 1:
                chunks.append(self.cipher.seal_block(i, True, blocks.new_block(i)))  # type: ignore[arg-type]
            else:
                chunks.append(self._sealed(i, blocks))
            pending += len(chunks[-1])
            if pending >= self.part_blocks * layout.sealed_block_size and i < n - 1:
                self._emit(chunks)
                chunks, pending = [], 0
        if chunks:
            self._emit(chunks)


class AppendStream(_WhileWritten):
    """On a store that writes an object in one pass (the local store): each
    part is appended to the new object as soon as it is complete, so that
    the blocks go to disk once, where they will stay.  The caller need not
    keep them: :meth:`block` reads one back.  :meth:`commit` installs the
    object with its final metadata."""

    keeps_sent = False
    #: Bytes appended at a time.
    APPEND_BYTES = 1024 * 1024

    def __init__(self, io: FileIO, e: Entry, cipher: FileCipher):
        super().__init__(io, e, cipher)
        self.writer = io.store.open_put(e.key)
        self._sent = 0

    @staticmethod
    def blocks_per_part(io: FileIO) -> int:
        return max(1, AppendStream.APPEND_BYTES // io.layout.sealed_block_size)

    def _emit(self, chunks: list[bytes]) -> None:
        self.writer.append(*chunks)

    def sealed(self, i: int) -> bytes:
        """Sent block ``i`` as stored."""
        layout = self.io.layout
        return self.writer.read(layout.block_offset(i), layout.sealed_block_size)

    def block(self, i: int) -> bytes:
        """Plaintext of sent block ``i``."""
        return self.cipher.open_block(i, False, self.sealed(i))

    def send_rest(self, size: int, blocks: Blocks) -> None:
        self._sent = self.writer.size
        super().send_rest(size, blocks)

    def commit(self, md: dict[str, str], *, if_match: str | None, if_none_match: bool = False) -> str:
        """Install the object with sealed user metadata ``md``; its etag."""
        return self.writer.commit(md, if_match=if_match, if_none_match=if_none_match)

    def take_back(self) -> None:
        """Undo :meth:`send_rest` after a failure to finish: back to the
        blocks sent by :meth:`send` (the caller may read them, finish again
        or abort)."""
        self.writer.truncate(self._sent)

    def abort(self) -> None:
        self.writer.abort()


class PartStream(_WhileWritten):
    """On S3: each part goes up as the next part of a multipart upload, in
    the background, at most ``MAX_IN_FLIGHT`` at a time; the caller keeps
    every block until the upload completes (S3 cannot read back an
    unfinished upload).

    S3 fixes an object's metadata when its upload starts (:meth:`start`),
    and the mtime of a file being written changes until its last write:
    see Volume.start_stream for what the volume does about it.
    """

    MAX_IN_FLIGHT = 4

    def __init__(self, io: FileIO, e: Entry, cipher: FileCipher):
        super().__init__(io, e, cipher)
        self._futures: list = []
        self.upload_id = ""
        #: The entry whose sealed metadata the upload started with.
        self.started: Entry | None = None

    def start(self, md: dict[str, str], started: Entry) -> None:
        """Start the upload, with sealed user metadata ``md`` of ``started``."""
        self.upload_id = self.io.store.create_multipart(self.key, md)
        self.started = started

    @staticmethod
    def blocks_per_part(io: FileIO) -> int:
        part = max(io.part_size, io.store.min_part_size)
        return -(-part // io.layout.sealed_block_size)

    def _emit(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        number = len(self._futures) + 1
        in_flight = [f for f in self._futures if not f.done()]
        if len(in_flight) >= self.MAX_IN_FLIGHT:
            in_flight[0].result()
        self._futures.append(self.io.pool.submit(self._upload_part, number, data))

    def _upload_part(self, number: int, data: bytes) -> tuple[int, str]:
        return number, self.io.store.upload_part(self.key, self.upload_id, number, data)

    def parts(self) -> list[tuple[int, str]]:
        """Every part sent, once it is uploaded: (number, etag)."""
        return [f.result() for f in self._futures]

    def complete(self, parts: list[tuple[int, str]], *, if_match: str | None, if_none_match: bool = False) -> str:
        """Complete the upload of ``parts``; the new object's etag."""
        return self.io.store.complete_multipart(
            self.key, self.upload_id, parts, if_match=if_match, if_none_match=if_none_match
        )

    def abort(self) -> None:
        for f in self._futures:
            f.cancel()
        for f in self._futures:
            try:
                f.result()
            except Exception:  # noqa: BLE001 - the upload is being thrown away
                pass
        try:
            self.io.store.abort_multipart(self.key, self.upload_id)
        except Exception as exc:  # noqa: BLE001 - fsck reports stale uploads
            log.warning("cannot abort an upload of %s: %s", self.key, exc)


def stream_class(io: FileIO) -> type[PartStream | AppendStream] | None:
    """How this store takes a file while it is written: multipart parts
    (S3), appends to the new object (local), or not at all."""
    store = io.store
    return PartStream if store.server_side_copy else AppendStream if store.streaming_put else None
