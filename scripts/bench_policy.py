"""W8: the cost of the access policy on the hot path (a benchmark, not a test).

    .venv/bin/python scripts/bench_policy.py [--n 10000] [--rounds 3]

Mounts two volumes on local stores at once: one without a policy, one
with a policy of six rules (the shape of sealfs-policy(5)'s example, plus
a hiding rule) that names this very process.  Times N open+read+close of
a 4 KiB file on each (after 200 untimed ones, so the identity and hash
caches are warm), the two taking turns every 500 iterations so that load
from elsewhere on the machine falls on both alike.  Prints medians, best times and their ratios; asserts
nothing (the machine's noise is part of what it prints).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEALFS = [sys.executable, "-m", "sealfs.cli.main"]
ALL = '["read", "write", "create", "delete", "list", "rename", "setattr"]'


def policy_text() -> str:
    me = os.path.realpath(sys.executable)
    return f"""
[workloads.bench]
exe = "{me}"
uid = {os.getuid()}
untraced = true
no_preload = true

[workloads.other]
uid = 65534

[[rule]]
paths = ["/customers/**"]
workloads = ["other"]
allow = {ALL}

[[rule]]
paths = ["/payments/**"]
workloads = ["other"]
allow = {ALL}

[[rule]]
paths = ["/customers/**", "/payments/**"]
workloads = ["bench"]
allow = ["read", "list"]

[[rule]]
paths = ["/reports/**"]
workloads = ["bench"]
allow = {ALL}

[[rule]]
paths = ["/", "/data/**"]
workloads = ["bench"]
allow = {ALL}

[[rule]]
paths = ["/customers/secret/**"]
workloads = ["bench"]
deny = ["read", "list"]
hide = true
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _cycle(path: Path, n: int) -> float:
    """Seconds for n open+read+close of ``path``."""
    start = time.perf_counter()
    for _ in range(n):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_policy.py")
    ap.add_argument("--n", type=int, default=10_000, help="iterations per mount and round (default 10000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=500, help="iterations before switching mounts (default 500)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealfs-w8-"))
    pol = work / "policy.toml"
    pol.write_text(policy_text())
    mounts: dict[str, Path] = {}
    try:
        for label in ("off", "on"):
            d = work / label
            d.mkdir()
            url, key, mnt = (d / "store").as_uri(), d / "key", d / "mnt"
            mnt.mkdir()
            sh(*SEALFS, "init", url, "--keyfile", str(key))
            opts = f"keyfile={key},cache_dir={d / 'cache'},log={d / 'daemon.log'}"
            sh(*SEALFS, "mount", url, str(mnt), "-o", opts)  # (no policy yet: write the file)
            (mnt / "data").mkdir()
            (mnt / "data" / "small").write_bytes(os.urandom(4096))
            sh(*SEALFS, "umount", str(mnt))
            if label == "on":
                opts += f",policy={pol},audit_log={work / 'audit.log'}"
            sh(*SEALFS, "mount", url, str(mnt), "-o", opts)
            mounts[label] = mnt / "data" / "small"
        for path in mounts.values():
            _cycle(path, 200)  # warm: identity, hashes, kernel caches
        # Both mounts are up at once and take turns every --chunk iterations,
        # so that load from elsewhere on the machine falls on both alike.
        times: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            spent = {"off": 0.0, "on": 0.0}
            done = 0
            while done < args.n:
                step = min(args.chunk, args.n - done)
                for label, path in mounts.items():
                    spent[label] += _cycle(path, step)
                done += step
            for label, seconds in spent.items():
                times[label].append(seconds)
    finally:
        for label in mounts:
            subprocess.run([*SEALFS, "umount", str(work / label / "mnt")], capture_output=True, check=False)
        denials = (work / "audit.log").read_text().count('"deny"') if (work / "audit.log").exists() else 0
        shutil.rmtree(work, ignore_errors=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"W8: {args.n} x open+read+close of a 4 KiB file per round, local store, {args.rounds} rounds, "
          f"mounts alternating every {args.chunk}")
    for label in ("off", "on"):
        med = statistics.median(times[label])
        print(f"  policy {label:3}: median {med:7.3f} s ({med / args.n * 1e6:6.1f} us/iteration)  "
              f"[{', '.join(f'{t:.3f}' for t in times[label])}]")
    ratios = [b / a for a, b in zip(times["off"], times["on"])]
    print(f"  ratio on/off: median {on / off:.3f}; per round {', '.join(f'{r:.3f}' for r in ratios)}  "
          "(target <= 1.3)")
    print(f"  audit denials during the run: {denials} (expected 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
