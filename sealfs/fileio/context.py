"""What file I/O works with: one volume's store, block layout, keys and
I/O threads, and the sizes its uploads are cut into."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..codec import crypto
from ..codec.blocks import FileCipher, Layout
from ..codec.entry import Entry
from ..codec.header import seal_header
from ..store.base import Store

#: Files whose object is at most this big are written with one PUT.
SINGLE_PUT_MAX = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
#: Bytes of parts a whole-file upload keeps in memory at once (at least one part).
IN_FLIGHT_BYTES = 32 * 1024 * 1024


class FileIO:
    """The file I/O of one volume.  ``keyring`` is the volume's: its
    ``kek(generation)`` opens headers and its ``current`` generation seals
    new ones (read at each use: a rekey changes it)."""

    def __init__(self, store: Store, layout: Layout, keyring, pool: ThreadPoolExecutor):
        self.store = store
        self.layout = layout
        self.keyring = keyring
        self.pool = pool
        self.single_put_max = SINGLE_PUT_MAX
        self.part_size = PART_SIZE
        self.in_flight_bytes = IN_FLIGHT_BYTES

    def new_key(self, e: Entry) -> tuple[FileCipher, bytes]:
        """A fresh data key for file ``e``: its cipher and its sealed header."""
        dek = crypto.random_bytes(32)
        return FileCipher(dek, e.id, self.layout, e.name.decode(errors="replace")), self.new_header(e.id, dek)

    def new_header(self, file_id: bytes, dek: bytes) -> bytes:
        """A header for a new version of file ``file_id``: sealed anew under
        the current generation (a fresh wrap nonce), bound to the metadata
        that names it (docs/FORMAT.md, "Version binding")."""
        g = self.keyring.current
        return seal_header(
            self.keyring.kek(g), block_size=self.layout.block_size, generation=g, file_id=file_id, dek=dek, bound=True
        )
