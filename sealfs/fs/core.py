"""The filesystem core: FUSE-shaped operations over a :class:`Volume`.

It never imports pyfuse3 or trio.  Every operation is blocking,
thread-safe, takes inode numbers and plain values, and raises
:class:`~sealfs.errors.FsError` (or another SealfsError, which the adapter
maps to EIO) — so it can be tested without a mount.

:class:`Filesystem` puts the parts together, each with one job (see their
modules): the inode table (:mod:`.nodes`), write-back to the store
(:mod:`.writeback`), attributes and xattrs (:mod:`.attrs`), names
(:mod:`.names`), directory listings (:mod:`.dirs`) and open files
(:mod:`.files`).  Its operations are those of the parts.

**nowait.**  The requests a program sends most (getattr, create, read from
cached blocks, write into memory, setattr of a file being written, flush
and release of a handle with nothing to upload) are often answered from
memory.  Those operations take ``nowait``; it changes nothing in what they
decide, only that where they would wait (for a node lock another thread
holds, the store or the disk) they raise WouldBlock instead, before
changing anything: the adapter tries them on its event loop first and
hands only the rest to a worker thread, saving two thread switches per
request.  (The node table's lock and the block cache's lock are only ever
held briefly, so they are simply taken.)
"""

from __future__ import annotations

import os

from ..volume import Volume
from .attrs import Attributes
from .cache import BlockCache
from .dirs import Listings
from .files import Files
from .names import Namespace
from .nodes import NodeTable, Options
from .spool import DirtyBudget
from .writeback import Writeback

#: The dirty blocks in memory of all files together: this many times
#: dirty_size (see DirtyBudget).
DIRTY_TOTAL_FACTOR = 4


class Filesystem:
    def __init__(self, vol: Volume, options: Options | None = None):
        self.vol = vol
        # As on a local filesystem: what close() stored survives a crash of
        # the daemon, and fsync() makes it survive a power loss too.
        vol.defer_sync()
        self.opts = options or Options()
        self.cache = BlockCache(self.opts.cache_bytes)
        self.nodes = NodeTable(vol)
        spool_dir = os.path.join(self.opts.cache_dir, vol.config.volume_id.hex())
        budget = DirtyBudget(DIRTY_TOTAL_FACTOR * self.opts.dirty_bytes)
        self.writeback = wb = Writeback(vol, self.opts, self.nodes, self.cache, budget, spool_dir)
        self.attrs = attrs = Attributes(vol, self.opts, self.nodes, wb)
        self.names = names = Namespace(vol, self.opts, self.nodes, wb, attrs)
        self.listings = listings = Listings(vol, self.nodes, attrs)
        self.files = files = Files(vol, self.opts, self.nodes, wb, attrs, self.cache)

        # The operations, each that of the part whose job it is.
        self.path_of = self.nodes.path_of
        self.forget = self.nodes.forget
        self.lookup = names.lookup
        self.child_exists = names.child_exists
        self.mkdir = names.mkdir
        self.symlink = names.symlink
        self.readlink = names.readlink
        self.link = names.link
        self.unlink = names.unlink
        self.rmdir = names.rmdir
        self.rename = names.rename
        self.opendir = listings.opendir
        self.readdir = listings.readdir
        self.releasedir = listings.releasedir
        self.create = files.create
        self.mknod = files.mknod
        self.open = files.open
        self.read = files.read
        self.write = files.write
        self.flush = files.flush
        self.fsync = files.fsync
        self.release = files.release
        self.getattr = attrs.getattr
        self.setattr = attrs.setattr
        self.getxattr = attrs.getxattr
        self.listxattr = attrs.listxattr
        self.setxattr = attrs.setxattr
        self.removexattr = attrs.removexattr
        self.statfs = attrs.statfs
        self.flush_metadata = wb.flush_metadata
        self.fsyncdir = wb.fsyncdir
        self.sync_all = wb.sync_all
