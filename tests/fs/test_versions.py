"""A bucket writer puts back what it captured earlier, on a real mount.

Item 1 (docs/FORMAT.md, "Version binding"): the metadata of an older
version of a file put back on its current content (S3: CopyObject of the
current body with the old user metadata; the local store: the old metadata
line in the object file) is an integrity failure: EIO and a log line on the
mount, exit 4 from ``sealfs fsck`` naming the file.

Item 2 (docs/SECURITY.md, "Rollback"): a whole object put back as it was
(body and metadata, a consistent older version) or removed is invisible to
a plain fsck, and reported by ``sealfs fsck --since`` against a record made
before (exit 4).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from pathlib import Path

import pytest
from conftest import raises_errno, sealfs  # tests/fs/conftest.py

from sealfs.keys.slots import KeyFile
from sealfs.store.local import HEADER_SIZE as LOCAL_PREFIX
from sealfs.volume import Volume


class Hands:
    """What someone with write access to the bucket does, behind sealfs's
    back: raw objects and their user metadata, with boto3 on the moto
    server or with plain file operations on the local store's files."""

    def __init__(self, m, request):
        self.m = m
        self.s3 = request.getfixturevalue("moto_s3") if m.spec.kind == "s3" else None
        if self.s3 is not None:
            rest = m.url.removeprefix("s3://")
            self.bucket, _, prefix = rest.partition("/")
            self.prefix = prefix + "/" if prefix else ""
        else:
            self.root = Path(m.url.removeprefix("file://"))

    def entry_key(self, *path: bytes) -> str:
        """The object key of an entry, found as sealfs finds it."""
        vol = Volume.open(self.m.spec.open(), [KeyFile(str(self.m.keyfile), self.m.keyfile.read_bytes())])
        try:
            e = vol.root()
            for name in path:
                e = vol.lookup(e.id, name)
            return e.key
        finally:
            vol.close()

    def _path(self, key: str) -> Path:
        *dirs, last = key.split("/")
        return self.root.joinpath("objects", *[d + "~" for d in dirs], last)

    def capture(self, key: str):
        """The object as stored now (body and metadata), to put back later."""
        if self.s3 is None:
            return self._path(key).read_bytes()
        got = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
        return got["Body"].read(), got["Metadata"]

    def put_back(self, key: str, captured) -> None:
        """The captured object, body and metadata, in place of the current one."""
        if self.s3 is None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(captured)
            os.rename(tmp, path)
        else:
            body, md = captured
            self.s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body, Metadata=md)

    def put_metadata_back(self, key: str, captured) -> None:
        """The captured object's sealed metadata ``m`` on the current body."""
        if self.s3 is None:
            path = self._path(key)
            data = path.read_bytes()
            old_m = re.search(rb"^m=[^\n]*$", captured[:LOCAL_PREFIX], re.M).group(0)
            lines = data[:LOCAL_PREFIX].rstrip(b"\0").split(b"\n")
            prefix = b"\n".join(old_m if line.startswith(b"m=") else line for line in lines)
            assert len(prefix) <= LOCAL_PREFIX
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(prefix.ljust(LOCAL_PREFIX, b"\0") + data[LOCAL_PREFIX:])
            os.rename(tmp, path)
        else:
            current = self.s3.head_object(Bucket=self.bucket, Key=self.prefix + key)["Metadata"]
            assert current["m"] != captured[1]["m"]
            self.s3.copy_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                CopySource={"Bucket": self.bucket, "Key": self.prefix + key},
                Metadata={**current, "m": captured[1]["m"]},
                MetadataDirective="REPLACE",
            )

    def delete(self, key: str) -> None:
        if self.s3 is None:
            self._path(key).unlink()
        else:
            self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + key)


@pytest.fixture
def hands(mounted, request) -> Hands:
    return Hands(mounted, request)


def fsck(m, *args: str):
    return sealfs("fsck", m.url, *m.store_args(), *args, check=False)


def wait_for_log(m, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in m.log.read_text(errors="replace").splitlines() if m.log.exists() else []:
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line matches {pattern!r}:\n{m.log.read_text(errors='replace')}")


BOUND_FAILURE = r"ERROR.*integrity failure in (open|read|setattr).*secret\.txt: its metadata is of another version"


@pytest.mark.parametrize("change", ["chmod", "chown"])
def test_old_metadata_on_the_current_content_is_an_integrity_failure(mounted, hands, change, tmp_path):
    p = mounted.path / "secret.txt"
    data = os.urandom(100_000)
    p.write_bytes(data)
    os.chmod(p, 0o644)
    key = hands.entry_key(b"secret.txt")
    before = hands.capture(key)
    if change == "chmod":
        os.chmod(p, 0o600)
    else:
        os.chown(p, 4321, 4321)
    assert p.read_bytes() == data  # (the new version reads)
    hands.put_metadata_back(key, before)
    mounted.expected_log.append(BOUND_FAILURE)
    with raises_errno(errno.EIO):
        with open(p, "rb") as f:
            f.read()
    line = wait_for_log(mounted, BOUND_FAILURE)
    assert "secret.txt" in line
    proc = fsck(mounted)
    out = proc.stdout.decode()
    assert proc.returncode == 4, out + proc.stderr.decode()
    assert re.search(r"^DAMAGED +/secret\.txt: .*another version", out, re.M), out
    proc = fsck(mounted, "--record", str(tmp_path / "rec"))  # never a record of a damaged volume
    assert proc.returncode == 4 and not (tmp_path / "rec").exists() and b"not written" in proc.stdout
    # a metadata change on the mount does not make the mixture a version either
    with raises_errno(errno.EIO):
        os.chmod(p, 0o640)
    with raises_errno(errno.EIO):
        p.read_bytes()


def test_fsck_since_reports_a_rollback_and_a_deletion(mounted, hands, tmp_path):
    m = mounted
    (m.path / "ledger").write_bytes(b"balance: 100\n")
    (m.path / "invoices").mkdir()
    (m.path / "invoices" / "receipt").write_bytes(b"paid\n")
    key = hands.entry_key(b"ledger")
    old = hands.capture(key)
    with open(m.path / "ledger", "ab") as f:
        f.write(b"balance: 0\n")
    os.chmod(m.path / "invoices", 0o700)
    record = tmp_path / "state.rec"
    proc = fsck(m, "--record", str(record))
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    raw = record.read_bytes()
    for name in (b"ledger", b"receipt", b"invoices"):
        assert name not in raw  # names are sealed
    assert fsck(m, "--since", str(record)).returncode == 0

    hands.put_back(key, old)  # the older version, consistent in itself
    receipt = hands.entry_key(b"invoices", b"receipt")
    hands.delete(receipt)
    assert fsck(m).returncode == 0  # each object authenticates: only the record tells
    proc = fsck(m, "--since", str(record))
    out = proc.stdout.decode()
    assert proc.returncode == 4, out + proc.stderr.decode()
    assert re.search(r"^ROLLED BACK +/ledger: ", out, re.M), out
    assert re.search(r"^DELETED +/invoices/receipt: ", out, re.M), out
    assert "/invoices:" not in out  # the directory is as recorded


def test_fsck_since_sees_a_directory_put_back(mounted, hands, tmp_path):
    m = mounted
    (m.path / "d").mkdir(mode=0o755)
    key = hands.entry_key(b"d")
    old = hands.capture(key)
    os.chmod(m.path / "d", 0o700)
    record = tmp_path / "state.rec"
    assert fsck(m, "--record", str(record)).returncode == 0
    hands.put_back(key, old)
    assert fsck(m).returncode == 0
    proc = fsck(m, "--since", str(record))
    out = proc.stdout.decode()
    assert proc.returncode == 4 and re.search(r"^ROLLED BACK +/d: ", out, re.M), out
