"""The header of a regular-file object.

Layout (all integers big-endian), :data:`HEADER_SIZE` = 92 bytes::

    0   8  magic  b"SEALFS\\x00F"
    8   1  format version (1)
    9   1  log2(block size), 12..20
    10  2  flags: 0, or FLAG_BOUND (the entry's metadata names this header)
    12  4  key generation that wrapped the DEK
    16 16  file id (random)
    32 60  AES-256-GCM(KEK[generation], DEK) as nonce(12) || ct(32) || tag(16),
           associated data = bytes 0..32

The wrap's tag authenticates every other field, so a header is either
entirely genuine or refused.

FLAG_BOUND (docs/FORMAT.md, "Version binding"): every header sealfs writes
now carries it, and the entry metadata of its object names the header by
:func:`header_hash`, so metadata of another version of the file does not
pass as this version's.  Headers without it (written before) are read as
before.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import IntegrityError
from .crypto import KEY_SIZE, NONCE_SIZE, TAG_SIZE, seal, unseal

MAGIC = b"SEALFS\x00F"
VERSION = 1
FILE_ID_SIZE = 16
_FIXED = struct.Struct(">8sBBHI16s")
HEADER_SIZE = _FIXED.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE
MIN_BLOCK_SHIFT, MAX_BLOCK_SHIFT = 12, 20
#: Header flag: the entry's metadata MUST name this header (``hh``).
FLAG_BOUND = 0x0001
#: Bytes of :func:`header_hash`.
HEADER_HASH_SIZE = 16


@dataclass(frozen=True)
class Header:
    block_size: int
    generation: int
    file_id: bytes
    #: FLAG_BOUND is set: the metadata of this version must name the header.
    bound: bool = False


def header_hash(raw: bytes | memoryview) -> bytes:
    """The identity of one sealed header (one version of a file): the first
    16 bytes of SHA-256 of its 92 bytes.  A header is sealed anew, with a
    fresh wrap nonce, for every version sealfs writes."""
    return hashlib.sha256(bytes(raw[:HEADER_SIZE])).digest()[:HEADER_HASH_SIZE]


def check_block_size(block_size: int) -> int:
    if block_size.bit_length() - 1 not in range(MIN_BLOCK_SHIFT, MAX_BLOCK_SHIFT + 1) or (
        block_size & (block_size - 1)
    ):
        raise ValueError(f"block size {block_size} must be a power of two from 4 KiB to 1 MiB")
    return block_size


def seal_header(
    kek: bytes,
    *,
    block_size: int,
    generation: int,
    file_id: bytes,
    dek: bytes,
    nonce: bytes | None = None,
    bound: bool = False,
) -> bytes:
    check_block_size(block_size)
    if len(file_id) != FILE_ID_SIZE or len(dek) != KEY_SIZE:
        raise ValueError("file id must be 16 bytes and DEK 32 bytes")
    fixed = _FIXED.pack(MAGIC, VERSION, block_size.bit_length() - 1, FLAG_BOUND if bound else 0, generation, file_id)
    return fixed + seal(kek, dek, fixed, nonce)


def peek_header(raw: bytes | memoryview) -> Header:
    """Parse the fields *without* authenticating them (to pick the KEK).
    Structural nonsense is already an IntegrityError."""
    if len(raw) < HEADER_SIZE:
        raise IntegrityError("file header is truncated")
    magic, version, shift, flags, generation, file_id = _FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise IntegrityError("not a sealfs file object (bad magic)")
    if version != VERSION:
        raise IntegrityError(f"unsupported file format version {version}")
    if not MIN_BLOCK_SHIFT <= shift <= MAX_BLOCK_SHIFT or flags & ~FLAG_BOUND:
        raise IntegrityError("file header has invalid fields")
    return Header(1 << shift, generation, bytes(file_id), bool(flags & FLAG_BOUND))


def open_header(raw: bytes | memoryview, kek_for: Callable[[int], bytes]) -> tuple[Header, bytes]:
    """Authenticate the header; return it and the unwrapped DEK.
    ``kek_for(generation)`` raises IntegrityError for an unknown generation."""
    header = peek_header(raw)
    raw = bytes(raw[:HEADER_SIZE])
    dek = unseal(kek_for(header.generation), raw[_FIXED.size :], raw[: _FIXED.size], "file header")
    return header, dek
