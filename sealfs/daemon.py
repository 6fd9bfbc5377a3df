"""The mount's lifecycle: harden, mount, daemonize, serve, flush, unmount.

Everything that can fail with a message a user should read (store, keys,
mountpoint) happens *before* the fork, in ``sealfs mount``
(:func:`sealfs.cli.mount.cmd_mount`); the parent then waits on a pipe
until the child reports that the kernel mount exists, so ``sealfs mount``
returns only when the mount is usable and exits non-zero with one line
when it is not.

Signals: SIGTERM/SIGINT upload dirty data and unmount; SIGHUP reloads the
policy (when one is configured: an invalid file is refused and the old
policy stays) and reopens the audit log and the ``log=`` file (logrotate).  A timer writes pending directory
times and closes audit rate-limit windows.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import logging.handlers
import os
import resource
import signal
import sys
from dataclasses import dataclass, field

from .errors import MountError, SealfsError
from .fs.core import Filesystem, Options
from .policy.audit import open_private_log
from .policy.guard import Guard
from .volume import Volume

log = logging.getLogger("sealfs")

PR_SET_DUMPABLE = 4
METADATA_FLUSH_SECONDS = 1.0


@dataclass
class MountConfig:
    mountpoint: str
    fsname: str
    foreground: bool = False
    allow_other: bool = False
    read_only: bool = False
    log_file: str | None = None
    log_level: str = "info"
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    fs_options: Options = field(default_factory=Options)
    #: The access policy (mount option policy=), loaded and checked before
    #: the fork, with its audit log open; None: POSIX modes only.
    guard: Guard | None = None


def _pidfile(mountpoint: str) -> str:
    """Where the daemon serving ``mountpoint`` records its pid, so that
    ``sealfs umount`` can wait for it to finish uploading."""
    base = (
        "/run/sealfs"
        if os.geteuid() == 0
        else os.path.join(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/sealfs-{os.geteuid()}", "sealfs")
    )
    digest = hashlib.sha256(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:32]
    return os.path.join(base, f"{digest}.pid")


def daemon_pid(mountpoint: str) -> int | None:
    """The pid of the running daemon of ``mountpoint``, if any."""
    try:
        with open(_pidfile(mountpoint)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def _write_pidfile(path: str) -> str | None:
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
        return path
    except OSError as exc:
        log.warning("cannot write pid file %s: %s", path, exc)
        return None


#: Kernel readahead for the mount.  FUSE starts at 128 KiB; with 4 MiB,
#: sequential reads arrive as larger requests, ahead of the reader
#: (measured on the local store: 288 MB/s at 128 KiB, 497 MB/s at 4 MiB).
READ_AHEAD_KB = 4096


def _raise_readahead(mountpoint: str) -> None:
    """Set the mount's read_ahead_kb (root only; best effort).  The device
    number comes from /proc/self/mountinfo: a stat of the mountpoint would
    ask ourselves."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == mountpoint:
                    with open(f"/sys/class/bdi/{fields[2]}/read_ahead_kb", "w") as ra:
                        ra.write(f"{READ_AHEAD_KB}\n")
    except OSError as exc:
        log.debug("cannot raise readahead of %s: %s", mountpoint, exc)


def harden() -> None:
    """No core dumps and no ptrace by other users: the process holds keys."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
    except (OSError, AttributeError) as exc:
        logging.getLogger("sealfs").warning("cannot make the daemon non-dumpable: %s", exc)


#: mallopt(3) parameter: the most malloc arenas glibc may create.
M_ARENA_MAX = -8


def _limit_malloc_arenas() -> None:
    """Two malloc arenas instead of glibc's default of eight per core.
    glibc gives threads that contend for malloc arenas of their own and
    keeps freed memory in each; with some thirty threads passing 64 KiB
    blocks around, the daemon's RSS crept up for minutes under load, to
    about three times cache_size (tests/reliability/test_load.py, local
    store, cache_size=64M: 594 MiB after 4 minutes and still growing; with
    two arenas flat at about 220 MiB, same throughput: the GIL serialises
    most allocations anyway).  Best effort: not glibc, no limit."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def check_mountpoint(path: str) -> str:
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} does not exist or is not a directory")
    if os.path.ismount(path):
        raise MountError(f"mountpoint {path} is busy: something is already mounted there")
    return path


class _OneLineFormatter(logging.Formatter):
    """Messages with control characters escaped: file names are user input,
    and a name holding a newline must not forge a log line of its own.
    (A traceback, added after the message, keeps its lines.)"""

    _ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(self._ESCAPES)
        return super().formatMessage(record)


class _PrivateFileHandler(logging.StreamHandler):
    """The ``log=`` file: created 0600 (:func:`open_private_log`), reopened
    on SIGHUP after logrotate moved it."""

    def __init__(self, path: str):
        super().__init__(open_private_log(path))
        self.path = path

    def reopen(self) -> None:
        try:
            new = open_private_log(self.path)
        except OSError as exc:
            log.error("cannot reopen the log %s: %s (still writing to the old file)", self.path, exc)
            return
        old = self.setStream(new)
        if old is not None:
            old.close()


def reopen_log_file() -> None:
    for h in logging.getLogger().handlers:
        if isinstance(h, _PrivateFileHandler):
            h.reopen()


def setup_logging(cfg: MountConfig) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if cfg.log_file:
        handler: logging.Handler = _PrivateFileHandler(cfg.log_file)
    elif cfg.foreground:
        handler = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.ident = "sealfs: "  # type: ignore[attr-defined]
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(vol: Volume, cfg: MountConfig, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted or signalled.  Returns an exit code."""
    import pyfuse3
    import trio

    from .fuseops.ops import SealfsOps, mount_options

    # (resolved before mounting: once mounted, a stat of the mountpoint would
    # be a request to ourselves, unanswered until the main loop runs)
    pidfile_path = _pidfile(cfg.mountpoint)
    _limit_malloc_arenas()  # before the worker threads start
    fs = Filesystem(vol, cfg.fs_options)
    guard = cfg.guard
    ops = SealfsOps(fs, attr_timeout=cfg.attr_timeout, entry_timeout=cfg.entry_timeout, guard=guard)
    try:
        pyfuse3.init(
            ops, cfg.mountpoint, mount_options(fsname=cfg.fsname, allow_other=cfg.allow_other, read_only=cfg.read_only)
        )
    except RuntimeError as exc:
        msg = (
            f"cannot mount on {cfg.mountpoint}: {exc} (is /dev/fuse available?"
            " allow_other needs user_allow_other in /etc/fuse.conf for non-root)"
        )
        _report(ready_fd, msg)
        log.error(msg)
        return 8
    pidfile = _write_pidfile(pidfile_path)
    _report(ready_fd, "")
    log.info("mounted %s on %s", cfg.fsname, cfg.mountpoint)
    if guard is None:
        log.warning(
            "NO ACCESS POLICY (no policy= option): access is decided by the file modes alone, so every "
            "process those modes admit%s reads and writes plaintext; see sealfs-policy(5)",
            " (any user: allow_other is set)" if cfg.allow_other else "",
        )
    else:
        for warning in guard.policy.warnings:
            log.warning("policy: %s", warning)
        log.info(
            "policy %s in force: %d workloads, %d rules, audit = %s",
            guard.policy_file,
            len(guard.policy.workloads),
            len(guard.policy.rules),
            guard.policy.audit,
        )
    try:
        trio.run(_main, fs, pyfuse3, guard, cfg.mountpoint, ops.serving)
    except BaseException:
        log.exception("the FUSE main loop failed")
        raise
    finally:
        try:
            fs.sync_all()
        finally:
            pyfuse3.close(unmount=True)
            vol.close()
            if guard is not None:
                guard.close()
            log.info("unmounted %s", cfg.mountpoint)
            if pidfile:
                with contextlib.suppress(OSError):
                    os.unlink(pidfile)
    return 0


async def _main(fs: Filesystem, pyfuse3, guard: Guard | None, mountpoint: str, serving) -> None:
    import trio

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_tune_readahead, mountpoint, serving)
        nursery.start_soon(_signals, fs, pyfuse3, nursery.cancel_scope, guard)
        nursery.start_soon(_flush_timer, fs, guard)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _signals(fs: Filesystem, pyfuse3, scope, guard: Guard | None = None) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                reopen_log_file()
                if guard is None:
                    log.info("SIGHUP: nothing to reload (no policy= given)")
                else:
                    log.info("SIGHUP: reloading the policy %s", guard.policy_file)
                    await trio.to_thread.run_sync(guard.reload)
                continue
            log.info("signal %d: uploading pending data and unmounting", signum)
            await trio.to_thread.run_sync(fs.sync_all)
            pyfuse3.terminate()
            return


async def _tune_readahead(mountpoint: str, serving) -> None:
    """Raise readahead once the kernel has taken the answer to FUSE_INIT,
    which caps it at what the kernel offered: it sends no other request
    before, so from the first request served on (``serving``, a
    trio.Event) the value stays."""
    import trio

    await serving.wait()
    await trio.to_thread.run_sync(_raise_readahead, mountpoint)


async def _flush_timer(fs: Filesystem, guard: Guard | None = None) -> None:
    import trio

    while True:
        await trio.sleep(METADATA_FLUSH_SECONDS)
        await trio.to_thread.run_sync(fs.flush_metadata)
        if guard is not None:
            await trio.to_thread.run_sync(guard.tick)


def _report(fd: int | None, message: str) -> None:
    """Tell the waiting parent: empty message = mounted, else the error."""
    if fd is None:
        return
    try:
        os.write(fd, (message or "ok").encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def daemonize_and_serve(vol: Volume, cfg: MountConfig) -> int:
    """Fork; the parent returns once the child mounted (or failed)."""
    if cfg.foreground:
        setup_logging(cfg)
        return serve(vol, cfg)
    r, w = os.pipe()
    pid = os.fork()
    if pid:  # parent: wait for the child's word
        os.close(w)
        with os.fdopen(r, "rb") as f:
            word = f.readline().decode(errors="replace").strip()
        if word == "ok":
            return 0
        if not word:
            _, status = os.waitpid(pid, 0)
            word = f"the mount daemon exited before mounting (status {status})"
        raise MountError(word)
    # child
    os.close(r)
    os.setsid()
    if os.fork():  # the session leader exits; the daemon can never get a tty
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    code = 1
    try:
        setup_logging(cfg)
        code = serve(vol, cfg, w)
    except SealfsError as exc:
        _report(w, str(exc))
        log.error("%s", exc)
    except BaseException as exc:  # noqa: BLE001 - a daemon must report, not vanish
        _report(w, f"mount daemon failed: {exc}")
        log.exception("mount daemon failed")
    finally:
        logging.shutdown()
        os._exit(code)
