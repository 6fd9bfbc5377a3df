"""File-name encryption.

Each path component is encrypted on its own with AES-SIV (deterministic, so
a lookup is a HEAD of a computable key) under the volume's name key, with the
id of the parent directory as associated data: the same name in two
directories encrypts differently, and an entry moved to another directory's
prefix no longer decrypts.

Encoding: lowercase RFC 4648 base32 without padding.  When that would be
longer than :data:`MAX_SHORT` characters (names over about 100 bytes), the key
component becomes ``<base32 of SHA-256 of the ciphertext, 52 chars>.ln`` and
the ciphertext itself travels in the entry's metadata (the long-name scheme),
so no component ever exceeds the 255 bytes a local filesystem allows and keys
stay far below S3's 1,024.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from ..errors import IntegrityError

MAX_SHORT = 200
LONG_SUFFIX = ".ln"
NAME_MAX = 255


def b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode(text: str) -> bytes:
    """Inverse of :func:`b32encode`, accepting only its exact output.

    The standard decoder also takes upper case and ignores the unused low
    bits of the last character, so several keys would decode to the same
    ciphertext: a modified key component could still decrypt.  Refusing
    every encoding but the canonical one keeps name -> key one-to-one.
    """
    pad = "=" * (-len(text) % 8)
    try:
        data = base64.b32decode(text.upper() + pad)
    except (ValueError, base64.binascii.Error):
        raise IntegrityError(f"entry key component {text[:40]!r} is not base32") from None
    if b32encode(data) != text:
        raise IntegrityError(f"entry key component {text[:40]!r} is not in canonical base32")
    return data


def is_long(component: str) -> bool:
    return component.endswith(LONG_SUFFIX)


class NameCipher:
    def __init__(self, name_key: bytes):
        if len(name_key) != 64:
            raise ValueError("AES-SIV name key must be 64 bytes")
        self._siv = AESSIV(name_key)

    def encrypt(self, dir_id: bytes, name: bytes) -> tuple[str, bytes | None]:
        """The key component for ``name`` in directory ``dir_id``, and the
        ciphertext to keep in metadata when the name is long (else None)."""
        if not name or len(name) > NAME_MAX or b"/" in name or b"\0" in name:
            raise ValueError("invalid file name")
        ct = self._siv.encrypt(name, [dir_id])
        text = b32encode(ct)
        if len(text) <= MAX_SHORT:
            return text, None
        return b32encode(hashlib.sha256(ct).digest()) + LONG_SUFFIX, ct

    def decrypt(self, dir_id: bytes, component: str, long_ct: bytes | None = None) -> bytes:
        """Inverse of :meth:`encrypt`.  For a long component, ``long_ct`` is
        the ciphertext from the entry's metadata; it must hash to the key."""
        if is_long(component):
            if long_ct is None or b32encode(hashlib.sha256(long_ct).digest()) + LONG_SUFFIX != component:
                raise IntegrityError("long file name does not match its key")
            ct = long_ct
        else:
            ct = b32decode(component)
        try:
            return self._siv.decrypt(ct, [dir_id])
        except Exception:
            raise IntegrityError("file name failed authentication (modified, moved or not ours)") from None
