"""Encrypted entry metadata.

Every entry object carries its metadata (kind, mode, owner, times, id,
xattrs, symlink target) as a sealed blob in the object's user metadata, so
``chmod`` or ``touch`` of a directory writes its empty object anew; a
file's or symlink's is a new version of its object, since its metadata
names its header or body (docs/FORMAT.md, "Version binding").

Blob: ``generation(u32 BE) || nonce(12) || AES-256-GCM(meta key[generation],
JSON) || tag(16)``, base64 for transport.  The associated data is a context
string chosen by the caller (the object's key), so metadata copied onto
another object does not authenticate.
"""

from __future__ import annotations

import base64
import json
import struct

from ..errors import IntegrityError
from .crypto import seal, unseal

_GEN = struct.Struct(">I")


class MetaCipher:
    def __init__(self, keys: dict[int, bytes], current: int):
        self._keys = keys
        self.current = current

    def seal_bytes(self, data: bytes, aad: bytes) -> bytes:
        gen = _GEN.pack(self.current)
        return gen + seal(self._keys[self.current], data, gen + aad)

    def open_bytes(self, blob: bytes, aad: bytes, what: str) -> bytes:
        if len(blob) < _GEN.size:
            raise IntegrityError(f"{what}: metadata truncated")
        (gen,) = _GEN.unpack_from(blob)
        key = self._keys.get(gen)
        if key is None:
            raise IntegrityError(f"{what}: metadata sealed by unknown key generation {gen}")
        return unseal(key, blob[_GEN.size :], blob[: _GEN.size] + aad, what)

    def seal(self, fields: dict, aad: bytes) -> str:
        data = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
        return base64.b64encode(self.seal_bytes(data, aad)).decode("ascii")

    def open(self, text: str, aad: bytes, what: str) -> dict:
        try:
            blob = base64.b64decode(text, validate=True)
        except ValueError:
            raise IntegrityError(f"{what}: metadata is not base64") from None
        try:
            fields = json.loads(self.open_bytes(blob, aad, what))
        except ValueError:
            raise IntegrityError(f"{what}: metadata is not valid JSON") from None
        if not isinstance(fields, dict):
            raise IntegrityError(f"{what}: metadata is not an object")
        return fields
