"""The volume: plaintext paths, entries and file contents over an object store.

This is the library API (no FUSE, no trio): the offline CLI and the mount
both use it, so both read and write exactly the same layout.

Store layout (docs/FORMAT.md):

    sealfs.json                 the volume config (key slots, keyring, MAC)
    d/<dir id hex>/<name>       one object per directory entry; <name> is the
                                encrypted name (names.py).  A regular file's
                                object is its content (header + blocks), a
                                symlink's its sealed target; a directory's is
                                empty, so a LIST alone counts subdirectories.
    x/<entry id hex>            overflow metadata (large xattrs) that does
                                not fit in user metadata
    t/<entry id hex>.<nonce>    the mtime and ctime of a file version
                                uploaded in parts (see PartStream)

Every entry object carries user metadata ``m`` (sealed entry metadata bound
to the object's key) and, for long names, ``n`` (the name ciphertext).
The root directory's own metadata lives in the entry object ``root``.

All methods are blocking and thread-safe; callers that must not block (the
FUSE adapter) run them in worker threads.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from .codec import crypto
from .codec.blocks import (
    MAP_LEN_SIZE,
    MAX_FILE_SIZE,
    MAX_MAP_EXTENTS,
    MAX_MAP_SEALED,
    BlockMap,
    FileCipher,
    Layout,
)
from .codec.header import HEADER_HASH_SIZE, HEADER_SIZE, header_hash, open_header, peek_header, seal_header
from .codec.meta import MetaCipher
from .codec.names import NAME_MAX, NameCipher, is_long
from .errors import (
    ConfigError,
    DamagedObject,
    FsError,
    IntegrityError,
    NotFound,
    PreconditionFailed,
    SealfsError,
    UsageError,
)
from .keys.slots import CONFIG_KEY, Credential, Keyring, VolumeConfig
from .keys.slots import create as create_config
from .store.base import MAX_METADATA_BYTES, MAX_PARTS, ObjectInfo, Store

log = logging.getLogger(__name__)

ROOT_ID = bytes(16)
ROOT_KEY = "root"
ID_SIZE = 16
#: Room left in user metadata for the sealed blob after the long name.
_META_BUDGET = MAX_METADATA_BYTES - 64
#: Files whose object is at most this big are written with one PUT.
SINGLE_PUT_MAX = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
#: Bytes of parts a whole-file upload keeps in memory at once (at least one part).
IN_FLIGHT_BYTES = 32 * 1024 * 1024
KIND_FILE, KIND_DIR, KIND_LINK = "f", "d", "l"
#: A symlink object is its target sealed by MetaCipher.seal_bytes.
LINK_OVERHEAD = 4 + crypto.NONCE_SIZE + crypto.TAG_SIZE
_KIND_MODE = {KIND_FILE: stat.S_IFREG, KIND_DIR: stat.S_IFDIR, KIND_LINK: stat.S_IFLNK}


#: See Volume.unchanged.
SETTLED_SECONDS = 2
#: Size of the nonce that names a times record (``tr``).
TIMES_NONCE_SIZE = 16
_TIMES_AAD = b"sealfs times "
#: Times records remembered (they never change: a new one has a new name).
_TIMES_CACHED = 4096
#: Reads of an entry replaced again and again while it is read, at most.
_REREADS = 8


class _SideGone(Exception):
    """An object an entry's metadata names (its times record or its
    overflow metadata) is not in the store: a newer version replaced the
    entry (and removed that object) between reading the entry and reading
    the object -- or, if it stays missing, the object was lost."""

    def __init__(self, key: str, what: str):
        super().__init__(key)
        self.key = key
        self.what = what


def dir_prefix(dir_id: bytes) -> str:
    return f"d/{dir_id.hex()}/"


def times_key(entry_id: bytes, nonce: bytes) -> str:
    return f"t/{entry_id.hex()}.{nonce.hex()}"


def overflow_key(entry_id: bytes) -> str:
    return f"x/{entry_id.hex()}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def check_name(name: bytes) -> bytes:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, "file name longer than 255 bytes")
    return name


def now_ns() -> int:
    return time.time_ns()


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


class Volume:
    """An unlocked volume on a store."""

    def __init__(self, store: Store, config: VolumeConfig, keyring: Keyring, config_etag: str = ""):
        self.store = store
        self.config = config
        self.keyring = keyring
        self.config_etag = config_etag
        self.layout = Layout(config.block_size)
        self.names = NameCipher(keyring.name_key())
        self.meta = MetaCipher(keyring.meta_keys(), keyring.current)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sealfs-io")
        self._times: dict[tuple[bytes, bytes], tuple[int, int]] = {}
        if config_etag:
            store.watch(CONFIG_KEY, config_etag, self._is_ours)

    def _is_ours(self, raw: bytes) -> bool:
        """Whether config bytes ``raw`` are this volume's (see Store.watch)."""
        try:
            return VolumeConfig.parse(raw).volume_id == self.config.volume_id
        except SealfsError:
            return False

    # -- creating and opening -------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: Store,
        cred: Credential,
        *,
        block_size: int,
        argon2: dict | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Volume:
        store.check()
        config, keyring = create_config(block_size, cred, argon2)
        try:
            etag = store.put(CONFIG_KEY, config.to_bytes(), if_none_match=True)
        except PreconditionFailed:
            raise UsageError(f"{store.url} already holds a sealfs volume") from None
        vol = cls(store, config, keyring, etag)
        t = now_ns()
        root = Entry(
            ROOT_ID,
            b"",
            ROOT_KEY,
            KIND_DIR,
            ROOT_ID,
            stat.S_IFDIR | 0o755,
            os.getuid() if uid is None else uid,
            os.getgid() if gid is None else gid,
            t,
            t,
        )
        vol._put_entry(root, b"", if_none_match=True)
        return vol

    @classmethod
    def open(cls, store: Store, credentials: list[Credential]) -> Volume:
        config, etag = read_config(store)
        keyring = config.unlock(credentials)
        return cls(store, config, keyring, etag)

    def save_config(self) -> None:
        """Write the (changed) config back, refusing to clobber a concurrent change."""
        try:
            self.config_etag = self.store.put(CONFIG_KEY, self.config.to_bytes(), if_match=self.config_etag)
        except PreconditionFailed:
            raise UsageError("the volume config was changed by someone else meanwhile; run the command again") from None
        self.store.watch(CONFIG_KEY, self.config_etag, self._is_ours)
        self.meta = MetaCipher(self.keyring.meta_keys(), self.keyring.current)

    def submit(self, fn, *args):
        """Run ``fn`` on the volume's I/O threads (background reads)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()

    # -- metadata encoding ----------------------------------------------------------------

    def _fields(self, e: Entry) -> dict:
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
            f["x"] = {_b64(k): _b64(v) for k, v in sorted(e.xattrs.items())}
        if e.kind == KIND_FILE and e.sparse:
            f["sz"] = e.size
        return f

    def _user_metadata(self, e: Entry, record: bytes | None = None) -> tuple[dict[str, str], bytes | None]:
        """User metadata for ``e``'s object, and the overflow blob to store
        beside it when the xattrs do not fit (else None).  ``record``: the
        nonce of the times record that will hold the object's times."""
        aad = e.key.encode()
        md = {}
        if e.long_ct is not None:
            md["n"] = _b64(e.long_ct)
        fields = self._fields(e)
        if record is not None:
            fields["tr"] = record.hex()
        md["m"] = self.meta.seal(fields, aad)
        if sum(len(k) + len(v) for k, v in md.items()) <= _META_BUDGET:
            return md, None
        big = {"x": fields.pop("x", {})}
        fields["ov"] = 1
        md["m"] = self.meta.seal(fields, aad)
        blob = self.meta.seal_bytes(_json_bytes(big), b"sealfs overflow " + e.id)
        return md, blob

    def _entry_from(
        self, parent_id: bytes, component: str, key: str, md: dict[str, str] | None, size: int, etag: str
    ) -> Entry:
        what = f"entry {key}"
        if not md or "m" not in md:
            raise IntegrityError(f"{what}: has no sealfs metadata")
        f = self.meta.open(md["m"], key.encode(), what)
        long_ct = None
        if key == ROOT_KEY:
            name = b""
        else:
            if is_long(component):
                try:
                    long_ct = _unb64(md.get("n", ""))
                except ValueError:
                    raise IntegrityError(f"{what}: long name is not base64") from None
            name = self.names.decrypt(parent_id, component, long_ct)
        try:
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
            if kind not in _KIND_MODE or stat.S_IFMT(e.mode) != _KIND_MODE[kind] or len(e.id) != ID_SIZE:
                raise ValueError("kind")
            if f.get("ov"):
                e.overflow = True
                try:
                    blob = self.store.get(overflow_key(e.id))
                except NotFound:
                    raise _SideGone(overflow_key(e.id), "overflow metadata") from None
                f.update(
                    _json_of(
                        self.meta.open_bytes(blob, b"sealfs overflow " + e.id, what + " overflow"), "overflow metadata"
                    )
                )
            e.xattrs = {_unb64(k): _unb64(v) for k, v in f.get("x", {}).items()}
            e.times_record = _times_nonce(f)
            if "hh" in f:
                e.header_hash = bytes.fromhex(f["hh"])
                if len(e.header_hash) != HEADER_HASH_SIZE or kind == KIND_DIR:
                    raise ValueError("hh")
            if "vn" in f:
                e.version = f["vn"]
                if type(e.version) is not int or e.version < 1:
                    raise ValueError("vn")
            if e.times_record is not None:
                e.mtime_ns, e.ctime_ns = self._recorded_times(e.id, e.times_record, what)
        except (KeyError, ValueError, TypeError, AttributeError):
            raise IntegrityError(f"{what}: metadata is malformed") from None
        e.object_size = size
        if kind == KIND_FILE and "sz" in f:
            e.sparse, e.size = True, f["sz"]
            if type(e.size) is not int or not 0 <= e.size <= MAX_FILE_SIZE:
                raise IntegrityError(f"{what}: sparse file size is malformed")
            if size < HEADER_SIZE + MAP_LEN_SIZE:
                raise IntegrityError(f"{what}: object of {size} bytes is too short to be a sparse sealfs file")
        elif kind == KIND_FILE:
            e.size = self.layout.plain_size_for(size)
        elif kind == KIND_LINK:
            e.size = size - LINK_OVERHEAD
            if e.size <= 0:
                raise IntegrityError(f"{what}: symlink object is too short")
        elif size != 0:
            raise IntegrityError(f"{what}: directory entry has content")
        return e

    def _prepare_meta(self, e: Entry, record: bytes | None = None) -> dict[str, str]:
        """User metadata for ``e`` as a new version of its object (its
        version number one more; its times in times record ``record`` if
        given, see :meth:`put_times`); writes its overflow object first if
        needed."""
        e.version += 1
        md, blob = self._user_metadata(e, record)
        e.overflow = blob is not None
        e.times_record = record
        if blob is not None:
            self.store.put(overflow_key(e.id), blob)
        return md

    def _recorded_times(self, entry_id: bytes, nonce: bytes, what: str) -> tuple[int, int]:
        """(mtime, ctime) from times record ``nonce`` of entry ``entry_id``."""
        times = self._times.get((entry_id, nonce))
        if times is None:
            key = times_key(entry_id, nonce)
            try:
                blob = self.store.get(key)
            except NotFound:
                raise _SideGone(key, "times record") from None
            f = _json_of(self.meta.open_bytes(blob, _TIMES_AAD + entry_id + nonce, what + " times"), "times record")
            times = (int(f["mt"]), int(f["ct"]))
            self._remember_times(entry_id, nonce, times)
        return times

    def _remember_times(self, entry_id: bytes, nonce: bytes, times: tuple[int, int]) -> None:
        if len(self._times) >= _TIMES_CACHED:
            self._times.clear()
        self._times[(entry_id, nonce)] = times

    def put_times(self, e: Entry, nonce: bytes) -> None:
        """Store ``e``'s mtime and ctime as times record ``nonce``: written
        before the object whose metadata names it is completed."""
        data = _json_bytes({"ct": e.ctime_ns, "mt": e.mtime_ns})
        self.store.put(times_key(e.id, nonce), self.meta.seal_bytes(data, _TIMES_AAD + e.id + nonce))
        self._remember_times(e.id, nonce, (e.mtime_ns, e.ctime_ns))

    def times_key_named_by(self, key: str) -> str | None:
        """The times record the metadata of object ``key`` names, if its
        metadata opens (whether or not the record does): for fsck, which
        must not take the record of a damaged entry for a leftover."""
        try:
            f = self.meta.open(self.store.head(key).metadata["m"], key.encode(), key)
            nonce = _times_nonce(f)
            return times_key(bytes.fromhex(f["id"]), nonce) if nonce is not None else None
        except (SealfsError, KeyError, ValueError, TypeError):
            return None

    def _drop_side_objects(self, old: Entry, new: Entry | None) -> None:
        """Remove ``old``'s overflow object and times record once ``new``
        (the version that replaced it, None if removed) does not use them.
        The change is done by then: a failure to delete is logged (fsck
        lists what is left), not raised."""
        if old.overflow and (new is None or not new.overflow):
            self._delete_side_object(overflow_key(old.id))
        if old.times_record is not None and (new is None or new.times_record != old.times_record):
            self._delete_side_object(times_key(old.id, old.times_record))

    def _delete_side_object(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception as exc:  # noqa: BLE001 - see _drop_side_objects
            log.warning("cannot remove %s (left for fsck): %s", key, exc)

    def _put_entry(self, e: Entry, body: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> Entry:
        md = self._prepare_meta(e)
        e.etag = self.store.put(e.key, body, md, if_match=if_match, if_none_match=if_none_match)
        return e

    # -- entries ------------------------------------------------------------------------------

    def entry_key(self, parent_id: bytes, name: bytes) -> tuple[str, bytes | None]:
        component, long_ct = self.names.encrypt(parent_id, check_name(name))
        return dir_prefix(parent_id) + component, long_ct

    def root(self) -> Entry:
        return self._read_entry(ROOT_ID, ROOT_KEY, self.store.head)

    def lookup(self, parent_id: bytes, name: bytes) -> Entry:
        """The entry ``name`` in directory ``parent_id``; ENOENT if absent."""
        return self._lookup(parent_id, name, self.store.head)

    def load(self, e: Entry, limit: int) -> tuple[Entry, bytes]:
        """File ``e`` as stored now (see :meth:`reload`) with the first
        ``limit`` bytes of its object, in one request: for a small file all
        :meth:`FileReader.preload` needs, where a reload and a read would be
        two or three."""
        body = b""

        def get(key: str) -> ObjectInfo:
            nonlocal body
            body, info = self.store.get_object(key, limit)
            return info

        return self._lookup(e.parent_id, e.name, get), body

    def _lookup(self, parent_id: bytes, name: bytes, fetch: Callable[[str], ObjectInfo]) -> Entry:
        key, _ = self.entry_key(parent_id, name)
        try:
            return self._read_entry(parent_id, key, fetch)
        except NotFound:
            raise FsError(errno.ENOENT, f"no such file: {name.decode(errors='replace')}") from None
        except IntegrityError as exc:  # name the file: the key says nothing to a reader of the log
            raise IntegrityError(f"{name.decode(errors='replace')}: {exc}") from None

    def _read_entry(
        self, parent_id: bytes, key: str, fetch: Callable[[str], ObjectInfo], info: ObjectInfo | None = None
    ) -> Entry:
        """The entry of object ``key`` in directory ``parent_id``, from
        ``info`` if given, else from ``fetch(key)``; fetched again while the
        times record or overflow metadata it names went away meanwhile (the
        entry was replaced).  NotFound if the object is gone; IntegrityError
        if what a version names is missing for good: damage, not absence."""
        component = "" if key == ROOT_KEY else key[len(dir_prefix(parent_id)) :]  # (the root has no name)
        missing: set[str] = set()
        while True:
            if info is None:
                info = fetch(key)
            try:
                return self._entry_of(parent_id, component, info)
            except _SideGone as gone:
                if gone.key in missing or len(missing) >= _REREADS:
                    raise IntegrityError(f"entry {key}: its {gone.what} is missing ({gone.key})") from None
                missing.add(gone.key)
                info = None

    def _name_hint(self, dir_id: bytes, component: str, md: dict[str, str] | None) -> str | None:
        """The name of an entry whose metadata failed, for messages; None
        when the name does not authenticate either."""
        try:
            long_ct = _unb64((md or {}).get("n", "")) if is_long(component) else None
            return self.names.decrypt(dir_id, component, long_ct).decode(errors="replace")
        except (IntegrityError, ValueError):
            return None

    def _entry_of(self, parent_id: bytes, component: str, info: ObjectInfo) -> Entry:
        """The entry of object ``info`` (read with its metadata)."""
        e = self._entry_from(parent_id, component, info.key, info.metadata, info.size, info.etag)
        if info.checked is not None:
            e.seen = (int(info.mtime), int(info.checked))
        return e

    def unchanged(self, e: Entry, info: ObjectInfo) -> bool:
        """Whether listed object ``info`` is still the version entry ``e``
        was read from, metadata included, so a listing needs no HEAD for
        it.  On S3 a metadata change is a copy that keeps the etag, but not
        LastModified, which has one-second resolution: the same etag and
        LastModified prove nothing changed if that LastModified was already
        SETTLED_SECONDS old by the store's clock when ``e`` was read (a
        later change would carry a later one)."""
        seen = e.seen
        return (
            seen is not None
            and e.key == info.key
            and e.etag == info.etag
            and int(info.mtime) == seen[0]
            and seen[0] <= seen[1] - SETTLED_SECONDS
        )

    def reload(self, e: Entry) -> Entry:
        if e.key == ROOT_KEY:
            return self.root()
        return self.lookup(e.parent_id, e.name)

    def listdir(
        self,
        dir_id: bytes,
        on_error: Callable[[str, Exception], None] | None = None,
        known: Callable[[str], Entry | None] | None = None,
    ) -> list[Entry]:
        """Every entry of the directory, with metadata, sorted by key.
        Entries that fail authentication are skipped and reported to
        ``on_error(key, exc)`` (or raise when no callback is given).  On a
        store whose LIST has no metadata (S3), ``known(key)`` may give an
        entry read before: used as it is if :meth:`unchanged`, instead of a
        HEAD."""
        prefix = dir_prefix(dir_id)
        infos = [o for o in self.store.list_all(prefix) if not isinstance(o, str)]

        def load(info) -> Entry | None:
            md = info.metadata
            try:
                if md is None:
                    e = known(info.key) if known is not None else None
                    if e is not None and self.unchanged(e, info):
                        return e
                    info = self.store.head(info.key)
                    md = info.metadata
                return self._read_entry(dir_id, info.key, self.store.head, info)
            except NotFound:
                return None  # removed since the LIST
            except IntegrityError as exc:
                if on_error is None:
                    raise
                hint = self._name_hint(dir_id, info.key[len(prefix) :], md)
                on_error(info.key, IntegrityError(f"{hint}: {exc}") if hint else exc)
                return None

        if len(infos) > 4:
            loaded = list(self._pool.map(load, infos))
        else:
            loaded = [load(i) for i in infos]
        return [e for e in loaded if e is not None]

    def count_subdirs(self, dir_id: bytes) -> int:
        """Subdirectories of a directory, from one LIST (their objects, and
        only theirs, are empty)."""
        return sum(1 for o in self.store.list_all(dir_prefix(dir_id)) if not isinstance(o, str) and o.size == 0)

    def is_empty(self, dir_id: bytes) -> bool:
        return not self.store.list(dir_prefix(dir_id), max_keys=1).objects

    def _new_entry(
        self, parent_id: bytes, name: bytes, kind: str, mode: int, uid: int, gid: int, entry_id: bytes | None = None
    ) -> Entry:
        key, long_ct = self.entry_key(parent_id, name)
        t = now_ns()
        return Entry(
            parent_id,
            name,
            key,
            kind,
            entry_id or crypto.random_bytes(ID_SIZE),
            _KIND_MODE[kind] | (mode & 0o7777),
            uid,
            gid,
            t,
            t,
            long_ct=long_ct,
        )

    def _create(self, e: Entry, body: bytes) -> Entry:
        try:
            return self._put_entry(e, body, if_none_match=True)
        except PreconditionFailed:
            raise FsError(errno.EEXIST, f"{e.name.decode(errors='replace')} already exists") from None

    def mkdir(self, parent_id: bytes, name: bytes, mode: int, uid: int, gid: int) -> Entry:
        return self._create(self._new_entry(parent_id, name, KIND_DIR, mode, uid, gid), b"")

    def symlink(self, parent_id: bytes, name: bytes, target: bytes, uid: int, gid: int) -> Entry:
        if not target or b"\0" in target or len(target) > 4095:
            raise FsError(errno.ENAMETOOLONG if len(target) > 4095 else errno.EINVAL, "invalid symlink target")
        e = self._new_entry(parent_id, name, KIND_LINK, 0o777, uid, gid)
        e.target = target
        e.size = len(target)
        return self._create(e, self._link_body(e))

    def _link_body(self, e: Entry) -> bytes:
        """A new body for symlink ``e`` (its target sealed anew, bound to
        the metadata that names it: docs/FORMAT.md, "Version binding");
        sets ``e.header_hash``."""
        body = self.meta.seal_bytes(e.target, _link_aad(e.id, bound=True))  # type: ignore[arg-type]
        e.header_hash = _body_hash(body)
        return body

    def readlink(self, e: Entry) -> bytes:
        """The target of symlink ``e`` (fetched once, then kept on the entry)."""
        if e.target is None:
            blob = self.store.get(e.key)
            what = f"symlink {e.name.decode(errors='replace')}"
            if e.header_hash is not None and _body_hash(blob) != e.header_hash:
                raise IntegrityError(
                    f"{what}: its metadata is of another version of its target (older metadata put back on it?)"
                )
            # (metadata without hh does not open a bound body: a downgrade)
            e.target = self.meta.open_bytes(blob, _link_aad(e.id, bound=e.header_hash is not None), what)
        return e.target

    def new_file_entry(self, parent_id: bytes, name: bytes, mode: int, uid: int, gid: int) -> Entry:
        """An entry for a file not yet stored (write it with write_content)."""
        return self._new_entry(parent_id, name, KIND_FILE, mode, uid, gid)

    def create_file(self, parent_id: bytes, name: bytes, mode: int, uid: int, gid: int) -> Entry:
        """A new empty regular file; EEXIST if the name is taken."""
        e = self._new_entry(parent_id, name, KIND_FILE, mode, uid, gid)
        cipher, header = self._new_key(e)
        e.header_hash = header_hash(header)
        return self._create(e, header + cipher.seal_block(0, True, b""))

    def _new_key(self, e: Entry) -> tuple[FileCipher, bytes]:
        """A fresh data key for file ``e``: its cipher and its sealed header."""
        dek = crypto.random_bytes(32)
        return FileCipher(dek, e.id, self.layout, e.name.decode(errors="replace")), self._new_header(e.id, dek)

    def _new_header(self, file_id: bytes, dek: bytes) -> bytes:
        """A header for a new version of file ``file_id``: sealed anew under
        the current generation (a fresh wrap nonce), bound to the metadata
        that names it (docs/FORMAT.md, "Version binding")."""
        g = self.keyring.current
        return seal_header(
            self.keyring.kek(g), block_size=self.layout.block_size, generation=g, file_id=file_id, dek=dek, bound=True
        )

    def set_meta(self, e: Entry, **changes) -> Entry:
        """Change metadata fields of ``e`` (mode, uid, gid, mtime_ns,
        ctime_ns, xattrs, ...); content untouched.  A directory's empty
        object is written anew; a file's gets a new header and a symlink's
        its target sealed anew, since their metadata is bound to them (see
        :meth:`_rewrite`).  NotFound if the entry is gone;
        PreconditionFailed if its object is no longer the version ``e``
        has: never a removed directory back, never this metadata on another
        file's contents."""
        new = replace(e, **changes)
        if new.is_file:
            return self._rewrite(e, new)
        if new.is_link:  # a new body too, as for a file (the target is small)
            new.target = self.readlink(e)
            body = self._link_body(new)
            md = self._prepare_meta(new)
            new.etag = self.store.put(new.key, body, md, if_match=e.etag or None)
            self._drop_side_objects(e, new)
            return new
        md = self._prepare_meta(new)
        new.etag = self._write_entry_object(e.key, new, md, if_match=e.etag or None)
        self._drop_side_objects(e, new)
        return new

    def _rewrite(self, e: Entry, new: Entry, reader: FileReader | None = None) -> Entry:
        """Store ``new`` (``e`` with other metadata) as a new version of file
        ``e``'s object, If-Match ``e``'s etag: the same data key and blocks
        (copied as they are, server-side where the store can) under a new
        header, so that no earlier metadata of the file opens with this
        version's content.  The header is sealed under the current
        generation (this is also how :meth:`rekey_file` re-wraps).  It
        costs a GET and a PUT of the object, or, when the object is uploaded
        in parts, of its first part plus a server-side copy of the rest.
        ``reader``: one of ``e`` already open (its header authenticated)."""
        reader = reader or self.reader(e)
        writer = _ContentWriter(self, new, e.size, lambda i: None, reader, extents=reader.extents())
        new.size = e.size
        new.sparse = writer.sparse
        new.object_size = writer.object_size
        new.header_hash = header_hash(writer.header)
        md = self._prepare_meta(new)
        new.etag = writer.upload(md, if_match=e.etag or None, if_none_match=False, progress=None)
        self._drop_side_objects(e, new)
        return new

    def _write_entry_object(self, src_key: str, new: Entry, md: dict[str, str], *, if_match: str | None = None) -> str:
        """Write ``new``'s object with metadata ``md``: a directory's is empty,
        a file's or symlink's content is copied server-side from ``src_key``;
        either only if the current etag is ``if_match``, when given."""
        if new.is_dir:
            return self.store.put(new.key, b"", md, if_match=if_match)
        return self.store.copy(src_key, new.key, md, if_match=if_match)

    def remove(self, e: Entry) -> None:
        """Delete an entry (a directory must be empty: ENOTEMPTY)."""
        if e.is_dir and not self.is_empty(e.id):
            raise FsError(errno.ENOTEMPTY, "directory not empty")
        self.store.delete(e.key)
        self._drop_side_objects(e, None)

    def orphan(self, e: Entry) -> Entry:
        """Move a file that is unlinked while still open out of its
        directory, to ``o/<id>``, until its last handle closes."""
        new = replace(e, key=f"o/{e.id.hex()}", long_ct=None)
        md = self._prepare_meta(new)
        new.etag = self.store.copy(e.key, new.key, md)
        self.store.delete(e.key)
        self._drop_side_objects(e, new)
        return new

    def rename(self, e: Entry, new_parent: bytes, new_name: bytes, *, replace_entry: Entry | None = None) -> Entry:
        """Move ``e`` to ``new_name`` in ``new_parent``.  The new entry is
        written before the old one is deleted, so a crash in between leaves
        both names, never none.  ``replace_entry`` is the entry currently at
        the target (checked by the caller), removed by being overwritten."""
        if e.key == ROOT_KEY:
            raise FsError(errno.EBUSY, "cannot rename the root directory")
        key, long_ct = self.entry_key(new_parent, new_name)
        if replace_entry is not None and replace_entry.is_dir and not self.is_empty(replace_entry.id):
            raise FsError(errno.ENOTEMPTY, "target directory not empty")
        new = replace(e, parent_id=new_parent, name=new_name, key=key, long_ct=long_ct, ctime_ns=now_ns())
        if key == e.key:
            return e
        md = self._prepare_meta(new)
        new.etag = self._write_entry_object(e.key, new, md)
        self.store.delete(e.key)
        self._drop_side_objects(e, new)
        if replace_entry is not None and replace_entry.id != e.id:
            self._drop_side_objects(replace_entry, None)
        return new

    # -- paths (for the offline CLI) ------------------------------------------------------------

    def resolve(self, path: str | bytes, *, follow: bool = True, _depth: int = 0) -> Entry:
        """The entry at a plaintext absolute path (``/`` is the root)."""
        parts = [p for p in os.fsencode(path).split(b"/") if p and p != b"."]
        e = self.root()
        stack = [e]
        for i, part in enumerate(parts):
            if part == b"..":
                if len(stack) > 1:
                    stack.pop()
                e = stack[-1]
                continue
            if not e.is_dir:
                raise FsError(errno.ENOTDIR, f"{part.decode(errors='replace')}: parent is not a directory")
            e = self.lookup(e.id, part)
            if e.is_link and (follow or i < len(parts) - 1):
                if _depth > 40:
                    raise FsError(errno.ELOOP, "too many levels of symbolic links")
                link = self.readlink(e)
                base = b"/".join([s.name for s in stack[1:]])
                target = link if link.startswith(b"/") else b"/" + base + b"/" + link
                e = self.resolve(target, follow=True, _depth=_depth + 1)
            stack.append(e)
        return e

    def split(self, path: str | bytes) -> tuple[Entry, bytes]:
        """(parent directory entry, last component) of a path."""
        raw = os.fsencode(path).rstrip(b"/")
        parent, _, name = raw.rpartition(b"/")
        if not name or name in (b".", b".."):
            raise FsError(errno.EINVAL, f"{os.fsdecode(path)}: not a file name")
        d = self.resolve(parent or b"/")
        if not d.is_dir:
            raise FsError(errno.ENOTDIR, f"{os.fsdecode(parent)}: not a directory")
        return d, name

    # -- file contents ---------------------------------------------------------------------------

    def reader(self, e: Entry) -> FileReader:
        return FileReader(self, e)

    def new_reader(self, e: Entry) -> FileReader:
        """The base of a file not yet in the store: empty, with a fresh data
        key; its first upload creates the object (If-None-Match)."""
        reader = FileReader(self, replace(e, size=0, etag=""))
        reader._cipher, reader._header = self._new_key(e)
        return reader

    def write_content(
        self,
        e: Entry,
        size: int,
        dirty_block: Callable[[int], bytes | None],
        *,
        base: FileReader | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        progress: Callable[[int], None] | None = None,
        sealed_block: Callable[[int, FileCipher], bytes | None] | None = None,
        extents: list[tuple[int, int]] | None = None,
    ) -> Entry:
        """Write a new version of file ``e`` with ``size`` plaintext bytes.

        ``dirty_block(i)`` returns the new plaintext of block ``i`` (exactly
        the block's length in the new file), or None where the block is
        unchanged from ``base`` (or a hole, read as zeros, past its end).
        Unchanged blocks are copied as ciphertext (server-side, with
        UploadPartCopy, where whole parts are unchanged).  ``dirty_block``
        is called once per block, in increasing order, so it may stream.
        ``sealed_block(i, cipher)``, if given, may return a whole block (not
        the last) already sealed by ``cipher``, which is then stored as it is
        (blocks spooled to disk: see sealfs.fs.spool).
        ``extents``, if given, are the runs of blocks to store, in order
        (see BlockMap); the others are holes, and ``dirty_block`` is called
        only for blocks in a run.  Unless they cover the whole file, the
        version is stored sparse, with a block map.
        Returns the entry with its new etag; PreconditionFailed if the
        object's etag is no longer ``if_match``.
        """
        writer = _ContentWriter(self, e, size, dirty_block, base, sealed_block=sealed_block, extents=extents)
        new = replace(
            e, size=size, sparse=writer.sparse, object_size=writer.object_size, header_hash=header_hash(writer.header)
        )
        md = self._prepare_meta(new)
        new.etag = writer.upload(md, if_match=if_match, if_none_match=if_none_match, progress=progress)
        self._drop_side_objects(e, new)
        return new

    def rekey_file(self, e: Entry) -> bool:
        """Re-wrap a file's DEK under the current generation, rewriting only
        the header (the blocks are copied server-side where the store can).
        Returns False if it already used the current generation."""
        reader = self.reader(e)
        if reader.header().generation == self.keyring.current:
            return False
        self._rewrite(e, replace(e), reader)
        return True


def _link_aad(entry_id: bytes, *, bound: bool) -> bytes:
    return (b"sealfs bound symlink " if bound else b"sealfs symlink ") + entry_id


def _body_hash(body: bytes) -> bytes:
    """The identity of one sealed symlink body (``hh``, as a header's for a file)."""
    return hashlib.sha256(body).digest()[:HEADER_HASH_SIZE]


def _json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _json_of(data: bytes, what: str) -> dict:
    try:
        out = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{what} is not JSON") from None
    if not isinstance(out, dict):
        raise IntegrityError(f"{what} is not an object")
    return out


def read_config(store: Store) -> tuple[VolumeConfig, str]:
    store.check()
    try:
        raw, info = store.get_object(CONFIG_KEY)
    except NotFound:
        raise ConfigError(f"no sealfs volume at {store.url} (create one with: sealfs init {store.url})") from None
    except DamagedObject as exc:
        raise ConfigError(f"the volume config at {store.url} is damaged: {exc}") from None
    return VolumeConfig.parse(raw), info.etag


class FileReader:
    """Authenticated random access to one version of a file object.

    A sparse version's block map is read and checked with its header (one
    ranged GET for both unless the map is large); its holes read as zeros
    without a request."""

    #: Bytes of a sparse object read after the header with it, in one GET.
    MAP_PEEK = 4096
    #: Most blocks :meth:`preload` gives (a small file read whole at open).
    PRELOAD_BLOCKS = 1024

    def __init__(self, vol: Volume, e: Entry):
        self.vol = vol
        self.entry = e
        self.size = e.size
        self.etag = e.etag
        self.layout = vol.layout
        self.sparse = e.sparse
        self._cipher: FileCipher | None = None
        self._header: bytes = b""
        self._map: BlockMap | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.entry.name.decode(errors="replace") or "/"

    def _prefix_len(self) -> int:
        """Bytes read at first access: the header, and a sparse object's map."""
        if not self.sparse:
            return HEADER_SIZE
        return min(self.entry.object_size, HEADER_SIZE + MAP_LEN_SIZE + self.MAP_PEEK)

    def _load_header(self, raw: bytes | memoryview | None = None) -> FileCipher:
        """Open the header (and a sparse version's map) from ``raw``, the
        start of the object, or read it."""
        with self._lock:
            if self._cipher is None:
                if raw is None:
                    raw = self._get(0, self._prefix_len())
                head = bytes(raw[:HEADER_SIZE])
                try:
                    header, dek = open_header(head, self.vol.keyring.kek)
                except IntegrityError as exc:
                    raise IntegrityError(f"{self.name}: {exc}") from None
                if header.file_id != self.entry.id:
                    raise IntegrityError(f"{self.name}: content belongs to another file")
                if header.block_size != self.layout.block_size:
                    raise IntegrityError(f"{self.name}: block size differs from the volume's")
                self._check_binding(header, head)
                cipher = FileCipher(dek, header.file_id, self.layout, self.name)
                if self.sparse and self._map is None:
                    self._map = self._open_map(cipher, raw[HEADER_SIZE:])
                self._header = head
                self._cipher = cipher
            return self._cipher

    def _open_map(self, cipher: FileCipher, prefix: bytes | memoryview) -> BlockMap:
        """The block map of this sparse version from ``prefix``, the object's
        bytes after the header (read further if the map is longer)."""
        what = f"{self.name}: block map"
        obj = self.entry.object_size
        if len(prefix) < MAP_LEN_SIZE:
            raise IntegrityError(f"{what}: object is shorter than its size says")
        length = int.from_bytes(prefix[:MAP_LEN_SIZE], "big")
        need = MAP_LEN_SIZE + length
        if HEADER_SIZE + need > obj or length > MAX_MAP_SEALED:
            raise IntegrityError(f"{what}: its length is impossible")
        if len(prefix) < need:
            prefix = bytes(prefix) + self.read_sealed_range(HEADER_SIZE + len(prefix), HEADER_SIZE + need)
        extents = cipher.open_map(memoryview(prefix)[MAP_LEN_SIZE:need], self.size)
        block_map = BlockMap(self.layout, self.size, extents, HEADER_SIZE + need)
        if block_map.end != obj:
            raise IntegrityError(f"{what}: the object's size ({obj}) is not what its map says ({block_map.end})")
        return block_map

    @property
    def loaded(self) -> bool:
        """Whether the header (and a sparse version's map) is in memory."""
        return self._cipher is not None

    def block_map(self) -> BlockMap | None:
        """Where a sparse version's blocks are (None for a dense one)."""
        if not self.sparse:
            return None
        self.cipher()
        return self._map

    def extents(self) -> list[tuple[int, int]]:
        """The runs of blocks this version stores (a dense one: all)."""
        block_map = self.block_map()
        return list(block_map.extents) if block_map is not None else [(0, self.block_count())]

    def is_hole(self, index: int) -> bool:
        """Whether block ``index`` is a hole of a sparse version (zeros, not
        stored)."""
        block_map = self.block_map()
        return block_map is not None and block_map.is_hole(index)

    def block_range(self, index: int) -> tuple[int, int] | None:
        """The object byte range of stored block ``index``; None for a hole."""
        block_map = self.block_map()
        if block_map is None:
            return self.layout.sealed_range(index, index + 1, self.size)
        return None if block_map.is_hole(index) else block_map.sealed_range(index, index + 1)

    def _check_binding(self, header, raw: bytes | memoryview) -> None:
        """The entry's metadata and this header are of one version of the
        file (docs/FORMAT.md, "Version binding")."""
        named = self.entry.header_hash
        if named is not None and named != header_hash(raw):
            raise IntegrityError(
                f"{self.name}: its metadata is of another version of its content (older metadata put back on it?)"
            )
        if named is None and header.bound:
            raise IntegrityError(
                f"{self.name}: its content is bound to metadata that names it, and its "
                "metadata does not (older metadata put back on it?)"
            )

    def preload(self, body: bytes) -> list[bytes] | None:
        """Every block's plaintext from ``body``, the start of this version's
        object (as :meth:`Volume.load` read it); None if ``body`` does not
        hold the whole object."""
        end = self.entry.object_size if self.sparse else self.layout.object_size_for(self.size)
        if len(body) < end or self.block_count() > self.PRELOAD_BLOCKS:
            return None  # (or holes far larger than the body, which would all become zeros here)
        view = memoryview(body)
        self._load_header(view[:end])
        return self._open_blocks(0, self.block_count(), lambda start, stop: view[start:stop])

    def adopt(self, other: FileReader, same_content: bool = False) -> None:
        """Reuse ``other``'s authenticated header: same file, same DEK (a
        version this process wrote itself, or, ``same_content``, the same
        object moved or given new metadata, whose block map stays)."""
        if other._cipher is not None and other.entry.id == self.entry.id:
            if self.sparse and not (same_content and other.sparse and other._map is not None):
                return  # (the map is read with the header)
            self._map = other._map if self.sparse else None
            self._cipher, self._header = other._cipher, other._header

    def cipher(self) -> FileCipher:
        return self._cipher or self._load_header()

    def header(self):
        self.cipher()
        return peek_header(self._header)

    def block_count(self) -> int:
        return self.layout.block_count(self.size)

    def _get(self, start: int, end: int) -> bytes:
        """Bytes of *this* version of the object: never a mix of two."""
        try:
            return self.vol.store.get(self.entry.key, start, end, if_match=self.etag or None)
        except PreconditionFailed:
            raise PreconditionFailed(
                f"{self.name} was rewritten in the store (by another mount?) while open here"
            ) from None

    def read_sealed_range(self, start: int, end: int) -> bytes:
        """Raw object bytes ``[start, end)`` (ciphertext, for re-use)."""
        data = self._get(start, end)
        if len(data) != end - start:
            raise IntegrityError(f"{self.name}: object is shorter than its size says")
        return data

    def read_blocks(self, first: int, stop: int) -> list[bytes]:
        """Plaintext of blocks ``first..stop-1`` (clipped to the file)."""
        return self._open_blocks(first, stop, self.read_sealed_range)

    def _open_blocks(self, first: int, stop: int, fetch: Callable[[int, int], bytes | memoryview]) -> list[bytes]:
        """Blocks ``first..stop-1`` (clipped), their stored bytes from
        ``fetch(start, end)``, one call per run of stored blocks; holes are
        zeros."""
        stop = min(stop, self.block_count())
        if first >= stop:
            return []
        cipher = self.cipher()
        block_map = self._map if self.sparse else None
        if block_map is None:
            return cipher.open_span(first, fetch(*self.layout.sealed_range(first, stop, self.size)), self.size)
        out: list[bytes] = []
        i = first
        while i < stop:
            j = block_map.at_or_after(i)
            run_first, run_stop = block_map.extents[j] if j is not None else (stop, stop)
            if run_first > i:  # a hole up to the next stored block
                hole_stop = min(stop, run_first)
                out += [bytes(self.layout.plain_block_len(k, self.size)) for k in range(i, hole_stop)]
                i = hole_stop
                continue
            run_stop = min(stop, run_stop)
            out += cipher.open_span(i, fetch(*block_map.sealed_range(i, run_stop)), self.size)
            i = run_stop
        return out

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        end = min(self.size, offset + length)
        bs = self.layout.block_size
        first, stop = offset // bs, -(-end // bs)
        data = b"".join(self.read_blocks(first, stop))
        return data[offset - first * bs : end - first * bs]

    def stream(self, first: int) -> BlockStream:
        """Blocks ``first``, ``first+1``, … of this (dense) version from one request."""
        if self.sparse:
            raise ValueError("a sparse version is read by ranges")
        return BlockStream(self, first)

    def iter_chunks(self, chunk_blocks: int = 64, holes: bool = True) -> Iterator[bytes]:
        """The plaintext in order, at most ``chunk_blocks`` blocks at a time;
        without ``holes``, only the blocks stored (to check them all)."""
        for a, b in self.extents() if not holes else [(0, self.block_count())]:
            for first in range(a, b, chunk_blocks):
                yield b"".join(self.read_blocks(first, min(b, first + chunk_blocks)))


class BlockStream:
    """Consecutive authenticated blocks of one file version read from one
    streaming GET (on S3 and moto much cheaper than a ranged GET per window
    for sequential reads)."""

    def __init__(self, reader: FileReader, first: int):
        self.reader = reader
        self.next = first
        cipher = reader.cipher()  # the header first (a ranged read)
        self._cipher = cipher
        start = reader.layout.block_offset(first)
        try:
            self._stream = reader.vol.store.get_stream(reader.entry.key, start, if_match=reader.etag or None)
        except PreconditionFailed:
            raise PreconditionFailed(
                f"{reader.name} was rewritten in the store (by another mount?) while open here"
            ) from None

    def read_blocks(self, stop: int) -> list[bytes]:
        """Plaintext of blocks ``next..stop-1``; advances ``next``."""
        r = self.reader
        stop = min(stop, r.block_count())
        if self.next >= stop:
            return []
        start, end = r.layout.sealed_range(self.next, stop, r.size)
        buf = bytearray()
        while len(buf) < end - start:
            chunk = self._stream.read(end - start - len(buf))
            if not chunk:
                raise IntegrityError(f"{r.name}: object is shorter than its size says")
            buf += chunk
        blocks = self._cipher.open_span(self.next, buf, r.size)
        self.next = stop
        return blocks

    def close(self) -> None:
        self._stream.close()


class _ContentWriter:
    """Builds and uploads a new version of a file object.

    The new object is described as a sequence of segments in object order:
    ``("bytes", data)`` for fresh ciphertext (header or a re-sealed block)
    and ``("copy", start, end)`` for ciphertext reused from the base object
    at the same offsets.  Parts whose every byte is a copy become
    UploadPartCopy; others are assembled and uploaded.
    """

    def __init__(
        self,
        vol: Volume,
        e: Entry,
        size: int,
        dirty_block: Callable[[int], bytes | None],
        base: FileReader | None,
        sealed_block: Callable[[int, FileCipher], bytes | None] | None = None,
        extents: list[tuple[int, int]] | None = None,
    ):
        if not 0 <= size <= MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, f"file size {size} is above the maximum ({MAX_FILE_SIZE})")
        self.vol = vol
        self.e = e
        self.size = size
        self.dirty_block = dirty_block
        self.sealed_block = sealed_block
        self.base = base
        self.layout = vol.layout
        if base is not None:  # (a new header for the new version: same data key)
            self.cipher = base.cipher()
            self.header = vol._new_header(e.id, self.cipher.dek)
        else:
            self.cipher, self.header = vol._new_key(e)
        n = self.layout.block_count(size)
        self.extents = [(0, n)] if extents is None else extents
        #: Holes are left out: the version is stored with a block map.
        self.sparse = self.extents != [(0, n)]
        if self.sparse:
            if len(self.extents) > MAX_MAP_EXTENTS:
                raise FsError(
                    errno.EFBIG,
                    f"{len(self.extents)} runs of data between holes is above the maximum ({MAX_MAP_EXTENTS})",
                )
            self.map = self.cipher.seal_map(size, self.extents)
            self.block_map = BlockMap(self.layout, size, self.extents, HEADER_SIZE + len(self.map))
            self.object_size = self.block_map.end
        else:
            self.object_size = self.layout.object_size_for(size)

    def segments(self) -> Iterator[tuple]:
        yield ("bytes", self.header)
        if self.sparse:
            yield ("bytes", self.map)
        lay = self.layout
        n = lay.block_count(self.size)
        base_n = self.base.block_count() if self.base is not None else 0
        # A base block is reusable as ciphertext when its length and its
        # last-block flag are the same in both versions: then its bytes and
        # associated data agree.  That is every block below the last of
        # either version, and the last block too when the size is unchanged.
        reusable_stop = 0
        if self.base is not None:
            same_size = self.base.size == self.size
            reusable_stop = n if same_size else min(n - 1, base_n - 1)
        for i in (i for a, b in self.extents for i in range(a, b)):
            if i < n - 1 and self.sealed_block is not None:
                sealed = self.sealed_block(i, self.cipher)
                if sealed is not None:
                    yield ("bytes", sealed)
                    continue
            plain = self.dirty_block(i)
            where = self.base.block_range(i) if plain is None and i < reusable_stop else None  # type: ignore[union-attr]
            if where is not None:
                yield ("copy", *where)
                continue
            if plain is None:
                want = lay.plain_block_len(i, self.size)
                plain = self.base.read_blocks(i, i + 1)[0] if i < base_n else b""  # type: ignore[union-attr]
                plain = plain[:want] + bytes(want - len(plain[:want]))
            yield ("bytes", self.cipher.seal_block(i, i == n - 1, plain))

    def _merged(self) -> Iterator[tuple]:
        """Segments with adjacent copies merged."""
        pending = None
        for seg in self.segments():
            if seg[0] == "copy" and pending is not None and pending[2] == seg[1]:
                pending = ("copy", pending[1], seg[2])
                continue
            if pending is not None:
                yield pending
            pending = seg if seg[0] == "copy" else None
            if pending is None:
                yield seg
        if pending is not None:
            yield pending

    def _part_size(self) -> int:
        return max(PART_SIZE, self.vol.store.min_part_size, -(-self.object_size // (MAX_PARTS - 1)))

    def upload(
        self, md: dict[str, str], *, if_match: str | None, if_none_match: bool, progress: Callable[[int], None] | None
    ) -> str:
        store = self.vol.store
        key = self.e.key
        if self.object_size <= SINGLE_PUT_MAX:
            body = bytearray()
            for seg in self._merged():
                body += self._segment_bytes(seg)
            if len(body) != self.object_size:
                raise AssertionError("object assembled to the wrong size")
            etag = store.put(key, body, md, if_match=if_match, if_none_match=if_none_match)
            if progress:
                progress(self.size)
            return etag
        if store.streaming_put:
            return store.put_chunks(key, self._chunks(progress), md, if_match=if_match, if_none_match=if_none_match)
        return self._multipart(md, if_match, if_none_match, progress)

    def _segment_bytes(self, seg: tuple) -> bytes:
        """The bytes of one segment: fresh ciphertext, or read from the base."""
        return seg[1] if seg[0] == "bytes" else self.base.read_sealed_range(seg[1], seg[2])  # type: ignore[union-attr]

    def _chunks(self, progress: Callable[[int], None] | None) -> Iterator[bytes]:
        """The new object's bytes in order, no piece longer than a part."""
        for part in _cut_parts(self._merged(), PART_SIZE):
            for seg in part:
                piece = self._segment_bytes(seg)
                yield piece
                if progress:
                    progress(len(piece))

    def _multipart(self, md, if_match, if_none_match, progress) -> str:
        store = self.vol.store
        key = self.e.key
        part_size = self._part_size()
        upload_id = store.create_multipart(key, md)
        futures = []
        # (parts grow past 8 MiB for objects over 80 GB: keep at most
        # max(IN_FLIGHT_BYTES, one part) of them in memory)
        inflight = threading.BoundedSemaphore(max(1, min(4, IN_FLIGHT_BYTES // part_size)))
        try:
            number = 0
            for part in _cut_parts(self._merged(), part_size):
                number += 1
                inflight.acquire()
                futures.append(self.vol._pool.submit(self._send_part, upload_id, number, part, inflight, progress))
            parts = [f.result() for f in futures]
            return store.complete_multipart(key, upload_id, parts, if_match=if_match, if_none_match=if_none_match)
        except BaseException:
            for f in futures:
                f.cancel()
            try:
                store.abort_multipart(key, upload_id)
            except Exception:
                pass
            raise

    def _send_part(self, upload_id: str, number: int, part: list[tuple], inflight, progress) -> tuple[int, str]:
        store = self.vol.store
        try:
            if len(part) == 1 and part[0][0] == "copy":
                _, start, end = part[0]
                etag = store.upload_part_copy(self.e.key, upload_id, number, self.base.entry.key, start, end)  # type: ignore[union-attr]
                n = end - start
            else:
                buf = bytearray()
                for seg in part:
                    buf += self._segment_bytes(seg)
                etag = store.upload_part(self.e.key, upload_id, number, buf)
                n = len(buf)
            if progress:
                progress(n)
            return number, etag
        finally:
            inflight.release()


def _times_nonce(fields: dict) -> bytes | None:
    """The nonce of the times record entry metadata ``fields`` name (``tr``),
    or None; ValueError if it is not 16 bytes of hex."""
    if "tr" not in fields:
        return None
    nonce = bytes.fromhex(fields["tr"])
    if len(nonce) != TIMES_NONCE_SIZE:
        raise ValueError("tr")
    return nonce


def _untimed(fields: dict) -> dict:
    """Entry metadata fields without the times and what names the version."""
    return {k: v for k, v in fields.items() if k not in ("mt", "ct", "hh", "vn")}


def _cut_parts(segments: Iterator[tuple], part_size: int) -> Iterator[list[tuple]]:
    """Regroup segments into parts of exactly ``part_size`` bytes (the last
    may be shorter), splitting segments at part boundaries."""
    part: list[tuple] = []
    filled = 0
    for seg in segments:
        while True:
            length = len(seg[1]) if seg[0] == "bytes" else seg[2] - seg[1]
            room = part_size - filled
            if length <= room:
                part.append(seg)
                filled += length
                break
            if seg[0] == "bytes":
                head, seg = ("bytes", seg[1][:room]), ("bytes", seg[1][room:])
            else:
                head, seg = ("copy", seg[1], seg[1] + room), ("copy", seg[1] + room, seg[2])
            part.append(head)
            yield part
            part, filled = [], 0
        if filled == part_size:
            yield part
            part, filled = [], 0
    if part:
        yield part


class _WhileWritten:
    """A new version of a file stored while it is still being written.

    Sequential writers fill blocks in order; every time more than a part's
    worth of whole blocks lies ahead of what was sent, the caller has
    :meth:`send` seal them (none of them can be the last block: a later one
    exists) and pass them to the store.  :meth:`finish` seals and passes
    the rest, the last block flagged, and makes them the file's new version
    (If-Match the version it replaces).  A write behind what was sent, or a
    truncate, makes the caller :meth:`abort` it and store the file whole at
    its next flush.
    """

    #: Whether the caller must keep the blocks sent until :meth:`finish`
    #: returns (else :meth:`block` and :meth:`sealed` read them back).
    keeps_sent = True

    def __init__(self, vol: Volume, e: Entry, cipher: FileCipher):
        self.vol = vol
        self.key = e.key
        self.cipher = cipher
        #: The new version's header (same data key, sealed anew).
        self.header = vol._new_header(e.id, cipher.dek)
        self.header_hash = header_hash(self.header)
        self.part_blocks = self.blocks_per_part(vol)
        self.next_block = 0

    @staticmethod
    def blocks_per_part(vol: Volume) -> int:
        raise NotImplementedError

    def _emit(self, chunks: list[bytes]) -> None:
        """Pass the next stretch of the object, ``chunks`` in order, to the
        store."""
        raise NotImplementedError

    def _sealed(
        self, i: int, block: Callable[[int], bytes], sealed_block: Callable[[int, FileCipher], bytes | None] | None
    ) -> bytes:
        """Whole block ``i`` (not the last) as stored: as ``sealed_block``
        has it already sealed (see write_content), else sealed now."""
        data = sealed_block(i, self.cipher) if sealed_block is not None else None
        return data if data is not None else self.cipher.seal_block(i, False, block(i))

    def send(
        self, block: Callable[[int], bytes], sealed_block: Callable[[int, FileCipher], bytes | None] | None = None
    ) -> None:
        """Send the next part: blocks ``next_block .. +part_blocks``, which
        the caller has checked are complete and not the last."""
        chunks = [self.header] if self.next_block == 0 else []
        chunks += [
            self._sealed(i, block, sealed_block) for i in range(self.next_block, self.next_block + self.part_blocks)
        ]
        self._emit(chunks)
        self.next_block += self.part_blocks

    def _send_rest(
        self, size: int, block: Callable[[int], bytes], sealed_block: Callable[[int, FileCipher], bytes | None] | None
    ) -> None:
        """Seal and send the blocks after ``next_block`` of a file of ``size``
        bytes, the last one flagged."""
        layout = self.vol.layout
        n = layout.block_count(size)
        if n <= self.next_block:
            raise ValueError("the file ended inside what was already sent")
        chunks = [self.header] if self.next_block == 0 else []
        pending = len(chunks[0]) if chunks else 0
        for i in range(self.next_block, n):
            if i == n - 1:
                chunks.append(self.cipher.seal_block(i, True, block(i)))
            else:
                chunks.append(self._sealed(i, block, sealed_block))
            pending += len(chunks[-1])
            if pending >= self.part_blocks * layout.sealed_block_size and i < n - 1:
                self._emit(chunks)
                chunks, pending = [], 0
        if chunks:
            self._emit(chunks)


class AppendStream(_WhileWritten):
    """On a store that writes an object in one pass (the local store): each
    part is appended to the new object as soon as it is complete, so that
    the blocks go to disk once, where they will stay.  The caller need not
    keep them: :meth:`block` reads one back.  :meth:`finish` installs the
    object with its final metadata."""

    keeps_sent = False
    #: Bytes appended at a time.
    APPEND_BYTES = 1024 * 1024

    def __init__(self, vol: Volume, e: Entry, cipher: FileCipher):
        super().__init__(vol, e, cipher)
        self.writer = vol.store.open_put(e.key)

    @staticmethod
    def blocks_per_part(vol: Volume) -> int:
        return max(1, AppendStream.APPEND_BYTES // vol.layout.sealed_block_size)

    def _emit(self, chunks: list[bytes]) -> None:
        self.writer.append(*chunks)

    def sealed(self, i: int) -> bytes:
        """Sent block ``i`` as stored."""
        layout = self.vol.layout
        return self.writer.read(layout.block_offset(i), layout.sealed_block_size)

    def block(self, i: int) -> bytes:
        """Plaintext of sent block ``i``."""
        return self.cipher.open_block(i, False, self.sealed(i))

    def finish(
        self,
        e: Entry,
        size: int,
        block: Callable[[int], bytes],
        *,
        if_match: str | None,
        if_none_match: bool = False,
        sealed_block: Callable[[int, FileCipher], bytes | None] | None = None,
    ) -> Entry:
        sent = self.writer.size
        try:
            self._send_rest(size, block, sealed_block)
            new = replace(
                e,
                size=size,
                sparse=False,
                object_size=self.vol.layout.object_size_for(size),
                header_hash=self.header_hash,
            )
            new.etag = self.writer.commit(self.vol._prepare_meta(new), if_match=if_match, if_none_match=if_none_match)
        except BaseException:
            # back to the blocks sent by send(): the caller may read them,
            # finish again or abort
            self.writer.truncate(sent)
            raise
        self.vol._drop_side_objects(e, new)
        return new

    def abort(self) -> None:
        self.writer.abort()


class PartStream(_WhileWritten):
    """On S3: each part goes up as the next part of a multipart upload, in
    the background, at most ``MAX_IN_FLIGHT`` at a time; the caller keeps
    every block until :meth:`finish` returns (S3 cannot read back an
    unfinished upload).

    S3 fixes an object's metadata when its upload starts, and the mtime of
    a file being written changes until its last write, so the metadata
    names a times record (``t/<id>.<nonce>``, see :meth:`Volume.put_times`)
    that :meth:`finish` writes just before the completion.  Only if other
    metadata changed meanwhile (a chmod while writing) is the completed
    object then copied onto itself with its final metadata, which on S3
    costs about as much as the upload did.
    """

    MAX_IN_FLIGHT = 4

    def __init__(self, vol: Volume, e: Entry, cipher: FileCipher):
        super().__init__(vol, e, cipher)
        # (it is written from its start, every block)
        started = replace(e, sparse=False, header_hash=self.header_hash)
        self.fields = _untimed(vol._fields(started))
        self.times_record = crypto.random_bytes(TIMES_NONCE_SIZE)
        self.upload_id = vol.store.create_multipart(e.key, vol._prepare_meta(started, self.times_record))
        #: Whether the metadata the upload started with moved xattrs to x/.
        self.overflow = started.overflow
        self.version = started.version
        self._futures: list = []

    @staticmethod
    def blocks_per_part(vol: Volume) -> int:
        part = max(PART_SIZE, vol.store.min_part_size)
        return -(-part // vol.layout.sealed_block_size)

    def _emit(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        number = len(self._futures) + 1
        in_flight = [f for f in self._futures if not f.done()]
        if len(in_flight) >= self.MAX_IN_FLIGHT:
            in_flight[0].result()
        self._futures.append(self.vol.submit(self._upload_part, number, data))

    def _upload_part(self, number: int, data: bytes) -> tuple[int, str]:
        return number, self.vol.store.upload_part(self.key, self.upload_id, number, data)

    def finish(
        self,
        e: Entry,
        size: int,
        block: Callable[[int], bytes],
        *,
        if_match: str | None,
        if_none_match: bool = False,
        sealed_block: Callable[[int, FileCipher], bytes | None] | None = None,
    ) -> Entry:
        self._send_rest(size, block, sealed_block)
        parts = [f.result() for f in self._futures]
        vol = self.vol
        # The record first: the completed object names it.
        new = replace(
            e,
            size=size,
            sparse=False,
            object_size=vol.layout.object_size_for(size),
            overflow=self.overflow,
            times_record=self.times_record,
            header_hash=self.header_hash,
            version=self.version,
        )
        vol.put_times(new, self.times_record)
        try:
            new.etag = vol.store.complete_multipart(
                self.key, self.upload_id, parts, if_match=if_match, if_none_match=if_none_match
            )
        except PreconditionFailed:  # (refused: nothing names the record.  Other errors
            # may hide a completion that happened: the record stays, for fsck)
            vol._delete_side_object(times_key(new.id, self.times_record))
            raise
        if _untimed(vol._fields(new)) != self.fields:
            # Changed while written (a chmod, say): the metadata needs a new
            # version (a new header: see Volume._rewrite).
            new = vol._rewrite(new, replace(new, times_record=None))
        vol._drop_side_objects(e, new)
        return new

    def abort(self) -> None:
        for f in self._futures:
            f.cancel()
        for f in self._futures:
            try:
                f.result()
            except Exception:  # noqa: BLE001 - the upload is being thrown away
                pass
        try:
            self.vol.store.abort_multipart(self.key, self.upload_id)
        except Exception as exc:  # noqa: BLE001 - fsck reports stale uploads
            log.warning("cannot abort an upload of %s: %s", self.key, exc)
