"""The access policy at the adapter: the checks of the handlers, built for
the worker thread, and the hiding of names.

A name hidden from the caller is refused before the filesystem is asked
(:class:`~sealfs.policy.guard.Guard`): a create with EACCES, anything else
with ENOENT, whether it exists or not.  Names that some hiding rule matches
are replied with an entry timeout of 0, so the kernel asks again for every
caller.  A directory handle keeps its opener's identity so that ``readdir``
leaves out names hidden from it.  Without a guard nothing is checked here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from ..fs.attrs import Attr
from ..fs.core import Filesystem
from ..fs.nodes import Ctx
from ..policy.guard import Guard

#: Attributes that the kernel (on every write: may it keep file
#: capabilities?) and tools such as ls -l read by themselves.  Like the mode
#: bits, which getattr shows to anyone, they are permission metadata, not
#: data: reading them is not subject to the policy (setting them is: xattr).
METADATA_XATTRS = frozenset(
    {b"security.capability", b"security.selinux", b"system.posix_acl_access", b"system.posix_acl_default"}
)


class Gate:
    """The policy checks of one mount: the Guard (None without a policy)
    asked about the paths of the Filesystem."""

    def __init__(self, fs: Filesystem, guard: Guard | None):
        self.fs = fs
        self.guard = guard
        #: opendir handle -> (identity of its opener, directory path), for hiding in readdir
        self._dir_callers: dict[int, tuple] = {}

    def may(self, ctx, ops: tuple[str, ...], ino: int, name: bytes | None = None):
        """The policy check that the caller of ``ctx`` may do every one of
        ``ops`` on inode ``ino`` (or on ``name`` in directory ``ino``), to
        run in the worker thread; None without a policy."""
        guard = self.guard
        if guard is None or not ops:
            return None
        pid, uid, gid = ctx.pid, ctx.uid, ctx.gid
        path_of = self.fs.path_of

        def check() -> None:
            guard.check(pid, uid, gid, ops, path_of(ino, name))

        return check

    def may_setattr(self, ctx, ino: int, changes: dict):
        """The check of a setattr of ``changes`` (size: write; mode, owner,
        times: setattr; a mode that only clears set-user/group-ID bits:
        write, for the kernel clears them by itself before a write)."""
        ops = (("write",) if "size" in changes else ()) + (("setattr",) if changes.keys() - {"size"} else ())
        general = self.may(ctx, ops, ino)
        if general is None or changes.keys() != {"mode"}:
            return general
        only_setid = self.may(ctx, ("write",), ino)

        def check() -> None:
            (only_setid if self._drops_setid_only(ino, changes["mode"]) else general)()

        return check

    def _drops_setid_only(self, ino: int, mode: int) -> bool:
        """Whether ``mode`` only clears set-user/group-ID bits of the file."""
        changed = (self.fs.getattr(ino).mode ^ mode) & 0o7777
        return bool(changed) and not changed & ~(stat.S_ISUID | stat.S_ISGID) and not mode & changed

    def may_rename(self, ctx, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes):
        """The check of a rename: rename + delete at the source, rename +
        create at the target (+ delete if it exists)."""
        if self.guard is None:
            return None
        guard, path_of, exists = self.guard, self.fs.path_of, self.fs.child_exists
        pid, uid, gid = ctx.pid, ctx.uid, ctx.gid

        def check() -> None:
            guard.check(pid, uid, gid, ("rename", "delete"), path_of(parent_old, name_old))
            replaces = exists(parent_new, name_new)
            guard.check(
                pid,
                uid,
                gid,
                ("rename", "create") + (("delete",) if replaces else ()),
                path_of(parent_new, name_new),
            )

        return check

    def creating(self, call, parent: int, name: bytes, **kwargs) -> tuple:
        """``call()``, which creates ``name`` in ``parent``, and whether the
        kernel must not cache the name (a hiding rule may hide it from some
        callers and not from others): decided first, so that if that fails,
        nothing is created."""
        volatile = self.guard is not None and self.guard.may_hide(self.fs.path_of(parent, name))
        return call(**kwargs), volatile

    def lookup_visible(self, parent: int, name: bytes, ctx: Ctx) -> tuple[Attr, bool]:
        """lookup, unless a hiding rule hides the name from the caller (worker thread)."""
        path = self.fs.path_of(parent, name)
        self.guard.visible(ctx.pid, ctx.uid, ctx.gid, path)
        volatile = self.guard.may_hide(path)  # (first: if it fails, no lookup is counted)
        return self.fs.lookup(parent, name, ctx), volatile

    def opendir_checked(self, ino: int, ctx: Ctx) -> tuple[int, tuple]:
        """opendir after the list check; returns the handle and (identity,
        path) for readdir's hiding (worker thread)."""
        path = self.fs.path_of(ino)
        ident = self.guard.check(ctx.pid, ctx.uid, ctx.gid, ("list",), path)
        return self.fs.opendir(ino, ctx), (ident, path)

    def dir_opened(self, fh: int, caller: tuple) -> None:
        """Keep the opener of handle ``fh`` (from :meth:`opendir_checked`)."""
        self._dir_callers[fh] = caller

    def dir_released(self, fh: int) -> None:
        self._dir_callers.pop(fh, None)

    def listing(self, fh: int) -> tuple[Callable[[bytes], bool], Callable[[bytes], bool | None]] | None:
        """For readdir of handle ``fh``: ``keep(name)``, whether the core
        lists the name (names hidden from the opener are not in its listing
        at all: no gap in the offsets), and ``volatile(name)``, whether the
        kernel must not cache a listed name, None when it has been hidden
        since (by a reload).  None when nothing is hidden (no policy)."""
        caller = self._dir_callers.get(fh)
        if caller is None:
            return None
        guard, (ident, dirpath) = self.guard, caller
        prefix = "" if dirpath == "/" else dirpath

        def keep(name: bytes) -> bool:
            path = prefix + "/" + os.fsdecode(name)
            return not (guard.may_hide(path) and guard.hidden(ident, path))

        def volatile(name: bytes) -> bool | None:
            path = prefix + "/" + os.fsdecode(name)
            if not guard.may_hide(path):
                return False
            return None if guard.hidden(ident, path) else True

        return keep, volatile

    def flat_dirs(self) -> bool:
        """Whether directories show a link count of 1: while the policy
        hides anything, 2 + subdirectories would count the hidden ones (1:
        "not counted", as btrfs)."""
        return self.guard is not None and self.guard.hides_anything()


def open_ops(flags: int) -> tuple[str, ...]:
    """The policy operations an open with ``flags`` needs."""
    acc = flags & os.O_ACCMODE
    ops = {os.O_RDONLY: ("read",), os.O_WRONLY: ("write",)}.get(acc, ("read", "write"))
    if flags & os.O_TRUNC and "write" not in ops:
        ops += ("write",)
    return ops
