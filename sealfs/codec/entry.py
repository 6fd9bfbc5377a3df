"""The entry-metadata schema: an :class:`Entry` and the fields that carry it.

An entry object's user metadata ``m`` seals a JSON object of these fields
(docs/FORMAT.md, "Entry metadata"):

    k       kind: f (file), d (directory), l (symlink)
    id      the entry id, hex
    mode    the mode with the file-type bits; uid, gid: the owner
    mt, ct  mtime and ctime in ns (absent from use when ``tr`` is given)
    hh      the identity of the version's header (a file) or body (a symlink)
    vn      the version number, from 1
    x       the xattrs, base64 name -> base64 value
    sz      a sparse file's plaintext size (its object has a block map)
    tr      the nonce of the times record that holds mt and ct
    ov      1 when the xattrs are in the overflow object instead of ``x``

Pure encoding: the fields to and from an Entry, no I/O and no keys.
"""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import dataclass, field

from ..errors import IntegrityError
from . import crypto
from .blocks import MAP_LEN_SIZE, MAX_FILE_SIZE, Layout
from .header import HEADER_HASH_SIZE, HEADER_SIZE

ROOT_ID = bytes(16)
ROOT_KEY = "root"
ID_SIZE = 16
KIND_FILE, KIND_DIR, KIND_LINK = "f", "d", "l"
KIND_MODE = {KIND_FILE: stat.S_IFREG, KIND_DIR: stat.S_IFDIR, KIND_LINK: stat.S_IFLNK}
#: A symlink object is its target sealed by MetaCipher.seal_bytes.
LINK_OVERHEAD = 4 + crypto.NONCE_SIZE + crypto.TAG_SIZE
#: Size of the nonce that names a times record (``tr``).
TIMES_NONCE_SIZE = 16


@dataclass
class Entry:
    """One directory entry with its decrypted metadata."""

    parent_id: bytes
    name: bytes
    key: str
    kind: str
    id: bytes
    mode: int  # with the file-type bits
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    size: int = 0  # plaintext size (files), target length (symlinks)
    etag: str = ""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    target: bytes | None = None
    long_ct: bytes | None = None
    #: xattrs live in the overflow object ``x/<id>``.
    overflow: bool = False
    #: The nonce of this version's times record ``t/<id>.<nonce>``, which
    #: holds its mtime and ctime (set on versions uploaded in parts, whose
    #: metadata is fixed before their last write); None: times are in ``m``.
    times_record: bytes | None = None
    #: A file version with holes, stored with a block map (its size is in
    #: ``m``, field ``sz``): see docs/FORMAT.md, "Sparse files".
    sparse: bool = False
    #: The size of the object this entry was read from or written as.
    object_size: int = 0
    #: The identity (codec.header.header_hash) of the header of the file
    #: version this metadata belongs to, or of the body of the symlink
    #: version (``hh``); None on entries written before version binding,
    #: and on directories.
    header_hash: bytes | None = None
    #: The entry's version number (``vn``), one more on every new version
    #: of its object; 0 on entries written before version numbers.
    version: int = 0
    #: (LastModified, the store's clock) in whole seconds when this entry
    #: was read with a HEAD or GET: see :meth:`Volume.unchanged`.  Not
    #: carried by ``dataclasses.replace``: a changed entry proves nothing.
    seen: tuple[int, int] | None = field(default=None, init=False, compare=False)

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIR

    @property
    def is_file(self) -> bool:
        return self.kind == KIND_FILE

    @property
    def is_link(self) -> bool:
        return self.kind == KIND_LINK


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def json_of(data: bytes, what: str) -> dict:
    try:
        out = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{what} is not JSON") from None
    if not isinstance(out, dict):
        raise IntegrityError(f"{what} is not an object")
    return out


def fields(e: Entry) -> dict:
    """The fields of ``e`` (without ``tr`` and ``ov``, which the sealer adds)."""
    f = {
        "k": e.kind,
        "id": e.id.hex(),
        "mode": e.mode,
        "uid": e.uid,
        "gid": e.gid,
        "mt": e.mtime_ns,
        "ct": e.ctime_ns,
    }
    if e.header_hash is not None:
        f["hh"] = e.header_hash.hex()
    if e.version:
        f["vn"] = e.version
    if e.xattrs:
        f["x"] = {b64(k): b64(v) for k, v in sorted(e.xattrs.items())}
    if e.kind == KIND_FILE and e.sparse:
        f["sz"] = e.size
    return f


def untimed(f: dict) -> dict:
    """Entry metadata fields without the times and what names the version."""
    return {k: v for k, v in f.items() if k not in ("mt", "ct", "hh", "vn")}


def times_nonce(f: dict) -> bytes | None:
    """The nonce of the times record entry metadata ``f`` names (``tr``),
    or None; ValueError if it is not 16 bytes of hex."""
    if "tr" not in f:
        return None
    nonce = bytes.fromhex(f["tr"])
    if len(nonce) != TIMES_NONCE_SIZE:
        raise ValueError("tr")
    return nonce


def times_fields(e: Entry) -> dict:
    """The fields of a times record: ``e``'s mtime and ctime."""
    return {"ct": e.ctime_ns, "mt": e.mtime_ns}


def times_of(f: dict) -> tuple[int, int]:
    """(mtime, ctime) from the fields of a times record."""
    return int(f["mt"]), int(f["ct"])


def entry_of(parent_id: bytes, name: bytes, key: str, f: dict, *, etag: str, long_ct: bytes | None) -> Entry:
    """The entry that fields ``f`` describe, all but what :func:`read_rest`
    takes from them (which may be in the overflow object, if
    ``e.overflow``).  KeyError, ValueError, TypeError or AttributeError if
    they are malformed."""
    kind = f["k"]
    e = Entry(
        parent_id,
        name,
        key,
        kind,
        bytes.fromhex(f["id"]),
        int(f["mode"]),
        int(f["uid"]),
        int(f["gid"]),
        int(f["mt"]),
        int(f["ct"]),
        etag=etag,
        long_ct=long_ct,
    )
    if kind not in KIND_MODE or stat.S_IFMT(e.mode) != KIND_MODE[kind] or len(e.id) != ID_SIZE:
        raise ValueError("kind")
    e.overflow = bool(f.get("ov"))
    return e


def read_rest(e: Entry, f: dict) -> None:
    """Set ``e``'s xattrs, times record, header hash and version from ``f``
    (with the overflow metadata merged in); errors as :func:`entry_of`."""
    e.xattrs = {unb64(k): unb64(v) for k, v in f.get("x", {}).items()}
    e.times_record = times_nonce(f)
    if "hh" in f:
        e.header_hash = bytes.fromhex(f["hh"])
        if len(e.header_hash) != HEADER_HASH_SIZE or e.kind == KIND_DIR:
            raise ValueError("hh")
    if "vn" in f:
        e.version = f["vn"]
        if type(e.version) is not int or e.version < 1:
            raise ValueError("vn")


def read_size(e: Entry, f: dict, size: int, layout: Layout, what: str) -> None:
    """Set ``e``'s sizes from ``f`` and ``size``, its object's; IntegrityError
    if they do not fit its kind."""
    e.object_size = size
    if e.kind == KIND_FILE and "sz" in f:
        e.sparse, e.size = True, f["sz"]
        if type(e.size) is not int or not 0 <= e.size <= MAX_FILE_SIZE:
            raise IntegrityError(f"{what}: sparse file size is malformed")
        if size < HEADER_SIZE + MAP_LEN_SIZE:
            raise IntegrityError(f"{what}: object of {size} bytes is too short to be a sparse sealfs file")
    elif e.kind == KIND_FILE:
        e.size = layout.plain_size_for(size)
    elif e.kind == KIND_LINK:
        e.size = size - LINK_OVERHEAD
        if e.size <= 0:
            raise IntegrityError(f"{what}: symlink object is too short")
    elif size != 0:
        raise IntegrityError(f"{what}: directory entry has content")
