"""Encrypted local spill space for dirty blocks.

When a file's dirty data outgrows its memory budget, blocks move here until
they are uploaded.  Each spool is an anonymous file (``O_TMPFILE``, or
created and immediately unlinked) in the cache directory, sealed with a
random key that exists only in this process's memory: plaintext never
touches the local disk, and nothing readable is left behind by a crash.
"""

from __future__ import annotations

import errno
import os
import struct

from ..codec.crypto import NONCE_SIZE, TAG_SIZE, random_bytes, seal, unseal
from ..errors import FsError


class Spool:
    def __init__(self, directory: str, block_size: int):
        self.block_size = block_size
        self.slot = block_size + NONCE_SIZE + TAG_SIZE
        self._key = random_bytes(32)
        self._lengths: dict[int, int] = {}
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            self._fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:
            name = os.path.join(directory, f".spool-{os.getpid()}-{random_bytes(8).hex()}")
            self._fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.unlink(name)

    def __contains__(self, index: int) -> bool:
        return index in self._lengths

    def __len__(self) -> int:
        return len(self._lengths)

    def is_full(self, index: int) -> bool:
        """Whether block ``index`` is here and holds a whole block."""
        return self._lengths.get(index) == self.slot

    def indices(self) -> list[int]:
        return sorted(self._lengths)

    def put(self, index: int, plain: bytes | bytearray) -> None:
        sealed = seal(self._key, bytes(plain), struct.pack(">Q", index))
        try:
            written = os.pwrite(self._fd, sealed, index * self.slot)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise FsError(errno.ENOSPC, "cache directory is full") from None
            raise FsError(errno.EIO, f"cannot write the spool: {exc.strerror}") from None
        if written != len(sealed):
            raise FsError(errno.ENOSPC, "short write to the spool (cache directory full?)")
        self._lengths[index] = len(sealed)

    def get(self, index: int) -> bytes:
        sealed = os.pread(self._fd, self._lengths[index], index * self.slot)
        return unseal(self._key, sealed, struct.pack(">Q", index), f"spooled block {index}")

    def discard(self, index: int) -> None:
        self._lengths.pop(index, None)

    def discard_from(self, index: int) -> None:
        for i in [i for i in self._lengths if i >= index]:
            del self._lengths[i]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
