"""The pyfuse3 adapter: translate requests, run them, map errors.

One handler per FUSE operation, each a few lines: take the caller from the
request context, ask the policy (when one is loaded), run the filesystem
core in a worker thread, convert the reply.  :func:`_errors` is the one
error path: pyfuse3 only catches ``FUSEError`` in a handler, and any other
exception escaping would take the mount down, so everything else is logged
once and answered with EIO.

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
opened (the kernel itself refuses a write on a read-only descriptor).  A
directory handle keeps its opener's identity so that ``readdir`` leaves out
names hidden from it, and names that some hiding rule matches are replied
with an entry timeout of 0, so the kernel asks again for every caller.
A name hidden from the caller is refused before the filesystem is asked
(:class:`~sealfs.policy.guard.Guard`): a create with EACCES, anything else
with ENOENT, whether it exists or not; and while the policy hides anything,
directories show a link count of 1, which counts no subdirectory.
Without a guard nothing is checked here; the kernel's mode checks
(``default_permissions``) apply either way.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import pyfuse3
import trio

from .errors import FsError, IntegrityError, SealfsError, StoreError, WouldBlock
from .fs.attrs import Attr
from .fs.core import Filesystem
from .fs.nodes import Ctx
from .policy.guard import Guard

log = logging.getLogger(__name__)


class _QuietLateReplies(logging.Filter):
    """pyfuse3 logs an ERROR whenever the kernel refuses a reply.  With
    ENOENT that only means nobody waits for it any more: the request was
    interrupted (the caller got a signal) or the connection is gone (an
    unmount while a release was still uploading; the upload completes, and
    the daemon syncs everything before it exits).  Nothing is lost, so it
    is said at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and "fuse_reply_* failed" in str(record.msg)
            and record.args
            and record.args[-1] == os.strerror(errno.ENOENT)
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_QUIET_LATE_REPLIES = _QuietLateReplies()


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
        self.guard = guard
        #: opendir handle -> (identity of its opener, directory path), for hiding in readdir
        self._dir_callers: dict[int, tuple] = {}
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.workers = Workers(threads)
        if guard is not None:
            # hashing for identities may hold half of the threads, a quarter for one uid
            hashes = guard.identifier.hashes
            hashes.jobs, hashes.jobs_per_uid = max(1, threads // 2), max(1, threads // 4)
        logging.getLogger("pyfuse3").addFilter(_QUIET_LATE_REPLIES)

    # -- plumbing ----------------------------------------------------------------------

    async def _run(self, fn, *args, check=None, inline=False, quick=False, creates=None, **kwargs):
        """Run ``fn`` in a worker thread, after ``check`` (a policy check
        from :meth:`_may`, in the same thread call); turn every failure into
        an errno (:func:`_errors`).  Without a check, two thread switches
        can be saved: ``inline``: ``fn`` only reads memory without taking a
        lock, so it runs here; ``quick``: ``fn`` takes ``nowait`` (see
        :mod:`sealfs.fs.core`) and is tried here first.  ``creates``:
        (directory inode, name) of what ``fn`` creates; the result is then
        ``fn``'s and whether the kernel must not cache the name
        (:meth:`_creating`, in the same thread call)."""
        call = functools.partial(fn, *args, **kwargs)
        if creates is not None:
            call = functools.partial(self._creating, call, *creates)
        if check is not None:
            call = functools.partial(_checked, check, call)
        with _errors(fn.__name__):
            if check is None and (inline or quick):
                try:
                    return call(nowait=True) if quick else call()
                except WouldBlock:
                    pass
            return await self.workers.run(call)

    @staticmethod
    def _ctx(ctx) -> Ctx:
        return Ctx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask)

    def _may(self, ctx, ops: tuple[str, ...], ino: int, name: bytes | None = None):
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

    def _creating(self, call, parent: int, name: bytes, **kwargs) -> tuple:
        """``call()``, which creates ``name`` in ``parent``, and whether the
        kernel must not cache the name (a hiding rule may hide it from some
        callers and not from others): decided first, so that if that fails,
        nothing is created."""
        volatile = self.guard is not None and self.guard.may_hide(self.fs.path_of(parent, name))
        return call(**kwargs), volatile

    def _entry(self, attr: Attr, volatile: bool = False) -> pyfuse3.EntryAttributes:
        out = pyfuse3.EntryAttributes()
        out.st_ino = attr.ino
        out.generation = 0
        out.entry_timeout = 0 if volatile else self.entry_timeout
        out.attr_timeout = self.attr_timeout
        out.st_mode = attr.mode
        out.st_nlink = attr.nlink
        if stat.S_ISDIR(attr.mode) and self.guard is not None and self.guard.hides_anything():
            out.st_nlink = 1  # (2 + subdirectories would count the hidden ones; 1: "not counted", as btrfs)
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
        if self.guard is None or name in (b".", b".."):
            return self._entry(await self._run(self.fs.lookup, parent_inode, name, self._ctx(ctx)))
        attr, volatile = await self._run(self._lookup_visible, parent_inode, name, self._ctx(ctx))
        return self._entry(attr, volatile)

    def _lookup_visible(self, parent: int, name: bytes, ctx: Ctx) -> tuple[Attr, bool]:
        """lookup, unless a hiding rule hides the name from the caller (worker thread)."""
        path = self.fs.path_of(parent, name)
        self.guard.visible(ctx.pid, ctx.uid, ctx.gid, path)
        return self.fs.lookup(parent, name, ctx), self.guard.may_hide(path)

    async def forget(self, inode_list):
        # Must not fail or block: pure in-memory bookkeeping.  (No reply to
        # send: a failure is only logged, by the one error path.)
        with contextlib.suppress(pyfuse3.FUSEError), _errors("forget"):
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
        ops = (("write",) if "size" in kw else ()) + (("setattr",) if kw.keys() - {"size"} else ())
        check = self._may(ctx, ops, inode)
        if check is not None and kw.keys() == {"mode"}:
            only_setid = self._may(ctx, ("write",), inode)

            def check(general=check) -> None:
                # the kernel clears set-user/group-ID bits by itself before a write
                (only_setid if self._drops_setid_only(inode, kw["mode"]) else general)()

        return self._entry(
            await self._run(self.fs.setattr, inode, self._ctx(ctx), fh=fh, **kw, check=check, quick=True)
        )

    def _drops_setid_only(self, ino: int, mode: int) -> bool:
        """Whether ``mode`` only clears set-user/group-ID bits of the file."""
        changed = (self.fs.getattr(ino).mode ^ mode) & 0o7777
        return bool(changed) and not changed & ~(stat.S_ISUID | stat.S_ISGID) and not mode & changed

    async def readlink(self, inode, ctx):
        return await self._run(self.fs.readlink, inode, check=self._may(ctx, ("read",), inode))

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        attr, volatile = await self._run(
            self.fs.mknod,
            parent_inode,
            name,
            mode,
            self._ctx(ctx),
            check=self._may(ctx, ("create",), parent_inode, name),
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
            check=self._may(ctx, ("create",), parent_inode, name),
            creates=(parent_inode, name),
        )
        return self._entry(attr, volatile)

    async def unlink(self, parent_inode, name, ctx):
        await self._run(
            self.fs.unlink, parent_inode, name, self._ctx(ctx), check=self._may(ctx, ("delete",), parent_inode, name)
        )

    async def rmdir(self, parent_inode, name, ctx):
        await self._run(
            self.fs.rmdir, parent_inode, name, self._ctx(ctx), check=self._may(ctx, ("delete",), parent_inode, name)
        )

    async def symlink(self, parent_inode, name, target, ctx):
        attr, volatile = await self._run(
            self.fs.symlink,
            parent_inode,
            name,
            target,
            self._ctx(ctx),
            check=self._may(ctx, ("create",), parent_inode, name),
            creates=(parent_inode, name),
        )
        return self._entry(attr, volatile)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        check = None
        if self.guard is not None:
            guard, path_of, exists = self.guard, self.fs.path_of, self.fs.child_exists
            pid, uid, gid = ctx.pid, ctx.uid, ctx.gid

            def check() -> None:
                guard.check(pid, uid, gid, ("rename", "delete"), path_of(parent_inode_old, name_old))
                replaces = exists(parent_inode_new, name_new)
                guard.check(
                    pid,
                    uid,
                    gid,
                    ("rename", "create") + (("delete",) if replaces else ()),
                    path_of(parent_inode_new, name_new),
                )

        await self._run(
            self.fs.rename, parent_inode_old, name_old, parent_inode_new, name_new, flags, self._ctx(ctx), check=check
        )

    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(await self._run(self.fs.link, inode, new_parent_inode, new_name))

    async def open(self, inode, flags, ctx):
        fh, keep = await self._run(
            self.fs.open, inode, flags, self._ctx(ctx), check=self._may(ctx, _open_ops(flags), inode)
        )
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
            check=self._may(ctx, ("create",) + _open_ops(flags), parent_inode, name),
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
        if self.guard is None:
            return await self._run(self.fs.opendir, inode, self._ctx(ctx))
        fh, caller = await self._run(self._opendir_checked, inode, self._ctx(ctx))
        self._dir_callers[fh] = caller
        return fh

    def _opendir_checked(self, ino: int, ctx: Ctx) -> tuple[int, tuple]:
        """opendir after the list check; returns the handle and (identity,
        path) for readdir's hiding (worker thread)."""
        path = self.fs.path_of(ino)
        ident = self.guard.check(ctx.pid, ctx.uid, ctx.gid, ("list",), path)
        return self.fs.opendir(ino, ctx), (ident, path)

    async def readdir(self, fh, start_id, token):
        caller = self._dir_callers.get(fh)
        keep = None
        if caller is not None:
            guard, (ident, dirpath) = self.guard, caller
            prefix = "" if dirpath == "/" else dirpath

            def keep(name: bytes) -> bool:
                # names hidden from the opener are not in its listing at all (no gap in the offsets)
                path = prefix + "/" + os.fsdecode(name)
                return not (guard.may_hide(path) and guard.hidden(ident, path))

        while True:
            entries = await self._run(self.fs.readdir, fh, start_id, keep)
            replied = False
            # Each entry comes with a lookup count; those the kernel does
            # not take (hidden, or past a full reply) are given back.
            untaken = [attr.ino for _, attr, _ in entries]
            try:
                with _errors("readdir"):  # (a hiding check that fails: EIO, the name not shown)
                    for name, attr, next_id in entries:
                        start_id = next_id
                        volatile = False
                        if caller is not None:
                            path = prefix + "/" + os.fsdecode(name)
                            if self.guard.may_hide(path):
                                if self.guard.hidden(ident, path):
                                    continue  # (hidden by a reload since the listing was taken)
                                volatile = True
                        if not pyfuse3.readdir_reply(token, name, self._entry(attr, volatile), next_id):
                            return
                        untaken.remove(attr.ino)
                        replied = True
            finally:
                self.fs.forget([(ino, 1) for ino in untaken])
            # an empty reply ends the listing: a page of hidden names only must not
            if replied or not entries:
                return

    async def releasedir(self, fh):
        self._dir_callers.pop(fh, None)
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
        await self._run(self.fs.setxattr, inode, name, value, check=self._may(ctx, ("xattr",), inode))

    async def getxattr(self, inode, name, ctx):
        check = None if name in METADATA_XATTRS else self._may(ctx, ("xattr",), inode)
        # (the kernel asks for security.capability before every write)
        return await self._run(self.fs.getxattr, inode, name, check=check, inline=True)

    async def listxattr(self, inode, ctx):
        return await self._run(self.fs.listxattr, inode, check=self._may(ctx, ("xattr",), inode))

    async def removexattr(self, inode, name, ctx):
        await self._run(self.fs.removexattr, inode, name, check=self._may(ctx, ("xattr",), inode))

    async def access(self, inode, mode, ctx):
        # Mode bits are checked by the kernel (default_permissions).
        return True


#: Attributes that the kernel (on every write: may it keep file
#: capabilities?) and tools such as ls -l read by themselves.  Like the mode
#: bits, which getattr shows to anyone, they are permission metadata, not
#: data: reading them is not subject to the policy (setting them is: xattr).
METADATA_XATTRS = frozenset(
    {b"security.capability", b"security.selinux", b"system.posix_acl_access", b"system.posix_acl_default"}
)


# -- the worker threads ------------------------------------------------------------------

T = TypeVar("T")


class Workers:
    """A bounded pool of threads for the blocking part of FUSE requests.

    ``trio.to_thread.run_sync`` costs about 120 µs per call on the 2-CPU
    machine of docs/PERFORMANCE.md: a capacity limiter, a copy of the context,
    a thread cache that hands each job to a thread of its own, and the report
    back.  A request that reaches the store pays it once, and small-file
    workloads send several such requests per file.  This pool is one queue
    and one wake-up back into trio (``TrioToken.run_sync_soon``): about 65 µs.

    Like ``to_thread.run_sync`` without ``abandon_on_cancel``, a call is not
    cancellable: the caller waits until its thread is done, so nothing runs on
    after the request that started it has been answered.
    """

    def __init__(self, threads: int, name: str = "sealfs-worker"):
        if threads < 1:
            raise ValueError("at least one worker thread is needed")
        self.threads = threads
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._started: list[threading.Thread] = []

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in one of the threads; its result or exception."""
        if not self._started:
            self._start(trio.lowlevel.current_trio_token())
        self._jobs.put((fn, trio.lowlevel.current_task()))
        return await trio.lowlevel.wait_task_rescheduled(_not_abortable)

    def _start(self, token: trio.lowlevel.TrioToken) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._work, args=(token,), name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._started.append(t)

    def _work(self, token: trio.lowlevel.TrioToken) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, task = job
            result = outcome.capture(fn)
            del fn, job  # (nothing of the job outlives it here)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                return  # the loop is gone, and with it whoever waited

    def close(self) -> None:
        """Let the threads end once the queued jobs are done."""
        for _ in self._started:
            self._jobs.put(None)
        for t in self._started:
            t.join()
        self._started.clear()


def _not_abortable(_raise_cancel) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


@contextlib.contextmanager
def _errors(op: str):
    """The one error path: a failure of ``op`` becomes the FUSEError of its
    errno (FsError) or EIO (anything else), logged once."""
    try:
        yield
    except FsError as exc:
        if exc.errno == errno.EIO:
            log.error("%s: %s", op, exc)
        elif exc.errno == errno.ENOSPC:
            log.warning("%s: %s", op, exc)
        raise pyfuse3.FUSEError(exc.errno) from None
    except IntegrityError as exc:
        log.error("integrity failure in %s: %s", op, exc)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except StoreError as exc:
        log.error("store failure in %s: %s", op, exc)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except SealfsError as exc:
        log.error("%s failed: %s", op, exc)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except Exception:
        log.exception("unexpected error in %s", op)
        raise pyfuse3.FUSEError(errno.EIO) from None


def _checked(check, call):
    check()
    return call()


def _open_ops(flags: int) -> tuple[str, ...]:
    """The policy operations an open with ``flags`` needs."""
    acc = flags & os.O_ACCMODE
    ops = {os.O_RDONLY: ("read",), os.O_WRONLY: ("write",)}.get(acc, ("read", "write"))
    if flags & os.O_TRUNC and "write" not in ops:
        ops += ("write",)
    return ops


def mount_options(*, fsname: str, allow_other: bool, read_only: bool) -> set[str]:
    opts = {"default_permissions", f"fsname={fsname}", "subtype=sealfs"}
    if allow_other:
        opts.add("allow_other")
    if read_only:
        opts.add("ro")
    return opts
