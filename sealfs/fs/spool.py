"""Local spill space for dirty blocks, sealed as they will be stored.

When a file's dirty data outgrows its memory budget, blocks move here until
they are uploaded.  Each spool is an anonymous file (``O_TMPFILE``, or
created and immediately unlinked) in the cache directory.  A block is
sealed with the file's own cipher (its data key lives only in memory), so
what the spool holds is what the store will hold: plaintext never touches
the local disk, a crash leaves nothing a reader of the bucket could not
read anyway, and at upload a whole block goes out as it is, without being
opened and sealed again (see :meth:`Spool.sealed`).

Blocks go to slots of the spool file in the order they arrive (a freed
slot is used again), not at an offset computed from their index: a block
written a petabyte into a sparse file takes one slot, not a petabyte of
file offsets.

When blocks spill is decided here too: past a file's own budget of dirty
blocks in memory, or past the mount's for all its files together
(:class:`Spill`, :class:`DirtyBudget`).
"""

from __future__ import annotations

import errno
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..codec.blocks import BLOCK_OVERHEAD, FileCipher
from ..errors import FsError

if TYPE_CHECKING:
    from .content import FileContent


class Spool:
    def __init__(self, directory: str, cipher: FileCipher):
        self.cipher = cipher
        self.block_size = cipher.layout.block_size
        self.slot = self.block_size + BLOCK_OVERHEAD
        #: index -> (slot, sealed length, sealed as a last block: a partial one)
        self._blocks: dict[int, tuple[int, int, bool]] = {}
        self._free: list[int] = []
        self._slots = 0
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            self._fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:
            name = os.path.join(directory, f".spool-{os.getpid()}-{os.urandom(8).hex()}")
            self._fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.unlink(name)

    def __contains__(self, index: int) -> bool:
        return index in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def is_full(self, index: int) -> bool:
        """Whether block ``index`` is here and holds a whole block."""
        stored = self._blocks.get(index)
        return stored is not None and not stored[2]

    def indices(self) -> list[int]:
        return sorted(self._blocks)

    def put(self, index: int, plain: bytes | bytearray) -> None:
        partial = len(plain) != self.block_size
        self._write(index, self.cipher.seal_block(index, partial, plain), partial)

    def _write(self, index: int, sealed: bytes, partial: bool) -> None:
        old = self._blocks.get(index)
        slot = old[0] if old is not None else self._free[-1] if self._free else self._slots
        try:
            written = os.pwrite(self._fd, sealed, slot * self.slot)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise FsError(errno.ENOSPC, "cache directory is full") from None
            raise FsError(errno.EIO, f"cannot write the spool: {exc.strerror}") from None
        if written != len(sealed):
            raise FsError(errno.ENOSPC, "short write to the spool (cache directory full?)")
        if old is None:
            if self._free:
                self._free.pop()
            else:
                self._slots += 1
        self._blocks[index] = (slot, len(sealed), partial)

    def put_sealed(self, index: int, sealed: bytes) -> None:
        """Block ``index`` as this spool's cipher sealed it, whole and not
        the last (a block read back from a stream: see PartSender.abort)."""
        self._write(index, sealed, False)

    def _read(self, index: int) -> bytes:
        slot, length, _ = self._blocks[index]
        return os.pread(self._fd, length, slot * self.slot)

    def get(self, index: int) -> bytes:
        return self.cipher.open_block(index, self._blocks[index][2], self._read(index))

    def sealed(self, index: int, cipher: FileCipher) -> bytes | None:
        """Block ``index`` as stored by ``cipher`` as a whole, not-last
        block: the bytes here if they are just that (same key and file),
        else None."""
        if not self.is_full(index) or (cipher.dek, cipher.file_id) != (self.cipher.dek, self.cipher.file_id):
            return None
        return self._read(index)

    def discard(self, index: int) -> None:
        stored = self._blocks.pop(index, None)
        if stored is not None:
            self._free.append(stored[0])

    def discard_from(self, index: int) -> None:
        for i in [i for i in self._blocks if i >= index]:
            self.discard(i)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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


class Spill:
    """Where one file's dirty blocks go past its budgets (``limit`` bytes of
    its own, and the mount's ``budget``): a Spool in ``directory``, opened
    on first use with the cipher that ``cipher`` returns."""

    def __init__(
        self,
        directory: str,
        limit: int,
        block_size: int,
        budget: DirtyBudget | None,
        cipher: Callable[[], FileCipher],
    ):
        self.directory = directory
        self.limit = limit
        self.block_size = block_size
        self.budget = budget
        self._cipher = cipher
        self.spool: Spool | None = None

    def over(self, blocks: int) -> bool:
        """Whether ``blocks`` dirty blocks in memory are past the file's
        budget, or the mount's is spent."""
        return blocks * self.block_size > self.limit or (self.budget is not None and self.budget.over())

    def spill(self, dirty: dict[int, bytearray | memoryview]) -> None:
        """Move ``dirty`` blocks to the spool while over budget (the highest
        block, likely still being appended to, stays), or while the files
        of the mount together are over theirs."""
        if len(dirty) * self.block_size <= self.limit and (
            len(dirty) <= 1 or self.budget is None or not self.budget.over()
        ):
            return
        spool = self.open()
        top = max(dirty)
        for i in sorted(dirty):
            if i != top:
                # (dropped from memory only once spooled: a full cache_dir
                # fails the write with ENOSPC, never loses the block)
                spool.put(i, dirty[i])
                del dirty[i]

    def open(self) -> Spool:
        """The spool, opened on first use."""
        if self.spool is None:
            self.spool = Spool(self.directory, self._cipher())
        return self.spool

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None
