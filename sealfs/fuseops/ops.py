"""The FUSE handlers: translate requests, run them, convert the replies.

One handler per FUSE operation, each a few lines: take the caller from the
request context, ask the policy (when one is loaded, :mod:`.gate`), run the
filesystem core in a worker thread, convert the reply; every failure goes
through the one error path (:func:`.run.fuse_errors`).

**Access policy.**  With a :class:`~sealfs.policy.guard.Guard` (mount
option ``policy=``), the handlers where the kernel always asks the daemon
check the caller first, in the same worker-thread call as the operation:

==========================  ===========================================
open                        read / write by access mode; O_TRUNC: write
create                      create, plus read / write by access mode
opendir                     list
lookup                      ENOENT when a hiding rule hides the name
mkdir, symlink, mknod       create (the new path)
unlink, rmdir               delete
rename                      rename + delete at the source, rename +
                            create at the target (+ delete if it exists)
setattr                     size: write; mode, owner, times: setattr
                            (clearing only set-user/group-ID bits, as
                            the kernel does before a write: write)
readlink                    read
get/set/list/removexattr    xattr (reading METADATA_XATTRS: no check)
==========================  ===========================================

``read``, ``write``, ``flush``, ``release``, ``fsync`` and ``readdir`` get
no caller: they are covered by the decision taken when the handle was
opened (the kernel itself refuses a write on a read-only descriptor).  How
names are hidden (from lookups, listings and the kernel's cache) is said in
:mod:`.gate`; while the policy hides anything, directories show a link
count of 1, which counts no subdirectory.  Without a guard nothing is
checked here; the kernel's mode checks (``default_permissions``) apply
either way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import stat

import pyfuse3
import trio

from ..errors import WouldBlock
from ..fs.attrs import Attr
from ..fs.core import Filesystem
from ..fs.nodes import Ctx
from ..policy.guard import Guard
from .gate import METADATA_XATTRS, Gate, open_ops
from .run import QUIET_LATE_REPLIES, Workers, checked, fuse_errors

#: (The log lines of the adapter keep the name of its package.)
log = logging.getLogger("sealfs.fuseops")


class SealfsOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        fs: Filesystem,
        *,
        attr_timeout: float = 1.0,
        entry_timeout: float = 1.0,
        threads: int = 16,
        guard: Guard | None = None,
    ):
        super().__init__()
        self.fs = fs
        self.gate = Gate(fs, guard)
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.workers = Workers(threads)
        #: Set at the first request: the kernel has taken the answer to FUSE_INIT by then.
        self.serving = trio.Event()
        if guard is not None:
            # hashing for identities may hold half of the threads, a quarter for one uid
            hashes = guard.identifier.hashes
            hashes.jobs, hashes.jobs_per_uid = max(1, threads // 2), max(1, threads // 4)
        logging.getLogger("pyfuse3").addFilter(QUIET_LATE_REPLIES)

    # -- plumbing ----------------------------------------------------------------------

    async def _run(self, fn, *args, check=None, inline=False, quick=False, creates=None, **kwargs):
        """Run ``fn`` in a worker thread, after ``check`` (a policy check
        from the gate, in the same thread call); turn every failure into an
        errno (:func:`.run.fuse_errors`).  Without a check, two thread
        switches can be saved: ``inline``: ``fn`` only reads memory without
        taking a lock, so it runs here; ``quick``: ``fn`` takes ``nowait``
        (see :mod:`sealfs.fs.core`) and is tried here first.  ``creates``:
        (directory inode, name) of what ``fn`` creates; the result is then
        ``fn``'s and whether the kernel must not cache the name
        (:meth:`.gate.Gate.creating`, in the same thread call)."""
        call = functools.partial(fn, *args, **kwargs)
        if creates is not None:
            call = functools.partial(self.gate.creating, call, *creates)
        if check is not None:
            call = functools.partial(checked, check, call)
        if not self.serving.is_set():
            self.serving.set()
        with fuse_errors(fn.__name__):
            if check is None and (inline or quick):
                try:
                    return call(nowait=True) if quick else call()
                except WouldBlock:
                    pass
            return await self.workers.run(call)

    @staticmethod
    def _ctx(ctx) -> Ctx:
        return Ctx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask)

    def _entry(self, attr: Attr, volatile: bool = False) -> pyfuse3.EntryAttributes:
        out = pyfuse3.EntryAttributes()
        out.st_ino = attr.ino
        out.generation = 0
        out.entry_timeout = 0 if volatile else self.entry_timeout
        out.attr_timeout = self.attr_timeout
        out.st_mode = attr.mode
        out.st_nlink = 1 if stat.S_ISDIR(attr.mode) and self.gate.flat_dirs() else attr.nlink
        out.st_uid = attr.uid
        out.st_gid = attr.gid
        out.st_rdev = 0
        out.st_size = attr.size
        out.st_blksize = attr.blksize
        out.st_blocks = attr.blocks
        out.st_atime_ns = attr.atime_ns
        out.st_mtime_ns = attr.mtime_ns
        out.st_ctime_ns = attr.ctime_ns
        return out

    # -- handlers ------------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx):
        if self.gate.guard is None or name in (b".", b".."):
            return self._entry(await self._run(self.fs.lookup, parent_inode, name, self._ctx(ctx)))
        attr, volatile = await self._run(self.gate.lookup_visible, parent_inode, name, self._ctx(ctx))
        return self._entry(attr, volatile)

    async def forget(self, inode_list):
        # Must not fail or block: pure in-memory bookkeeping.  (No reply to
        # send: a failure is only logged, by the one error path.)
        with contextlib.suppress(pyfuse3.FUSEError), fuse_errors("forget"):
            self.fs.forget(inode_list)

    async def getattr(self, inode, ctx):
        return self._entry(await self._run(self.fs.getattr, inode, quick=True))

    async def setattr(self, inode, attr, fields, fh, ctx):
        kw = {}
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        check = self.gate.may_setattr(ctx, inode, kw)
        return self._entry(
            await self._run(self.fs.setattr, inode, self._ctx(ctx), fh=fh, **kw, check=check, quick=True)
        )

    async def readlink(self, inode, ctx):
        return await self._run(self.fs.readlink, inode, check=self.gate.may(ctx, ("read",), inode))

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        attr, volatile = await self._run(
            self.fs.mknod,
            parent_inode,
            name,
            mode,
            self._ctx(ctx),
            check=self.gate.may(ctx, ("create",), parent_inode, name),
            creates=(parent_inode, name),
        )
        return self._entry(attr, volatile)

    async def mkdir(self, parent_inode, name, mode, ctx):
        attr, volatile = await self._run(
            self.fs.mkdir,
            parent_inode,
            name,
            mode,
            self._ctx(ctx),
            check=self.gate.may(ctx, ("create",), parent_inode, name),
            creates=(parent_inode, name),
        )
        return self._entry(attr, volatile)

    async def unlink(self, parent_inode, name, ctx):
        check = self.gate.may(ctx, ("delete",), parent_inode, name)
        await self._run(self.fs.unlink, parent_inode, name, self._ctx(ctx), check=check)

    async def rmdir(self, parent_inode, name, ctx):
        check = self.gate.may(ctx, ("delete",), parent_inode, name)
        await self._run(self.fs.rmdir, parent_inode, name, self._ctx(ctx), check=check)

    async def symlink(self, parent_inode, name, target, ctx):
        attr, volatile = await self._run(
            self.fs.symlink,
            parent_inode,
            name,
            target,
            self._ctx(ctx),
            check=self.gate.may(ctx, ("create",), parent_inode, name),
            creates=(parent_inode, name),
        )
        return self._entry(attr, volatile)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        check = self.gate.may_rename(ctx, parent_inode_old, name_old, parent_inode_new, name_new)
        await self._run(
            self.fs.rename, parent_inode_old, name_old, parent_inode_new, name_new, flags, self._ctx(ctx), check=check
        )

    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(await self._run(self.fs.link, inode, new_parent_inode, new_name))

    async def open(self, inode, flags, ctx):
        check = self.gate.may(ctx, open_ops(flags), inode)
        fh, keep = await self._run(self.fs.open, inode, flags, self._ctx(ctx), check=check)
        if not keep:
            # Another version than the kernel knows (written by another
            # mount): the size it caches may be stale too, and it would
            # clip reads to it.  Attributes only: no data is cached for
            # writeback, so this cannot block.
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError as exc:
                log.debug("cannot invalidate the attributes of inode %d: %s", inode, exc)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def create(self, parent_inode, name, mode, flags, ctx):
        (attr, fh), volatile = await self._run(
            self.fs.create,
            parent_inode,
            name,
            mode,
            flags,
            self._ctx(ctx),
            check=self.gate.may(ctx, ("create",) + open_ops(flags), parent_inode, name),
            quick=True,
            creates=(parent_inode, name),
        )
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._entry(attr, volatile)

    async def read(self, fh, off, size):
        return await self._run(self.fs.read, fh, off, size, quick=True)

    async def write(self, fh, off, buf):
        return await self._run(self.fs.write, fh, off, buf, quick=True)

    async def flush(self, fh):
        await self._run(self.fs.flush, fh, quick=True)

    async def fsync(self, fh, datasync):
        await self._run(self.fs.fsync, fh)

    async def release(self, fh):
        await self._run(self.fs.release, fh, quick=True)

    async def opendir(self, inode, ctx):
        if self.gate.guard is None:
            return await self._run(self.fs.opendir, inode, self._ctx(ctx))
        fh, caller = await self._run(self.gate.opendir_checked, inode, self._ctx(ctx))
        self.gate.dir_opened(fh, caller)
        return fh

    async def readdir(self, fh, start_id, token):
        keep, volatile_of = self.gate.listing(fh) or (None, None)
        while True:
            entries = await self._run(self.fs.readdir, fh, start_id, keep)
            replied = False
            # Each entry comes with a lookup count; those the kernel does
            # not take (hidden, or past a full reply) are given back.
            untaken = [attr.ino for _, attr, _ in entries]
            try:
                with fuse_errors("readdir"):  # (a hiding check that fails: EIO, the name not shown)
                    for name, attr, next_id in entries:
                        start_id = next_id
                        volatile = False if volatile_of is None else volatile_of(name)
                        if volatile is None:
                            continue  # (hidden by a reload since the listing was taken)
                        if not pyfuse3.readdir_reply(token, name, self._entry(attr, volatile), next_id):
                            return
                        untaken.remove(attr.ino)
                        replied = True
            except pyfuse3.FUSEError:
                # (pyfuse3 drops the entries already replied with the error: the kernel takes none)
                untaken = [attr.ino for _, attr, _ in entries]
                raise
            finally:
                self.fs.forget([(ino, 1) for ino in untaken])
            # an empty reply ends the listing: a page of hidden names only must not
            if replied or not entries:
                return

    async def releasedir(self, fh):
        self.gate.dir_released(fh)
        self.fs.releasedir(fh)

    async def fsyncdir(self, fh, datasync):
        await self._run(self.fs.fsyncdir)

    async def statfs(self, ctx):
        s = await self._run(self.fs.statfs)
        out = pyfuse3.StatvfsData()
        out.f_bsize = s["bsize"]
        out.f_frsize = s["frsize"]
        out.f_blocks = s["blocks"]
        out.f_bfree = s["bfree"]
        out.f_bavail = s["bavail"]
        out.f_files = s["files"]
        out.f_ffree = s["ffree"]
        out.f_favail = s["favail"]
        out.f_namemax = s["namemax"]
        return out

    async def setxattr(self, inode, name, value, ctx):
        await self._run(self.fs.setxattr, inode, name, value, check=self.gate.may(ctx, ("xattr",), inode))

    async def getxattr(self, inode, name, ctx):
        check = None if name in METADATA_XATTRS else self.gate.may(ctx, ("xattr",), inode)
        # (the kernel asks for security.capability before every write)
        return await self._run(self.fs.getxattr, inode, name, check=check, inline=True)

    async def listxattr(self, inode, ctx):
        return await self._run(self.fs.listxattr, inode, check=self.gate.may(ctx, ("xattr",), inode))

    async def removexattr(self, inode, name, ctx):
        await self._run(self.fs.removexattr, inode, name, check=self.gate.may(ctx, ("xattr",), inode))

    async def access(self, inode, mode, ctx):
        # Mode bits are checked by the kernel (default_permissions).
        return True


def mount_options(*, fsname: str, allow_other: bool, read_only: bool) -> set[str]:
    """The options for ``pyfuse3.init``; the kernel checks the mode bits
    (``default_permissions``)."""
    opts = {"default_permissions", f"fsname={fsname}", "subtype=sealfs"}
    if allow_other:
        opts.add("allow_other")
    if read_only:
        opts.add("ro")
    return opts
