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


class BrokenGuard:
    """Allows everything; its hiding check fails as a bug would."""

    identifier = types.SimpleNamespace(hashes=types.SimpleNamespace(jobs=1, jobs_per_uid=1))

    def check(self, pid, uid, gid, ops, path):
        return None

    def may_hide(self, path: str) -> bool:
        raise RuntimeError("a bug in the hiding check")

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
    ctx = types.SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)
    call = {
        "mkdir": lambda: ops.mkdir(ROOT_INO, b"new", 0o755, ctx),
        "create": lambda: ops.create(ROOT_INO, b"new", 0o644, os.O_WRONLY, ctx),
        "symlink": lambda: ops.symlink(ROOT_INO, b"new", b"target", ctx),
    }[op]
    with caplog.at_level(logging.ERROR, logger="sealfs.fuseops"), pytest.raises(pyfuse3.FUSEError) as err:
        trio.run(call)
    assert err.value.errno == errno.EIO
    assert f"unexpected error in {op}" in caplog.text
    with pytest.raises(FsError) as lookup:
        ops.fs.lookup(ROOT_INO, b"new", ctx)
    assert lookup.value.errno == errno.ENOENT
