"""``mount`` and ``umount``: the checks made before the daemon starts, and
the wait for it to finish its uploads after the unmount."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from ..errors import SealfsError, UsageError
from ..keys import sources
from . import options as optparse
from .common import credentials, options_of, store_for


def _mount_config(args, opts: dict[str, str]):
    from ..daemon import MountConfig, check_mountpoint
    from ..fs.core import Options

    fs_opts = Options(read_only="ro" in opts)
    if "cache_size" in opts:
        fs_opts.cache_bytes = optparse.size(opts["cache_size"], "cache_size")
    if "dirty_size" in opts:
        fs_opts.dirty_bytes = optparse.size(opts["dirty_size"], "dirty_size")
    if "cache_dir" in opts:
        fs_opts.cache_dir = optparse.absolute(opts["cache_dir"], "cache_dir")
    _check_cache_dir(fs_opts.cache_dir)
    cfg = MountConfig(
        mountpoint=check_mountpoint(args.mountpoint),
        fsname=args.store,
        foreground=args.foreground or "foreground" in opts,
        allow_other="allow_other" in opts,
        read_only="ro" in opts,
        log_file=optparse.absolute(opts["log"], "log") if "log" in opts else None,
        log_level=optparse.log_level(opts.get("log_level", "info")),
        attr_timeout=optparse.seconds(opts.get("attr_timeout", "1"), "attr_timeout"),
        entry_timeout=optparse.seconds(opts.get("entry_timeout", "1"), "entry_timeout"),
        fs_options=fs_opts,
    )
    if "audit_log" in opts and "policy" not in opts:
        raise UsageError("audit_log= needs policy=: without a policy nothing is decided, so nothing is audited")
    if "policy" in opts:
        from ..policy.guard import open_guard

        # load and check it now: a broken policy is a one-line error, not a daemon that never mounts
        cfg.guard = open_guard(optparse.absolute(opts["policy"], "policy"), opts.get("audit_log"))
        for warning in cfg.guard.policy.warnings:
            print(f"sealfs: warning: {warning}", file=sys.stderr)
    return cfg


def _check_cache_dir(path: str) -> None:
    """The spool directory must be usable now, not at the first large write."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cache_dir {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cache_dir {path} is not writable by this user")


def cmd_mount(args) -> int:
    from ..daemon import daemonize_and_serve, harden
    from ..volume import Volume

    harden()
    opts = options_of(args)
    cfg = _mount_config(args, opts)
    store = store_for(args.store, opts)
    vol = Volume.open(store, credentials(opts))
    vol.root()  # fail now, not in the daemon, if the root entry is unreadable
    sources.scrub_environment()  # not in the daemon's /proc/PID/environ, nor its children's
    return daemonize_and_serve(vol, cfg)


def cmd_umount(args) -> int:
    path = os.path.abspath(args.mountpoint)
    if not os.path.ismount(path):
        raise UsageError(f"{path} is not a mount point")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    argv = [tool, "-u", path] if tool else ["umount", path]
    if args.lazy:
        argv = [tool, "-u", "-z", path] if tool else ["umount", "-l", path]
    out = subprocess.run(argv, stderr=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        msg = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"{argv[0]} failed"
        raise SealfsError(f"cannot unmount {path}: {msg}")
    # the daemon uploads what is pending, then exits: wait for it
    from ..daemon import daemon_pid

    pid = daemon_pid(path)
    deadline = time.monotonic() + 600
    while pid is not None and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0
