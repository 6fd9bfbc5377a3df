"""The pyfuse3 adapter: translate requests, run them, map errors.

One handler per FUSE operation, each a few lines: take the caller from the
request context, ask the policy (when one is loaded), run the filesystem
core in a worker thread, convert the reply.  :meth:`SealfsOps._run` is the
one error path: pyfuse3 only catches ``FUSEError`` in a handler, and any
other exception escaping would take the mount down, so everything else is
logged once and answered with EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
import os

import pyfuse3
import trio

from .errors import FsError, IntegrityError, SealfsError, StoreError
from .fs.core import Attr, Ctx, Filesystem

log = logging.getLogger(__name__)


class _QuietLateReplies(logging.Filter):
    """pyfuse3 logs an ERROR whenever the kernel refuses a reply.  With
    ENOENT that only means nobody waits for it any more: the request was
    interrupted (the caller got a signal) or the connection is gone (an
    unmount while a release was still uploading; the upload completes, and
    the daemon syncs everything before it exits).  Nothing is lost, so it
    is said at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno == logging.ERROR and "fuse_reply_* failed" in str(record.msg)
                and record.args and record.args[-1] == os.strerror(errno.ENOENT)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_QUIET_LATE_REPLIES = _QuietLateReplies()


class SealfsOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem, *, attr_timeout: float = 1.0, entry_timeout: float = 1.0, threads: int = 16):
        super().__init__()
        self.fs = fs
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.limiter = trio.CapacityLimiter(threads)
        logging.getLogger("pyfuse3").addFilter(_QUIET_LATE_REPLIES)

    # -- plumbing ----------------------------------------------------------------------

    async def _run(self, fn, *args, **kwargs):
        """Run ``fn`` in a worker thread; turn every failure into an errno."""
        try:
            return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)
        except FsError as exc:
            if exc.errno == errno.EIO:
                log.error("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except IntegrityError as exc:
            log.error("integrity failure in %s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except StoreError as exc:
            log.error("store failure in %s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except SealfsError as exc:
            log.error("%s failed: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    @staticmethod
    def _ctx(ctx) -> Ctx:
        return Ctx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        out = pyfuse3.EntryAttributes()
        out.st_ino = attr.ino
        out.generation = 0
        out.entry_timeout = self.entry_timeout
        out.attr_timeout = self.attr_timeout
        out.st_mode = attr.mode
        out.st_nlink = attr.nlink
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
        return self._entry(await self._run(self.fs.lookup, parent_inode, name, self._ctx(ctx)))

    async def forget(self, inode_list):
        # Must not fail or block: pure in-memory bookkeeping.
        try:
            self.fs.forget(inode_list)
        except Exception:
            log.exception("forget failed")

    async def getattr(self, inode, ctx):
        return self._entry(await self._run(self.fs.getattr, inode))

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
        return self._entry(await self._run(self.fs.setattr, inode, self._ctx(ctx), fh=fh, **kw))

    async def readlink(self, inode, ctx):
        return await self._run(self.fs.readlink, inode)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(await self._run(self.fs.mknod, parent_inode, name, mode, self._ctx(ctx)))

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(await self._run(self.fs.mkdir, parent_inode, name, mode, self._ctx(ctx)))

    async def unlink(self, parent_inode, name, ctx):
        await self._run(self.fs.unlink, parent_inode, name, self._ctx(ctx))

    async def rmdir(self, parent_inode, name, ctx):
        await self._run(self.fs.rmdir, parent_inode, name, self._ctx(ctx))

    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(await self._run(self.fs.symlink, parent_inode, name, target, self._ctx(ctx)))

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._run(self.fs.rename, parent_inode_old, name_old, parent_inode_new, name_new, flags, self._ctx(ctx))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(await self._run(self.fs.link, inode, new_parent_inode, new_name))

    async def open(self, inode, flags, ctx):
        fh, keep = await self._run(self.fs.open, inode, flags, self._ctx(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def create(self, parent_inode, name, mode, flags, ctx):
        attr, fh = await self._run(self.fs.create, parent_inode, name, mode, flags, self._ctx(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._entry(attr)

    async def read(self, fh, off, size):
        return await self._run(self.fs.read, fh, off, size)

    async def write(self, fh, off, buf):
        return await self._run(self.fs.write, fh, off, buf)

    async def flush(self, fh):
        await self._run(self.fs.flush, fh)

    async def fsync(self, fh, datasync):
        await self._run(self.fs.fsync, fh)

    async def release(self, fh):
        await self._run(self.fs.release, fh)

    async def opendir(self, inode, ctx):
        return await self._run(self.fs.opendir, inode, self._ctx(ctx))

    async def readdir(self, fh, start_id, token):
        entries = await self._run(self.fs.readdir, fh, start_id)
        for name, attr, next_id in entries:
            if not pyfuse3.readdir_reply(token, name, self._entry(attr), next_id):
                break
            self.fs.incref(attr.ino)

    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    async def fsyncdir(self, fh, datasync):
        await self._run(self.fs.flush_metadata)

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
        await self._run(self.fs.setxattr, inode, name, value)

    async def getxattr(self, inode, name, ctx):
        return await self._run(self.fs.getxattr, inode, name)

    async def listxattr(self, inode, ctx):
        return await self._run(self.fs.listxattr, inode)

    async def removexattr(self, inode, name, ctx):
        await self._run(self.fs.removexattr, inode, name)

    async def access(self, inode, mode, ctx):
        # Mode bits are checked by the kernel (default_permissions).
        return True


def mount_options(*, fsname: str, allow_other: bool, read_only: bool) -> set[str]:
    opts = {"default_permissions", f"fsname={fsname}", "subtype=sealfs"}
    if allow_other:
        opts.add("allow_other")
    if read_only:
        opts.add("ro")
    return opts

