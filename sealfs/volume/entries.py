"""Entry objects: the entries of directories looked up, listed, created,
renamed, removed and given new metadata, each one object ``d/<dir>/<name>``
(a file's is its content, a symlink's its sealed target, a directory's
empty)."""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ..codec import crypto
from ..codec.entry import ID_SIZE, KIND_DIR, KIND_FILE, KIND_LINK, KIND_MODE, ROOT_ID, ROOT_KEY, Entry
from ..codec.header import HEADER_HASH_SIZE, header_hash
from ..codec.names import NAME_MAX, NameCipher
from ..errors import FsError, IntegrityError, NotFound, PreconditionFailed
from ..fileio.context import FileIO
from ..fileio.reader import FileReader
from ..fileio.writer import ContentWriter, PlainBlocks
from ..store.base import ObjectInfo, Store
from .sealed import SealedMeta, SideGone, dir_prefix

#: See Entries.unchanged.
SETTLED_SECONDS = 2
#: Reads of an entry replaced again and again while it is read, at most.
_REREADS = 8


def check_name(name: bytes) -> bytes:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, "file name longer than 255 bytes")
    return name


def now_ns() -> int:
    return time.time_ns()


class Entries:
    """The entry operations of a volume (the base of Volume)."""

    def __init__(self, store: Store, sealed: SealedMeta, names: NameCipher, io: FileIO, pool: ThreadPoolExecutor):
        self.store = store
        self.sealed = sealed
        self.names = names
        self.io = io
        self._pool = pool

    def _put_entry(self, e: Entry, body: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> Entry:
        md = self.sealed.seal(e)
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
                return self.sealed.entry_of(parent_id, component, info)
            except SideGone as gone:
                if gone.key in missing or len(missing) >= _REREADS:
                    raise IntegrityError(f"entry {key}: its {gone.what} is missing ({gone.key})") from None
                missing.add(gone.key)
                info = None

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
                hint = self.sealed.name_hint(dir_id, info.key[len(prefix) :], md)
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
            KIND_MODE[kind] | (mode & 0o7777),
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
        body = self.sealed.meta.seal_bytes(e.target, _link_aad(e.id, bound=True))  # type: ignore[arg-type]
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
            e.target = self.sealed.meta.open_bytes(blob, _link_aad(e.id, bound=e.header_hash is not None), what)
        return e.target

    def new_file_entry(self, parent_id: bytes, name: bytes, mode: int, uid: int, gid: int) -> Entry:
        """An entry for a file not yet stored (write it with write_content)."""
        return self._new_entry(parent_id, name, KIND_FILE, mode, uid, gid)

    def create_file(self, parent_id: bytes, name: bytes, mode: int, uid: int, gid: int) -> Entry:
        """A new empty regular file; EEXIST if the name is taken."""
        e = self._new_entry(parent_id, name, KIND_FILE, mode, uid, gid)
        cipher, header = self.io.new_key(e)
        e.header_hash = header_hash(header)
        return self._create(e, header + cipher.seal_block(0, True, b""))

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
            md = self.sealed.seal(new)
            new.etag = self.store.put(new.key, body, md, if_match=e.etag or None)
            self.sealed.drop_side_objects(e, new)
            return new
        md = self.sealed.seal(new)
        new.etag = self._write_entry_object(e.key, new, md, if_match=e.etag or None)
        self.sealed.drop_side_objects(e, new)
        return new

    def _rewrite(self, e: Entry, new: Entry, reader: FileReader | None = None) -> Entry:
        """Store ``new`` (``e`` with other metadata) as a new version of file
        ``e``'s object, If-Match ``e``'s etag: the same data key and blocks
        (copied as they are, server-side where the store can) under a new
        header, so that no earlier metadata of the file opens with this
        version's content.  The header is sealed under the current
        generation (this is also how :meth:`Volume.rekey_file` re-wraps).  It
        costs a GET and a PUT of the object, or, when the object is uploaded
        in parts, of its first part plus a server-side copy of the rest.
        ``reader``: one of ``e`` already open (its header authenticated)."""
        reader = reader or FileReader(self.io, e)
        writer = ContentWriter(self.io, new, e.size, PlainBlocks(lambda i: None), reader, extents=reader.extents())
        return self.install(e, new, writer, if_match=e.etag or None)

    def install(
        self,
        e: Entry,
        new: Entry,
        writer: ContentWriter,
        *,
        if_match: str | None,
        if_none_match: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Entry:
        """Store ``new``, the next version of file ``e``, as ``writer`` has
        its content: its sizes and header from the writer, its metadata
        sealed, its object uploaded on the given condition, then the side
        objects of ``e`` that it does not use removed.  Returns ``new`` with
        its etag; PreconditionFailed if the object's etag is no longer
        ``if_match``."""
        new.size = writer.size
        new.sparse = writer.sparse
        new.object_size = writer.object_size
        new.header_hash = header_hash(writer.header)
        md = self.sealed.seal(new)
        new.etag = writer.upload(md, if_match=if_match, if_none_match=if_none_match, progress=progress)
        self.sealed.drop_side_objects(e, new)
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
        self.sealed.drop_side_objects(e, None)

    def orphan(self, e: Entry) -> Entry:
        """Move a file that is unlinked while still open out of its
        directory, to ``o/<id>``, until its last handle closes."""
        new = replace(e, key=f"o/{e.id.hex()}", long_ct=None)
        md = self.sealed.seal(new)
        new.etag = self.store.copy(e.key, new.key, md)
        self.store.delete(e.key)
        self.sealed.drop_side_objects(e, new)
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
        md = self.sealed.seal(new)
        new.etag = self._write_entry_object(e.key, new, md)
        self.store.delete(e.key)
        self.sealed.drop_side_objects(e, new)
        if replace_entry is not None and replace_entry.id != e.id:
            self.sealed.drop_side_objects(replace_entry, None)
        return new


def _link_aad(entry_id: bytes, *, bound: bool) -> bytes:
    return (b"sealfs bound symlink " if bound else b"sealfs symlink ") + entry_id


def _body_hash(body: bytes) -> bytes:
    """The identity of one sealed symlink body (``hh``, as a header's for a file)."""
    return hashlib.sha256(body).digest()[:HEADER_HASH_SIZE]
