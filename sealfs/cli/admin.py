"""The commands on a volume as a whole: ``init``, ``key``, ``rekey`` and
``fsck``; and the ones on the host: ``policy`` and ``doctor``."""

from __future__ import annotations

import os
import posixpath
import sys
import time

from ..errors import ExitCode, UsageError
from ..keys import sources
from ..keys.slots import ARGON2_DEFAULTS, ARGON2_LIMITS, Credential, KeyFile, KmsKey, Passphrase
from . import options as optparse
from .common import Progress, open_volume, options_of, store_for


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

    opts = options_of(args)
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
    store = store_for(args.store, opts, create=True)
    vol = Volume.create(store, cred, block_size=optparse.size(args.block_size, "--block-size"), argon2=argon2)
    print(
        f"created sealfs volume {vol.config.volume_id.hex()} in {store.url} "
        f"(block size {vol.layout.block_size}, key slot 1: {type(cred).__name__.lower()})"
    )
    vol.close()
    return 0


def cmd_key(args) -> int:
    from ..volume import read_config

    if args.key_command == "list":
        opts = options_of(args)
        config, _ = read_config(store_for(args.store, opts))
        print("slot\ttype\tdetails")
        for line in config.describe_slots():
            print(line)
        return 0
    vol = open_volume(args)
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
    vol = open_volume(args)
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
    vol = open_volume(args)
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
