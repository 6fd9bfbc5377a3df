"""The filesystem core: FUSE-shaped operations over a :class:`Volume`.

It never imports pyfuse3 or trio.  Every method is blocking, thread-safe,
takes inode numbers and plain values, and raises
:class:`~sealfs.errors.FsError` (or another SealfsError, which the adapter
maps to EIO) — so it can be tested without a mount.

What it keeps in memory:

* **nodes**: one per inode the kernel knows (lookup counts as FUSE defines
  them), keyed by the entry id so an inode survives renames;
* **open contents**: a :class:`FileContent` per regular file with open
  handles, shared by its handles; data is uploaded at flush/fsync/release
  (close-to-open consistency) and revalidated against the stored etag at
  open;
* **directory snapshots** for readdir (stable offsets while a handle is
  open);
* **pending directory times**: the mtime/ctime of directories changed by
  create/unlink/rename, written back by :meth:`flush_metadata` (called
  periodically and at unmount) rather than one store write per change.

Locking: ``_lock`` guards the tables; each node has its own lock for its
contents and metadata.  Lock order: directory nodes (lower inode first),
then the node being changed, then ``_lock`` (only briefly).

**nowait.**  The requests a program sends most (getattr, create, read from
cached blocks, write into memory, setattr of a file being written, flush
and release of a handle with nothing to upload) are often answered from
memory.  With ``nowait=True`` those methods answer only if
they can without waiting (for a node lock another thread holds, the store
or the disk), and otherwise raise WouldBlock before changing anything: the
adapter tries them on its event loop first and hands only the rest to a
worker thread, saving two thread switches per request.  (``_lock`` and the
block cache's lock are only ever held briefly, so they are simply taken.)
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..codec.blocks import MAX_FILE_SIZE
from ..errors import FsError, NotFound, PreconditionFailed, SealfsError, WouldBlock
from ..volume import KIND_FILE, ROOT_ID, Entry, Volume, check_name, now_ns
from .cache import BlockCache, block_key
from .content import DirtyBudget, FileContent

log = logging.getLogger(__name__)

ROOT_INO = 1
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_SIZE_MAX = 65536
#: The dirty blocks in memory of all files together: this many times
#: dirty_size (see DirtyBudget).
DIRTY_TOTAL_FACTOR = 4
#: All xattrs of one entry together, names and values: a bound on what one
#: entry costs in memory wherever it is held (nodes, listings).
XATTR_TOTAL_MAX = 2 * 1024 * 1024
#: Files up to this size opened for reading are read whole at open (in the
#: request that revalidates them).
OPEN_READ_BYTES = 256 * 1024
#: Entries answered per readdir call (the kernel asks again for more).
READDIR_PAGE = 256
#: xattr namespaces stored as given; others are refused (ENOTSUP).
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")


@contextlib.contextmanager
def _holding(lock: threading.RLock, nowait: bool):
    """``with lock``, or WouldBlock if ``nowait`` and another thread holds it."""
    if not lock.acquire(blocking=not nowait):
        raise WouldBlock
    try:
        yield
    finally:
        lock.release()


def without_setid(mode: int) -> int:
    """``mode`` less what a change by an unprivileged user clears: the
    set-user-id bit, and set-group-id where group-execute is set (without
    it, the bit means mandatory locking and stays)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


def conflict_name(name: bytes, tag: str) -> bytes:
    """``report.txt`` -> ``report.conflict-TAG.txt`` (the extension kept
    last, so programs still know the type), within NAME_MAX."""
    stem, _, ext = name.rpartition(b".")
    if not stem or len(ext) > 16:
        stem, ext = name, b""
    suffix = b".conflict-" + tag.encode() + (b"." + ext if ext else b"")
    return stem[: 255 - len(suffix)] + suffix


@dataclass(frozen=True)
class Ctx:
    """Who is asking: from the FUSE request."""

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


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


@dataclass
class Options:
    cache_bytes: int = 256 * 1024 * 1024
    dirty_bytes: int = 64 * 1024 * 1024
    cache_dir: str = "/var/cache/sealfs"
    read_only: bool = False


@dataclass
class Node:
    ino: int
    entry: Entry
    parent: int
    lookups: int = 0
    opens: int = 0
    writers: int = 0
    content: FileContent | None = None
    subdirs: int | None = None
    #: Metadata changed in memory only (written with the next upload, or
    #: by flush_metadata for directories).
    meta_dirty: bool = False
    #: Unlinked while open: the object now lives at an orphan key.
    orphan: bool = False
    #: Created here and not yet in the store (see Filesystem.create).
    unstored: bool = False
    #: When (on ``Filesystem._clock``) this mount last wrote the object: a
    #: store read begun before that may return the version it replaced.
    written: int = 0
    #: Changes were discarded (their upload failed): the kernel's pages and
    #: attributes of the file may still show them, so the next open drops them.
    discarded: bool = False
    #: The last error writing a directory's times (logged once).
    meta_error: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass
class Handle:
    node: Node
    writable: bool
    append: bool


class Filesystem:
    def __init__(self, vol: Volume, options: Options | None = None):
        self.vol = vol
        # As on a local filesystem: what close() stored survives a crash of
        # the daemon, and fsync() makes it survive a power loss too.
        vol.store.defer_sync()
        self.opts = options or Options()
        self.cache = BlockCache(self.opts.cache_bytes)
        self.dirty_budget = DirtyBudget(DIRTY_TOTAL_FACTOR * self.opts.dirty_bytes)
        self._lock = threading.Lock()
        root = vol.root()
        self._nodes: dict[int, Node] = {ROOT_INO: Node(ROOT_INO, root, ROOT_INO, lookups=1)}
        self._by_id: dict[bytes, int] = {ROOT_ID: ROOT_INO}
        self._next_ino = ROOT_INO + 1
        self._handles: dict[int, Handle] = {}
        #: readdir handles: (inode, listing, when the listing was read).
        self._dirs: dict[int, tuple[int, list[Entry], int]] = {}
        #: Second names of a file id (see _is_twin): key -> inode.
        self._twins: dict[str, int] = {}
        #: Files created here and not yet stored, by (directory id, name).
        self._unstored: dict[tuple[bytes, bytes], Node] = {}
        #: Orders this mount's store writes against its store reads.
        self._clock = itertools.count(1)
        self._next_fh = 1
        self.spool_dir = os.path.join(self.opts.cache_dir, vol.config.volume_id.hex())

    # -- nodes ----------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            raise FsError(errno.ESTALE, f"inode {ino} is not known")
        return node

    def _remember(self, entry: Entry, parent: int, lookups: int = 0, read_at: int | None = None) -> Node:
        """The node for ``entry`` (reusing its inode if the id is known),
        with ``lookups`` added to its lookup count in the same step: a node
        on its way to the kernel must not be dropped by a forget meanwhile.
        ``read_at``: when the store read that gave ``entry`` began (None:
        ``entry`` was just written by this mount)."""
        twin = not entry.is_dir and self._is_twin(entry)
        with self._lock:
            if twin:
                node = self._twin_node(entry)
                ino = node.ino if node is not None else None
            else:
                ino = self._by_id.get(entry.id)
            if ino is not None:
                node = self._nodes[ino]
                fresh = read_at is None or read_at > node.written
                if node.content is None and not node.meta_dirty and fresh:
                    # Fresh from the store.  (Not only when the etag changed:
                    # on S3 a metadata-only copy keeps the content's etag.)
                    if node.entry.etag != entry.etag or node.entry.key != entry.key:
                        node.subdirs = None
                    node.entry = entry
                node.parent = parent
                node.lookups += lookups
                return node
            ino = self._next_ino
            self._next_ino += 1
            node = Node(ino, entry, parent, lookups=lookups)
            self._nodes[ino] = node
            if twin:
                self._twins[entry.key] = ino
            else:
                self._by_id[entry.id] = ino
            return node

    def _twin_node(self, entry: Entry) -> Node | None:
        """The twin node registered for ``entry``'s key, if it still is that
        entry's (caller holds ``_lock``); a stale registration is dropped."""
        ino = self._twins.get(entry.key)
        node = self._nodes.get(ino) if ino is not None else None
        if node is not None and node.entry.key == entry.key and node.entry.id == entry.id and not node.orphan:
            return node
        self._twins.pop(entry.key, None)
        return None

    def _is_twin(self, entry: Entry) -> bool:
        """Whether file ``entry`` is a second name of a file id this mount
        knows under another key that still exists: what a crash in the
        middle of a file rename leaves (the copy made, the old name not yet
        removed).  The two names are independent files from then on, so
        they get their own nodes.  (If the other key is gone, the file was
        renamed by another mount: the same file.)"""
        with self._lock:
            if self._twin_node(entry) is not None:
                return True
            ino = self._by_id.get(entry.id)
            node = self._nodes.get(ino) if ino is not None else None
            if node is None or node.entry.key == entry.key or node.orphan or node.unstored:
                return False
            other = node.entry.key
        try:
            self.vol.store.head(other)
        except NotFound:
            return False
        return True

    def _stored(self, node: Node, entry: Entry) -> None:
        """``entry`` is what this mount just wrote for ``node``."""
        self._forget_unstored(node)
        node.entry = entry
        node.written = next(self._clock)

    def _forget_unstored(self, node: Node) -> None:
        """``node`` is in the store now, or never will be (caller holds its lock)."""
        if node.unstored:
            node.unstored = False
            with self._lock:
                self._unstored.pop((node.entry.parent_id, node.entry.name), None)

    def _attr(self, node: Node) -> Attr:
        e = node.entry
        size = node.content.size if node.content is not None else e.size
        if e.is_dir:
            if node.subdirs is None:
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

    def incref(self, ino: int, n: int = 1) -> None:
        with self._lock:
            self._nodes[ino].lookups += n

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        with self._lock:
            for ino, n in items:
                node = self._nodes.get(ino)
                if node is None:
                    continue
                node.lookups -= n
                self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        """Caller holds ``_lock``."""
        if node.ino != ROOT_INO and node.lookups <= 0 and node.opens <= 0 and not node.meta_dirty:
            self._nodes.pop(node.ino, None)
            if self._by_id.get(node.entry.id) == node.ino:
                del self._by_id[node.entry.id]
            if self._twins.get(node.entry.key) == node.ino:
                del self._twins[node.entry.key]

    def path_of(self, ino: int, name: bytes | None = None) -> str:
        """The plaintext path of inode ``ino`` from the volume root (``/``
        for the root), with ``name`` appended when given: what the access
        policy matches.  Built from the parent chain of the nodes (the
        kernel holds a lookup on every ancestor of a node it knows, and
        renames update the chain).  Raises FsError(ESTALE) if a link of
        the chain is unknown, so a policy check fails closed."""
        parts = [] if name is None else [name]
        with self._lock:
            node = self._nodes.get(ino)
            for _ in range(1 << 16):
                if node is None or node.ino == ROOT_INO:
                    break
                parts.append(node.entry.name)
                node = self._nodes.get(node.parent)
            else:
                node = None  # a loop: cannot happen, but never spin
        if node is None:
            raise FsError(errno.ESTALE, f"the path of inode {ino} is not known")
        return "/" + "/".join(os.fsdecode(p) for p in reversed(parts))

    def child_exists(self, parent: int, name: bytes) -> bool:
        """Whether directory ``parent`` has an entry ``name`` (a file created
        here and not yet stored, or one in the store)."""
        pnode = self._node(parent)
        self._need_dir(pnode)
        with self._lock:
            if (pnode.entry.id, name) in self._unstored:
                return True
        try:
            self.vol.lookup(pnode.entry.id, name)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def entry_attr(self, entry: Entry, parent: int, read_at: int) -> Attr:
        """Attributes of ``entry`` (read from the store at ``read_at``),
        registering its node with one lookup count for the kernel (the
        adapter gives it back with :meth:`forget` if the kernel does not
        take the entry)."""
        return self._counted(self._remember(entry, parent, lookups=1, read_at=read_at))

    # -- lookups and attributes ------------------------------------------------------

    def lookup(self, parent: int, name: bytes, ctx: Ctx) -> Attr:
        pnode = self._node(parent)
        if name in (b".", b".."):
            node = pnode if name == b"." else self._node(pnode.parent)
            self.incref(node.ino)
        else:
            self._need_dir(pnode)
            if len(name) > 255:
                raise FsError(errno.ENAMETOOLONG, "name too long")
            with self._lock:
                node = self._unstored.get((pnode.entry.id, name))
                if node is not None:
                    node.lookups += 1
            if node is None:
                read_at = next(self._clock)
                node = self._remember(self.vol.lookup(pnode.entry.id, name), parent, lookups=1, read_at=read_at)
        return self._counted(node)

    def getattr(self, ino: int, nowait: bool = False) -> Attr:
        node = self._node(ino)
        with _holding(node.lock, nowait):
            if nowait and node.entry.is_dir and node.subdirs is None:
                raise WouldBlock  # (counted in the store)
            return self._attr(node)

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
        node = self._node(ino)
        self._writable()
        with _holding(node.lock, nowait):
            if nowait and not (size is None and node.writers > 0 and self._to_upload(node)):
                raise WouldBlock  # (only a change to go with a pending upload stays in memory)
            self._check_live(node, errno.ENOENT)
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
                content = self._content(node)
                content.truncate(size)
                changes["mtime_ns"] = mtime_ns if mtime_ns is not None else t
            node.entry = replace(e, **changes)
            self._meta_changed(node)
            if size is not None and fh is None and node.content is not None and node.content.changed:
                # truncate() by path is done when it returns, even while a
                # descriptor is open (or its release has yet to reach us,
                # which comes after close() returned): upload now.
                self._upload(node)
            if node.opens == 0:
                self._drop_content(node)
            return self._attr(node)

    def _meta_changed(self, node: Node) -> None:
        """``node.entry`` changed: store it now, or, when content changes
        are pending and a writer will close the file, with that upload."""
        if node.unstored or (node.content is not None and node.content.changed):
            node.meta_dirty = True
            if node.writers == 0:
                self._upload(node)
        else:
            self._store_meta(node)

    def _store_meta(self, node: Node) -> None:
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
        self._stored(node, stored)
        node.meta_dirty = False
        if node.content is not None:
            node.content.rebase(stored)

    def _writable(self) -> None:
        if self.opts.read_only:
            raise FsError(errno.EROFS, "read-only mount")

    def _need_dir(self, node: Node) -> None:
        if not node.entry.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")

    # -- directory times --------------------------------------------------------------

    def _touch_dir(self, pnode: Node, subdirs_delta: int = 0) -> None:
        t = now_ns()
        with pnode.lock:
            pnode.entry = replace(pnode.entry, mtime_ns=t, ctime_ns=t)
            pnode.meta_dirty = True
            if pnode.subdirs is not None:
                pnode.subdirs += subdirs_delta

    def flush_metadata(self) -> None:
        """Write the pending times of directories."""
        with self._lock:
            pending = [n for n in self._nodes.values() if n.meta_dirty and n.entry.is_dir]
        for node in pending:
            with node.lock:
                if not node.meta_dirty:
                    continue
                try:
                    self._store_meta(node)
                except FsError:
                    node.meta_dirty = False  # the directory is gone
                except Exception as exc:
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
            with self._lock:
                self._maybe_drop(node)

    # -- namespace ----------------------------------------------------------------------

    def _new_owner(self, pnode: Node, mode: int, ctx: Ctx, is_dir: bool) -> tuple[int, int, int]:
        gid = ctx.gid
        if pnode.entry.mode & stat.S_ISGID:
            gid = pnode.entry.gid
            if is_dir:
                mode |= stat.S_ISGID
        return mode, ctx.uid, gid

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        self._writable()
        pnode = self._node(parent)
        self._need_dir(pnode)
        mode, uid, gid = self._new_owner(pnode, mode, ctx, True)
        with pnode.lock:
            entry = self.vol.mkdir(pnode.entry.id, check_name(name), mode, uid, gid)
        node = self._remember(entry, parent, lookups=1)
        node.subdirs = 0
        self._touch_dir(pnode, +1)
        return self._counted(node)

    def _counted(self, node: Node) -> Attr:
        """Attributes of a node that holds a lookup count for the kernel;
        if they cannot be had, the kernel gets an error, not the node, so
        the count is given back."""
        try:
            with node.lock:
                return self._attr(node)
        except BaseException:
            self.forget([(node.ino, 1)])
            raise

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Attr:
        self._writable()
        pnode = self._node(parent)
        self._need_dir(pnode)
        _, uid, gid = self._new_owner(pnode, 0o777, ctx, False)
        with pnode.lock:
            entry = self.vol.symlink(pnode.entry.id, check_name(name), target, uid, gid)
        node = self._remember(entry, parent, lookups=1)
        self._touch_dir(pnode)
        return self._counted(node)

    def readlink(self, ino: int) -> bytes:
        node = self._node(ino)
        if not node.entry.is_link:
            raise FsError(errno.EINVAL, "not a symbolic link")
        with node.lock:
            return self.vol.readlink(node.entry)

    def mknod(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        if stat.S_ISREG(mode):
            attr, fh = self.create(parent, name, mode, os.O_WRONLY, ctx)
            try:
                self.release(fh)  # (stores the empty file)
            except BaseException:
                self.forget([(attr.ino, 1)])  # the kernel gets an error, not the node
                raise
            return attr
        raise FsError(errno.EPERM, "sealfs stores only files, directories and symlinks (no FIFOs, sockets or devices)")

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        raise FsError(errno.EPERM, "hard links are not supported")

    def _child(self, pnode: Node, name: bytes) -> Entry:
        """The stored entry of ``name`` in ``pnode`` (a file created here
        and not yet stored is stored first)."""
        name = check_name(name)
        with self._lock:
            node = self._unstored.get((pnode.entry.id, name))
        if node is not None:
            with node.lock:
                self._upload(node)
        return self.vol.lookup(pnode.entry.id, name)

    def _no_unstored_in(self, d: Entry) -> None:
        """ENOTEMPTY if files created here in directory ``d`` are not stored yet."""
        with self._lock:
            if any(pid == d.id for pid, _ in self._unstored):
                raise FsError(errno.ENOTEMPTY, "directory not empty")

    def _node_of(self, entry: Entry) -> Node | None:
        """The node of stored ``entry``, if this mount knows it (a file's
        node only under the same key: another key is a twin, or stale)."""
        with self._lock:
            node = self._twin_node(entry)
            if node is None:
                ino = self._by_id.get(entry.id)
                node = self._nodes.get(ino) if ino is not None else None
        if node is not None and not entry.is_dir and node.entry.key != entry.key:
            return None
        return node

    def unlink(self, parent: int, name: bytes, ctx: Ctx) -> None:
        self._writable()
        pnode = self._node(parent)
        self._need_dir(pnode)
        with pnode.lock:
            entry = self._child(pnode, name)
            if entry.is_dir:
                raise FsError(errno.EISDIR, "is a directory")
            self._drop_entry(entry)
        self._touch_dir(pnode)

    def _drop_entry(self, entry: Entry) -> None:
        """Remove ``entry``'s name.  An open file keeps its data at an
        orphan key until its last handle closes (POSIX unlink-while-open).
        Decided under the node's lock, so that no open() slips in between."""
        node = self._node_of(entry)
        if node is None:
            self.vol.remove(entry)
            return
        with node.lock:
            if node.opens > 0 and entry.kind == KIND_FILE:
                if node.content is not None and node.content.changed:
                    self._upload(node)
                orphan = self.vol.orphan(node.entry)
                self._stored(node, orphan)
                node.orphan = True
                if node.content is not None:
                    node.content.rebase(orphan)
                return
            self.vol.remove(entry)
            self._removed(node)

    def _removed(self, node: Node) -> None:
        """``node``'s object is gone (caller holds its lock): opening or
        changing it from now on fails (see :meth:`_check_live`)."""
        node.orphan = True
        self._drop_content(node)
        node.meta_dirty = False

    @staticmethod
    def _check_live(node: Node, code: int) -> None:
        """Raise ``code`` if ``node`` was removed and no handle keeps its
        data (caller holds its lock)."""
        if node.orphan and node.opens == 0:
            raise FsError(code, f"{node.entry.name.decode(errors='replace')} was removed meanwhile")

    def rmdir(self, parent: int, name: bytes, ctx: Ctx) -> None:
        self._writable()
        pnode = self._node(parent)
        self._need_dir(pnode)
        with pnode.lock:
            entry = self._child(pnode, name)
            if not entry.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory")
            self._no_unstored_in(entry)
            # (under the node's lock: flush_metadata must not write its
            # pending times back after the entry is gone)
            self._drop_entry(entry)
        self._touch_dir(pnode, -1)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int, ctx: Ctx) -> None:
        self._writable()
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        if flags & ~RENAME_NOREPLACE:
            raise FsError(errno.EINVAL, "unknown rename flags")
        p_old, p_new = self._node(old_parent), self._node(new_parent)
        self._need_dir(p_old)
        self._need_dir(p_new)
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
            gone = self._node_of(dst) if dst is not None else None
            # The target's node stays locked until it is replaced: an open()
            # of it either comes first (and keeps its data as an orphan) or
            # finds it removed.
            with gone.lock if gone is not None else contextlib.nullcontext():
                if gone is not None and gone.opens > 0 and dst.is_file:
                    self._drop_entry(dst)  # keep the open file's data as an orphan
                    dst = gone = None
                node = self._node_of(src)
                if node is not None:
                    with node.lock:
                        if node.content is not None and node.content.changed:
                            self._upload(node)
                        current = node.entry if node.entry.key == src.key else src
                        moved = self.vol.rename(current, p_new.entry.id, new_name, replace_entry=dst)
                        self._stored(node, moved)
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
            self._touch_dir(p_old, -replaced_dir)
        else:
            self._touch_dir(p_old, -moved_dir)
            self._touch_dir(p_new, moved_dir - replaced_dir)

    # -- directories ----------------------------------------------------------------------

    def opendir(self, ino: int, ctx: Ctx) -> int:
        node = self._node(ino)
        self._need_dir(node)
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._dirs[fh] = (ino, [], 0)
        return fh

    def readdir(self, fh: int, start: int, keep=None) -> list[tuple[bytes, Attr, int]]:
        """Entries from offset ``start`` on as (name, attributes, next
        offset).  The listing is taken once per handle (at offset 0), so
        offsets stay stable across pages.  Each entry comes with a lookup
        count (see :meth:`entry_attr`).  ``keep(name)``, if given, says
        which names the listing holds at all (the others leave no gap in
        the offsets either: names hidden from the caller)."""
        ino, snapshot, read_at = self._dirs[fh]
        node = self._node(ino)
        if start == 0:
            read_at = next(self._clock)
            with self._lock:
                # (before listing: a file stored meanwhile is listed)
                unstored = [n.entry for (pid, _), n in self._unstored.items() if pid == node.entry.id]
                # what this mount read of the directory, unchanged here since
                known = {
                    n.entry.key: n.entry
                    for n in self._nodes.values()
                    if n.entry.parent_id == node.entry.id and n.content is None and not n.meta_dirty
                }
            entries = self.vol.listdir(node.entry.id, on_error=self._bad_entry, known=known.get)
            listed = {e.name for e in entries}
            entries += [e for e in unstored if e.name not in listed]
            entries.sort(key=lambda e: e.name)
            with node.lock:
                node.subdirs = sum(1 for e in entries if e.is_dir)
            snapshot = entries if keep is None else [e for e in entries if keep(e.name)]
            self._dirs[fh] = (ino, snapshot, read_at)
        out: list[tuple[bytes, Attr, int]] = []
        try:
            for i, e in enumerate(snapshot[start : start + READDIR_PAGE], start):
                out.append((e.name, self.entry_attr(e, ino, read_at), i + 1))
        except BaseException:
            self.forget([(attr.ino, 1) for _, attr, _ in out])
            raise
        return out

    def _bad_entry(self, key: str, exc: Exception) -> None:
        log.error("skipping damaged directory entry %s: %s", key, exc)

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------------------

    def _content(self, node: Node) -> FileContent:
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
                budget=self.dirty_budget,
            )
        return node.content

    def _new_handle(self, node: Node, flags: int) -> int:
        acc = flags & os.O_ACCMODE
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = Handle(node, acc != os.O_RDONLY, bool(flags & os.O_APPEND))
            node.opens += 1
            node.writers += acc != os.O_RDONLY
        return fh

    def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx, nowait: bool = False
    ) -> tuple[Attr, int]:
        self._writable()
        pnode = self._node(parent)
        self._need_dir(pnode)
        mode, uid, gid = self._new_owner(pnode, mode, ctx, False)
        # The file is stored at its first flush, in one write with its
        # contents (If-None-Match: if another mount took the name meanwhile,
        # it becomes a conflict copy): half the store writes.  Until then
        # this mount answers for the name (lookup, readdir; the kernel
        # refuses O_EXCL creates of it), and any other operation on the name
        # stores the file first (_child).
        entry = self.vol.new_file_entry(pnode.entry.id, check_name(name), mode, uid, gid)
        with _holding(pnode.lock, nowait):  # (all in memory: WouldBlock only if another thread has the directory)
            node = self._remember(entry, parent, lookups=1)
            node.unstored = True
            with self._lock:
                self._unstored[(entry.parent_id, entry.name)] = node
            self._touch_dir(pnode)
            fh = self._new_handle(node, flags)
        return self._counted(node), fh

    def open(self, ino: int, flags: int, ctx: Ctx) -> tuple[int, bool]:
        """Open a file; returns (handle, keep kernel cache)."""
        node = self._node(ino)
        acc = flags & os.O_ACCMODE
        if acc != os.O_RDONLY or flags & os.O_TRUNC:
            self._writable()
        if node.entry.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        keep = True
        with node.lock:
            # Removed (or replaced by a rename) since the kernel looked it
            # up; on ESTALE the kernel looks the name up anew.
            self._check_live(node, errno.ESTALE)
            pending = node.unstored or node.meta_dirty or (node.content is not None and node.content.changed)
            if not node.orphan and not pending:
                # close-to-open: revalidate against the store on every open
                # without local changes (not only the first: the kernel
                # sends RELEASE asynchronously, so an earlier handle may
                # still count here although its file was closed)
                # A small file opened for reading, with no block in the
                # cache, comes whole with its metadata: one store request
                # for the open and the reads after it.
                e = node.entry
                preload = (
                    acc == os.O_RDONLY
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
                # (the same etag with metadata of another version, put
                # back by someone, is another version: its reads fail)
                same = (fresh.etag, fresh.header_hash) == (node.entry.etag, node.entry.header_hash)
                keep = same and not node.discarded
                node.discarded = False
                if not keep:
                    self._drop_content(node)  # cached blocks and stream of the old version
                node.entry = fresh
                if preload and fresh.is_file:
                    self._content(node).preload(fresh, body)
            if flags & os.O_TRUNC:
                # The kernel leaves O_TRUNC to us (atomic_o_trunc), so
                # also what its truncate would do: new times, and no
                # set-id bits after a change by an unprivileged caller.
                t = now_ns()
                mode = node.entry.mode if ctx.uid == 0 else without_setid(node.entry.mode)
                node.entry = replace(node.entry, mode=mode, mtime_ns=t, ctime_ns=t)
                if node.content is not None or node.entry.size:
                    self._content(node).truncate(0)
                    keep = False
                else:
                    self._meta_changed(node)
            fh = self._new_handle(node, flags)
        return fh, keep

    def read(self, fh: int, offset: int, length: int, nowait: bool = False) -> bytes:
        node = self._handles[fh].node
        with _holding(node.lock, nowait):
            try:
                return self._content(node).read(offset, length, nowait)
            except PreconditionFailed as exc:
                # The version this handle reads is gone; never mix versions.
                log.warning("%s; reopen the file to read the new version", exc)
                raise FsError(errno.ESTALE, str(exc)) from None

    def write(self, fh: int, offset: int, data: bytes, nowait: bool = False) -> int:
        h = self._handles[fh]
        node = h.node
        if not h.writable:
            raise FsError(errno.EBADF, "file not open for writing")
        with _holding(node.lock, nowait):
            content = self._content(node)
            if h.append:
                offset = content.size
            n = content.write(offset, data, nowait)
            # (set-user-id/set-group-id bits are cleared by the kernel,
            # which sends a setattr before the write)
            t = now_ns()
            node.entry = replace(node.entry, mtime_ns=t, ctime_ns=t)
            node.meta_dirty = True
            return n

    def _upload(self, node: Node) -> None:
        """Upload a node's changes (caller holds node.lock)."""
        if not self._to_upload(node):
            return
        content = self._content(node)  # (made here only for a file not yet stored: new, so changed)
        if not content.changed:
            self._store_meta(node)
            return
        try:
            self._stored(node, content.upload(node.entry))
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
        except Exception as exc:  # noqa: BLE001 - any failure keeps the changes here
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
        self._drop_content(node)
        self._forget_unstored(node)  # (its entry keeps no etag: see _content, _store_meta)
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
            self.vol.reload(self._node(node.parent).entry)
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

    @staticmethod
    def _to_upload(node: Node) -> bool:
        """Whether :meth:`_upload` has anything to write (caller holds node.lock)."""
        c = node.content
        return node.unstored or (c is not None and (c.changed or node.meta_dirty))

    def flush(self, fh: int, nowait: bool = False) -> None:
        h = self._handles.get(fh)
        if h is None or not h.writable:
            return
        with _holding(h.node.lock, nowait):
            if nowait and self._to_upload(h.node):
                raise WouldBlock
            self._upload(h.node)

    def fsync(self, fh: int) -> None:
        self.flush(fh)
        self.vol.store.sync()

    def fsyncdir(self) -> None:
        self.flush_metadata()
        self.vol.store.sync()

    def release(self, fh: int, nowait: bool = False) -> None:
        h = self._handles.get(fh)
        if h is None:
            return
        node = h.node
        with _holding(node.lock, nowait):
            last_handle = node.opens == 1
            if nowait and not self._quick_release(h, last_handle):
                raise WouldBlock
            with self._lock:
                if self._handles.pop(fh, None) is None:
                    return  # (released meanwhile)
            try:
                if (h.writable or last_handle) and not (node.orphan and last_handle):
                    self._upload(node)
            finally:
                with self._lock:
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
                        self._forget_unstored(node)  # (a new file that could not be stored is gone)
                    self._drop_content(node)
                    if node.orphan:
                        self.vol.remove(node.entry)  # (with its overflow metadata)
                with self._lock:
                    self._maybe_drop(node)

    def _quick_release(self, h: Handle, last_handle: bool) -> bool:
        """Whether releasing ``h`` needs neither the store nor the disk
        (caller holds its node's lock)."""
        node = h.node
        if (h.writable or last_handle) and self._to_upload(node):
            return False
        return not last_handle or (not node.orphan and (node.content is None or node.content.idle))

    def _drop_content(self, node: Node) -> None:
        if node.content is not None:
            node.content.close()
            node.content = None

    # -- xattrs -----------------------------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        node = self._node(ino)
        value = node.entry.xattrs.get(name)
        if value is None:
            raise FsError(errno.ENODATA, "no such attribute")
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self._node(ino).entry.xattrs)

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._writable()
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
        self._writable()
        node = self._node(ino)
        if name not in node.entry.xattrs:
            raise FsError(errno.ENODATA, "no such attribute")
        self._change_xattrs(ino, lambda x: x.pop(name))

    def _change_xattrs(self, ino: int, change) -> None:
        node = self._node(ino)
        with node.lock:
            xattrs = dict(node.entry.xattrs)
            change(xattrs)
            node.entry = replace(node.entry, xattrs=xattrs, ctime_ns=now_ns())
            self._meta_changed(node)

    # -- whole filesystem ------------------------------------------------------------------

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

    def sync_all(self) -> None:
        """Upload everything pending (unmount, SIGTERM)."""
        with self._lock:
            nodes = [n for n in self._nodes.values() if n.content is not None or n.meta_dirty or n.unstored]
        for node in nodes:
            with node.lock:
                try:
                    if node.entry.is_dir:
                        continue
                    self._upload(node)
                except Exception:
                    log.exception("cannot upload %r at shutdown", node.entry.name)
        self.flush_metadata()
        self.vol.store.sync()
