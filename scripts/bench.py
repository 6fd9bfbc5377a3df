"""sealfs benchmarks (run through scripts/bench).

Workloads (sizes shrink with --quick):
  W1  sequential write, dd bs=1M conv=fsync                         MB/s
  W2  sequential read of W1's file after remount + dropped caches   MB/s
  W4  create N files of 4 KiB; ls -l cold (after remount) and warm;
      read them all back                                             seconds
  W7  peak RSS of the daemon while writing a large file (dd)        MiB

Targets: "plain" (a local directory, the ceiling) and sealfs on each store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEALFS = [sys.executable, "-m", "sealfs.cli.main"]


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


class MotoServer:
    def __enter__(self):
        # moto accepts any credentials; these keep boto3 (and the sealfs
        # daemons, which inherit them) away from real AWS configuration
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("moto server did not start")
                time.sleep(0.1)
        return self

    def bucket(self) -> str:
        import boto3

        name = f"bench-{os.urandom(4).hex()}"
        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1").create_bucket(Bucket=name)
        return name

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


class Target:
    """Where a workload runs: a directory, possibly a sealfs mount."""

    def __init__(self, name: str, work: Path):
        self.name = name
        self.work = work

    @property
    def path(self) -> Path:
        return self.work / "dir"

    def setup(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def remount(self) -> None:
        drop_caches()

    def daemon_pid(self) -> int | None:
        return None

    def teardown(self) -> None:
        pass


class SealfsTarget(Target):
    def __init__(self, name: str, work: Path, url: str, store_opts: dict[str, str]):
        super().__init__(name, work)
        self.url = url
        self.store_opts = store_opts

    @property
    def path(self) -> Path:
        return self.work / "mnt"

    def _opts(self) -> str:
        opts = {"keyfile": str(self.work / "key"), "cache_dir": str(self.work / "cache"),
                "log": str(self.work / "daemon.log"), **self.store_opts}
        return ",".join(f"{k}={v}" for k, v in opts.items())

    def setup(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        store = ["-o", ",".join(f"{k}={v}" for k, v in self.store_opts.items())] if self.store_opts else []
        sh(*SEALFS, "init", self.url, "--keyfile", str(self.work / "key"), *store)
        sh(*SEALFS, "mount", self.url, str(self.path), "-o", self._opts())

    def remount(self) -> None:
        sh(*SEALFS, "umount", str(self.path))
        drop_caches()
        sh(*SEALFS, "mount", self.url, str(self.path), "-o", self._opts())

    def daemon_pid(self) -> int | None:
        target = os.fsencode(str(self.path))
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"sealfs.cli.main" in argv and target in argv and b"mount" in argv:
                    return int(pid)
        return None

    def teardown(self) -> None:
        subprocess.run([*SEALFS, "umount", str(self.path)], capture_output=True)


def dd_write(path: Path, mib: int) -> float:
    t = time.monotonic()
    sh("dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync")
    return mib * 1.048576 / (time.monotonic() - t)


def w1_w2(t: Target, mib: int) -> dict[str, float]:
    f = t.path / "w1.bin"
    out = {"W1 seq write MB/s": dd_write(f, mib)}
    t.remount()
    start = time.monotonic()
    sh("dd", f"if={f}", "of=/dev/null", "bs=1M")
    out["W2 seq read MB/s"] = mib * 1.048576 / (time.monotonic() - start)
    f.unlink()
    return out


def w4(t: Target, n: int) -> dict[str, float]:
    d = t.path / "w4"
    d.mkdir()
    data = os.urandom(4096)
    start = time.monotonic()
    for i in range(n):
        (d / f"f{i:05d}").write_bytes(data)
    out = {f"W4 create {n}x4K s": time.monotonic() - start}
    t.remount()
    start = time.monotonic()
    sh("ls", "-l", str(d))
    out["W4 ls -l cold s"] = time.monotonic() - start
    start = time.monotonic()
    sh("ls", "-l", str(d))
    out["W4 ls -l warm s"] = time.monotonic() - start
    start = time.monotonic()
    for i in range(n):
        (d / f"f{i:05d}").read_bytes()
    out["W4 read all s"] = time.monotonic() - start
    shutil.rmtree(d)
    return out


def w7(t: Target, mib: int) -> dict[str, float]:
    t.remount()  # a fresh daemon: its peak RSS is then this write's
    pid = t.daemon_pid()
    if pid is None:
        return {}
    dd_write(t.path / "w7.bin", mib)
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    (t.path / "w7.bin").unlink()
    return {f"W7 peak RSS writing {mib // 1024} GiB MiB": hwm / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench")
    ap.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--only", default="W1,W2,W4,W7")
    args = ap.parse_args()
    only = set(args.only.split(","))
    sizes = {"w1": 256 if args.quick else 1024, "w4": 300 if args.quick else 2000,
             "w7": 2048 if args.quick else 4096}
    results: dict[str, dict[str, float]] = {}
    work = Path(tempfile.mkdtemp(prefix="sealfs-bench-"))
    moto = MotoServer().__enter__() if "s3" in args.stores else None
    try:
        targets: list[Target] = [Target("plain dir", work / "plain")]
        if "local" in args.stores:
            targets.append(SealfsTarget("sealfs local", work / "local", (work / "local" / "store").as_uri(), {}))
        if moto is not None:
            targets.append(SealfsTarget("sealfs s3 (moto)", work / "s3", f"s3://{moto.bucket()}/bench",
                                        {"endpoint": moto.url, "path_style": "1"}))
        for t in targets:
            t.work.mkdir(parents=True, exist_ok=True)
            t.setup()
            try:
                r: dict[str, float] = {}
                if only & {"W1", "W2"}:
                    r.update(w1_w2(t, sizes["w1"]))
                if "W4" in only:
                    r.update(w4(t, sizes["w4"]))
                if "W7" in only:
                    r.update(w7(t, sizes["w7"]))
                results[t.name] = r
                print(f"# {t.name}: done", file=sys.stderr)
            finally:
                t.teardown()
    finally:
        if moto is not None:
            moto.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
    figures = sorted({k for r in results.values() for k in r})
    names = list(results)
    width = max(len(f) for f in figures) + 2
    print("workload / figure".ljust(width) + "".join(n.rjust(18) for n in names))
    for f in figures:
        row = "".join((f"{results[n][f]:.2f}" if f in results[n] else "-").rjust(18) for n in names)
        print(f.ljust(width) + row)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps(results, indent=1))
    with open(out / f"bench-{stamp}.tsv", "w") as f:
        f.write("figure\t" + "\t".join(names) + "\n")
        for fig in figures:
            f.write(fig + "\t" + "\t".join(str(results[n].get(fig, "")) for n in names) + "\n")
    print(f"(written to {out}/bench-{stamp}.json and .tsv)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
