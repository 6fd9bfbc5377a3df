"""The ``sealfs`` command.

Every subcommand maps errors to one line on stderr and the exit code of
:class:`sealfs.errors.ExitCode`.  Secrets never come from argv: passphrases
from a prompt, ``--passfile``, ``--extpass`` or ``SEALFS_PASSPHRASE``.

``sealfs STORE MOUNTPOINT -o OPTIONS`` (no subcommand) is how mount.fuse3
runs us for an fstab line of type ``fuse.sealfs``; it means ``mount``.
"""

from __future__ import annotations

import argparse
import errno
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import time

from .. import __version__
from ..errors import ExitCode, FsError, SealfsError, UsageError
from ..keys import sources
from ..keys.slots import ARGON2_DEFAULTS, ARGON2_LIMITS, DEFAULT_BLOCK_SIZE, Credential, KeyFile, KmsKey, Passphrase
from . import options as optparse

COMMANDS = (
    "init",
    "mount",
    "umount",
    "ls",
    "cat",
    "get",
    "put",
    "rm",
    "mkdir",
    "key",
    "rekey",
    "fsck",
    "policy",
    "doctor",
)


# -- helpers ---------------------------------------------------------------------------


def _open_store(url: str, opts: dict[str, str], *, create: bool = False):
    from ..store import open_store

    return open_store(url, optparse.store_options(opts), create=create)


def _credentials(opts: dict[str, str], *, confirm: bool = False, prompt: str = "Passphrase: ") -> list[Credential]:
    if "keyfile" in opts:
        path = opts["keyfile"]
        return [KeyFile(path, sources.read_keyfile(path))]
    if "kms" in opts:
        return [KmsKey(region=opts.get("kms_region"), endpoint=opts.get("kms_endpoint"))]
    secret = sources.read_passphrase(
        passfile=opts.get("passfile"), extpass=opts.get("extpass"), confirm=confirm, prompt=prompt
    )
    return [Passphrase(secret)]


def _opts(args) -> dict[str, str]:
    """-o options plus the explicit key flags, in one dict."""
    opts = optparse.parse(getattr(args, "o", None))
    for flag in ("keyfile", "passfile", "extpass"):
        value = getattr(args, flag, None)
        if value:
            opts[flag] = value
    if getattr(args, "kms", False):
        opts["kms"] = ""
    return opts


def _volume(args):
    from ..volume import Volume

    opts = _opts(args)
    store = _open_store(args.store, opts)
    return Volume.open(store, _credentials(opts))


class Progress:
    """A one-line progress meter on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str):
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.done >= self.total):
            self._last = now
            pct = min(100, 100 * self.done // self.total)
            rate = self.done / max(now - self._start, 1e-6) / 1e6
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}% {rate:7.1f} MB/s")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


# -- commands ------------------------------------------------------------------------------


def _argon2(args) -> dict:
    """Argon2id parameters for a new passphrase slot, within the bounds a
    config may carry (ARGON2_LIMITS)."""
    argon2 = dict(ARGON2_DEFAULTS)
    for flag, name in (("argon2_memory", "memory_kib"), ("argon2_iterations", "iterations")):
        value = getattr(args, flag, None)
        if value is None:
            continue
        low = 8 if name == "memory_kib" else 1
        if not low <= value <= ARGON2_LIMITS[name]:
            raise UsageError(f"--{flag.replace('_', '-')} must be from {low} to {ARGON2_LIMITS[name]}")
        argon2[name] = value
    return argon2


def cmd_init(args) -> int:
    from ..volume import Volume

    opts = _opts(args)
    argon2 = _argon2(args)
    if args.kms_key:
        cred: Credential = KmsKey(args.kms_key, opts.get("kms_region") or opts.get("region"), opts.get("kms_endpoint"))
    elif "keyfile" in opts:
        path = opts["keyfile"]
        data = sources.read_keyfile(path) if os.path.exists(path) else sources.create_keyfile(path)
        cred = KeyFile(path, data)
    else:
        cred = Passphrase(
            sources.read_passphrase(
                passfile=opts.get("passfile"), extpass=opts.get("extpass"), confirm=True, prompt="New passphrase: "
            )
        )
    store = _open_store(args.store, opts, create=True)
    vol = Volume.create(store, cred, block_size=optparse.size(args.block_size, "--block-size"), argon2=argon2)
    print(
        f"created sealfs volume {vol.config.volume_id.hex()} in {store.url} "
        f"(block size {vol.layout.block_size}, key slot 1: {type(cred).__name__.lower()})"
    )
    vol.close()
    return 0


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
    opts = _opts(args)
    cfg = _mount_config(args, opts)
    store = _open_store(args.store, opts)
    vol = Volume.open(store, _credentials(opts))
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


def cmd_ls(args) -> int:
    vol = _volume(args)
    try:
        e = vol.resolve(args.path, follow=True)
        damaged = _ls(vol, e, args.path.rstrip("/") or "/", args, top=True)
    finally:
        vol.close()
    return ExitCode.INTEGRITY if damaged else 0


def _ls(vol, e, path: str, args, top: bool) -> int:
    """List ``e``; the number of damaged entries left out (each said on stderr)."""
    if not e.is_dir:
        print(_ls_line(vol, e, path, args))
        return 0
    damaged = 0

    def skip(key: str, exc: Exception) -> None:
        nonlocal damaged
        damaged += 1
        print(f"sealfs: skipping damaged entry of {path}: {exc}", file=sys.stderr)

    entries = sorted(vol.listdir(e.id, on_error=skip), key=lambda x: x.name)
    if args.recursive and not top:
        print()
    if args.recursive:
        print(f"{path}:")
    for child in entries:
        print(_ls_line(vol, child, os.fsdecode(child.name), args))
    if args.recursive:
        for child in entries:
            if child.is_dir:
                damaged += _ls(vol, child, path.rstrip("/") + "/" + os.fsdecode(child.name), args, top=False)
    return damaged


def _ls_line(vol, e, name: str, args) -> str:
    if not args.long:
        return name
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime_ns / 1e9))
    suffix = f" -> {os.fsdecode(vol.readlink(e))}" if e.is_link else ""
    return f"{stat.filemode(e.mode)} {e.uid:>5} {e.gid:>5} {e.size:>12} {when} {name}{suffix}"


def _file(vol, path: str):
    e = vol.resolve(path)
    if e.is_dir:
        raise FsError(errno.EISDIR, f"{path}: is a directory")
    return e


def _copy_out(vol, e, out, label: str) -> None:
    progress = Progress(e.size, label)
    reader = vol.reader(e)
    for chunk in reader.iter_chunks():
        out.write(chunk)
        progress(len(chunk))
    progress.finish()


def cmd_cat(args) -> int:
    vol = _volume(args)
    try:
        out = sys.stdout.buffer
        for path in args.paths:
            e = _file(vol, path)
            for chunk in vol.reader(e).iter_chunks():
                out.write(chunk)
        out.flush()
    finally:
        vol.close()
    return 0


def cmd_get(args) -> int:
    vol = _volume(args)
    try:
        e = _file(vol, args.path)
        dest = args.dest or os.path.basename(args.path.rstrip("/"))
        if dest == "-":
            _copy_out(vol, e, sys.stdout.buffer, args.path)
            return 0
        if os.path.isdir(dest):
            dest = os.path.join(dest, os.fsdecode(e.name))
        tmp = f"{dest}.sealfs-partial"
        try:
            with open(tmp, "wb") as f:
                _copy_out(vol, e, f, args.path)
            os.chmod(tmp, e.mode & 0o7777)
            os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    finally:
        vol.close()
    return 0


def cmd_put(args) -> int:
    from ..volume import now_ns

    vol = _volume(args)
    try:
        if args.src == "-":
            data = sys.stdin.buffer.read()
            size, mode, mtime = len(data), 0o644, now_ns()

            def block(i: int, bs=vol.layout.block_size) -> bytes:
                return data[i * bs : (i + 1) * bs]
        else:
            try:
                fd = os.open(args.src, os.O_RDONLY)
            except OSError as exc:
                raise UsageError(f"cannot read {args.src}: {exc.strerror}") from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{args.src} is not a regular file")
            size, mode, mtime = st.st_size, st.st_mode & 0o7777, st.st_mtime_ns

            def block(i: int, bs=vol.layout.block_size) -> bytes:
                want = min(bs, size - i * bs)
                got = os.pread(fd, want, i * bs)
                if len(got) != want:
                    raise SealfsError(f"{args.src} changed size while being read")
                return got

        target = args.path
        try:
            existing = vol.resolve(target)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            existing = None
        if existing is not None and existing.is_dir:
            name = os.fsencode(os.path.basename(args.src.rstrip("/"))) if args.src != "-" else b""
            if not name:
                raise UsageError(f"{target} is a directory; give the file name")
            parent = existing
            try:
                existing = vol.lookup(parent.id, name)
            except FsError:
                existing = None
        else:
            parent, name = vol.split(target)
        progress = Progress(vol.layout.object_size_for(size), f"put {target}")
        if existing is not None:
            if not existing.is_file:
                raise FsError(errno.EISDIR, f"{target}: is not a regular file")
            entry = existing
            entry.mtime_ns = entry.ctime_ns = mtime
            vol.write_content(entry, size, block, if_match=existing.etag, progress=progress)
        else:
            entry = vol.new_file_entry(parent.id, name, mode, os.getuid(), os.getgid())
            entry.mtime_ns = mtime
            vol.write_content(entry, size, block, if_none_match=True, progress=progress)
        progress.finish()
    finally:
        vol.close()
    return 0


def cmd_rm(args) -> int:
    vol = _volume(args)
    try:
        for path in args.paths:
            e = vol.resolve(path, follow=False)
            if e.is_dir and not args.recursive:
                raise FsError(errno.EISDIR, f"{path}: is a directory (use -r)")
            _remove_tree(vol, e)
    finally:
        vol.close()
    return 0


def _remove_tree(vol, e) -> None:
    if e.is_dir:
        for child in vol.listdir(e.id):
            _remove_tree(vol, child)
    vol.remove(e)


def cmd_mkdir(args) -> int:
    vol = _volume(args)
    try:
        for path in args.paths:
            if args.parents:
                parts = [p for p in os.fsencode(path).split(b"/") if p]
                cur = vol.root()
                for part in parts:
                    try:
                        cur = vol.lookup(cur.id, part)
                    except FsError as exc:
                        if exc.errno != errno.ENOENT:
                            raise
                        cur = vol.mkdir(cur.id, part, 0o755, os.getuid(), os.getgid())
                    if not cur.is_dir:
                        raise FsError(errno.ENOTDIR, f"{os.fsdecode(part)} is not a directory")
            else:
                parent, name = vol.split(path)
                vol.mkdir(parent.id, name, 0o755, os.getuid(), os.getgid())
    finally:
        vol.close()
    return 0


def cmd_key(args) -> int:
    from ..volume import read_config

    if args.key_command == "list":
        opts = _opts(args)
        config, _ = read_config(_open_store(args.store, opts))
        print("slot\ttype\tdetails")
        for line in config.describe_slots():
            print(line)
        return 0
    vol = _volume(args)
    try:
        if args.key_command == "add":
            argon2 = _argon2(args)
            cred = _new_credential(args)
            slot = vol.config.add_slot(vol.keyring, cred, argon2)
            vol.save_config()
            print(f"added key slot {slot} ({type(cred).__name__.lower()})")
        elif args.key_command == "remove":
            vol.config.remove_slot(vol.keyring, args.slot)
            vol.save_config()
            print(f"removed key slot {args.slot}")
        elif args.key_command == "rotate":
            gen = vol.config.rotate(vol.keyring)
            vol.save_config()
            print(f"volume key generation {gen} is now current; run 'sealfs rekey' to re-wrap existing files")
    finally:
        vol.close()
    return 0


def _new_credential(args) -> Credential:
    if args.new_keyfile:
        path = args.new_keyfile
        data = sources.read_keyfile(path) if os.path.exists(path) else sources.create_keyfile(path)
        return KeyFile(path, data)
    if args.new_kms_key:
        return KmsKey(args.new_kms_key, args.kms_region, args.kms_endpoint)
    if args.new_passfile:
        return Passphrase(sources.read_passfile(args.new_passfile))
    env = os.environ.get(sources.ENV_NEW_PASSPHRASE)
    if env:
        return Passphrase(env.encode())
    return Passphrase(sources.read_passphrase(prompt="New passphrase: ", confirm=True, use_env=False))


#: The operations of sealfs-policy(5) (sealfs.policy.rules.OPERATIONS, in order).
POLICY_OPERATIONS = ("read", "write", "create", "delete", "list", "rename", "setattr", "xattr")


def cmd_policy(args) -> int:
    """``policy check``: 0 valid (warnings on stderr), 2 invalid.
    ``policy explain``: prints the reasoning; 0 if allowed, 1 if denied."""
    from ..policy.rules import load_policy

    if args.policy_command == "check":
        policy = load_policy(args.file)
        for warning in policy.warnings:
            print(f"sealfs: warning: {warning}", file=sys.stderr)
        print(
            f"{args.file}: valid: {len(policy.workloads)} workloads, {len(policy.rules)} rules, audit = {policy.audit}"
        )
        return 0
    from ..policy.identity import Identifier

    path = args.path
    if not path.startswith("/"):
        raise UsageError(f"{path}: give the path inside the volume, starting with / (such as /payments/x)")
    path = posixpath.normpath("/" + path.lstrip("/"))
    policy = load_policy(args.policy)
    identifier = Identifier()  # (hashes every file, to show it, up to the policy's max_hash_mib)
    identifier.hashes.max_bytes = policy.max_hash_bytes
    ident = identifier.identify_process(args.pid)
    for line in policy.explain(ident, args.op, path):
        print(line)
    return 0 if policy.decide(ident, args.op, path).allowed else 1


def cmd_doctor(args) -> int:
    """Which host settings the mount options' policy and key files rely
    on, and what they are now: 0 when nothing is a warning, 1 otherwise."""
    from ..policy.host import report
    from ..policy.rules import load_policy

    opts = optparse.parse(args.o)
    policy_file = args.policy or opts.get("policy")
    policy = load_policy(optparse.absolute(policy_file, "policy")) if policy_file else None
    secrets = tuple(
        (what, optparse.absolute(opts[key], key))
        for key, what in (("keyfile", "key file"), ("passfile", "pass file"))
        if key in opts
    )
    findings = report(policy, secrets)
    for f in findings:
        print(f"{f.level}: {f.text}")
    warnings = sum(f.level == "warning" for f in findings)
    print(f"{warnings} warning{'' if warnings == 1 else 's'}")
    return 1 if warnings else 0


def cmd_fsck(args) -> int:
    from .. import rollback
    from ..fsck import check

    if args.record and args.repair:
        raise UsageError("--record records the state as found: run --repair first, then --record")
    vol = _volume(args)
    meters: list[Progress] = []

    def progress(total: int) -> Progress:
        meters.append(Progress(total, "fsck"))
        return meters[-1]

    findings: list = []
    try:
        since = rollback.read(vol, args.since) if args.since else None
        report = check(vol, repair=args.repair, threads=max(1, args.threads), progress=progress)
        if since is not None:
            findings = rollback.compare(since[1], report.entries)
        record = rollback.make(vol, report.entries) if args.record else None
    finally:
        vol.close()
        for meter in meters:
            meter.finish()
    for what, why in report.damaged:
        print(f"DAMAGED   {what}: {why}")
    for what, why in report.leftovers:
        print(f"{'REMOVED ' if args.repair else 'LEFTOVER'}  {what}: {why}")
    for line in report.warnings:
        print(f"WARNING   {line}")
    for f in findings:
        print(f"{f.what:<11} {f.path}: {f.message}")
    print(
        f"{report.files} files ({report.bytes} bytes), {report.dirs} directories, {report.links} symlinks checked; "
        f"{len(report.damaged)} damaged, {len(report.leftovers)} leftovers"
        + (f" ({report.repaired} removed)" if args.repair else "")
        + f", {len(report.warnings)} warnings"
    )
    if since is not None:
        print(
            f"since the record of {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(since[0]))}: "
            f"{len(since[1])} entries recorded, {len(findings)} rolled back or deleted"
        )
    if record is not None:
        if report.damaged or findings:
            print(f"record {args.record} not written: the volume has damaged, rolled back or deleted entries")
        else:
            rollback.write(args.record, record)
            print(f"recorded {len(report.entries)} entries in {args.record}")
    if report.damaged or findings:
        return ExitCode.INTEGRITY
    if report.warnings or (report.leftovers and not args.repair):
        return ExitCode.FAILURE
    return ExitCode.OK


def cmd_rekey(args) -> int:
    vol = _volume(args)
    done = skipped = 0
    try:
        stack = [vol.root()]
        while stack:
            d = stack.pop()
            for e in vol.listdir(d.id):
                if e.is_dir:
                    stack.append(e)
                elif e.is_file:
                    if vol.rekey_file(e):
                        done += 1
                    else:
                        skipped += 1
        print(f"re-wrapped {done} files under key generation {vol.keyring.current} ({skipped} already current)")
    finally:
        vol.close()
    return 0


# -- argument parsing --------------------------------------------------------------------


def _key_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("unlocking (never pass a passphrase on the command line)")
    g.add_argument("--passfile", metavar="FILE", help="read the passphrase from the first line of FILE")
    g.add_argument("--extpass", metavar="CMD", help="run CMD and read the passphrase from its output")
    g.add_argument("--keyfile", metavar="FILE", help="unlock with a key file")
    g.add_argument("--kms", action="store_true", help="unlock with the volume's AWS KMS key slot")
    p.add_argument(
        "-o",
        metavar="OPTIONS",
        action="append",
        help="comma-separated options: endpoint=URL, region=R, path_style, keyfile=, passfile=, "
        "extpass=, kms, kms_endpoint=, kms_region=",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealfs",
        description="Encrypted filesystem over an object store, with per-workload access policy.",
        epilog="STORE is file:///path (a local directory) or s3://bucket[/prefix]. "
        "The passphrase may also come from SEALFS_PASSPHRASE.",
    )
    parser.add_argument("--version", action="version", version=f"sealfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="create a volume in a store")
    p.add_argument("store")
    p.add_argument(
        "--block-size",
        default=str(DEFAULT_BLOCK_SIZE),
        metavar="SIZE",
        help="plaintext block size, a power of two from 4K to 1M (default 64K)",
    )
    p.add_argument("--kms-key", metavar="KEY_ID", help="protect the first key slot with this AWS KMS key")
    p.add_argument(
        "--argon2-memory", type=int, metavar="KIB", help="Argon2id memory for the passphrase slot (default 65536)"
    )
    p.add_argument("--argon2-iterations", type=int, metavar="N", help="Argon2id passes (default 3)")
    _key_flags(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("mount", help="mount a volume (returns once mounted)")
    p.add_argument("store")
    p.add_argument("mountpoint")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    _key_flags(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount (waits until pending data is uploaded)")
    p.add_argument("mountpoint")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now, clean up when no longer busy")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("ls", help="list a directory of a volume")
    p.add_argument("store")
    p.add_argument("path", nargs="?", default="/")
    p.add_argument("-l", "--long", action="store_true", help="mode, owner, size, time")
    p.add_argument("-R", "--recursive", action="store_true")
    _key_flags(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="write files of a volume to stdout")
    p.add_argument("store")
    p.add_argument("paths", nargs="+", metavar="path")
    _key_flags(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("get", help="copy a file out of a volume")
    p.add_argument("store")
    p.add_argument("path")
    p.add_argument("dest", nargs="?", help="local file or directory ('-' for stdout)")
    _key_flags(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("put", help="copy a local file into a volume")
    p.add_argument("store")
    p.add_argument("src", help="local file ('-' for stdin)")
    p.add_argument("path", help="path in the volume (an existing directory keeps the name)")
    _key_flags(p)
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("rm", help="remove files (and with -r, directories)")
    p.add_argument("store")
    p.add_argument("paths", nargs="+", metavar="path")
    p.add_argument("-r", "--recursive", action="store_true")
    _key_flags(p)
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("mkdir", help="create directories")
    p.add_argument("store")
    p.add_argument("paths", nargs="+", metavar="path")
    p.add_argument("-p", "--parents", action="store_true", help="create missing parents; no error if it exists")
    _key_flags(p)
    p.set_defaults(func=cmd_mkdir)

    p = sub.add_parser("key", help="manage key slots and key generations")
    ksub = p.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    k = ksub.add_parser("list", help="list key slots (needs no key)")
    k.add_argument("store")
    k.add_argument("-o", metavar="OPTIONS", action="append", help="store options (endpoint=, region=, path_style)")
    k = ksub.add_parser("add", help="add a key slot")
    k.add_argument("store")
    g = k.add_argument_group("the new slot (default: a new passphrase, prompted or SEALFS_NEW_PASSPHRASE)")
    g.add_argument("--new-passfile", metavar="FILE")
    g.add_argument("--new-keyfile", metavar="FILE", help="created with 64 random bytes if missing")
    g.add_argument("--new-kms-key", metavar="KEY_ID")
    g.add_argument("--kms-region")
    g.add_argument("--kms-endpoint")
    k.add_argument("--argon2-memory", type=int, metavar="KIB")
    _key_flags(k)
    k = ksub.add_parser("remove", help="remove a key slot (never the last)")
    k.add_argument("store")
    k.add_argument("slot", type=int)
    _key_flags(k)
    k = ksub.add_parser("rotate", help="start a new volume key generation for new files")
    k.add_argument("store")
    _key_flags(k)
    p.set_defaults(func=cmd_key)

    p = sub.add_parser("rekey", help="re-wrap every file's key under the current generation (headers only)")
    p.add_argument("store")
    _key_flags(p)
    p.set_defaults(func=cmd_rekey)

    p = sub.add_parser(
        "fsck",
        help="authenticate every object; report damage and leftovers (exit 0 clean, "
        "1 leftovers or warnings, 4 damaged objects)",
    )
    p.add_argument("store")
    p.add_argument("--repair", action="store_true", help="remove leftovers nothing refers to (never a damaged object)")
    p.add_argument("--threads", type=int, default=8, metavar="N", help="files checked in parallel (default 8)")
    p.add_argument(
        "--record", metavar="FILE", help="write the state of every entry (sealed) to FILE, for a later --since"
    )
    p.add_argument(
        "--since",
        metavar="FILE",
        help="report entries rolled back to an older version or deleted since the record FILE (exit 4)",
    )
    _key_flags(p)
    p.set_defaults(func=cmd_fsck)

    p = sub.add_parser("policy", help="check an access policy file, or explain a decision (see sealfs-policy(5))")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    k = psub.add_parser("check", help="validate a policy file: exit 0 if valid, 2 with FILE:LINE: reason if not")
    k.add_argument("file")
    k = psub.add_parser("explain", help="which workloads a running process is in, which rule decides, and why")
    k.add_argument("--policy", required=True, metavar="FILE", help="the policy file to evaluate")
    k.add_argument("--pid", required=True, type=int, help="the process whose identity is read from /proc")
    k.add_argument("--op", default="read", choices=POLICY_OPERATIONS, help="the operation (default read)")
    k.add_argument("path", help="the path inside the volume, such as /payments/2024.csv")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser(
        "doctor",
        help="which host settings a policy and key files rely on, and what they are now (exit 0 all well, 1 warnings)",
    )
    p.add_argument("--policy", metavar="FILE", help="the policy file (else policy= of -o)")
    p.add_argument(
        "-o",
        metavar="OPTIONS",
        action="append",
        help="the mount's options, as in fstab: policy=, keyfile=, passfile= are checked",
    )
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # mount.fuse3 (fstab type fuse.sealfs) runs: sealfs STORE MOUNTPOINT -o OPTS
    if argv and "://" in argv[0] and argv[0] not in COMMANDS:
        argv = ["mount", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        return args.func(args)
    except SealfsError as exc:
        print(f"sealfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("sealfs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
