"""Entry metadata in the store: sealed into an entry object's user
metadata (the fields of codec.entry), and the side objects a version may
name, its overflow metadata ``x/<id>`` and its times record
``t/<id>.<nonce>``: written with it, read with it, removed when no
version uses them any more."""

from __future__ import annotations

import logging

from ..codec.blocks import Layout
from ..codec.entry import (
    ROOT_KEY,
    Entry,
    b64,
    entry_of,
    fields,
    json_bytes,
    json_of,
    read_rest,
    read_size,
    times_fields,
    times_nonce,
    times_of,
    unb64,
)
from ..codec.meta import MetaCipher
from ..codec.names import NameCipher, is_long
from ..errors import IntegrityError, NotFound, SealfsError
from ..store.base import MAX_METADATA_BYTES, ObjectInfo, Store

log = logging.getLogger("sealfs.volume")  # (the name its log lines had before the volume was a package)

#: Room left in user metadata for the sealed blob after the long name.
_META_BUDGET = MAX_METADATA_BYTES - 64
_TIMES_AAD = b"sealfs times "
_OVERFLOW_AAD = b"sealfs overflow "
#: Times records remembered (they never change: a new one has a new name).
_TIMES_CACHED = 4096


def dir_prefix(dir_id: bytes) -> str:
    return f"d/{dir_id.hex()}/"


def times_key(entry_id: bytes, nonce: bytes) -> str:
    return f"t/{entry_id.hex()}.{nonce.hex()}"


def overflow_key(entry_id: bytes) -> str:
    return f"x/{entry_id.hex()}"


class SideGone(Exception):
    """An object an entry's metadata names (its times record or its
    overflow metadata) is not in the store: a newer version replaced the
    entry (and removed that object) between reading the entry and reading
    the object -- or, if it stays missing, the object was lost."""

    def __init__(self, key: str, what: str):
        super().__init__(key)
        self.key = key
        self.what = what


class SealedMeta:
    """Seals and opens the metadata of one volume's entries (``meta`` is
    replaced when the volume's keys change)."""

    def __init__(self, store: Store, layout: Layout, names: NameCipher, meta: MetaCipher):
        self.store = store
        self.layout = layout
        self.names = names
        self.meta = meta
        self._times: dict[tuple[bytes, bytes], tuple[int, int]] = {}

    # -- sealing --------------------------------------------------------------------------

    def _user_metadata(self, e: Entry, record: bytes | None = None) -> tuple[dict[str, str], bytes | None]:
        """User metadata for ``e``'s object, and the overflow blob to store
        beside it when the xattrs do not fit (else None).  ``record``: the
        nonce of the times record that will hold the object's times."""
        aad = e.key.encode()
        md = {}
        if e.long_ct is not None:
            md["n"] = b64(e.long_ct)
        f = fields(e)
        if record is not None:
            f["tr"] = record.hex()
        md["m"] = self.meta.seal(f, aad)
        if sum(len(k) + len(v) for k, v in md.items()) <= _META_BUDGET:
            return md, None
        big = {"x": f.pop("x", {})}
        f["ov"] = 1
        md["m"] = self.meta.seal(f, aad)
        blob = self.meta.seal_bytes(json_bytes(big), _OVERFLOW_AAD + e.id)
        return md, blob

    def seal(self, e: Entry, record: bytes | None = None) -> dict[str, str]:
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

    # -- opening --------------------------------------------------------------------------

    def entry_of(self, parent_id: bytes, component: str, info: ObjectInfo) -> Entry:
        """The entry of object ``info`` (read with its metadata) named
        ``component`` in directory ``parent_id``; SideGone if an object its
        metadata names is not in the store."""
        key, md, what = info.key, info.metadata, f"entry {info.key}"
        if not md or "m" not in md:
            raise IntegrityError(f"{what}: has no sealfs metadata")
        f = self.meta.open(md["m"], key.encode(), what)
        long_ct = None
        if key == ROOT_KEY:
            name = b""
        else:
            if is_long(component):
                try:
                    long_ct = unb64(md.get("n", ""))
                except ValueError:
                    raise IntegrityError(f"{what}: long name is not base64") from None
            name = self.names.decrypt(parent_id, component, long_ct)
        try:
            e = entry_of(parent_id, name, key, f, etag=info.etag, long_ct=long_ct)
            if e.overflow:
                try:
                    blob = self.store.get(overflow_key(e.id))
                except NotFound:
                    raise SideGone(overflow_key(e.id), "overflow metadata") from None
                f.update(
                    json_of(self.meta.open_bytes(blob, _OVERFLOW_AAD + e.id, what + " overflow"), "overflow metadata")
                )
            read_rest(e, f)
            if e.times_record is not None:
                e.mtime_ns, e.ctime_ns = self._recorded_times(e.id, e.times_record, what)
        except (KeyError, ValueError, TypeError, AttributeError):
            raise IntegrityError(f"{what}: metadata is malformed") from None
        read_size(e, f, info.size, self.layout, what)
        if info.checked is not None:
            e.seen = (int(info.mtime), int(info.checked))
        return e

    def name_hint(self, dir_id: bytes, component: str, md: dict[str, str] | None) -> str | None:
        """The name of an entry whose metadata failed, for messages; None
        when the name does not authenticate either."""
        try:
            long_ct = unb64((md or {}).get("n", "")) if is_long(component) else None
            return self.names.decrypt(dir_id, component, long_ct).decode(errors="replace")
        except (IntegrityError, ValueError):
            return None

    # -- times records ------------------------------------------------------------------

    def _recorded_times(self, entry_id: bytes, nonce: bytes, what: str) -> tuple[int, int]:
        """(mtime, ctime) from times record ``nonce`` of entry ``entry_id``."""
        times = self._times.get((entry_id, nonce))
        if times is None:
            key = times_key(entry_id, nonce)
            try:
                blob = self.store.get(key)
            except NotFound:
                raise SideGone(key, "times record") from None
            times = times_of(
                json_of(self.meta.open_bytes(blob, _TIMES_AAD + entry_id + nonce, what + " times"), "times record")
            )
            self._remember_times(entry_id, nonce, times)
        return times

    def _remember_times(self, entry_id: bytes, nonce: bytes, times: tuple[int, int]) -> None:
        if len(self._times) >= _TIMES_CACHED:
            self._times.clear()
        self._times[(entry_id, nonce)] = times

    def put_times(self, e: Entry, nonce: bytes) -> None:
        """Store ``e``'s mtime and ctime as times record ``nonce``: written
        before the object whose metadata names it is completed."""
        data = json_bytes(times_fields(e))
        self.store.put(times_key(e.id, nonce), self.meta.seal_bytes(data, _TIMES_AAD + e.id + nonce))
        self._remember_times(e.id, nonce, (e.mtime_ns, e.ctime_ns))

    def times_key_named_by(self, key: str) -> str | None:
        """The times record the metadata of object ``key`` names, if its
        metadata opens (whether or not the record does): for fsck, which
        must not take the record of a damaged entry for a leftover."""
        try:
            f = self.meta.open(self.store.head(key).metadata["m"], key.encode(), key)
            nonce = times_nonce(f)
            return times_key(bytes.fromhex(f["id"]), nonce) if nonce is not None else None
        except (SealfsError, KeyError, ValueError, TypeError):
            return None

    # -- side objects -----------------------------------------------------------------

    def drop_side_objects(self, old: Entry, new: Entry | None) -> None:
        """Remove ``old``'s overflow object and times record once ``new``
        (the version that replaced it, None if removed) does not use them.
        The change is done by then: a failure to delete is logged (fsck
        lists what is left), not raised."""
        if old.overflow and (new is None or not new.overflow):
            self.delete_side_object(overflow_key(old.id))
        if old.times_record is not None and (new is None or new.times_record != old.times_record):
            self.delete_side_object(times_key(old.id, old.times_record))

    def delete_side_object(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception as exc:  # noqa: BLE001 - see drop_side_objects
            log.warning("cannot remove %s (left for fsck): %s", key, exc)
