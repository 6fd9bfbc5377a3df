"""Write-back: what nodes hold in memory, and its way into the store.

* **open contents**: a :class:`FileContent` per regular file with open
  handles, shared by its handles; data is uploaded at flush/fsync/release
  (close-to-open consistency) and revalidated against the stored etag at
  open;
* **metadata changes**: stored at once, or with a pending upload of the
  file's contents (one store write for both);
* **conflict copies**: an upload that finds another mount's version in the
  store saves this mount's version beside it;
* **pending directory times**: the mtime/ctime of directories changed by
  create/unlink/rename, written back by :meth:`Writeback.flush_metadata`
  (called periodically and at unmount) rather than one store write per
  change.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from dataclasses import replace

from ..errors import FsError, NotFound, PreconditionFailed, SealfsError, WouldBlock
from ..volume import ROOT_ID, Entry, Volume, now_ns
from .cache import BlockCache
from .content import FileContent
from .nodes import Node, NodeTable, Options
from .spool import DirtyBudget

log = logging.getLogger(__name__)


def conflict_name(name: bytes, tag: str) -> bytes:
    """``report.txt`` -> ``report.conflict-TAG.txt`` (the extension kept
    last, so programs still know the type), within NAME_MAX."""
    stem, _, ext = name.rpartition(b".")
    if not stem or len(ext) > 16:
        stem, ext = name, b""
    suffix = b".conflict-" + tag.encode() + (b"." + ext if ext else b"")
    return stem[: 255 - len(suffix)] + suffix


class Writeback:
    def __init__(
        self, vol: Volume, opts: Options, nodes: NodeTable, cache: BlockCache, budget: DirtyBudget, spool_dir: str
    ):
        self.vol = vol
        self.opts = opts
        self.nodes = nodes
        self.cache = cache
        self.budget = budget
        self.spool_dir = spool_dir

    # -- contents -------------------------------------------------------------------

    def content(self, node: Node) -> FileContent:
        if node.content is None:
            # (a file with no etag was never stored: created here, it lost its
            # name to another mount; what is written to it now becomes
            # another conflict copy at its next flush)
            node.content = FileContent(
                self.vol,
                node.entry,
                self.cache,
                self.spool_dir,
                self.opts.dirty_bytes,
                new=node.unstored or not node.entry.etag,
                budget=self.budget,
            )
        return node.content

    @staticmethod
    def drop_content(node: Node) -> None:
        if node.content is not None:
            node.content.close()
            node.content = None

    @staticmethod
    def to_upload(node: Node) -> bool:
        """Whether :meth:`upload` has anything to write (caller holds node.lock)."""
        c = node.content
        return node.unstored or (c is not None and (c.changed or node.meta_dirty))

    def upload(self, node: Node, nowait: bool = False) -> None:
        """Upload a node's changes (caller holds node.lock)."""
        if not self.to_upload(node):
            return
        if nowait:
            raise WouldBlock  # (the store)
        content = self.content(node)  # (made here only for a file not yet stored: new, so changed)
        if not content.changed:
            self.store_meta(node)
            return
        try:
            self.nodes.stored(node, content.upload(node.entry))
        except PreconditionFailed:
            self._lost_race(node)
        node.meta_dirty = False

    def _lost_race(self, node: Node) -> None:
        """Our upload found another version in the store (another mount
        wrote, renamed or removed the file since we read it).  Theirs stays
        under the name; ours is saved beside it as a conflict copy, and the
        caller's close()/fsync() gets EIO.  If ours cannot be rebuilt (its
        unchanged blocks were only in the replaced version and are no
        longer cached), the changes stay here, and every close fails, until
        the last close drops them with an error in the log."""
        name = node.entry.name.decode(errors="replace")
        try:
            copy = self._save_conflict_copy(node)
        except (SealfsError, OSError) as exc:  # (the store, the spool's disk: the changes stay here)
            log.error(
                "%s was changed by another mount, and this mount's version could not be saved as a "
                "conflict copy (%s); its changes are kept until the file is closed",
                name,
                exc,
            )
            raise FsError(errno.EIO, f"{name!r} was changed by another mount; local changes kept until close") from None
        # Forget our version.  node.entry keeps the etag we started from,
        # so the next open sees the other version and drops the kernel's
        # cached pages of ours.
        self.drop_content(node)
        self.nodes.forget_unstored(node)  # (its entry keeps no etag: see content, store_meta)
        node.meta_dirty = False
        log.warning(
            "%s was changed by another mount; this mount's version was saved as %s", name, copy.decode(errors="replace")
        )
        raise FsError(
            errno.EIO,
            f"{name!r} was changed by another mount; this mount's version is in {copy.decode(errors='replace')!r}",
        )

    def _save_conflict_copy(self, node: Node) -> bytes:
        """Write ``node``'s current contents and metadata as a new file
        next to it (in the root if its directory is gone); the new name."""
        content, e = node.content, node.entry
        parent_id = e.parent_id
        try:
            self.vol.reload(self.nodes.get(node.parent).entry)
        except (FsError, NotFound):
            parent_id = ROOT_ID

        def block(i: int) -> bytes:
            try:
                return content.block(i)
            except PreconditionFailed:
                raise FsError(errno.EIO, "its unchanged blocks were only in the replaced version") from None

        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        for n in range(1, 100):
            cname = conflict_name(e.name, f"{socket.gethostname()}-{stamp}" + (f"-{n}" if n > 1 else ""))
            new = replace(
                self.vol.new_file_entry(parent_id, cname, e.mode, e.uid, e.gid),
                mtime_ns=e.mtime_ns,
                xattrs=dict(e.xattrs),
            )
            try:
                self.vol.write_content(new, content.size, block, if_none_match=True, extents=content.extents())
            except PreconditionFailed:
                continue  # the name is taken
            return cname
        raise FsError(errno.EEXIST, "no free conflict name")

    # -- metadata -------------------------------------------------------------------

    def change_meta(self, node: Node, entry: Entry, nowait: bool = False) -> None:
        """``node``'s metadata becomes ``entry``: stored now, or, when
        content changes are pending and a writer will close the file, with
        that upload (caller holds node.lock)."""
        with_upload = node.unstored or (node.content is not None and node.content.changed)
        if nowait and not (with_upload and node.writers > 0):
            raise WouldBlock  # (a store write)
        node.entry = entry
        if with_upload:
            node.meta_dirty = True
            if node.writers == 0:
                self.upload(node)
        else:
            self.store_meta(node)

    def store_meta(self, node: Node) -> None:
        """Write ``node.entry``'s metadata now (see Volume.set_meta: a new
        version of a file's or symlink's object).
        A directory changed by another mount meanwhile gets ours (the last
        writer wins, as for files) if it still exists; if it was removed,
        it stays removed (ENOENT)."""
        if not node.entry.is_dir and not node.entry.etag:
            # Created here, it lost its name to another mount's file: never
            # put this metadata on that file.
            raise FsError(errno.ESTALE, f"{node.entry.name!r} was created by another mount meanwhile")
        try:
            try:
                stored = self.vol.set_meta(node.entry)
            except PreconditionFailed:
                fresh = self.vol.reload(node.entry)
                if fresh.id != node.entry.id:
                    if not node.entry.is_dir:  # (the kernel looks the name up again)
                        raise FsError(errno.ESTALE, f"{node.entry.name!r} was replaced by another mount") from None
                    raise NotFound("another directory took the name") from None
                # (our metadata on the version stored now: its content)
                stored = self.vol.set_meta(
                    replace(
                        node.entry,
                        etag=fresh.etag,
                        size=fresh.size,
                        sparse=fresh.sparse,
                        object_size=fresh.object_size,
                        header_hash=fresh.header_hash,
                        version=fresh.version,
                    )
                )
        except NotFound:
            raise FsError(errno.ENOENT, "file was removed meanwhile") from None
        self.nodes.stored(node, stored)
        node.meta_dirty = False
        if node.content is not None:
            node.content.rebase(stored)

    # -- directory times ------------------------------------------------------------

    @staticmethod
    def touch_dir(pnode: Node, subdirs_delta: int = 0) -> None:
        t = now_ns()
        with pnode.lock:
            pnode.entry = replace(pnode.entry, mtime_ns=t, ctime_ns=t)
            pnode.meta_dirty = True
            if pnode.subdirs is not None:
                pnode.subdirs += subdirs_delta

    def flush_metadata(self) -> None:
        """Write the pending times of directories."""
        with self.nodes.lock:
            pending = [n for n in self.nodes.nodes.values() if n.meta_dirty and n.entry.is_dir]
        for node in pending:
            with node.lock:
                if not node.meta_dirty:
                    continue
                try:
                    self.store_meta(node)
                except FsError:
                    node.meta_dirty = False  # the directory is gone
                except Exception as exc:  # (the boundary of the timer's flush: no request to answer)
                    # One line per failure, not one a second while the
                    # store refuses writes (a traceback only for a bug).
                    if node.meta_error != str(exc):
                        node.meta_error = str(exc)
                        log.error(
                            "cannot write the times of directory %s (retried every second): %s",
                            node.entry.name.decode(errors="replace") or "/",
                            exc,
                            exc_info=not isinstance(exc, SealfsError),
                        )
                else:
                    node.meta_error = ""
            with self.nodes.lock:
                self.nodes.maybe_drop(node)

    def fsyncdir(self) -> None:
        self.flush_metadata()
        self.vol.sync()

    def sync_all(self) -> None:
        """Upload everything pending (unmount, SIGTERM)."""
        with self.nodes.lock:
            nodes = [n for n in self.nodes.nodes.values() if n.content is not None or n.meta_dirty or n.unstored]
        for node in nodes:
            with node.lock:
                try:
                    if node.entry.is_dir:
                        continue
                    self.upload(node)
                except Exception:  # (the boundary of the shutdown: one file must not stop the others)
                    log.exception("cannot upload %r at shutdown", node.entry.name)
        self.flush_metadata()
        self.vol.sync()
