"""Key derivation: every HKDF label of the format, in one place.

All subkeys come from HKDF-SHA256.  Labels are readable phrases with the
format version in them, so a future format derives unrelated keys.  See
docs/FORMAT.md, "Keys".
"""

from __future__ import annotations

import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

# Labels (HKDF "info").  Changing any of these breaks every existing volume.
LABEL_KEK = b"sealfs v1 file key wrapping key"
LABEL_META = b"sealfs v1 metadata key"
LABEL_NAME = b"sealfs v1 name key"
LABEL_CONFIG_MAC = b"sealfs v1 config authentication key"
LABEL_KEYRING = b"sealfs v1 keyring key"
LABEL_BLOCK = b"sealfs v1 block key "  # followed by the block index, u64 big-endian
LABEL_BLOCK_MAP = b"sealfs v1 block map key"
LABEL_PASSPHRASE_SLOT = b"sealfs v1 passphrase slot key"
LABEL_KEYFILE_SLOT = b"sealfs v1 key file slot key"
LABEL_KMS_SLOT = b"sealfs v1 kms slot key"


def hkdf(key: bytes, *, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 (RFC 5869), computed with the standard library's HMAC:
    it runs once per block, where building cryptography's HKDF object costs
    several times the hashing (tests/test_codec.py checks both agree)."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 output length out of range")
    prk = hmac.digest(salt or bytes(32), key, "sha256")
    out, t = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        t = hmac.digest(prk, t + info + bytes([counter]), "sha256")
        out += t
    return out[:length]


def block_key(dek: bytes, file_id: bytes, index: int) -> bytes:
    """The AES-256-GCM key of block ``index`` of the file ``file_id``."""
    return hkdf(dek, salt=file_id, info=LABEL_BLOCK + struct.pack(">Q", index))


def block_map_key(dek: bytes, file_id: bytes) -> bytes:
    """The AES-256-GCM key of the block map of a sparse version of ``file_id``."""
    return hkdf(dek, salt=file_id, info=LABEL_BLOCK_MAP)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def seal(key: bytes, plaintext: bytes | bytearray | memoryview, aad: bytes, nonce: bytes | None = None) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag`` with a fresh random nonce
    (``nonce`` is only passed by test-vector generation)."""
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
    """Inverse of :func:`seal`; any failure is an :class:`IntegrityError`
    naming ``what`` (never the key or the data)."""
    if len(sealed) < NONCE_SIZE + TAG_SIZE:
        raise IntegrityError(f"{what}: too short to be sealed data")
    view = memoryview(sealed)  # (no copy of the block)
    try:
        return AESGCM(key).decrypt(bytes(view[:NONCE_SIZE]), view[NONCE_SIZE:], aad)
    except Exception:  # InvalidTag, or a malformed key/nonce from bad input
        raise IntegrityError(f"{what}: authentication failed (modified, moved or not ours)") from None
