"""sealfs benchmarks against its peers (run through scripts/bench, as root).

    scripts/bench [--quick] [--runs N] [--only W1,W4] [--stores local,s3]
                  [--peers plain,gocryptfs,rclone,s3fs,boto3|none] [--keep]

Mounts sealfs on a local store and on S3 (a moto server on 127.0.0.1, started
here), and each peer found installed, runs the workloads through each mount
and prints one table: the median of --runs runs per figure, and whether the
targets of the issue "Fast" are met.  Writes bench-results/<stamp>.tsv and
.json.  Nothing here is a test: figures are printed, never asserted.

Workloads (sizes shrink with --quick):
  W1  sequential write, dd bs=1M conv=fsync                                 MB/s
  W2  sequential read of it after remount and dropped caches                MB/s
  W3  random 4 KiB reads of a file after remount (fio, psync, 1 job)        IOPS
  W4  create N files of 4 KiB; ls -l cold (remounted) and warm; read back   s
  W5  untar a generated source tree; tar it back out after remount          s
  W6  sqlite3: inserts in transactions, default journal mode                s
  W7  peak RSS of the daemon (fresh mount) while writing a large file       MiB
  W8  open+read+close of a 4 KiB file; on sealfs also with a policy         us

Targets (columns):
  local: sealfs-local, plain (a directory), gocryptfs (over a directory),
         rclone-crypt (crypt over a local remote)
  s3:    sealfs-s3, rclone-crypt-s3 (crypt over an s3 remote), s3fs,
         boto3-raw (parallel multipart PUT / GET of one object, LIST: the ceiling)

Times of writing workloads run until the data is where close() would have it:
for rclone (--vfs-cache-mode writes, which uploads after close) they include
the wait until its cache metadata shows no file left to upload.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEALFS = [sys.executable, "-m", "sealfs.cli.main"]
MiB = 1 << 20
LOG_ERROR = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


# -- sizes and figures -------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    w1: int = 1024  # MiB written by W1 (and read by W2)
    w3: int = 256  # MiB file for W3
    w3_secs: int = 15
    w4: int = 2000  # files
    w5: int = 3000  # files in the tree
    w6_rows: int = 10_000
    w6_tx: int = 100
    w7: int = 4096  # MiB
    w7_s3: int = 1024  # MiB: moto holds objects in memory, at about 5x their size while they are written
    w8: int = 10_000  # iterations


FULL = Sizes()
QUICK = Sizes(w1=256, w3=64, w3_secs=5, w4=500, w5=1000, w6_rows=2000, w6_tx=20, w7=1024, w7_s3=512, w8=1000)

HIGH, LOW = "higher", "lower"  # which way is better


@dataclass(frozen=True)
class Fig:
    key: str
    workload: str
    label: str
    unit: str
    better: str


def figures(sz: Sizes) -> list[Fig]:
    def size(mib: int) -> str:
        return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"

    return [
        Fig("W1", "W1", f"seq write {size(sz.w1)}, dd bs=1M conv=fsync", "MB/s", HIGH),
        Fig("W2", "W2", "seq read of it, remounted, caches dropped", "MB/s", HIGH),
        Fig("W3", "W3", f"random 4 KiB reads, {size(sz.w3)} file, fio {sz.w3_secs} s", "IOPS", HIGH),
        Fig("W4.create", "W4", f"create {sz.w4} files of 4 KiB", "s", LOW),
        Fig("W4.ls_cold", "W4", "ls -l of them, cold (remounted)", "s", LOW),
        Fig("W4.ls_warm", "W4", "ls -l of them, warm", "s", LOW),
        Fig("W4.read", "W4", "read them all back", "s", LOW),
        Fig("W5.untar", "W5", f"untar {sz.w5} source files", "s", LOW),
        Fig("W5.tar", "W5", "tar them back out, remounted", "s", LOW),
        Fig("W6", "W6", f"sqlite3 {sz.w6_rows} inserts in {sz.w6_tx} transactions", "s", LOW),
        Fig("W7", "W7", f"daemon peak RSS writing {size(sz.w7)} (local stores)", "MiB", LOW),
        Fig("W7.s3", "W7", f"same, writing {size(sz.w7_s3)} (S3: moto keeps objects in RAM)", "MiB", LOW),
        Fig("W8", "W8", f"{sz.w8} x open+read+close 4 KiB, per op", "us", LOW),
        Fig("W8.on", "W8", "same with a policy (sealfs)", "us", LOW),
        Fig("W8.ratio", "W8", "policy on / off", "x", LOW),
    ]


# -- helpers -------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(*argv, timeout: float = 3600, **kw) -> subprocess.CompletedProcess:
    """Runs argv; raises with its stderr if it fails."""
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root: warned about at start


def mounted() -> set[str]:
    out = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point))
    return out


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def dd_zero(path: Path, mib: int) -> None:
    run("dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync")


# -- the S3 server ------------------------------------------------------------------------


class MotoServer:
    """moto in server mode on 127.0.0.1 (as tests/conftest.py runs it)."""

    def __init__(self, logfile: Path):
        for name in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_REGION",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ):
            os.environ.pop(name, None)
        # moto takes any credentials; these keep boto3, the sealfs daemons and
        # the peers (which inherit them) away from real AWS and ~/.aws
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        os.environ.pop("AWS_CA_BUNDLE", None)  # plain http to 127.0.0.1; rclone's SDK refuses one with http
        for name in ("NO_PROXY", "no_proxy"):
            os.environ[name] = ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"]))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(logfile, "wb") as out:
            # own session: a Ctrl-C on the terminal must not stop it before the
            # mounts that use it are unmounted
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {logfile.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=1).close()
            except urllib.error.HTTPError:
                pass
            except OSError:
                return False
            return True

        wait_for(answers, 30, "the moto server")

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=32, retries={"max_attempts": 3}),
        )

    def bucket(self) -> str:
        name = f"bench-{os.urandom(4).hex()}"
        self.client().create_bucket(Bucket=name)
        return name

    def rss_mib(self) -> float:
        return peak_rss_mib(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- targets: where workloads run ---------------------------------------------------------


class Target:
    """A directory the workloads run in: plain, or a mount (subclasses)."""

    name = "plain"
    store = "local"
    daemon = False  # has a daemon process (W7)

    def __init__(self, work: Path):
        self.work = work
        self.path = work / "mnt"

    def setup(self) -> None:
        """Once per bench: create the store."""
        self.path.mkdir(parents=True, exist_ok=True)

    def mount(self) -> None:
        pass

    def unmount(self) -> None:
        os.sync()

    def settle(self) -> None:
        """Returns once what was closed is where close() promises (for
        peers that upload after close)."""

    def remount(self) -> None:
        self.settle()
        self.unmount()
        drop_caches()
        self.mount()

    def daemon_pid(self) -> int | None:
        return None

    def teardown(self) -> None:
        """Unmount whatever state it is in, never raising."""

    def log_errors(self) -> list[str]:
        return []

    def cleanup(self) -> None:
        """After a run: what a workload may leave for the next one (W1's file)."""
        rm(self.path / "seq.bin")
        self.settle()

    def run(self, workload: str, sz: Sizes, ctx: dict) -> dict[str, float]:
        return WORKLOADS[workload](self, sz, ctx)


class FuseTarget(Target):
    daemon = True
    program = ""  # the daemon's executable (basename), to find its pid

    def mount_cmd(self) -> list:
        raise NotImplementedError

    def mount(self) -> None:
        run(*self.mount_cmd(), timeout=120)
        wait_for(lambda: str(self.path) in mounted(), 30, f"{self.name} to mount")

    def _unmount_cmd(self) -> list:
        return [shutil.which("fusermount3") or "fusermount", "-u", self.path]

    def unmount(self) -> None:
        if str(self.path) not in mounted():
            return
        pid = self.daemon_pid()
        run(*self._unmount_cmd(), timeout=1800)
        if pid is not None:  # the next mount must be a fresh daemon (W7)
            wait_for(lambda: not alive(pid), 120, f"{self.name}'s daemon to exit")

    def teardown(self) -> None:
        if str(self.path) not in mounted():
            return
        pid = self.daemon_pid()
        try:
            run(*self._unmount_cmd(), timeout=300)
        except Exception as e:  # noqa: BLE001 -- last resort: lazy unmount, stop our daemon
            log(f"{self.name}: unmount failed ({e}); lazy unmount")
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass

    def daemon_pid(self) -> int | None:
        found = []
        want = os.fsencode(str(self.path))
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if want in argv and any(self.program.encode() in a for a in argv[:3]):
                found.append(int(entry))
        if not found:
            return None

        def rss(pid: int) -> float:
            try:
                return peak_rss_mib(pid)
            except OSError:
                return -1

        return max(found, key=rss)


class SealfsTarget(FuseTarget):
    program = "sealfs"

    def __init__(self, work: Path, store: str, moto: MotoServer | None = None, policy: Path | None = None):
        super().__init__(work)
        self.store = store
        self.name = f"sealfs-{store}"
        self.moto = moto
        self.policy = policy
        self.policy_on = False
        self.twin: SealfsTarget | None = None  # W8's policy mount
        self.url = ""
        self.store_opts: dict[str, str] = {}

    def setup(self) -> None:
        super().setup()
        if self.store == "s3":
            self.url = f"s3://{self.moto.bucket()}/sealfs"
            self.store_opts = {"endpoint": self.moto.url, "path_style": "1"}
        else:
            self.url = (self.work / "store").as_uri()
        store = ["-o", ",".join(f"{k}={v}" for k, v in self.store_opts.items())] if self.store_opts else []
        run(*SEALFS, "init", self.url, "--keyfile", self.work / "key", *store)

    def mount_cmd(self) -> list:
        opts = {
            "keyfile": self.work / "key",
            "cache_dir": self.work / "cache",
            "log": self.work / "daemon.log",
            **self.store_opts,
        }
        if self.policy_on:
            opts.update(policy=self.policy, audit_log=self.work / "audit.log")
        return [*SEALFS, "mount", self.url, self.path, "-o", ",".join(f"{k}={v}" for k, v in opts.items())]

    def _unmount_cmd(self) -> list:
        return [*SEALFS, "umount", self.path]

    def log_errors(self) -> list[str]:
        out = []
        for f in (self.work / "daemon.log", *([self.twin.work / "daemon.log"] if self.twin else [])):
            if f.exists():
                out += [line for line in f.read_text(errors="replace").splitlines() if LOG_ERROR.search(line)]
        return out

    def teardown(self) -> None:
        if self.twin is not None:
            self.twin.teardown()
        super().teardown()


class Gocryptfs(FuseTarget):
    name = program = "gocryptfs"

    def setup(self) -> None:
        super().setup()
        (self.work / "cipher").mkdir()
        (self.work / "pass").write_text("bench passphrase\n")
        run("gocryptfs", "-init", "-q", "-passfile", self.work / "pass", self.work / "cipher")

    def mount_cmd(self) -> list:
        return ["gocryptfs", "-q", "-passfile", self.work / "pass", self.work / "cipher", self.path]


class RcloneCrypt(FuseTarget):
    program = "rclone"
    write_back = "0s"  # upload right after close, as sealfs does

    def __init__(self, work: Path, store: str, moto: MotoServer | None = None):
        super().__init__(work)
        self.store = store
        self.name = "rclone-crypt" if store == "local" else "rclone-crypt-s3"
        self.moto = moto

    def setup(self) -> None:
        super().setup()
        obscure = [run("rclone", "obscure", f"bench {w}").stdout.strip() for w in ("password", "salt")]
        if self.store == "s3":
            base = (
                f"[base]\ntype = s3\nprovider = Other\nenv_auth = false\naccess_key_id = bench\n"
                f"secret_access_key = bench\nendpoint = {self.moto.url}\nregion = us-east-1\n"
                # no_head: rclone 1.60 HEADs a multipart upload with ?versionId=null, which moto refuses
                f"force_path_style = true\nno_head = true\n\n"
            )
            remote = f"base:{self.moto.bucket()}/rclone"
        else:
            (self.work / "store").mkdir()
            base, remote = "", str(self.work / "store")
        (self.work / "rclone.conf").write_text(
            f"{base}[crypt]\ntype = crypt\nremote = {remote}\npassword = {obscure[0]}\npassword2 = {obscure[1]}\n"
        )

    def mount(self) -> None:
        # in the foreground, as our child: we know its pid, and stop it if all else fails
        argv = [
            "rclone",
            "mount",
            "crypt:",
            str(self.path),
            "--config",
            str(self.work / "rclone.conf"),
            "--vfs-cache-mode",
            "writes",
            "--vfs-write-back",
            self.write_back,
            "--cache-dir",
            str(self.work / "cache"),
            "--log-file",
            str(self.work / "rclone.log"),
            "--log-level",
            "NOTICE",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rclone mount exited {self.proc.returncode}: {(self.work / 'rclone.log').read_text()[-1000:]}"
                )
            return str(self.path) in mounted()

        wait_for(up, 60, "rclone to mount")
        self.log_seen = (self.work / "rclone.log").stat().st_size

    def _check_log(self) -> None:
        """Raises on an ERROR line rclone logged since the last look (a failed
        upload is retried forever: the workload would never settle)."""
        with open(self.work / "rclone.log", errors="replace") as fh:
            fh.seek(self.log_seen)
            new = fh.read()
        self.log_seen += len(new.encode())
        if errors := [line for line in new.splitlines() if " ERROR " in line]:
            raise RuntimeError(f"rclone logged {len(errors)} error(s), first: {errors[0][:300]}")

    def settle(self) -> None:
        # rclone uploads a file after close(); its cache metadata says which
        # files are not uploaded yet ("Dirty").  (rc vfs/stats of rclone 1.60
        # reports 0 uploads in progress while one runs.)
        meta = self.work / "cache" / "vfsMeta"
        pending = [f for f in meta.rglob("*") if f.is_file()]  # nothing is written while we wait

        def clean() -> bool:
            self._check_log()
            for f in list(pending):
                try:
                    if json.loads(f.read_text()).get("Dirty"):
                        return False
                except FileNotFoundError:
                    pass
                except (OSError, ValueError):
                    return False  # being rewritten
                pending.remove(f)
            return True

        wait_for(clean, 900, "rclone's uploads")

    def run(self, workload: str, sz: Sizes, ctx: dict) -> dict[str, float]:
        if workload != "W6":
            return super().run(workload, sz, ctx)
        # With --vfs-write-back 0s, rclone 1.60 corrupts a sqlite database (an
        # upload races the next transaction: "database disk image is
        # malformed").  W6 runs with its default, 5 s, and its figure leaves
        # out those 5 s of waiting before the last upload starts.
        self.write_back = "5s"
        self.remount()
        try:
            out = super().run(workload, sz, ctx)
        finally:
            self.write_back = "0s"
            self.remount()
        if any(v < 5.0 for v in out.values()):
            raise RuntimeError(f"rclone settled before its write-back delay: {out}")
        return {k: v - 5.0 for k, v in out.items()}

    def daemon_pid(self) -> int | None:
        proc = getattr(self, "proc", None)
        return proc.pid if proc is not None and proc.poll() is None else None

    def unmount(self) -> None:
        super().unmount()
        if getattr(self, "proc", None) is not None:
            self.proc.wait(timeout=120)
            # (settled before, so all uploaded) reads after a remount must come from the remote
            shutil.rmtree(self.work / "cache", ignore_errors=True)

    def teardown(self) -> None:
        super().teardown()
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_errors(self) -> list[str]:
        f = self.work / "rclone.log"
        return [line for line in f.read_text(errors="replace").splitlines() if "ERROR" in line] if f.exists() else []


class S3fs(FuseTarget):
    name = program = "s3fs"
    store = "s3"

    def __init__(self, work: Path, moto: MotoServer):
        super().__init__(work)
        self.moto = moto
        self.bucket = ""

    def setup(self) -> None:
        super().setup()
        self.bucket = self.moto.bucket()
        pw = self.work / "passwd"
        pw.write_text("bench:bench\n")
        pw.chmod(0o600)

    def mount_cmd(self) -> list:
        return [
            "s3fs",
            self.bucket,
            self.path,
            "-o",
            f"passwd_file={self.work / 'passwd'},url={self.moto.url},use_path_request_style,endpoint=us-east-1",
        ]


class Boto3Raw(Target):
    """Not a mount: the ceiling of the S3 server as boto3 sees it."""

    name = "boto3-raw"
    store = "s3"
    PART = 8 * MiB
    THREADS = 8

    def __init__(self, work: Path, moto: MotoServer):
        super().__init__(work)
        self.moto = moto

    def setup(self) -> None:
        self.s3 = self.moto.client()
        self.bucket = self.moto.bucket()

    def remount(self) -> None:
        pass

    def run(self, workload: str, sz: Sizes, ctx: dict) -> dict[str, float]:
        if workload in ("W1", "W2"):
            return self._put_get(sz.w1, workload)
        if workload == "W4":
            return self._list(sz.w4)
        return {}

    def _put_get(self, mib: int, workload: str) -> dict[str, float]:
        key, size = "big", mib * MiB
        have = self._size(key)
        out = {}
        if workload == "W1" or have != size:
            # Every part different, as in a file (sealfs sends ciphertext): moto
            # completes an upload of one part repeated markedly faster.
            data = memoryview(os.urandom(size))
            start = time.perf_counter()
            up = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]

            def part(n: int) -> dict:
                chunk = bytes(data[(n - 1) * self.PART : n * self.PART])
                r = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=up, PartNumber=n, Body=chunk)
                return {"PartNumber": n, "ETag": r["ETag"]}

            with ThreadPoolExecutor(self.THREADS) as pool:
                parts = list(pool.map(part, range(1, (size + self.PART - 1) // self.PART + 1)))
            self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=up, MultipartUpload={"Parts": parts}
            )
            if workload == "W1":
                out["W1"] = size / 1e6 / (time.perf_counter() - start)
        if workload == "W2":
            # parallel ranged GETs, and one streaming GET: the better of the two
            # (on moto a ranged GET costs about as much as reading the whole object)
            def get(rng: str | None) -> int:
                kw = {"Range": rng} if rng else {}
                body = self.s3.get_object(Bucket=self.bucket, Key=key, **kw)["Body"]
                n = 0
                while chunk := body.read(MiB):
                    n += len(chunk)
                return n

            per = (size + self.THREADS - 1) // self.THREADS
            ranges = [f"bytes={o}-{min(o + per, size) - 1}" for o in range(0, size, per)]
            start = time.perf_counter()
            with ThreadPoolExecutor(self.THREADS) as pool:
                got = sum(pool.map(get, ranges))
            ranged = time.perf_counter() - start
            start = time.perf_counter()
            got2 = get(None)
            single = time.perf_counter() - start
            if got != size or got2 != size:
                raise RuntimeError(f"boto3 GET returned {got}/{got2} bytes of {size}")
            out["W2"] = size / 1e6 / min(ranged, single)
            out["W2.ranged"], out["W2.single"] = size / 1e6 / ranged, size / 1e6 / single
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        return out

    def cleanup(self) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key="big")

    def _size(self, key: str) -> int | None:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except Exception:  # noqa: BLE001
            return None

    def _list(self, n: int) -> dict[str, float]:
        data = os.urandom(4096)
        keys = [f"w4/f{i:05d}" for i in range(n)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: self.s3.put_object(Bucket=self.bucket, Key=k, Body=data), keys))
        start = time.perf_counter()
        sizes = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="w4/"):
            sizes.update((o["Key"], o["Size"]) for o in page.get("Contents", []))  # LIST carries sizes: no HEAD
        secs = time.perf_counter() - start
        if len(sizes) != n:
            raise RuntimeError(f"LIST found {len(sizes)} of {n} objects")
        for i in range(0, n, 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})
        return {"W4.ls_cold": secs}


# -- workloads: each takes a mounted target ----------------------------------------------


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def w1(t: Target, sz: Sizes, ctx: dict) -> dict[str, float]:
    f = t.path / "seq.bin"
    rm(f)
    secs = timed(lambda: (dd_zero(f, sz.w1), t.settle()))
    if f.stat().st_size != sz.w1 * MiB:
        raise RuntimeError(f"W1 wrote {f.stat().st_size} bytes")
    return {"W1": sz.w1 * MiB / 1e6 / secs}  # the file stays for W2 (removed after the run otherwise)


def w2(t: Target, sz: Sizes, ctx: dict) -> dict[str, float]:
    f = t.path / "seq.bin"
    if not f.exists() or f.stat().st_size != sz.w1 * MiB:
        dd_zero(f, sz.w1)
        t.settle()
    t.remount()
    secs = timed(lambda: run("dd", f"if={f}", "of=/dev/null", "bs=1M"))
    f.unlink()
    t.settle()
    return {"W2": sz.w1 * MiB / 1e6 / secs}


def w3(t: Target, sz: Sizes, ctx: dict) -> dict[str, float]:
    if not shutil.which("fio"):
        return {}
    f = t.path / "rand.bin"
    rm(f)
    dd_zero(f, sz.w3)
    t.settle()
    t.remount()
    p = run(
        "fio",
        "--name=w3",
        f"--filename={f}",
        "--readonly",
        "--rw=randread",
        "--bs=4k",
        f"--size={sz.w3}M",
        "--ioengine=psync",
        "--numjobs=1",
        "--time_based",
        f"--runtime={sz.w3_secs}",
        "--output-format=json",
        timeout=sz.w3_secs + 600,
    )
    iops = json.loads(p.stdout[p.stdout.index("{") :])["jobs"][0]["read"]["iops"]
    f.unlink()
    t.settle()
    return {"W3": iops}


def w4(t: Target, sz: Sizes, ctx: dict) -> dict[str, float]:
    d = t.path / "w4"
    rm(d)
    d.mkdir()
    data = os.urandom(4096)
    names = [d / f"f{i:05d}" for i in range(sz.w4)]

    def create() -> None:
        for p in names:
            p.write_bytes(data)
        t.settle()

    out = {"W4.create": timed(create)}
    t.remount()
    for key in ("W4.ls_cold", "W4.ls_warm"):
        start = time.perf_counter()
        p = run("ls", "-l", d)
        out[key] = time.perf_counter() - start
        if len(p.stdout.splitlines()) != sz.w4 + 1:
            raise RuntimeError(f"ls -l listed {len(p.stdout.splitlines()) - 1} of {sz.w4} files")

    def read() -> None:
        for p in names:
            if p.read_bytes() != data:
                raise RuntimeError(f"{p} reads back different")

    out["W4.read"] = timed(read)
    shutil.rmtree(d)
    t.settle()
    return out


def make_tree(tarball: Path, n: int) -> int:
    """A deterministic source-like tree of n text files (1-30 KiB) in nested
    directories, as an uncompressed tarball; returns its size."""
    rnd = random.Random(5)
    words = [
        "int",
        "return",
        "if",
        "else",
        "for",
        "while",
        "struct",
        "static",
        "const",
        "void",
        "self",
        "buf",
        "len",
        "err",
        "ctx",
        "node",
        "next",
        "value",
        "count",
        "index",
        "the",
        "a",
        "of",
        "to",
        "NULL",
        "0",
        "1",
    ]
    dirs = [
        f"src/{a}/{b}".rstrip("/")
        for a in ("core", "net", "fs", "util", "drivers", "lib", "tools", "tests")
        for b in ("", "impl", "sub/x", "sub/y", "detail")
    ]
    with tarfile.open(tarball, "w", format=tarfile.GNU_FORMAT) as tar:
        seen = set()
        for i in range(n):
            path = f"{rnd.choice(dirs)}/file_{i:04d}.{rnd.choice(['c', 'h', 'py', 'rs', 'go', 'txt'])}"
            for parent in list(Path(path).parents)[::-1][1:]:
                if str(parent) not in seen:
                    seen.add(str(parent))
                    ti = tarfile.TarInfo(str(parent))
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                    tar.addfile(ti)
            target = rnd.randint(1024, 30 * 1024)
            lines, size = [], 0
            while size < target:
                indent = "    " * rnd.randint(0, 3)
                line = indent + " ".join(rnd.choice(words) for _ in range(rnd.randint(2, 12))) + ";\n"
                lines.append(line)
                size += len(line)
            body = "".join(lines).encode()[:target]
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(body), 0o644, 1_700_000_000 + i
            tar.addfile(ti, io.BytesIO(body))
    return tarball.stat().st_size


def w5(t: Target, sz: Sizes, ctx: dict) -> dict[str, float]:
    tarball = ctx["tarball"]
    d = t.path / "w5"
    rm(d)
    d.mkdir()
    out = {"W5.untar": timed(lambda: (run("tar", "-xf", tarball, "-C", d), t.settle()))}
    t.remount()

    def tar_out() -> None:
        # into a pipe: GNU tar reads nothing when its archive is /dev/null
        p = subprocess.Popen(["tar", "-cf", "-", "-C", str(d), "."], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        n = 0
        while chunk := p.stdout.read(MiB):
            n += len(chunk)
        err = p.stderr.read()
        if p.wait() != 0 or n < ctx["tarball_size"] * 0.9:
            raise RuntimeError(f"tar out: exit {p.returncode}, {n} bytes: {err.decode()[-500:]}")

    out["W5.tar"] = timed(tar_out)
    shutil.rmtree(d)
    t.settle()
    return out


def w6(t: Target, sz: Sizes, ctx: dict) -> dict[str, float]:
    db = t.path / "w6.db"
    for f in (db, t.path / "w6.db-journal"):
        rm(f)
    per_tx = sz.w6_rows // sz.w6_tx

    def work() -> None:
        con = sqlite3.connect(db)
        try:
            con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value REAL, body TEXT)")
            con.commit()
            i = 0
            for _ in range(sz.w6_tx):
                with con:  # one transaction
                    for _ in range(per_tx):
                        con.execute(
                            "INSERT INTO t (name, value, body) VALUES (?, ?, ?)",
                            (f"row {i}", i * 0.5, f"payload {i} " * 8),
                        )
                        i += 1
            n = con.execute("SELECT count(*) FROM t").fetchone()[0]
        finally:
            con.close()
        if n != per_tx * sz.w6_tx:
            raise RuntimeError(f"sqlite3 counted {n} rows")
        t.settle()

    out = {"W6": timed(work)}
    rm(db)
    t.settle()
    return out


def w7(t: Target, sz: Sizes, ctx: dict) -> dict[str, float]:
    if not t.daemon:
        return {}
    t.remount()  # a fresh daemon: its peak RSS is then this write's
    pid = t.daemon_pid()
    if pid is None:
        raise RuntimeError(f"no daemon process found for {t.path}")
    f = t.path / "w7.bin"
    dd_zero(f, sz.w7 if t.store == "local" else sz.w7_s3)
    t.settle()
    hwm = peak_rss_mib(pid)
    f.unlink()
    t.settle()
    return {"W7" if t.store == "local" else "W7.s3": hwm}


def policy_text() -> str:
    """Six rules in the shape of sealfs-policy(5)'s example, plus a hiding
    rule, naming this very process (python) for /data/**."""
    me, every = os.path.realpath(sys.executable), '["read", "write", "create", "delete", "list", "rename", "setattr"]'
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
allow = {every}

[[rule]]
paths = ["/payments/**"]
workloads = ["other"]
allow = {every}

[[rule]]
paths = ["/customers/**", "/payments/**"]
workloads = ["bench"]
allow = ["read", "list"]

[[rule]]
paths = ["/reports/**"]
workloads = ["bench"]
allow = {every}

[[rule]]
paths = ["/", "/data/**"]
workloads = ["bench"]
allow = {every}

[[rule]]
paths = ["/customers/secret/**"]
workloads = ["bench"]
deny = ["read", "list"]
hide = true
"""


def _cycle(path: Path, n: int) -> float:
    """Seconds for n open+read+close of path."""
    start = time.perf_counter()
    for _ in range(n):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)
    return time.perf_counter() - start


def w8(t: Target, sz: Sizes, ctx: dict) -> dict[str, float]:
    f = t.path / "data" / "small"
    rm(t.path / "data")
    f.parent.mkdir()
    f.write_bytes(os.urandom(4096))
    t.settle()
    paths = {"off": f}
    twin = None
    if isinstance(t, SealfsTarget):
        # a second volume on the same kind of store, mounted with the policy;
        # both mounts take turns every 500 iterations, so that load from
        # elsewhere on the machine falls on both alike
        if t.twin is None:
            t.twin = SealfsTarget(t.work.with_name(t.work.name + "-policy"), t.store, t.moto, ctx["policy"])
            t.twin.setup()
        twin = t.twin
        twin.policy_on = False
        twin.mount()
        try:
            rm(twin.path / "data")
            (twin.path / "data").mkdir()
            (twin.path / "data" / "small").write_bytes(os.urandom(4096))
        finally:
            twin.unmount()
        twin.policy_on = True
        twin.mount()
        paths["on"] = twin.path / "data" / "small"
    try:
        for p in paths.values():
            _cycle(p, 200)  # warm: identity and hash caches, kernel caches
        spent = dict.fromkeys(paths, 0.0)
        done = 0
        while done < sz.w8:
            step = min(500, sz.w8 - done)
            for label, p in paths.items():
                spent[label] += _cycle(p, step)
            done += step
    finally:
        if twin is not None:
            twin.unmount()
    rm(t.path / "data")
    out = {"W8": spent["off"] / sz.w8 * 1e6}
    if "on" in spent:
        audit = twin.work / "audit.log"
        denials = audit.read_text().count('"deny"') if audit.exists() else 0
        if denials:
            raise RuntimeError(f"the policy denied the bench {denials} times: W8 is not valid")
        out["W8.on"] = spent["on"] / sz.w8 * 1e6
        out["W8.ratio"] = spent["on"] / spent["off"]
    return out


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7, "W8": w8}


# -- targets of the issue -------------------------------------------------------------------

GOCRYPTFS, RCLONE, RCLONE_S3, RAW = "gocryptfs", "rclone-crypt", "rclone-crypt-s3", "boto3-raw"
# (figure, sealfs column, peer column or None for an absolute bound, op, bound)
# op "ge": sealfs/peer >= bound; "le": sealfs/peer <= bound (or sealfs <= bound)
GOALS = [
    ("W1", "sealfs-local", GOCRYPTFS, "ge", 1.0),
    ("W2", "sealfs-local", GOCRYPTFS, "ge", 1.0),
    ("W3", "sealfs-local", GOCRYPTFS, "ge", 0.7),
    ("W4.create", "sealfs-local", GOCRYPTFS, "le", 1.0),
    ("W4.read", "sealfs-local", GOCRYPTFS, "le", 1.0),
    ("W5.untar", "sealfs-local", GOCRYPTFS, "le", 1.5),
    ("W5.tar", "sealfs-local", GOCRYPTFS, "le", 1.5),
    ("W1", "sealfs-s3", RAW, "ge", 0.8),
    ("W2", "sealfs-s3", RAW, "ge", 0.8),
    ("W2", "sealfs-s3", RCLONE_S3, "ge", 2.0),
    ("W4.create", "sealfs-s3", RCLONE_S3, "le", 0.5),
    ("W4.ls_cold", "sealfs-s3", RCLONE_S3, "le", 0.5),
    ("W4.ls_warm", "sealfs-s3", RCLONE_S3, "le", 0.5),
    ("W4.read", "sealfs-s3", RCLONE_S3, "le", 0.5),
    ("W4.ls_cold", "sealfs-s3", RAW, "le", 1.5),
    ("W7", "sealfs-local", None, "le", 400),
    ("W7.s3", "sealfs-s3", None, "le", 400),
    ("W8.ratio", "sealfs-local", None, "le", 1.3),
    ("W8.ratio", "sealfs-s3", None, "le", 1.3),
]


def goals(figs: list[Fig], med: dict[str, dict[str, float]]) -> dict[str, list[dict]]:
    """Per figure: the issue's targets that this run can judge."""
    listed = list(GOALS)
    for f in figs:  # local: every figure better than rclone crypt's
        if f.key not in ("W8.on", "W8.ratio"):
            listed.append((f.key, "sealfs-local", RCLONE, "gt" if f.better == HIGH else "lt", 1.0))
    out: dict[str, list[dict]] = {}
    for key, ours, peer, op, bound in listed:
        mine = med.get(ours, {}).get(key)
        if mine is None:
            continue
        sym = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op]
        if peer is None:
            value, text = mine, f"{ours.split('-')[1]} {fmt(mine)} {sym}{bound:g}"
        else:
            theirs = med.get(peer, {}).get(key)
            if not theirs:
                continue
            value, text = mine / theirs, f"{ours.split('-')[1]} {mine / theirs:.2f}x {peer} {sym}{bound:g}x"
        met = {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[op]
        text += " ✓" if met else " ✗"
        out.setdefault(key, []).append(
            {"sealfs": ours, "peer": peer, "op": op, "bound": bound, "value": value, "met": met, "text": text}
        )
    return out


# -- main ------------------------------------------------------------------------------------


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main() -> int:
    if not sys.flags.isolated:
        # W8's policy names this process with no_preload, which admits Python only with -I
        os.execv(sys.executable, [sys.executable, "-I", os.path.abspath(__file__), *sys.argv[1:]])
    ap = argparse.ArgumentParser(prog="scripts/bench", description="sealfs against its peers; prints one table")
    ap.add_argument("--quick", action="store_true", help="small sizes and 1 run (a few minutes)")
    ap.add_argument("--runs", type=int, help="runs per figure, medians reported (default 3; 1 with --quick)")
    ap.add_argument("--only", default="W1,W2,W3,W4,W5,W6,W7,W8", help="workloads (default: all)")
    ap.add_argument("--stores", default="local,s3", help="local,s3 (default both)")
    ap.add_argument(
        "--peers",
        default="plain,gocryptfs,rclone,s3fs,boto3",
        help="plain,gocryptfs,rclone,s3fs,boto3 or none (default: all that are installed)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores)")
    args = ap.parse_args()
    sz = QUICK if args.quick else FULL
    runs = args.runs or (1 if args.quick else 3)
    only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    stores = {s.strip() for s in args.stores.split(",") if s.strip()}
    peers = set() if args.peers == "none" else {p.strip() for p in args.peers.split(",") if p.strip()}
    for bad in (
        [w for w in only if w not in WORKLOADS]
        + sorted(stores - {"local", "s3"})
        + sorted(peers - {"plain", "gocryptfs", "rclone", "s3fs", "boto3"})
    ):
        ap.error(f"unknown workload, store or peer: {bad}")
    if os.geteuid() != 0:
        log("not root: caches are not dropped and FUSE peers may fail")

    skipped: list[str] = []

    def have(tool: str, what: str) -> bool:
        if shutil.which(tool):
            return True
        line = f"skipped {what}: {tool} is not installed (apt-get install {tool})"
        if line not in skipped:
            skipped.append(line)
        return False

    if "W3" in only and not have("fio", "W3"):
        only.remove("W3")
    figs = [f for f in figures(sz) if f.workload in only]

    work = Path(tempfile.mkdtemp(prefix="sealfs-bench-"))
    targets: list[Target] = []
    moto: MotoServer | None = None
    results: dict[str, dict[str, list[float]]] = {}
    errors: list[str] = []
    failed: set[tuple[str, str]] = set()  # (target, workload) that raised at least once
    log_errors: dict[str, list[str]] = {}
    extra: dict[str, dict[str, list[float]]] = {}

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    started = time.time()
    try:
        if "local" in stores:
            targets.append(SealfsTarget(work / "sealfs-local", "local"))
            if "plain" in peers:
                targets.append(Target(work / "plain"))
            if "gocryptfs" in peers and have("gocryptfs", "gocryptfs"):
                targets.append(Gocryptfs(work / "gocryptfs"))
            if "rclone" in peers and have("rclone", "rclone crypt"):
                targets.append(RcloneCrypt(work / "rclone-local", "local"))
        if "s3" in stores:
            moto = MotoServer(work / "moto.log")
            log(f"moto S3 server on {moto.url}")
            targets.append(SealfsTarget(work / "sealfs-s3", "s3", moto))
            if "rclone" in peers and have("rclone", "rclone crypt"):
                targets.append(RcloneCrypt(work / "rclone-s3", "s3", moto))
            if "s3fs" in peers and have("s3fs", "s3fs"):
                targets.append(S3fs(work / "s3fs", moto))
            if "boto3" in peers:
                targets.append(Boto3Raw(work / "boto3", moto))
        for line in skipped:
            log(line)
        ctx: dict = {"policy": work / "policy.toml"}
        ctx["policy"].write_text(policy_text())
        if "W5" in only:
            ctx["tarball"] = work / "tree.tar"
            ctx["tarball_size"] = make_tree(ctx["tarball"], sz.w5)
        ready: list[Target] = []
        for t in targets:
            t.work.mkdir(parents=True, exist_ok=True)
            try:
                t.setup()
                ready.append(t)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{t.name}: setup failed: {e}")
                log(errors[-1])
        targets = ready
        for r in range(runs):
            for t in targets:
                res = results.setdefault(t.name, {})
                try:
                    t.mount()
                except Exception as e:  # noqa: BLE001
                    errors.append(f"run {r + 1} {t.name}: mount failed: {e}")
                    log(errors[-1])
                    t.teardown()
                    continue
                try:
                    for w in only:
                        t0 = time.monotonic()
                        try:
                            got = t.run(w, sz, ctx)
                        except Exception as e:  # noqa: BLE001 -- noted; the target starts again
                            failed.add((t.name, w))
                            errors.append(f"run {r + 1} {t.name} {w}: {type(e).__name__}: {e}")
                            log(errors[-1])
                            t.teardown()
                            t.mount()
                            continue
                        if not got:  # does not apply to this target
                            continue
                        for k, v in got.items():
                            (res if k in {f.key for f in figs} else extra.setdefault(t.name, {})).setdefault(
                                k, []
                            ).append(v)
                        log(
                            f"run {r + 1}/{runs} {t.name:16} {w} ({time.monotonic() - t0:4.0f} s): "
                            + ", ".join(f"{k} {fmt(v)}" for k, v in got.items())
                        )
                    t.cleanup()
                    t.unmount()
                except Exception as e:  # noqa: BLE001
                    errors.append(f"run {r + 1} {t.name}: {type(e).__name__}: {e}")
                    log(errors[-1])
                finally:
                    t.teardown()
    except KeyboardInterrupt:
        log("interrupted: unmounting")
        errors.append("interrupted")
    except Exception as e:  # noqa: BLE001 -- still unmount, still print what was measured
        errors.append(f"{type(e).__name__}: {e}")
        log(errors[-1])
    finally:
        for t in targets:
            t.teardown()
        for t in targets:
            if lines := t.log_errors():
                log_errors[t.name] = lines
        moto_rss = moto.rss_mib() if moto is not None and moto.proc.poll() is None else None
        if moto is not None:
            moto.stop()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    # -- the table
    names = [t.name for t in targets]
    med = {n: {k: statistics.median(v) for k, v in results.get(n, {}).items()} for n in names}
    checks = goals(figs, med)
    figs = [f for f in figs if any(f.key in med[n] for n in names)]
    title = (
        f"sealfs bench {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
        f"{os.cpu_count()} CPUs, {'S3 = moto on 127.0.0.1, ' if moto is not None else ''}"
        + (
            f"--quick: small sizes, {runs} run (targets indicative only)"
            if args.quick
            else f"median of {runs} run{'s' * (runs > 1)}"
        )
    )
    header = ["W", "figure", *names, "targets (sealfs / peer)"]
    rows = []
    for f in figs:
        rows.append(
            [
                f.workload,
                f"{f.label}, {f.unit}",
                *(
                    "err" if f.key not in med[n] and (n, f.workload) in failed else fmt(med[n].get(f.key))
                    for n in names
                ),
                "; ".join(c["text"] for c in checks.get(f.key, [])),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    print(title)
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), *(c.rjust(widths[i + 2]) for i, c in enumerate(r[2:-1]))]
        print("  ".join(cells) + "  " + r[-1])
    notes = [*skipped]
    if "W2" in only and "boto3-raw" in extra:
        x = {k: statistics.median(v) for k, v in extra["boto3-raw"].items()}
        notes.append(
            f"boto3-raw W2 is the better of {Boto3Raw.THREADS} parallel ranged GETs "
            f"({fmt(x.get('W2.ranged'))} MB/s) and one streaming GET ({fmt(x.get('W2.single'))} MB/s); "
            f"W1 is a multipart PUT of random bytes, {Boto3Raw.PART // MiB} MiB parts, {Boto3Raw.THREADS} in flight; "
            "W4 ls is a paginated LIST (it carries sizes: no HEAD needed)"
        )
    if any(n.startswith("rclone") for n in names):
        notes.append(
            "rclone: --vfs-cache-mode writes --vfs-write-back 0s (s3: no_head); write times include "
            "the wait until it has uploaded what was closed"
            + (
                "; W6 with its default write-back, 5 s (0s corrupts the database), minus those 5 s"
                if "W6" in only
                else ""
            )
        )
    if moto_rss is not None:
        notes.append(f"moto server peak RSS {moto_rss:.0f} MiB")
    for e in errors:
        notes.append(f"error: {e}")
    for n, lines in log_errors.items():
        notes.append(f"{n}: {len(lines)} error line(s) in its log, first: {lines[0][:300]}")
    for n in notes:
        print(f"  {n}")

    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    with open(out / f"{stamp}.tsv", "w") as fh:
        fh.write("\t".join(["workload", "figure", "unit", *names, "targets"]) + "\n")
        for f in figs:
            fh.write(
                "\t".join(
                    [
                        f.workload,
                        f.label,
                        f.unit,
                        *(str(med[n].get(f.key, "")) for n in names),
                        "; ".join(c["text"] for c in checks.get(f.key, [])),
                    ]
                )
                + "\n"
            )
    (out / f"{stamp}.json").write_text(
        json.dumps(
            {
                "title": title,
                "quick": args.quick,
                "runs": runs,
                "sizes": asdict(sz),
                "only": only,
                "targets": names,
                "figures": [asdict(f) for f in figs],
                "median": med,
                "values": results,
                "extra": extra,
                "goals": checks,
                "notes": notes,
                "errors": errors,
                "failed": sorted(map(list, failed)),
                "log_errors": log_errors,
            },
            indent=1,
            ensure_ascii=False,
        )
    )
    log(f"written to {out}/{stamp}.tsv and .json")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
