"""The adapter's one error path (sealfs.fuseops.run.fuse_errors): a hiding check
that fails unexpectedly fails closed, and is logged there."""

from __future__ import annotations

import errno
import logging
import os
import types

import pyfuse3
import pytest
import trio

from sealfs.errors import FsError
from sealfs.fs.core import Filesystem, Options
from sealfs.fs.nodes import ROOT_INO
from sealfs.fuseops.ops import SealfsOps
from sealfs.keys.slots import KeyFile
from sealfs.store.local import LocalStore
from sealfs.volume import Volume

CTX = types.SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)


class BrokenGuard:
    """Allows everything; its hiding check fails as a bug would (once
    ``broken``, from the start unless told otherwise)."""

    identifier = types.SimpleNamespace(hashes=types.SimpleNamespace(jobs=1, jobs_per_uid=1))
    broken = True

    def check(self, pid, uid, gid, ops, path):
        return None

    def hidden(self, ident, path: str) -> bool:
        return False

    def may_hide(self, path: str) -> bool:
        if self.broken:
            raise RuntimeError("a bug in the hiding check")
        return False

    def hides_anything(self) -> bool:
        return True


@pytest.fixture
def ops(tmp_path):
    vol = Volume.create(
        LocalStore(str(tmp_path / "bucket"), create=True), KeyFile("k", os.urandom(64)), block_size=64 * 1024
    )
    fs = Filesystem(vol, Options(cache_dir=str(tmp_path / "cache")))
    ops = SealfsOps(fs, threads=2, guard=BrokenGuard())
    yield ops
    ops.workers.close()
    vol.close()


@pytest.mark.parametrize("op", ["mkdir", "create", "symlink"])
def test_a_failed_hiding_check_creates_nothing_and_is_logged(ops, op, caplog):
    call = {
        "mkdir": lambda: ops.mkdir(ROOT_INO, b"new", 0o755, CTX),
        "create": lambda: ops.create(ROOT_INO, b"new", 0o644, os.O_WRONLY, CTX),
        "symlink": lambda: ops.symlink(ROOT_INO, b"new", b"target", CTX),
    }[op]
    with caplog.at_level(logging.ERROR, logger="sealfs.fuseops"), pytest.raises(pyfuse3.FUSEError) as err:
        trio.run(call)
    assert err.value.errno == errno.EIO
    assert f"unexpected error in {op}" in caplog.text
    with pytest.raises(FsError) as lookup:
        ops.fs.lookup(ROOT_INO, b"new", CTX)
    assert lookup.value.errno == errno.ENOENT


def test_a_hiding_check_that_fails_mid_listing_gives_back_every_lookup(ops, monkeypatch, caplog):
    """A listing's lookups are counted by the core and must match what the
    kernel took: when a check fails after some names were put in the
    reply, pyfuse3 sends only the error, so every name's count is given
    back, and the nodes go as the kernel never knew them."""
    for name in (b"a", b"b", b"c"):
        ops.fs.forget([(ops.fs.mkdir(ROOT_INO, name, 0o755, CTX).ino, 1)])
    before = set(ops.fs.nodes.nodes)
    ops.gate.guard.broken = False
    replied = []

    def readdir_reply(token, name, attr, next_id):
        replied.append(name)
        ops.gate.guard.broken = True  # (the check of the next name fails)
        return True

    async def listing() -> None:
        fh = await ops.opendir(ROOT_INO, CTX)
        try:
            await ops.readdir(fh, 0, None)
        finally:
            await ops.releasedir(fh)

    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)
    with caplog.at_level(logging.ERROR, logger="sealfs.fuseops"), pytest.raises(pyfuse3.FUSEError) as err:
        trio.run(listing)  # (one run: the adapter's workers answer to the loop they first ran on)
    assert err.value.errno == errno.EIO and len(replied) == 1
    assert "unexpected error in readdir" in caplog.text
    assert set(ops.fs.nodes.nodes) == before, "a name replied with the error kept a lookup the kernel never took"
