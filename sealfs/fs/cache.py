"""A bounded cache of decrypted blocks, shared by every open file.

Keys include the object's etag and the header its metadata names, so a new
version of a file never hits the blocks of an old one, nor a version whose
metadata was put back from another one; old entries simply age out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


def block_key(file_id: bytes, etag: str, header_hash: bytes | None, index: int) -> tuple:
    """The cache key of block ``index`` of one version of a file."""
    return (file_id, etag, header_hash, index)


class BlockCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def drop_file(self, file_id: bytes) -> None:
        """Forget every block of a file (all versions)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == file_id]:
                self._bytes -= len(self._items.pop(key))

    @property
    def size(self) -> int:
        return self._bytes
