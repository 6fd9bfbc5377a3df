"""Attributes and xattrs: getattr, setattr (truncate included), the
extended attributes of an entry, statfs."""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..codec.blocks import MAX_FILE_SIZE
from ..errors import FsError, WouldBlock
from ..volume import Volume, now_ns
from .nodes import Ctx, Node, NodeTable, Options, holding
from .writeback import Writeback

XATTR_SIZE_MAX = 65536
#: All xattrs of one entry together, names and values: a bound on what one
#: entry costs in memory wherever it is held (nodes, listings).
XATTR_TOTAL_MAX = 2 * 1024 * 1024
#: xattr namespaces stored as given; others are refused (ENOTSUP).
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")


def without_setid(mode: int) -> int:
    """``mode`` less what a change by an unprivileged user clears: the
    set-user-id bit, and set-group-id where group-execute is set (without
    it, the bit means mandatory locking and stays)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


@dataclass
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    blksize: int
    #: Bytes the file takes in the store, if not its size (a sparse version).
    stored: int | None = None

    @property
    def blocks(self) -> int:
        return -(-(self.size if self.stored is None else self.stored) // 512)


class Attributes:
    def __init__(self, vol: Volume, opts: Options, nodes: NodeTable, writeback: Writeback):
        self.vol = vol
        self.opts = opts
        self.nodes = nodes
        self.wb = writeback

    def attr(self, node: Node, nowait: bool = False) -> Attr:
        """The attributes of ``node`` (caller holds its lock)."""
        e = node.entry
        size = node.content.size if node.content is not None else e.size
        if e.is_dir:
            if node.subdirs is None:
                if nowait:
                    raise WouldBlock  # (counted in the store)
                node.subdirs = self.vol.count_subdirs(e.id)
            nlink = 2 + node.subdirs
        else:
            nlink = 0 if node.orphan else 1
        # (a sparse version as stored: its object size; with changes not yet
        # uploaded, the size, as for any file)
        stored = e.object_size if e.sparse and (node.content is None or not node.content.changed) else None
        return Attr(
            node.ino,
            e.mode,
            nlink,
            e.uid,
            e.gid,
            size,
            e.mtime_ns,
            e.mtime_ns,
            e.ctime_ns,
            self.vol.layout.block_size,
            stored,
        )

    def counted(self, node: Node) -> Attr:
        """Attributes of a node that holds a lookup count for the kernel;
        if they cannot be had, the kernel gets an error, not the node, so
        the count is given back."""
        try:
            with node.lock:
                return self.attr(node)
        except BaseException:
            self.nodes.forget([(node.ino, 1)])
            raise

    def getattr(self, ino: int, nowait: bool = False) -> Attr:
        node = self.nodes.get(ino)
        with holding(node.lock, nowait):
            return self.attr(node, nowait)

    def setattr(
        self,
        ino: int,
        ctx: Ctx,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        fh: int | None = None,
        nowait: bool = False,
    ) -> Attr:
        node = self.nodes.get(ino)
        self.opts.check_writable()
        with holding(node.lock, nowait):
            node.check_live(errno.ENOENT)
            e = node.entry
            t = now_ns()
            changes: dict = {"ctime_ns": t}
            if mode is not None:
                changes["mode"] = stat.S_IFMT(e.mode) | (mode & 0o7777)
            if uid is not None:
                changes["uid"] = uid
            if gid is not None:
                changes["gid"] = gid
            if mtime_ns is not None:
                changes["mtime_ns"] = mtime_ns
            if size is not None:
                if e.is_dir:
                    raise FsError(errno.EISDIR, "is a directory")
                if not e.is_file:
                    raise FsError(errno.EINVAL, "not a regular file")
                if size > MAX_FILE_SIZE:  # (before any state is made for it)
                    raise FsError(errno.EFBIG, f"size {size} is above the maximum file size, {MAX_FILE_SIZE}")
                if nowait:
                    raise WouldBlock  # (a truncate may need a block of the stored version)
                self.wb.content(node).truncate(size)
                changes["mtime_ns"] = mtime_ns if mtime_ns is not None else t
            self.wb.change_meta(node, replace(e, **changes), nowait)
            if size is not None and fh is None and node.content is not None and node.content.changed:
                # truncate() by path is done when it returns, even while a
                # descriptor is open (or its release has yet to reach us,
                # which comes after close() returned): upload now.
                self.wb.upload(node)
            if node.opens == 0:
                self.wb.drop_content(node)
            return self.attr(node)

    # -- xattrs -----------------------------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        node = self.nodes.get(ino)
        value = node.entry.xattrs.get(name)
        if value is None:
            raise FsError(errno.ENODATA, "no such attribute")
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self.nodes.get(ino).entry.xattrs)

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.opts.check_writable()
        if not name.startswith(XATTR_NAMESPACES):
            raise FsError(errno.ENOTSUP, "only user., trusted. and security. attributes are supported")
        if len(name) > 255:
            raise FsError(errno.ERANGE, "attribute name too long")
        if len(value) > XATTR_SIZE_MAX:
            raise FsError(errno.E2BIG, "attribute value too large")

        def put(xattrs: dict[bytes, bytes]) -> None:
            xattrs[name] = bytes(value)
            if sum(len(k) + len(v) for k, v in xattrs.items()) > XATTR_TOTAL_MAX:
                raise FsError(errno.ENOSPC, f"an entry's attributes are limited to {XATTR_TOTAL_MAX} bytes in all")

        self._change_xattrs(ino, put)

    def removexattr(self, ino: int, name: bytes) -> None:
        self.opts.check_writable()
        node = self.nodes.get(ino)
        if name not in node.entry.xattrs:
            raise FsError(errno.ENODATA, "no such attribute")
        self._change_xattrs(ino, lambda x: x.pop(name))

    def _change_xattrs(self, ino: int, change: Callable[[dict[bytes, bytes]], object]) -> None:
        node = self.nodes.get(ino)
        with node.lock:
            xattrs = dict(node.entry.xattrs)
            change(xattrs)
            self.wb.change_meta(node, replace(node.entry, xattrs=xattrs, ctime_ns=now_ns()))

    # -- whole filesystem -------------------------------------------------------------

    def statfs(self) -> dict:
        bs = self.vol.layout.block_size
        total = (1 << 50) // bs
        return {
            "bsize": bs,
            "frsize": bs,
            "blocks": total,
            "bfree": total,
            "bavail": total,
            "files": 1 << 32,
            "ffree": 1 << 31,
            "favail": 1 << 31,
            "namemax": 255,
        }
