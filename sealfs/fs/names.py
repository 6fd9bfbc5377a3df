"""Names: lookup, mkdir, symlink, readlink, unlink, rmdir, rename.

A file created here and not yet stored (see :meth:`Files.create`) is
answered for from memory by lookup, and stored first by any other operation
on its name.  An unlinked or replaced file that is still open keeps its
data at an orphan key until its last handle closes (POSIX
unlink-while-open).
"""

from __future__ import annotations

import contextlib
import errno
import stat

from ..errors import FsError
from ..volume import KIND_FILE, Entry, Volume, check_name
from .attrs import Attr, Attributes
from .nodes import Ctx, Node, NodeTable, Options
from .writeback import Writeback

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def new_owner(parent: Entry, mode: int, ctx: Ctx, is_dir: bool) -> tuple[int, int, int]:
    """(mode, uid, gid) of a new entry in directory ``parent``: a
    set-group-ID directory gives its group (and, to a new directory, the bit)."""
    gid = ctx.gid
    if parent.mode & stat.S_ISGID:
        gid = parent.gid
        if is_dir:
            mode |= stat.S_ISGID
    return mode, ctx.uid, gid


class Namespace:
    def __init__(self, vol: Volume, opts: Options, nodes: NodeTable, writeback: Writeback, attrs: Attributes):
        self.vol = vol
        self.opts = opts
        self.nodes = nodes
        self.wb = writeback
        self.attrs = attrs

    def lookup(self, parent: int, name: bytes, ctx: Ctx) -> Attr:
        pnode = self.nodes.get(parent)
        if name in (b".", b".."):
            node = pnode if name == b"." else self.nodes.get(pnode.parent)
            self.nodes.incref(node.ino)
        else:
            pnode.need_dir()
            if len(name) > 255:
                raise FsError(errno.ENAMETOOLONG, "name too long")
            with self.nodes.lock:
                node = self.nodes.unstored.get((pnode.entry.id, name))
                if node is not None:
                    node.lookups += 1
            if node is None:
                read_at = self.nodes.tick()
                node = self.nodes.remember(self.vol.lookup(pnode.entry.id, name), parent, lookups=1, read_at=read_at)
        return self.attrs.counted(node)

    def child_exists(self, parent: int, name: bytes) -> bool:
        """Whether directory ``parent`` has an entry ``name`` (a file created
        here and not yet stored, or one in the store)."""
        pnode = self.nodes.get(parent)
        pnode.need_dir()
        if self.nodes.unstored_node(pnode.entry.id, name) is not None:
            return True
        try:
            self.vol.lookup(pnode.entry.id, name)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        self.opts.check_writable()
        pnode = self.nodes.get(parent)
        pnode.need_dir()
        mode, uid, gid = new_owner(pnode.entry, mode, ctx, True)
        with pnode.lock:
            entry = self.vol.mkdir(pnode.entry.id, check_name(name), mode, uid, gid)
        node = self.nodes.remember(entry, parent, lookups=1)
        node.subdirs = 0
        self.wb.touch_dir(pnode, +1)
        return self.attrs.counted(node)

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Attr:
        self.opts.check_writable()
        pnode = self.nodes.get(parent)
        pnode.need_dir()
        _, uid, gid = new_owner(pnode.entry, 0o777, ctx, False)
        with pnode.lock:
            entry = self.vol.symlink(pnode.entry.id, check_name(name), target, uid, gid)
        node = self.nodes.remember(entry, parent, lookups=1)
        self.wb.touch_dir(pnode)
        return self.attrs.counted(node)

    def readlink(self, ino: int) -> bytes:
        node = self.nodes.get(ino)
        if not node.entry.is_link:
            raise FsError(errno.EINVAL, "not a symbolic link")
        with node.lock:
            return self.vol.readlink(node.entry)

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        raise FsError(errno.EPERM, "hard links are not supported")

    def _child(self, pnode: Node, name: bytes) -> Entry:
        """The stored entry of ``name`` in ``pnode`` (a file created here
        and not yet stored is stored first)."""
        name = check_name(name)
        node = self.nodes.unstored_node(pnode.entry.id, name)
        if node is not None:
            with node.lock:
                self.wb.upload(node)
        return self.vol.lookup(pnode.entry.id, name)

    def _no_unstored_in(self, d: Entry) -> None:
        """ENOTEMPTY if files created here in directory ``d`` are not stored yet."""
        with self.nodes.lock:
            if any(pid == d.id for pid, _ in self.nodes.unstored):
                raise FsError(errno.ENOTEMPTY, "directory not empty")

    def unlink(self, parent: int, name: bytes, ctx: Ctx) -> None:
        self.opts.check_writable()
        pnode = self.nodes.get(parent)
        pnode.need_dir()
        with pnode.lock:
            entry = self._child(pnode, name)
            if entry.is_dir:
                raise FsError(errno.EISDIR, "is a directory")
            self._drop_entry(entry)
        self.wb.touch_dir(pnode)

    def _drop_entry(self, entry: Entry) -> None:
        """Remove ``entry``'s name.  An open file keeps its data at an
        orphan key until its last handle closes (POSIX unlink-while-open).
        Decided under the node's lock, so that no open() slips in between."""
        node = self.nodes.node_of(entry)
        if node is None:
            self.vol.remove(entry)
            return
        with node.lock:
            if node.opens > 0 and entry.kind == KIND_FILE:
                if node.content is not None and node.content.changed:
                    self.wb.upload(node)
                orphan = self.vol.orphan(node.entry)
                self.nodes.stored(node, orphan)
                node.orphan = True
                if node.content is not None:
                    node.content.rebase(orphan)
                return
            self.vol.remove(entry)
            self._removed(node)

    def _removed(self, node: Node) -> None:
        """``node``'s object is gone (caller holds its lock): opening or
        changing it from now on fails (see :meth:`Node.check_live`)."""
        node.orphan = True
        self.wb.drop_content(node)
        node.meta_dirty = False

    def rmdir(self, parent: int, name: bytes, ctx: Ctx) -> None:
        self.opts.check_writable()
        pnode = self.nodes.get(parent)
        pnode.need_dir()
        with pnode.lock:
            entry = self._child(pnode, name)
            if not entry.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory")
            self._no_unstored_in(entry)
            # (under the node's lock: flush_metadata must not write its
            # pending times back after the entry is gone)
            self._drop_entry(entry)
        self.wb.touch_dir(pnode, -1)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int, ctx: Ctx) -> None:
        self.opts.check_writable()
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        if flags & ~RENAME_NOREPLACE:
            raise FsError(errno.EINVAL, "unknown rename flags")
        p_old, p_new = self.nodes.get(old_parent), self.nodes.get(new_parent)
        p_old.need_dir()
        p_new.need_dir()
        check_name(new_name)
        first, second = sorted((p_old, p_new), key=lambda n: n.ino) if p_old is not p_new else (p_old, p_old)
        with first.lock, second.lock:
            src = self._child(p_old, old_name)
            try:
                dst: Entry | None = self._child(p_new, new_name)
            except FsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                dst = None
            if dst is not None:
                if flags & RENAME_NOREPLACE:
                    raise FsError(errno.EEXIST, "target exists")
                if dst.key == src.key:
                    return
                if src.is_dir and not dst.is_dir:
                    raise FsError(errno.ENOTDIR, "target is not a directory")
                if dst.is_dir and not src.is_dir:
                    raise FsError(errno.EISDIR, "target is a directory")
                if dst.is_dir:
                    self._no_unstored_in(dst)
                    if not self.vol.is_empty(dst.id):
                        raise FsError(errno.ENOTEMPTY, "target directory not empty")
            gone = self.nodes.node_of(dst) if dst is not None else None
            # The target's node stays locked until it is replaced: an open()
            # of it either comes first (and keeps its data as an orphan) or
            # finds it removed.
            with gone.lock if gone is not None else contextlib.nullcontext():
                if gone is not None and gone.opens > 0 and dst.is_file:
                    self._drop_entry(dst)  # keep the open file's data as an orphan
                    dst = gone = None
                node = self.nodes.node_of(src)
                if node is not None:
                    with node.lock:
                        if node.content is not None and node.content.changed:
                            self.wb.upload(node)
                        current = node.entry if node.entry.key == src.key else src
                        moved = self.vol.rename(current, p_new.entry.id, new_name, replace_entry=dst)
                        self.nodes.stored(node, moved)
                        node.parent = p_new.ino
                        if node.content is not None:
                            node.content.rebase(moved)
                else:
                    self.vol.rename(src, p_new.entry.id, new_name, replace_entry=dst)
                if gone is not None:
                    self._removed(gone)
        moved_dir = 1 if src.is_dir else 0
        replaced_dir = 1 if dst is not None and dst.is_dir else 0
        if p_new is p_old:
            self.wb.touch_dir(p_old, -replaced_dir)
        else:
            self.wb.touch_dir(p_old, -moved_dir)
            self.wb.touch_dir(p_new, moved_dir - replaced_dir)
