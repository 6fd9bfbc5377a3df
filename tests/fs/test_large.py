"""Files larger than 5 GiB (S3's single-PUT and CopyObject limit).

On the local store only: a 5.5 GiB object on moto lives in its memory, and
the S3-specific path (multipart copy above ``max_put_size``) is covered by
the store contract suite.  The file is sparse for the program that writes
it, but sealfs stores every block (encrypted zeros are not zeros)."""

from __future__ import annotations

import os

import pytest

GiB = 1 << 30


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
def test_file_larger_than_5_gib(mounted):
    p = mounted.path / "big"
    size = 5 * GiB + GiB // 2 + 12345
    marks = {0: b"head", 3 * GiB + 7: b"middle", size - 4: b"tail"}
    with open(p, "wb") as f:
        for off, data in marks.items():
            f.seek(off)
            f.write(data)
    assert os.stat(p).st_size == size
    mounted.remount()
    assert os.stat(p).st_size == size
    with open(p, "rb") as f:
        for off, data in marks.items():
            f.seek(off)
            assert f.read(len(data)) == data
        f.seek(4 * GiB)
        assert f.read(1 << 20) == bytes(1 << 20)
    # a rename copies it server-side, above the 5 GiB single-copy limit
    os.rename(p, mounted.path / "big2")
    with open(mounted.path / "big2", "rb") as f:
        f.seek(size - 4)
        assert f.read() == b"tail"
