"""Sparse file versions (docs/FORMAT.md, "Sparse files"), on both stores.

A version with holes stores only its written blocks, listed in a sealed
block map.  Holes read as zeros; a bucket writer who cuts a stored block
out, swaps blocks, edits the map or puts another version's metadata on
the object gets an integrity failure, never zeros for data.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealfs.codec.blocks import (
    BLOCK_OVERHEAD,
    MAX_FILE_SIZE,
    BlockMap,
    FileCipher,
    Layout,
)
from sealfs.codec.header import HEADER_SIZE, open_header
from sealfs.errors import FsError, IntegrityError
from sealfs.keys.slots import KeyFile
from sealfs.volume import ROOT_ID, Volume

BS = 4096


@pytest.fixture
def vol(store):
    v = Volume.create(store, KeyFile("k", os.urandom(64)), block_size=BS)
    yield v
    v._pool.shutdown()


def write(vol, name: bytes, size: int, blocks: dict[int, bytes], extents, *, entry=None, base=None):
    """Store a version of ``size`` bytes whose block ``i`` is ``blocks[i]``
    (padded with zeros to its length), the blocks in ``extents`` stored."""
    e = entry or vol.new_file_entry(ROOT_ID, name, 0o644, 0, 0)

    def block(i: int) -> bytes:
        want = vol.layout.plain_block_len(i, size)
        data = blocks.get(i, b"")[:want]
        return data + bytes(want - len(data))

    cond = {"if_match": e.etag} if entry else {"if_none_match": True}
    return vol.write_content(e, size, block, base=base, extents=extents, **cond)


def read_all(vol, name: bytes) -> bytes:
    return b"".join(vol.reader(vol.lookup(ROOT_ID, name)).iter_chunks())


def test_holes_are_not_stored_and_read_as_zeros(vol, store):
    a, b = os.urandom(BS), os.urandom(BS)
    size = 5 * BS + 100
    e = write(vol, b"f", size, {1: a, 3: b}, [(1, 2), (3, 4)])
    assert e.sparse
    info = store.head(e.key)
    assert info.size == e.object_size == HEADER_SIZE + 4 + 28 + 16 + 2 * 16 + 2 * (BS + BLOCK_OVERHEAD)
    got = vol.lookup(ROOT_ID, b"f")
    assert (got.size, got.sparse) == (size, True)
    assert read_all(vol, b"f") == bytes(BS) + a + bytes(BS) + b + bytes(BS + 100)
    # a petabyte of holes is a few bytes; its last block alone
    huge = write(vol, b"huge", 10**15 + 1, {(10**15) // BS: b"z"}, [((10**15) // BS, (10**15) // BS + 1)])
    assert store.head(huge.key).size == HEADER_SIZE + 4 + 28 + 16 + 16 + 1 + BLOCK_OVERHEAD
    r = vol.reader(vol.lookup(ROOT_ID, b"huge"))
    assert r.read(10**15 - 3, 10) == b"\0\0\0z"
    assert r.read(123456789, 5) == bytes(5)
    # rewritten with every block: dense again, as before
    full = write(vol, b"f", size, {1: a, 3: b}, None, entry=got, base=vol.reader(got))
    assert not full.sparse and store.head(full.key).size == vol.layout.object_size_for(size)
    assert read_all(vol, b"f") == bytes(BS) + a + bytes(BS) + b + bytes(BS + 100)


def test_a_partial_rewrite_of_a_sparse_file_reuses_its_blocks(vol):
    a, b, c = os.urandom(BS), os.urandom(BS), os.urandom(BS)
    write(vol, b"f", 100 * BS, {2: a, 50: b}, [(2, 3), (50, 51)])
    e = vol.lookup(ROOT_ID, b"f")
    base = vol.reader(e)
    # block 50 stays (a copy of its ciphertext), block 70 is new, 2 is now a hole
    stored = {70: c}

    def block(i):
        return stored.get(i)  # None: unchanged (block 50, copied from the base)

    e2 = vol.write_content(e, 100 * BS, block, base=base, extents=[(50, 51), (70, 71)], if_match=e.etag)
    assert e2.sparse
    r = vol.reader(vol.lookup(ROOT_ID, b"f"))
    assert r.read(2 * BS, BS) == bytes(BS)
    assert r.read(50 * BS, BS) == b
    assert r.read(70 * BS, BS) == c
    assert r.extents() == [(50, 51), (70, 71)]


def test_sizes_above_the_maximum_are_refused(vol):
    with pytest.raises(FsError) as info:
        write(vol, b"f", MAX_FILE_SIZE + 1, {}, [])
    assert info.value.errno == errno.EFBIG
    e = write(vol, b"g", MAX_FILE_SIZE, {}, [])
    assert vol.lookup(ROOT_ID, b"g").size == MAX_FILE_SIZE and e.object_size < 200


def tampered_reads_fail(vol, store, name: bytes, body: bytes, md: dict) -> None:
    """Put ``body`` with metadata ``md`` under ``name``'s key, as a bucket
    writer would; reading the file must fail, not return zeros."""
    key = vol.lookup(ROOT_ID, name).key
    store.put(key, body, md)
    with pytest.raises(IntegrityError):
        e = vol.lookup(ROOT_ID, name)
        b"".join(vol.reader(e).iter_chunks())


def test_a_bucket_writer_cannot_turn_data_into_holes(vol, store):
    a, b, c = os.urandom(BS), os.urandom(BS), os.urandom(BS)
    dense = write(vol, b"f", 6 * BS, {0: a, 3: b, 4: c}, None)
    dense_body, dense_info = store.get_object(dense.key)
    e = write(vol, b"f", 6 * BS, {0: a, 3: b, 4: c}, [(0, 1), (3, 5)], entry=vol.lookup(ROOT_ID, b"f"))
    body, info = store.get_object(e.key)
    md = info.metadata
    r = vol.reader(vol.lookup(ROOT_ID, b"f"))
    assert r.extents() == [(0, 1), (3, 5)]
    blocks_at = r.block_map().offsets[1]  # where block 3 starts
    sb = BS + BLOCK_OVERHEAD
    map_len = int.from_bytes(body[HEADER_SIZE : HEADER_SIZE + 4], "big")
    cases = {
        "block 3 cut out": body[:blocks_at] + body[blocks_at + sb :],
        "blocks 3 and 4 cut out": body[:blocks_at],
        "blocks 3 and 4 swapped": body[:blocks_at] + body[blocks_at + sb :] + body[blocks_at : blocks_at + sb],
        "a byte of the map flipped": body[: HEADER_SIZE + 30]
        + bytes([body[HEADER_SIZE + 30] ^ 1])
        + body[HEADER_SIZE + 31 :],
        "the map's length raised": body[:HEADER_SIZE] + (map_len + sb).to_bytes(4, "big") + body[HEADER_SIZE + 4 :],
        "a block appended": body + body[blocks_at : blocks_at + sb],
    }
    for what, bad in cases.items():
        try:
            tampered_reads_fail(vol, store, b"f", bad, md)
        except pytest.fail.Exception:
            raise AssertionError(f"{what}: read without an integrity failure") from None
    # the dense version's metadata on the sparse object, and the reverse
    tampered_reads_fail(vol, store, b"f", body, dense_info.metadata)
    tampered_reads_fail(vol, store, b"f", dense_body, md)
    # another size in m than the one sealed in the map
    fake = replace(e, size=7 * BS)
    tampered_reads_fail(vol, store, b"f", body, vol.sealed.seal(fake))
    # and the genuine object still reads
    store.put(e.key, body, md)
    assert read_all(vol, b"f") == a + bytes(2 * BS) + b + c + bytes(BS)


# -- the test vectors (tests/vectors/sparse.json) ---------------------------------------------

VECTORS = json.loads((Path(__file__).parent / "vectors" / "sparse.json").read_text())
KEKS = {int(g): bytes.fromhex(k) for g, k in VECTORS["keks"].items()}
POSITIVE = [v for v in VECTORS["vectors"] if v["expect"] == "success"]
NEGATIVE = [v for v in VECTORS["vectors"] if v["expect"] == "integrity failure"]


def open_sparse(obj: bytes, sz: int) -> tuple[FileCipher, BlockMap]:
    """Open a sparse object as FORMAT.md says: the header, the map (whose
    size must be ``sz``), the object size the map implies."""
    header, dek = open_header(obj[:HEADER_SIZE], lambda g: KEKS.get(g))
    layout = Layout(header.block_size)
    cipher = FileCipher(dek, header.file_id, layout)
    if len(obj) < HEADER_SIZE + 4:
        raise IntegrityError("too short")
    length = int.from_bytes(obj[HEADER_SIZE : HEADER_SIZE + 4], "big")
    if HEADER_SIZE + 4 + length > len(obj):
        raise IntegrityError("map runs past the object")
    extents = cipher.open_map(obj[HEADER_SIZE + 4 : HEADER_SIZE + 4 + length], sz)
    block_map = BlockMap(layout, sz, extents, HEADER_SIZE + 4 + length)
    if block_map.end != len(obj):
        raise IntegrityError("object size is not the map's")
    return cipher, block_map


def read_sparse(obj: bytes, sz: int, offset: int, length: int) -> bytes:
    cipher, block_map = open_sparse(obj, sz)
    layout = cipher.layout
    bs = layout.block_size
    out = b""
    for i in range(offset // bs, -(-min(sz, offset + length) // bs)):
        if block_map.is_hole(i):
            out += bytes(layout.plain_block_len(i, sz))
        else:
            start, end = block_map.sealed_range(i, i + 1)
            out += cipher.open_span(i, obj[start:end], sz)[0]
    skip = offset - (offset // bs) * bs
    return out[skip : skip + length]


def test_sparse_vectors_cover_success_and_failure():
    assert len(POSITIVE) == 3 and len(NEGATIVE) >= 8
    assert {v["object_size"] for v in POSITIVE} >= {140, 185}  # (the sizes FORMAT.md works out)


@pytest.mark.parametrize("v", POSITIVE, ids=lambda v: v["name"])
def test_sparse_vector_opens_to_its_plaintext(v):
    obj = bytes.fromhex(v["object"])
    _, block_map = open_sparse(obj, v["sz"])
    assert [list(e) for e in block_map.extents] == v["extents"]
    for r in v["reads"]:
        want = bytes.fromhex(r["plaintext"])
        assert read_sparse(obj, v["sz"], r["offset"], len(want)) == want


@pytest.mark.parametrize("v", NEGATIVE, ids=lambda v: v["name"])
def test_sparse_vector_with_integrity_failure_is_refused(v):
    obj = bytes.fromhex(v["object"])
    with pytest.raises(IntegrityError):
        read_sparse(obj, v["sz"], 0, v["sz"])


def test_far_byte_vector_decrypts_with_raw_primitives():
    """An independent reader of one sparse object, from FORMAT.md alone."""
    v = next(v for v in POSITIVE if v["sz"] == 10**15 + 1)
    obj = bytes.fromhex(v["object"])
    _, _, shift, _, generation, file_id = struct.unpack(">8sBBHI16s", obj[:32])
    dek = AESGCM(KEKS[generation]).decrypt(obj[32:44], obj[44:92], obj[:32])
    length = int.from_bytes(obj[92:96], "big")
    sealed_map = obj[96 : 96 + length]
    map_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id, info=b"sealfs v1 block map key").derive(dek)
    plain = AESGCM(map_key).decrypt(sealed_map[:12], sealed_map[12:], b"sealfs block map " + file_id)
    size, count, first, stop = struct.unpack(">QQQQ", plain)
    assert (size, count, stop - first) == (10**15 + 1, 1, 1)
    block = obj[96 + length :]
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=file_id, info=b"sealfs v1 block key " + first.to_bytes(8, "big")
    ).derive(dek)
    aad = file_id + first.to_bytes(8, "big") + b"\x01"  # the last block of the file
    assert AESGCM(key).decrypt(block[:12], block[12:], aad) == b"z"
    assert first << shift == 10**15


def test_rekey_keeps_a_sparse_file_sparse(vol, store):
    """sealfs rekey re-wraps the DEK of a sparse file and keeps its map and
    blocks: still sparse, same contents, the new generation."""
    a = os.urandom(BS)
    write(vol, b"f", 10**12, {7: a}, [(7, 8)])
    vol.config.rotate(vol.keyring)
    vol.save_config()
    e = vol.lookup(ROOT_ID, b"f")
    assert vol.rekey_file(e)
    e = vol.lookup(ROOT_ID, b"f")
    r = vol.reader(e)
    assert e.sparse and r.header().generation == vol.keyring.current
    assert r.extents() == [(7, 8)] and r.read(7 * BS, BS) == a and r.read(10**12 - 5, 5) == bytes(5)
    assert store.head(e.key).size < 2 * BS
