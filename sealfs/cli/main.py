"""The ``sealfs`` command.

Every subcommand maps errors to one line on stderr and the exit code of
:class:`sealfs.errors.ExitCode`.  Secrets never come from argv: passphrases
from a prompt, ``--passfile``, ``--extpass`` or ``SEALFS_PASSPHRASE``.

``sealfs STORE MOUNTPOINT -o OPTIONS`` (no subcommand) is how mount.fuse3
runs us for an fstab line of type ``fuse.sealfs``; it means ``mount``.

This module holds the argument parser and the dispatch; the commands are in
``files`` (the offline file commands), ``admin`` (volume, keys, fsck,
policy, doctor) and ``mount`` (mount, umount).
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import ExitCode, SealfsError
from ..keys.slots import DEFAULT_BLOCK_SIZE
from .admin import cmd_doctor, cmd_fsck, cmd_init, cmd_key, cmd_policy, cmd_rekey
from .files import cmd_cat, cmd_get, cmd_ls, cmd_mkdir, cmd_put, cmd_rm
from .mount import cmd_mount, cmd_umount

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

#: The operations of sealfs-policy(5) (sealfs.policy.decisions.OPERATIONS, in order).
POLICY_OPERATIONS = ("read", "write", "create", "delete", "list", "rename", "setattr", "xattr")


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
