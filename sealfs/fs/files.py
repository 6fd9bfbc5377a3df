"""Open files: create, mknod, open, read, write, flush, fsync, release,
and the handles they share a file's contents through."""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, replace

from ..errors import FsError, PreconditionFailed, WouldBlock
from ..volume import Volume, check_name, now_ns
from .attrs import Attr, Attributes, without_setid
from .cache import BlockCache, block_key
from .names import new_owner
from .nodes import Ctx, Node, NodeTable, Options, holding
from .writeback import Writeback

log = logging.getLogger(__name__)

#: Files up to this size opened for reading are read whole at open (in the
#: request that revalidates them).
OPEN_READ_BYTES = 256 * 1024


@dataclass
class Handle:
    node: Node
    writable: bool
    append: bool


class Files:
    def __init__(
        self,
        vol: Volume,
        opts: Options,
        nodes: NodeTable,
        writeback: Writeback,
        attrs: Attributes,
        cache: BlockCache,
    ):
        self.vol = vol
        self.opts = opts
        self.nodes = nodes
        self.wb = writeback
        self.attrs = attrs
        self.cache = cache
        #: Open handles (guarded by the node table's lock, as the counts they change).
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1

    def _new_handle(self, node: Node, flags: int) -> int:
        acc = flags & os.O_ACCMODE
        with self.nodes.lock:
            fh = self._next_fh
            self._next_fh += 1
            self.handles[fh] = Handle(node, acc != os.O_RDONLY, bool(flags & os.O_APPEND))
            node.opens += 1
            node.writers += acc != os.O_RDONLY
        return fh

    def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx, nowait: bool = False
    ) -> tuple[Attr, int]:
        self.opts.check_writable()
        pnode = self.nodes.get(parent)
        pnode.need_dir()
        mode, uid, gid = new_owner(pnode.entry, mode, ctx, False)
        # The file is stored at its first flush, in one write with its
        # contents (If-None-Match: if another mount took the name meanwhile,
        # it becomes a conflict copy): half the store writes.  Until then
        # this mount answers for the name (lookup, readdir; the kernel
        # refuses O_EXCL creates of it), and any other operation on the name
        # stores the file first (Namespace._child).
        entry = self.vol.new_file_entry(pnode.entry.id, check_name(name), mode, uid, gid)
        with holding(pnode.lock, nowait):  # (all in memory: WouldBlock only if another thread has the directory)
            node = self.nodes.remember(entry, parent, lookups=1)
            self.nodes.add_unstored(node)
            self.wb.touch_dir(pnode)
            fh = self._new_handle(node, flags)
        return self.attrs.counted(node), fh

    def mknod(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        if stat.S_ISREG(mode):
            attr, fh = self.create(parent, name, mode, os.O_WRONLY, ctx)
            try:
                self.release(fh)  # (stores the empty file)
            except BaseException:
                self.nodes.forget([(attr.ino, 1)])  # the kernel gets an error, not the node
                raise
            return attr
        raise FsError(errno.EPERM, "sealfs stores only files, directories and symlinks (no FIFOs, sockets or devices)")

    def open(self, ino: int, flags: int, ctx: Ctx) -> tuple[int, bool]:
        """Open a file; returns (handle, keep kernel cache)."""
        node = self.nodes.get(ino)
        acc = flags & os.O_ACCMODE
        if acc != os.O_RDONLY or flags & os.O_TRUNC:
            self.opts.check_writable()
        if node.entry.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        keep = True
        with node.lock:
            # Removed (or replaced by a rename) since the kernel looked it
            # up; on ESTALE the kernel looks the name up anew.
            node.check_live(errno.ESTALE)
            pending = node.unstored or node.meta_dirty or (node.content is not None and node.content.changed)
            if not node.orphan and not pending:
                keep = self._revalidate(node, flags)
            if flags & os.O_TRUNC:
                # The kernel leaves O_TRUNC to us (atomic_o_trunc), so
                # also what its truncate would do: new times, and no
                # set-id bits after a change by an unprivileged caller.
                t = now_ns()
                mode = node.entry.mode if ctx.uid == 0 else without_setid(node.entry.mode)
                entry = replace(node.entry, mode=mode, mtime_ns=t, ctime_ns=t)
                if node.content is not None or entry.size:
                    node.entry = entry
                    self.wb.content(node).truncate(0)
                    keep = False
                else:
                    self.wb.change_meta(node, entry)
            fh = self._new_handle(node, flags)
        return fh, keep

    def _revalidate(self, node: Node, flags: int) -> bool:
        """Close-to-open: ``node`` (without local changes) takes the version
        stored now; whether the kernel may keep its cached pages (caller
        holds node.lock).  On every open, not only the first: the kernel
        sends RELEASE asynchronously, so an earlier handle may still count
        here although its file was closed."""
        # A small file opened for reading, with no block in the cache, comes
        # whole with its metadata: one store request for the open and the
        # reads after it.
        e = node.entry
        preload = (
            flags & os.O_ACCMODE == os.O_RDONLY
            and not flags & os.O_TRUNC
            and e.size <= OPEN_READ_BYTES
            and self.cache.get(block_key(e.id, e.etag, e.header_hash, 0)) is None
        )
        if preload:
            fresh, body = self.vol.load(e, self.vol.layout.object_size_for(OPEN_READ_BYTES))
        else:
            fresh = self.vol.reload(e)
        if fresh.id != node.entry.id:
            # The name holds another file now (replaced by another
            # mount); on ESTALE the kernel looks the name up anew.
            raise FsError(errno.ESTALE, f"{fresh.name!r} was replaced by another mount")
        # (the same etag with metadata of another version, put back by
        # someone, is another version: its reads fail)
        same = (fresh.etag, fresh.header_hash) == (node.entry.etag, node.entry.header_hash)
        keep = same and not node.discarded
        node.discarded = False
        if not keep:
            self.wb.drop_content(node)  # cached blocks and stream of the old version
        node.entry = fresh
        if preload and fresh.is_file:
            self.wb.content(node).preload(fresh, body)
        return keep

    def read(self, fh: int, offset: int, length: int, nowait: bool = False) -> bytes:
        node = self.handles[fh].node
        with holding(node.lock, nowait):
            try:
                return self.wb.content(node).read(offset, length, nowait)
            except PreconditionFailed as exc:
                # The version this handle reads is gone; never mix versions.
                log.warning("%s; reopen the file to read the new version", exc)
                raise FsError(errno.ESTALE, str(exc)) from None

    def write(self, fh: int, offset: int, data: bytes, nowait: bool = False) -> int:
        h = self.handles[fh]
        node = h.node
        if not h.writable:
            raise FsError(errno.EBADF, "file not open for writing")
        with holding(node.lock, nowait):
            content = self.wb.content(node)
            if h.append:
                offset = content.size
            n = content.write(offset, data, nowait)
            # (set-user-id/set-group-id bits are cleared by the kernel,
            # which sends a setattr before the write)
            t = now_ns()
            node.entry = replace(node.entry, mtime_ns=t, ctime_ns=t)
            node.meta_dirty = True
            return n

    def flush(self, fh: int, nowait: bool = False) -> None:
        h = self.handles.get(fh)
        if h is None or not h.writable:
            return
        with holding(h.node.lock, nowait):
            self.wb.upload(h.node, nowait)

    def fsync(self, fh: int) -> None:
        self.flush(fh)
        self.vol.sync()

    def release(self, fh: int, nowait: bool = False) -> None:
        h = self.handles.get(fh)
        if h is None:
            return
        node = h.node
        with holding(node.lock, nowait):
            last_handle = node.opens == 1
            upload = (h.writable or last_handle) and not (node.orphan and last_handle) and self.wb.to_upload(node)
            # (the last handle closes the contents, which waits for the disk
            # or the store unless they are idle, and removes an orphan's object)
            closing_waits = last_handle and (node.orphan or not (node.content is None or node.content.idle))
            if nowait and (upload or closing_waits):
                raise WouldBlock  # (the steps that wait, known before anything changes)
            with self.nodes.lock:
                if self.handles.pop(fh, None) is None:
                    return  # (released meanwhile)
            try:
                if upload:
                    self.wb.upload(node)
            finally:
                with self.nodes.lock:
                    node.opens -= 1
                    node.writers -= h.writable
                if last_handle:
                    if node.content is not None and node.content.changed and not node.orphan:
                        log.error(
                            "discarding changes to %s that could not be uploaded (close() reported EIO)",
                            node.entry.name.decode(errors="replace"),
                        )
                        node.meta_dirty = False
                        node.discarded = True
                        self.nodes.forget_unstored(node)  # (a new file that could not be stored is gone)
                    self.wb.drop_content(node)
                    if node.orphan:
                        self.vol.remove(node.entry)  # (with its overflow metadata)
                with self.nodes.lock:
                    self.nodes.maybe_drop(node)
