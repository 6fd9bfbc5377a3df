"""Directory handles: opendir, readdir, releasedir.

A handle holds a snapshot of the listing, taken at offset 0, so that
offsets stay stable across pages while it is open.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

from ..volume import Entry, Volume
from .attrs import Attr, Attributes
from .nodes import Ctx, NodeTable

log = logging.getLogger(__name__)

#: Entries answered per readdir call (the kernel asks again for more).
READDIR_PAGE = 256


class Listings:
    def __init__(self, vol: Volume, nodes: NodeTable, attrs: Attributes):
        self.vol = vol
        self.nodes = nodes
        self.attrs = attrs
        #: readdir handles: (inode, listing, when the listing was read).
        self._dirs: dict[int, tuple[int, list[Entry], int]] = {}
        self._next_fh = itertools.count(1)

    def opendir(self, ino: int, ctx: Ctx) -> int:
        self.nodes.get(ino).need_dir()
        fh = next(self._next_fh)
        self._dirs[fh] = (ino, [], 0)
        return fh

    def readdir(
        self, fh: int, start: int, keep: Callable[[bytes], bool] | None = None
    ) -> list[tuple[bytes, Attr, int]]:
        """Entries from offset ``start`` on as (name, attributes, next
        offset).  The listing is taken once per handle (at offset 0), so
        offsets stay stable across pages.  Each entry comes with a lookup
        count for the kernel (the adapter gives it back with ``forget`` if
        the kernel does not take the entry).  ``keep(name)``, if given, says
        which names the listing holds at all (the others leave no gap in
        the offsets either: names hidden from the caller)."""
        ino, snapshot, read_at = self._dirs[fh]
        node = self.nodes.get(ino)
        if start == 0:
            read_at = self.nodes.tick()
            with self.nodes.lock:
                # (before listing: a file stored meanwhile is listed)
                unstored = [n.entry for (pid, _), n in self.nodes.unstored.items() if pid == node.entry.id]
                # what this mount read of the directory, unchanged here since
                known = {
                    n.entry.key: n.entry
                    for n in self.nodes.nodes.values()
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
                entry_node = self.nodes.remember(e, ino, lookups=1, read_at=read_at)
                out.append((e.name, self.attrs.counted(entry_node), i + 1))
        except BaseException:
            self.nodes.forget([(attr.ino, 1) for _, attr, _ in out])
            raise
        return out

    @staticmethod
    def _bad_entry(key: str, exc: Exception) -> None:
        log.error("skipping damaged directory entry %s: %s", key, exc)

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
