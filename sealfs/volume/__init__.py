"""The volume: plaintext paths, entries and file contents over an object store.

This is the library API (no FUSE, no trio): the offline CLI and the mount
both use it, so both read and write exactly the same layout.

``volume``   Volume: the config and keys, opened or created; file contents
``entries``  entry objects: lookup, listing, create, rename, remove, new metadata
``sealed``   entry metadata sealed into user metadata, and its side objects

Store layout (docs/FORMAT.md):

    sealfs.json                 the volume config (key slots, keyring, MAC)
    d/<dir id hex>/<name>       one object per directory entry; <name> is the
                                encrypted name (names.py).  A regular file's
                                object is its content (header + blocks), a
                                symlink's its sealed target; a directory's is
                                empty, so a LIST alone counts subdirectories.
    x/<entry id hex>            overflow metadata (large xattrs) that does
                                not fit in user metadata
    t/<entry id hex>.<nonce>    the mtime and ctime of a file version
                                uploaded in parts (see Volume.start_stream)

Every entry object carries user metadata ``m`` (sealed entry metadata bound
to the object's key) and, for long names, ``n`` (the name ciphertext).
The root directory's own metadata lives in the entry object ``root``.

All methods are blocking and thread-safe; callers that must not block (the
FUSE adapter) run them in worker threads.
"""

from ..codec.entry import KIND_DIR, KIND_FILE, ROOT_ID, ROOT_KEY, Entry
from .entries import SETTLED_SECONDS, check_name, now_ns
from .sealed import dir_prefix, overflow_key, times_key
from .volume import Volume, read_config

__all__ = [
    "KIND_DIR",
    "KIND_FILE",
    "ROOT_ID",
    "ROOT_KEY",
    "SETTLED_SECONDS",
    "Entry",
    "Volume",
    "check_name",
    "dir_prefix",
    "now_ns",
    "overflow_key",
    "read_config",
    "times_key",
]
