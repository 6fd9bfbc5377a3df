"""Store faults: a mount on S3 behind a fault-injecting proxy.

The daemon's ``endpoint=`` is a :class:`~.faultproxy.FaultProxy` in front
of the session's moto server.  The promises checked here (SEMANTICS.md,
"Durability" and "Errors"):

* **Transient faults are ridden through.**  With one kind of fault at a
  time (every 4th request), files of every shape (less than a block,
  several blocks, a multipart upload, rewrites in place, small files
  renamed, chmod'ed, given xattrs, deleted) are written and closed or
  fsync'ed, the mount is unmounted, and a second mount behind the same
  faults lists and reads everything back, whole and in pieces: every
  call succeeds, every byte read is right (a cut-off body is retried,
  never decrypted as data), and ``sealfs cat`` straight from moto, with
  no proxy and no mount, finds exactly the bytes written.
* **A store that stays down fails calls, it does not hang them.**  With the
  proxy resetting every connection, or accepting requests and never
  answering them, lookups, listings, opens, reads, creates, fsyncs and
  closes fail with EIO within :data:`OUTAGE_BOUND` seconds, and an unmount
  finishes within that bound too.
* **The mount survives the outage; nothing acknowledged is lost.**  When
  the store is back, the same mount reads and writes again at once, an
  fsync that failed during the outage succeeds when retried on the same
  descriptor, transient faults are ridden through again, and what close()
  or fsync() acknowledged before the outage -- on this mount, and on
  another one that was unmounted during it -- is in the store.

``SEALFS_LONG=1`` runs more and bigger files, faults drawn at random
(seeded: ``SEALFS_FAULT_SEED``) rather than every 4th request, and a mix
of every kind at once.  The faults injected and the times to EIO are
printed in pytest's summary (and written as JSON to
``$SEALFS_FAULT_REPORT`` when that is set).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sealfs.errors import PreconditionFailed, StoreUnavailable
from sealfs.store.s3 import S3Store

from .conftest import Mount, daemon_pids, sealfs, unmount_all
from .faultproxy import BODY_KINDS, KINDS, FaultProxy, Rule

SEED = int(os.environ.get("SEALFS_FAULT_SEED", "20261122"))
LONG = os.environ.get("SEALFS_LONG", "") not in ("", "0")
MiB = 1024 * 1024
#: The volume's block size (sealfs's default).
BLOCK = 64 * 1024
#: Seconds within which a call must fail, and an unmount finish, while the
#: store is down.  S3Store gives up on a request within its call_timeout
#: (30 s; 20 s when the server hangs: two attempts of read_timeout), and
#: once the store is unreachable makes one attempt per request (at most
#: connect_timeout + read_timeout = 15 s); see "Retries" in
#: sealfs/store/s3_requests.py.  A call may make a second request (a read fetches
#: the file's header, then its blocks): 20 + 15 s, with room to spare.
#: (Before that bound existed, a stat took 212 s here.)
OUTAGE_BOUND = 60.0
#: Seconds to wait for a daemon to exit after an unmount, before failing.
UNMOUNT_WAIT = 120.0
#: Fault rate per matching request in the transient-fault tests with
#: SEALFS_LONG (the default run injects into every 4th request).
RATE = 0.2
#: Small files written besides SHAPES (each a few requests: more faults).
SMALL_FILES = 40 if LONG else 9

#: Faults injected per kind, over the whole module (for the report).
REPORT: Counter[str] = Counter()
#: Seconds from the start of a call to its EIO while the store was down.
TIME_TO_EIO: dict[str, float] = {}


# -- the rig ---------------------------------------------------------------------------


@dataclass
class Rig:
    """One volume on a fresh bucket, the proxy in front of moto, and the
    mounts of the volume made through it."""

    proxy: FaultProxy
    url: str
    moto: str
    keyfile: Path
    tmp: Path
    mounts: list[Mount] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=lambda: iter(range(1000)))

    def mount(self, *, expected_log: list[str] | None = None, extra: list[str] | None = None) -> Mount:
        """Mount the volume through the proxy (which must pass everything
        while it mounts: faults are for the file operations of the test);
        ``extra``: more ``-o`` options."""
        n = next(self.counter)
        mnt = self.tmp / f"mnt{n}"
        mnt.mkdir()
        m = Mount(
            mnt,
            self.url,
            {"endpoint": self.proxy.url, "path_style": "1"},
            self.keyfile,
            self.tmp / f"daemon{n}.log",
            self.tmp / f"cache{n}",
            list(extra or []),
            expected_log=list(expected_log or []),
        )
        self.mounts.append(m)
        m.mount()
        return m


@pytest.fixture
def rig(moto_server: str, make_bucket: Callable[[], str], tmp_path: Path) -> Iterator[Rig]:
    bucket = make_bucket()  # (torn down after the mounts below are unmounted)
    url = f"s3://{bucket}/pfx"
    keyfile = tmp_path / "key"
    sealfs("init", url, "--keyfile", str(keyfile), "-o", f"endpoint={moto_server},path_style=1")
    proxy = FaultProxy(moto_server, seed=SEED)
    r = Rig(proxy, url, moto_server, keyfile, tmp_path)
    try:
        yield r
    finally:
        proxy.clear()
        try:
            unmount_all(r.mounts)
        finally:
            REPORT.update(proxy.report())
            proxy.close()


class _Report:
    """Prints the table of injected faults in pytest's terminal summary."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not REPORT and not TIME_TO_EIO:
            return
        terminalreporter.section(f"store faults (seed {SEED})")
        terminalreporter.write_line(f"{'fault':<14}{'injected':>9}")
        for kind in (*KINDS, "down", "hang"):
            if REPORT[kind]:
                terminalreporter.write_line(f"{kind:<14}{REPORT[kind]:>9}")
        terminalreporter.write_line(f"{'total':<14}{sum(REPORT.values()):>9}")
        if TIME_TO_EIO:
            terminalreporter.write_line("time to EIO (or exit) while the store was down, seconds:")
            for what, secs in TIME_TO_EIO.items():
                terminalreporter.write_line(f"  {what:<56}{secs:7.2f}")
        out = os.environ.get("SEALFS_FAULT_REPORT")
        if out:
            Path(out).write_text(
                json.dumps({"seed": SEED, "faults": dict(REPORT), "time_to_eio": TIME_TO_EIO}, indent=2) + "\n"
            )


@pytest.fixture(scope="module", autouse=True)
def fault_report(pytestconfig: pytest.Config) -> None:
    if not pytestconfig.pluginmanager.has_plugin("sealfs-fault-report"):
        pytestconfig.pluginmanager.register(_Report(), "sealfs-fault-report")


# -- data ------------------------------------------------------------------------------


def payload(name: str, size: int) -> bytes:
    """Deterministic bytes for a file (no two files alike)."""
    return random.Random(f"{SEED}:{name}").randbytes(size)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: name -> size.  Less than a block; a few blocks; over one 8 MiB part, so
#: a multipart upload whose parts are sent while the file is written.
#: SEALFS_LONG adds more, and one over the 16 MiB single-PUT limit, which a
#: rewrite in place uploads with UploadPartCopy for its unchanged parts.
SHAPES = {
    "tiny": 1000,
    "two-blocks": BLOCK + 1,
    "medium": 700_000,
    "big": 9 * MiB + 5,
}
if LONG:
    SHAPES |= {"empty": 0, "exact-block": BLOCK, "few-mib": 3 * MiB + 333, "bigger": 17 * MiB + 1}


def write_file(path: Path, data: bytes, *, chunk: int = MiB, fsync: bool = False) -> None:
    with open(path, "wb") as f:
        f.writelines(data[i : i + chunk] for i in range(0, len(data), chunk))
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def rewrite_middle(path: Path, old: bytes, offset: int, length: int, seed: str) -> bytes:
    """Overwrite ``length`` bytes at ``offset`` in place, fsync; the new
    contents."""
    patch = payload(seed, length)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(patch)
        f.flush()
        os.fsync(f.fileno())
    return old[:offset] + patch + old[offset + length :]


def check_reads(root: Path, expected: dict[str, bytes], rnd: random.Random) -> None:
    """Every file reads back exactly: whole (sequential: streaming GETs)
    and in pieces at random offsets (ranged GETs)."""
    for name, data in expected.items():
        got = (root / name).read_bytes()
        assert len(got) == len(data), f"{name}: {len(got)} bytes, expected {len(data)}"
        assert digest(got) == digest(data), f"{name}: wrong bytes"
    for name, data in expected.items():
        if len(data) < 2:
            continue
        with open(root / name, "rb", buffering=0) as f:
            for _ in range(4):
                off = rnd.randrange(len(data))
                n = rnd.randrange(1, 3 * BLOCK)
                assert os.pread(f.fileno(), n, off) == data[off : off + n], f"{name}: wrong bytes at {off}"


def check_store(rig: Rig, expected: dict[str, bytes]) -> None:
    """The store holds exactly ``expected``, read without the proxy and
    without a mount (``sealfs cat`` of every file, in one process)."""
    names = sorted(expected)
    out = sealfs("cat", rig.url, *names, "-o", f"keyfile={rig.keyfile},endpoint={rig.moto},path_style=1").stdout
    pos = 0
    for name in names:
        data = expected[name]
        assert digest(out[pos : pos + len(data)]) == digest(data), f"{name}: the store holds other bytes"
        pos += len(data)
    assert pos == len(out), "the store's files are longer than what was written"


def check_fsck(rig: Rig) -> None:
    """Every object in the store authenticates (``sealfs fsck``: exit 0, or
    1 for leftovers such as a multipart upload whose start was retried
    after its answer was lost, never 4 for a damaged object)."""
    proc = sealfs("fsck", rig.url, "-o", f"keyfile={rig.keyfile},endpoint={rig.moto},path_style=1", check=False)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode in (0, 1) and " 0 damaged" in out, f"sealfs fsck exited {proc.returncode}: {out}"


# -- the store alone ---------------------------------------------------------------------
#
# S3Store behind the proxy, without a mount: the retry decisions the mount
# tests rely on, where they are made, with timeouts of a second.


@pytest.fixture
def proxied_store(moto_server: str, make_bucket: Callable[[], str]) -> Iterator[tuple[S3Store, FaultProxy]]:
    with FaultProxy(moto_server, seed=SEED) as proxy:
        store = S3Store(
            make_bucket(),
            "pfx",
            endpoint=proxy.url,
            path_style=True,
            connect_timeout=1.0,
            read_timeout=1.0,
            call_timeout=5.0,
        )
        try:
            yield store, proxy
        finally:
            proxy.clear()
            store.close()
            REPORT.update(proxy.report())


def lose_next(proxy: FaultProxy, kind: str, method: str) -> None:
    """``kind`` on the next ``method`` request only."""
    proxy.set_rules(Rule(kind, every=1, methods={method}, limit=1))


def test_store_conditional_write_whose_answer_was_lost_is_done(proxied_store, moto_s3) -> None:
    """A conditional write that the server carried out but whose answer was
    lost is retried, and the retry meets 412: its own write.  That is
    success.  A 412 after a retry that is another writer's doing stays a
    conflict."""
    store, proxy = proxied_store
    etag = store.put("k", b"one", {"m": "1"})
    lose_next(proxy, "lost_reply", "PUT")
    new = store.put("k", b"two", {"m": "2"}, if_match=etag)
    assert (store.get("k"), store.head("k").etag) == (b"two", new)
    lose_next(proxy, "lost_reply", "PUT")
    store.put("created", b"x", {"m": "3"}, if_none_match=True)
    assert store.get("created") == b"x"
    assert proxy.report().get("lost_reply") == 2

    # The first attempt never reaches the server; another writer changed
    # the object (or created it) before the retry.
    moto_s3.put_object(Bucket=store.bucket, Key="pfx/k", Body=b"theirs")
    lose_next(proxy, "drop", "PUT")
    with pytest.raises(PreconditionFailed):
        store.put("k", b"mine", {"m": "4"}, if_match=new)
    lose_next(proxy, "drop", "PUT")
    with pytest.raises(PreconditionFailed):
        store.put("created", b"mine", {"m": "5"}, if_none_match=True)
    assert (store.get("k"), store.get("created")) == (b"theirs", b"x")
    assert proxy.report().get("drop") == 2


@pytest.mark.parametrize("outage", ["down", "hang"])
def test_store_calls_end_within_call_timeout_and_retry_again_after_an_outage(proxied_store, outage: str) -> None:
    store, proxy = proxied_store
    store.put("k", b"x")
    start_outage(proxy, outage)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot reach S3 endpoint"):
        store.head("k")
    first = time.monotonic() - start
    assert first < store.call_timeout + 1.0
    if outage == "hang":  # attempts of read_timeout (1 s) while another could end in time
        assert first >= 2.0
    # The store is known unreachable: one attempt per call, no retries.
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.get("k")
    assert time.monotonic() - start < 1.0 + 1.0 + 0.5  # connect_timeout + read_timeout, at most
    TIME_TO_EIO[f"store alone, {outage} (timeouts 1 s, call 5 s): first call"] = round(first, 2)

    # Back: the next call works, and retries are made again at once (no
    # quota of retries spent by the outage).
    proxy.set_rules(Rule("error503", every=2), Rule("drop", every=3))
    for _ in range(20):
        assert store.get("k") == b"x"
    assert proxy.report().get("error503", 0) >= 5


# -- transient faults ------------------------------------------------------------------


def transient_rules(kind: str) -> list[Rule]:
    """One kind of fault on every 4th request (SEALFS_LONG: on a random
    30 %), which the retries must hide.  Every 4th rather than random: two
    attempts of one call are rarely exactly 4 requests apart, so the
    default run does not fail by bad luck (botocore makes 6 attempts of a
    request, S3Store 4 of a body that breaks off)."""
    if kind == "mixed":
        return [Rule(k, rate=RATE / len(KINDS), delay=0.1) for k in KINDS]
    how = {"rate": RATE / 2 if kind in BODY_KINDS else RATE} if LONG else {"every": 4}
    if kind in BODY_KINDS:
        # Only answers with a body can be cut: aim at the GETs (and POSTs:
        # multipart completion, batch delete), where there is one.
        return [Rule(kind, methods={"GET", "POST"}, **how)]
    return [Rule(kind, delay=0.1, **how)]


TRANSIENT = [*KINDS, *(["mixed"] if LONG else [])]


@pytest.mark.parametrize("kind", TRANSIENT)
def test_transient_faults_lose_nothing_and_return_no_wrong_bytes(rig: Rig, kind: str) -> None:
    rules = transient_rules(kind)
    writer = rig.mount()
    rig.proxy.set_rules(*rules)
    root = writer.path
    expected: dict[str, bytes] = {}
    (root / "sub").mkdir()
    for i, (name, size) in enumerate(SHAPES.items()):
        data = payload(name, size)
        rel = f"sub/{name}" if i % 2 else name
        write_file(root / rel, data, fsync=bool(i % 2))
        expected[rel] = data
    # Rewrites in place: unchanged ciphertext fetched back from the store
    # (or, over 16 MiB, copied inside it).
    expected["medium"] = rewrite_middle(root / "medium", expected["medium"], 200_000, 10_000, "patch1")
    for big in (p for p in expected if len(expected[p]) > 8 * MiB):
        expected[big] = rewrite_middle(root / big, expected[big], 100, 3000, f"patch-{big}")
    # Small files, and namespace and metadata calls on them.
    (root / "many").mkdir()
    rnd = random.Random(SEED)
    for i in range(SMALL_FILES):
        data = payload(f"small{i}", rnd.randrange(0, 3 * BLOCK))
        write_file(root / f"many/f{i}", data, fsync=i % 3 == 0)
        expected[f"many/f{i}"] = data
    for i in range(0, SMALL_FILES, 4):
        os.rename(root / f"many/f{i}", root / f"many/renamed{i}")
        expected[f"many/renamed{i}"] = expected.pop(f"many/f{i}")
        os.chmod(root / f"many/renamed{i}", 0o600)
        os.setxattr(root / f"many/renamed{i}", "user.note", b"kept")
    for i in range(1, SMALL_FILES, 4):
        os.unlink(root / f"many/f{i}")
        del expected[f"many/f{i}"]
    listing = {d: sorted(os.listdir(root / d)) for d in ("sub", "many")}
    for d, names in listing.items():
        assert names == sorted(p.split("/")[1] for p in expected if p.startswith(d + "/"))
    writer.unmount()  # (still behind the faults: pending directory times go up too)
    writer.check_log()

    # A second mount, behind the same faults, with an empty cache: every
    # block comes through them.
    rig.proxy.clear()
    reader = rig.mount()
    rig.proxy.set_rules(*rules)
    for d, names in listing.items():
        assert sorted(os.listdir(reader.path / d)) == names
    check_reads(reader.path, expected, random.Random(SEED))
    for i in range(0, SMALL_FILES, 4):
        path = reader.path / f"many/renamed{i}"
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.getxattr(path, "user.note") == b"kept"
    rig.proxy.clear()
    injected = rig.proxy.report()
    least = 1 if kind == "mixed" else 5
    for k in {r.kind for r in rules}:
        got = injected.get(k, 0)
        assert got >= least, f"only {got} {k} faults were injected: too few to prove anything"
    check_store(rig, expected)
    if LONG:
        check_fsck(rig)


# -- the store goes down -----------------------------------------------------------------

#: Log lines of a mount whose store went down on purpose.
OUTAGE_LOG = [
    r"store failure in \w+: ",
    r"discarding changes to .* that could not be uploaded",
    r"cannot write the times of (a )?directory",
    r"cannot upload .* at shutdown",
    r"Traceback \(most recent call last\)",  # (of a log.exception of the lines above)
]


def fail_at_once(outage: str, ops: dict[str, Callable[[], object]]) -> None:
    """Run the ``ops`` at the same time (the store is down): each must fail
    with EIO within OUTAGE_BOUND seconds of its start."""

    def run(op: Callable[[], object]) -> tuple[float, BaseException | None]:
        start = time.monotonic()
        try:
            op()
        except OSError as e:
            return time.monotonic() - start, e
        return time.monotonic() - start, None

    with ThreadPoolExecutor(max_workers=len(ops)) as pool:
        results = dict(zip(ops, pool.map(run, ops.values()), strict=True))
    for what, (took, _) in results.items():
        TIME_TO_EIO[f"{outage}: {what}"] = round(took, 2)
    for what, (took, error) in results.items():
        assert error is not None, f"{what} succeeded while the store was {outage}"
        assert error.errno == errno.EIO, f"{what}: {error!r}, expected EIO"
        assert took < OUTAGE_BOUND, f"{what} took {took:.1f} s to fail (bound {OUTAGE_BOUND} s)"


def start_outage(proxy: FaultProxy, outage: str) -> None:
    (proxy.down if outage == "down" else proxy.hang)()


def unmount_without_fork(m: Mount) -> float:
    """Unmount ``m`` with umount2(2) from this process and wait for its
    daemon to exit; the seconds that took.  (Not fusermount3: a fork of
    this process, which holds the proxy's sockets, would hold them open,
    and its exec would flush every FUSE file this process has open.)"""
    start = time.monotonic()
    if ctypes.CDLL(None, use_errno=True).umount2(os.fsencode(m.path), 0) != 0:
        raise OSError(ctypes.get_errno(), f"umount2 {m.path}")
    while daemon_pids(m.path):
        if time.monotonic() - start > UNMOUNT_WAIT:
            raise AssertionError(f"the daemon of {m.path} did not exit within {UNMOUNT_WAIT} s of the unmount")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.parametrize("outage", ["down", "hang"])
def test_store_outage_fails_fast_and_the_mount_recovers(rig: Rig, outage: str, tmp_path: Path) -> None:
    """``down``: every connection is reset.  ``hang``: requests are read
    and never answered (only the client's timeouts end them).

    Mount ``m`` meets the outage with files open, some with changes not
    yet uploaded, and must work again afterwards.  Mount ``other`` of the
    same volume has a file fsync'ed and then written to: it is closed and
    the mount unmounted during the outage.

    ``m`` keeps names and attributes in the kernel's caches for a minute:
    the kernel sends the lookups of one directory to the daemon one at a
    time, so with the default one-second caches the concurrent calls below
    would wait for each other's lookups (each a request that times out),
    and the times measured would be the sum of theirs; for the same reason
    the calls below that look a name up do so in different directories.
    (Measured on their own, with the default caches, while the store
    hangs: ``ls DIR`` fails after 30 s, two lookups.)  Every call below
    still needs the store (open revalidates, a new name is looked up,
    listing and reading fetch)."""
    m = rig.mount(expected_log=OUTAGE_LOG, extra=["entry_timeout=60", "attr_timeout=60"])
    other = rig.mount(expected_log=OUTAGE_LOG)
    root = m.path
    acked = {
        "closed": payload("closed", 300_000),
        "dir/synced": payload("synced", 2 * BLOCK + 7),
        "cold": payload("cold", 5 * BLOCK),
        "by-other": payload("by-other", BLOCK + 99),
    }
    (root / "dir").mkdir()
    (root / "dir2").mkdir()
    write_file(root / "closed", acked["closed"])
    scratch = payload("scratch", 100_000)
    write_file(root / "scratch", scratch)
    # A file this mount has never read: its blocks are in no cache.
    (tmp_path / "cold").write_bytes(acked["cold"])
    sealfs(
        "put", rig.url, str(tmp_path / "cold"), "cold", "-o", f"keyfile={rig.keyfile},endpoint={rig.moto},path_style=1"
    )
    synced = os.open(root / "dir/synced", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(synced, acked["dir/synced"])
    os.fsync(synced)  # acknowledged
    more = payload("more", 3 * BLOCK)
    os.write(synced, more)  # not yet
    cold = os.open(root / "cold", os.O_RDONLY)
    rewrite = os.open(root / "scratch", os.O_WRONLY)
    os.pwrite(rewrite, b"lost", 0)
    by_other = os.open(other.path / "by-other", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(by_other, acked["by-other"])
    os.fsync(by_other)  # acknowledged
    os.pwrite(by_other, b"never acknowledged", 10)
    time.sleep(1.5)  # the daemon's timer writes new directory times within a second: none pending at the outage
    (other.path / "made-by-other").mkdir()  # (its parent's new times: written within a second)
    # From here until the store is back, no fork: see unmount_without_fork.

    def close_and_unmount_other() -> float:
        start = time.monotonic()
        with pytest.raises(OSError) as failure:
            os.close(by_other)
        TIME_TO_EIO[f"{outage}: close on the other mount"] = round(time.monotonic() - start, 2)
        assert failure.value.errno == errno.EIO, failure.value
        return unmount_without_fork(other)

    start_outage(rig.proxy, outage)
    with ThreadPoolExecutor(max_workers=1) as pool:
        unmount = pool.submit(close_and_unmount_other)
        fail_at_once(
            outage,
            {
                "stat of a new name": lambda: os.stat(root / "nosuch"),
                "listdir": lambda: os.listdir(root / "dir"),
                "open": lambda: os.close(os.open(root / "closed", os.O_RDONLY)),
                "read": lambda: os.pread(cold, 4096, BLOCK),
                "create (O_EXCL)": lambda: os.close(os.open(root / "dir2/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
                "fsync": lambda: os.fsync(synced),
                "close after a write": lambda: os.close(rewrite),
            },
        )
        took = unmount.result()
    TIME_TO_EIO[f"{outage}: unmount (until the daemon exits)"] = round(took, 2)
    assert took < OUTAGE_BOUND, f"the unmount took {took:.1f} s while the store was {outage}"
    other.check_log()
    assert rig.proxy.report().get(outage, 0) > 0

    # The store is back: the same mount works again, at once...
    rig.proxy.clear()
    os.fsync(synced)  # what the failed fsync could not upload was kept
    acked["dir/synced"] += more
    os.close(synced)
    assert os.pread(cold, 4096, BLOCK) == acked["cold"][BLOCK : BLOCK + 4096]
    os.close(cold)
    # The change whose close() failed is dropped, or was uploaded by the
    # release that followed (if the store was back by then): never half of it.
    assert (root / "scratch").read_bytes() in (scratch, b"lost" + scratch[4:])
    assert sorted(os.listdir(root)) == ["by-other", "closed", "cold", "dir", "dir2", "made-by-other", "scratch"]
    assert os.listdir(root / "dir2") == []
    assert sorted(os.listdir(root / "dir")) == ["synced"]
    for name, data in acked.items():
        assert (root / name).read_bytes() == data, name
    # ...and rides through transient faults again, as before the outage
    # (retries are not rationed by what the outage used up).
    rig.proxy.set_rules(Rule("error503", every=2), Rule("drop", every=3))
    for i in range(4):
        acked[f"after{i}"] = payload(f"after{i}", 70_000 * i)
        write_file(root / f"after{i}", acked[f"after{i}"], fsync=True)
    assert rig.proxy.report().get("error503", 0) > 0
    rig.proxy.clear()

    # Nothing acknowledged was lost, and nothing in the store is damaged.
    check_store(rig, acked)
    check_fsck(rig)
