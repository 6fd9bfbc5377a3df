"""The inode table: one node per inode the kernel knows, and their locks.

A node is what the core keeps of an entry while the kernel holds its inode
(lookup counts as FUSE defines them) or a handle keeps it open.  Nodes are
keyed by the entry id, so an inode survives renames; a second name of a
file id that a crash left behind (a *twin*) gets a node of its own.  Files
created here and not yet stored are in the table too, by directory and name.

Locking: the table's ``lock`` guards the tables and the counts of every node
(lookups, opens, writers); each node has its own ``lock`` for its contents
and metadata.  Lock order: directory nodes (lower inode first), then the
node being changed, then the table's lock (only briefly).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import FsError, WouldBlock
from ..volume import ROOT_ID, Entry, Volume
from .content import FileContent

ROOT_INO = 1


@contextlib.contextmanager
def holding(lock: threading.RLock, nowait: bool):
    """``with lock``, or WouldBlock if ``nowait`` and another thread holds it."""
    if not lock.acquire(blocking=not nowait):
        raise WouldBlock
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class Ctx:
    """Who is asking: from the FUSE request."""

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


@dataclass
class Options:
    cache_bytes: int = 256 * 1024 * 1024
    dirty_bytes: int = 64 * 1024 * 1024
    cache_dir: str = "/var/cache/sealfs"
    read_only: bool = False

    def check_writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS, "read-only mount")


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
    #: Created here and not yet in the store (see Files.create).
    unstored: bool = False
    #: When (on ``NodeTable.tick``) this mount last wrote the object: a
    #: store read begun before that may return the version it replaced.
    written: int = 0
    #: Changes were discarded (their upload failed): the kernel's pages and
    #: attributes of the file may still show them, so the next open drops them.
    discarded: bool = False
    #: The last error writing a directory's times (logged once).
    meta_error: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock)

    def check_live(self, code: int) -> None:
        """Raise ``code`` if the node was removed and no handle keeps its
        data (caller holds its lock)."""
        if self.orphan and self.opens == 0:
            raise FsError(code, f"{self.entry.name.decode(errors='replace')} was removed meanwhile")

    def need_dir(self) -> None:
        if not self.entry.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")


class NodeTable:
    def __init__(self, vol: Volume):
        self.vol = vol
        self.lock = threading.Lock()
        self.nodes: dict[int, Node] = {ROOT_INO: Node(ROOT_INO, vol.root(), ROOT_INO, lookups=1)}
        self._by_id: dict[bytes, int] = {ROOT_ID: ROOT_INO}
        self._next_ino = ROOT_INO + 1
        #: Second names of a file id (see _is_twin): key -> inode.
        self._twins: dict[str, int] = {}
        #: Files created here and not yet stored, by (directory id, name).
        self.unstored: dict[tuple[bytes, bytes], Node] = {}
        #: Orders this mount's store writes against its store reads.
        self._clock = itertools.count(1)

    def tick(self) -> int:
        """A time on this mount's clock (see ``Node.written``)."""
        return next(self._clock)

    def get(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(errno.ESTALE, f"inode {ino} is not known")
        return node

    def remember(self, entry: Entry, parent: int, lookups: int = 0, read_at: int | None = None) -> Node:
        """The node for ``entry`` (reusing its inode if the id is known),
        with ``lookups`` added to its lookup count in the same step: a node
        on its way to the kernel must not be dropped by a forget meanwhile.
        ``read_at``: when the store read that gave ``entry`` began (None:
        ``entry`` was just written by this mount)."""
        twin = not entry.is_dir and self._is_twin(entry)
        with self.lock:
            if twin:
                node = self._twin_node(entry)
                ino = node.ino if node is not None else None
            else:
                ino = self._by_id.get(entry.id)
            if ino is not None:
                node = self.nodes[ino]
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
            self.nodes[ino] = node
            if twin:
                self._twins[entry.key] = ino
            else:
                self._by_id[entry.id] = ino
            return node

    def _twin_node(self, entry: Entry) -> Node | None:
        """The twin node registered for ``entry``'s key, if it still is that
        entry's (caller holds ``lock``); a stale registration is dropped."""
        ino = self._twins.get(entry.key)
        node = self.nodes.get(ino) if ino is not None else None
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
        with self.lock:
            if self._twin_node(entry) is not None:
                return True
            ino = self._by_id.get(entry.id)
            node = self.nodes.get(ino) if ino is not None else None
            if node is None or node.entry.key == entry.key or node.orphan or node.unstored:
                return False
            other = node.entry.key
        return self.vol.exists(other)

    def node_of(self, entry: Entry) -> Node | None:
        """The node of stored ``entry``, if this mount knows it (a file's
        node only under the same key: another key is a twin, or stale)."""
        with self.lock:
            node = self._twin_node(entry)
            if node is None:
                ino = self._by_id.get(entry.id)
                node = self.nodes.get(ino) if ino is not None else None
        if node is not None and not entry.is_dir and node.entry.key != entry.key:
            return None
        return node

    def stored(self, node: Node, entry: Entry) -> None:
        """``entry`` is what this mount just wrote for ``node``."""
        self.forget_unstored(node)
        node.entry = entry
        node.written = self.tick()

    def add_unstored(self, node: Node) -> None:
        """``node`` was just created here and is not stored yet."""
        node.unstored = True
        with self.lock:
            self.unstored[(node.entry.parent_id, node.entry.name)] = node

    def forget_unstored(self, node: Node) -> None:
        """``node`` is in the store now, or never will be (caller holds its lock)."""
        if node.unstored:
            node.unstored = False
            with self.lock:
                self.unstored.pop((node.entry.parent_id, node.entry.name), None)

    def unstored_node(self, dir_id: bytes, name: bytes) -> Node | None:
        with self.lock:
            return self.unstored.get((dir_id, name))

    def incref(self, ino: int, n: int = 1) -> None:
        with self.lock:
            self.nodes[ino].lookups += n

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        with self.lock:
            for ino, n in items:
                node = self.nodes.get(ino)
                if node is None:
                    continue
                node.lookups -= n
                self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        """Drop ``node`` if nothing needs it any more (caller holds ``lock``)."""
        if node.ino != ROOT_INO and node.lookups <= 0 and node.opens <= 0 and not node.meta_dirty:
            self.nodes.pop(node.ino, None)
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
        with self.lock:
            node = self.nodes.get(ino)
            for _ in range(1 << 16):
                if node is None or node.ino == ROOT_INO:
                    break
                parts.append(node.entry.name)
                node = self.nodes.get(node.parent)
            else:
                node = None  # a loop: cannot happen, but never spin
        if node is None:
            raise FsError(errno.ESTALE, f"the path of inode {ino} is not known")
        return "/" + "/".join(os.fsdecode(p) for p in reversed(parts))
