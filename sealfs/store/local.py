"""A local directory acting as a bucket: the embedded default store.

Layout of the store directory (``file:///path``)::

    objects/      one file per object
    tmp/          files being written; renamed into objects/ when complete
    multipart/    one directory per multipart upload: info.json and parts
    lock          flock(2)ed by writers (see "Concurrency" below)

Each object file is a fixed :data:`HEADER_SIZE`-byte header followed by the
object's bytes, so an object's size is ``st_size - HEADER_SIZE``.  The header
is ASCII lines, NUL-padded::

    sealfs-local-object 1
    etag <32 hex digits>
    <metadata name>=<value>        (one line per user metadata item)
    <empty line>

Metadata names are ``[a-z0-9-]`` and values printable ASCII, so neither
needs escaping.  The header always fits for metadata S3 accepts: S3 caps
user metadata at 2 KB and a PUT's headers at 8 KB, so it takes fewer than
500 items; 2 KB of names and values plus two bytes per item is far below
4 KB.  Metadata with more items than that is refused with ``ValueError``.

Key segments become path components.  A key segment followed by ``/``
becomes a directory named ``<segment>~``; the last segment is the file
name.  ``~`` is not a key character, so the object ``a`` (file ``a``) and
the objects under ``a/`` (directory ``a~``) coexist as they do on S3.

Concurrency.  Readers take no lock: an object file is only ever replaced by
``rename(2)``, so an open file is one complete version.  Writers build the
new file in ``tmp/`` without a lock and then, holding ``lock``, rename it
into place: a *shared* lock for unconditional writes and an *exclusive*
lock for everything that must check and act atomically -- conditional puts
and completes (check the current etag, then rename), deletes (unlink, then
remove directories left empty, which must not race a writer that has just
created one), and ending a multipart upload.  Unconditional writes need
not exclude each other, but they must not land between a conditional
write's check and its rename, where they would be lost without a trace:
hence their shared lock.  ``flock`` locks belong to an open file
description, so the lock file is opened anew for each acquisition and the
lock excludes threads of one process as well as other processes.  A
process that dies holding the lock releases it.

Listing opens each listed object file for its etag (one open and one 4 KiB
read per object); sizes come from ``fstat``.

Durability: a new object's data and its directory entry are fsync'ed before
the call returns, as is the removal of a deleted object.  Parts of an
upload are not fsync'ed; completing the upload fsyncs the assembled object.
After :meth:`LocalStore.defer_sync` (a mounted volume) writes are not
fsync'ed one by one: a write that returned survives a crash of the process
(the object file is renamed into place whole), and :meth:`LocalStore.sync`
makes every write so far durable against power loss with one ``syncfs``,
as fsync() does on a local filesystem.

Known limits: a crash can leave files in ``tmp/`` (they are never mistaken
for objects, and can be removed when no sealfs process uses the store);
each page of a listing reads and sorts every directory it visits, so paging
through one directory of N objects costs O(N) per page; key segments are
limited to :data:`~sealfs.store.base.MAX_KEY_SEGMENT` characters by the
file-name limit (enforced for every backend).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import DamagedObject, NotFound, PreconditionFailed, StoreError, StoreUnavailable
from .base import (
    KEY_SEGMENT_CHARS,
    S3_MIN_PART_SIZE,
    ListPage,
    ObjectInfo,
    ObjectWriter,
    Store,
    Upload,
    check_conditions,
    check_key,
    check_metadata,
    check_part_number,
    check_parts,
    check_range,
)

log = logging.getLogger(__name__)

HEADER_SIZE = 4096
_libc = ctypes.CDLL(None, use_errno=True)
_MAGIC = b"sealfs-local-object 1\n"
_ETAG = b"etag "
_DIR_SUFFIX = "~"
#: Sorts after every key character ('z' is the greatest): ``p + _AFTER``
#: is greater than every key that starts with ``p``.
_AFTER = "~"
#: Bytes moved per copy_file_range / pread call.
_CHUNK = 64 * 1024 * 1024
#: copy_file_range errors that mean "not possible here", not "failed".
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_UPLOAD_ID_LEN = 32
_INFO = "info.json"


class LocalStore(Store):
    """The store in a local directory ``root`` (see the module docstring).

    ``create=True`` makes ``root`` (mode 0700) and its layout if missing;
    otherwise a missing ``root`` raises :class:`~sealfs.errors.StoreError`.
    Several processes may use one directory at the same time.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False):
        self.root = os.path.abspath(os.fspath(root))
        self.url = "file://" + self.root
        #: Smallest non-last part ``complete_multipart`` accepts (S3's rule,
        #: so that code tested here works on S3; tests may lower it).
        self.min_part_size = S3_MIN_PART_SIZE
        #: Objects are files: no single-write limit worth the name.
        self.max_put_size = 2**62
        self.streaming_put = True
        self._objects = os.path.join(self.root, "objects")
        self._tmp = os.path.join(self.root, "tmp")
        self._uploads = os.path.join(self.root, "multipart")
        self._lock_path = os.path.join(self.root, "lock")
        self._sync_each_write = True
        #: (st_dev, st_ino) of the root and of objects/ when the store was
        #: opened: see :meth:`_check_root`.
        self._identity: tuple[tuple[int, int], tuple[int, int]] | None = None
        if create:
            with self._os_errors("create the store directory"):
                for path in (self.root, self._objects, self._tmp, self._uploads):
                    os.makedirs(path, mode=0o700, exist_ok=True)
        self.check()

    def defer_sync(self) -> None:
        self._sync_each_write = False

    def sync(self) -> None:
        if self._sync_each_write:
            return
        self._check_root()
        with self._os_errors("sync the store to disk"):
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if _libc.syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)

    def _sync_file(self, fd: int) -> None:
        if self._sync_each_write:
            os.fsync(fd)

    def _sync_dir(self, path: str) -> None:
        if self._sync_each_write:
            _fsync_dir(path)

    def check(self) -> None:
        if self._identity is not None:
            self._check_root()
            return
        if not os.path.isdir(self.root):
            raise StoreError(f"no sealfs store directory at {self.root}")
        if not os.path.isdir(self._objects):
            raise StoreError(f"{self.root} is not a sealfs store directory (it has no objects/ subdirectory)")
        with self._os_errors("open the store directory"):
            self._identity = (_file_id(self.root), _file_id(self._objects))

    def _check_root(self) -> None:
        """Refuse to go on if the store directory (or its objects/) is no
        longer the one opened: deleted, renamed away, its disk unmounted,
        or replaced by another directory (another volume's store, an empty
        one).  Otherwise a missing directory would read as an empty volume,
        and writes would build a new store under the old path.  Every call
        checks first (two stat(2) calls); the same directory put back
        (renamed back, its disk mounted again) is accepted again."""
        try:
            now = (_file_id(self.root), _file_id(self._objects))
        except OSError as e:
            raise StoreUnavailable(
                f"local store {self.root} is gone (deleted, moved away or its disk unmounted: {e.strerror or e})"
            ) from None
        if now != self._identity:
            raise StoreUnavailable(
                f"local store {self.root} was replaced by another directory since it was "
                "opened (another store or an empty one): refusing to use it"
            )

    # -- reading -----------------------------------------------------------
    def get(self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None) -> bytes:
        check_range(start, end)
        with self._open(key) as fd:
            etag, _ = self._read_header(fd, key)
            if if_match is not None and etag != if_match:
                raise PreconditionFailed(f"{key} in {self.url} changed (etag is no longer {if_match})")
            size = os.fstat(fd).st_size - HEADER_SIZE
            stop = size if end is None else min(end, size)
            if start >= stop:
                return b""
            return self._pread(fd, key, HEADER_SIZE + start, stop - start)

    def get_stream(self, key: str, start: int = 0, *, if_match: str | None = None) -> BinaryIO:
        check_range(start, None)
        path = self._object_path(key)
        self._check_root()
        with self._os_errors("read", key):
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                raise NotFound(f"no object {key} in {self.url}") from None
        try:
            etag, _ = self._read_header(f.fileno(), key)
            if if_match is not None and etag != if_match:
                raise PreconditionFailed(f"{key} in {self.url} changed (etag is no longer {if_match})")
            f.seek(HEADER_SIZE + start)
        except BaseException:
            f.close()
            raise
        return f  # the open file keeps this version readable even if replaced

    def get_object(self, key: str, limit: int | None = None) -> tuple[bytes, ObjectInfo]:
        if limit is not None:
            check_range(0, limit)
        with self._open(key) as fd:
            info = self._info(fd, key, with_metadata=True)
            return self._pread(fd, key, HEADER_SIZE, info.size if limit is None else min(limit, info.size)), info

    def head(self, key: str) -> ObjectInfo:
        with self._open(key) as fd:
            return self._info(fd, key, with_metadata=True)

    def list(
        self,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """A page of keys under ``prefix``.  The token is the point to resume
        after: the last key returned, or a common prefix followed by ``~``
        (sorting after every key under that prefix).  An object file with a
        damaged header is listed (size from its length, etag empty): the
        listing is not the place to fail, a read of it fails."""
        self._check_root()
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        if delimiter == "":
            raise ValueError("the delimiter must not be empty")
        max_keys = min(max_keys, 1000)
        page = ListPage()
        base, slash, partial = prefix.rpartition("/")
        try:
            if slash:
                check_key(base)
        except ValueError:
            return page  # no valid key starts with this prefix
        if not KEY_SEGMENT_CHARS.issuperset(partial):
            return page
        directory = self._dir_path(base) if slash else self._objects
        walk = self._walk(directory, base + slash, prefix, token or "", delimiter == "/")
        last_prefix = None
        resume_after = ""
        for is_dir, name, path in walk:
            info = None
            if not is_dir and delimiter is not None:
                cut = name.find(delimiter, len(prefix))
                if cut >= 0:
                    name, is_dir = name[: cut + len(delimiter)], True
            if is_dir:
                if name == last_prefix:
                    continue
                last_prefix = name
            else:
                info = self._list_info(name, path)
                if info is None:
                    continue  # deleted since the directory was read
            if len(page.objects) + len(page.prefixes) == max_keys:
                page.next_token = resume_after
                break
            if info is None:
                page.prefixes.append(name)
                resume_after = name + _AFTER
            else:
                page.objects.append(info)
                resume_after = name
        return page

    # -- writing -----------------------------------------------------------
    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        metadata: dict[str, str] | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        if len(data) > self.max_put_size:
            raise ValueError(f"{len(data)} bytes exceed the single-put limit of {self.max_put_size}")
        return self.put_chunks(key, (data,), metadata, if_match=if_match, if_none_match=if_none_match)

    def open_put(self, key: str) -> _LocalObjectWriter:
        return _LocalObjectWriter(self, key)

    def temporaries(self) -> list[tuple[str, float]]:
        """The files in ``tmp/`` (objects being written; a crash leaves them)."""
        self._check_root()
        out = []
        with self._os_errors("list", "tmp/"):
            try:
                entries = list(os.scandir(self._tmp))
            except FileNotFoundError:
                return []
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False):
                        out.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
        return sorted(out)

    def remove_temporary(self, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a temporary file name: {name!r}")
        self._check_root()
        with self._os_errors("remove", f"tmp/{name}"), contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._tmp, name))

    def copy(self, src: str, dst: str, metadata: dict[str, str], *, if_match: str | None = None) -> str:
        dst_path = self._object_path(dst)
        md = check_metadata(metadata)
        with self._open(src) as src_fd, self._temp_file("copy", dst) as (fd, tmp):
            # The same bytes keep the same etag, as on S3 (whose etag of a
            # single-part object is their MD5): readers holding the etag of
            # the content are not disturbed by a metadata change.
            etag, _ = self._read_header(src_fd, src)
            if if_match is not None and etag != if_match:
                raise PreconditionFailed(f"{src} in {self.url} changed (etag is no longer {if_match})")
            header = self._header(etag, md)
            size = os.fstat(src_fd).st_size - HEADER_SIZE
            self._write_all(fd, dst, header, 0)
            self._copy_range(src_fd, HEADER_SIZE, fd, HEADER_SIZE, size, src)
            if src == dst:  # a metadata change replaces the object as a put does
                self._sync_file(fd)
            else:  # a rename is a copy and a delete: a power loss must not keep the delete and lose the copy
                os.fsync(fd)
            # (in place: only over the version read, under the store's lock)
            self._install(tmp, dst_path, dst, if_match=if_match if src == dst else None)
        return etag

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: list[str]) -> None:
        paths = [self._object_path(key) for key in keys]
        emptied: set[str] = set()
        with self._os_errors("delete objects"):
            with self._locked(exclusive=True):
                for path in paths:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        continue
                    emptied.add(os.path.dirname(path))
                remaining = {self._prune(directory) for directory in emptied}
            for directory in remaining:
                self._sync_dir(directory)

    # -- multipart ---------------------------------------------------------
    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        check_key(key)
        md = check_metadata(metadata)
        self._header("", md)  # refuse now metadata that could not be stored at the end
        self._check_root()
        upload_id = secrets.token_hex(_UPLOAD_ID_LEN // 2)
        info = {"key": key, "metadata": md, "initiated": time.time()}
        with self._os_errors("start a multipart upload", key):
            self._makedirs(self._tmp)
            self._makedirs(self._uploads)
            # Built aside and renamed in, so an upload directory always has its info.
            staging = tempfile.mkdtemp(prefix="upload-", dir=self._tmp)
            try:
                with open(os.path.join(staging, _INFO), "w", encoding="ascii") as f:
                    json.dump(info, f)
                os.rename(staging, os.path.join(self._uploads, upload_id))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | memoryview) -> str:
        check_part_number(part_number)
        upload_dir, _info = self._upload(key, upload_id)
        etag = secrets.token_hex(16)
        with self._temp_file("part", key) as (fd, tmp):
            self._write_all(fd, key, self._header(etag, {}), 0)
            self._write_all(fd, key, data, HEADER_SIZE)
            self._install_part(tmp, upload_dir, part_number, key, upload_id)
        return etag

    def upload_part_copy(self, key: str, upload_id: str, part_number: int, src: str, start: int, end: int) -> str:
        check_part_number(part_number)
        if not 0 <= start < end:
            raise ValueError(f"invalid source range [{start}, {end}) for a part copy")
        upload_dir, _info = self._upload(key, upload_id)
        etag = secrets.token_hex(16)
        with self._open(src) as src_fd, self._temp_file("part", key) as (fd, tmp):
            self._read_header(src_fd, src)
            size = os.fstat(src_fd).st_size - HEADER_SIZE
            if end > size:
                raise StoreError(f"range [{start}, {end}) is past the end of {src} ({size} bytes) in {self.url}")
            self._write_all(fd, key, self._header(etag, {}), 0)
            self._copy_range(src_fd, HEADER_SIZE + start, fd, HEADER_SIZE, end - start, src)
            self._install_part(tmp, upload_dir, part_number, key, upload_id)
        return etag

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        path = self._object_path(key)
        check_conditions(if_match, if_none_match)
        check_parts(parts)
        upload_dir, info = self._upload(key, upload_id)
        etag = secrets.token_hex(16)
        with contextlib.ExitStack() as stack:
            sources = []
            for i, (number, part_etag) in enumerate(parts):
                part_path = os.path.join(upload_dir, f"{number:05d}")
                try:
                    fd = stack.enter_context(_opened(part_path))
                except FileNotFoundError:
                    raise StoreError(f"part {number} of the upload of {key} in {self.url} was not uploaded") from None
                if self._read_header(fd, key)[0] != part_etag:
                    raise StoreError(f"part {number} of the upload of {key} in {self.url} has changed (etag mismatch)")
                size = os.fstat(fd).st_size - HEADER_SIZE
                if size < self.min_part_size and i < len(parts) - 1:
                    raise StoreError(
                        f"part {number} of the upload of {key} is {size} bytes; every part but the last "
                        f"must be at least {self.min_part_size} bytes"
                    )
                sources.append((fd, size))
            fd, tmp = stack.enter_context(self._temp_file("complete", key))
            self._write_all(fd, key, self._header(etag, info["metadata"]), 0)
            offset = HEADER_SIZE
            for src_fd, size in sources:
                self._copy_range(src_fd, HEADER_SIZE, fd, offset, size, key)
                offset += size
            self._sync_file(fd)
            retired = self._install(
                tmp, path, key, if_match=if_match, if_none_match=if_none_match, retire=(upload_dir, upload_id)
            )
        shutil.rmtree(retired, ignore_errors=True)
        return etag

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            upload_dir, _info = self._upload(key, upload_id)
        except NotFound:
            return
        with self._os_errors("abort the multipart upload", key), self._locked(exclusive=True):
            retired = self._retire(upload_dir, upload_id)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)

    def list_multipart_uploads(self, prefix: str = "") -> list[Upload]:
        self._check_root()
        uploads = []
        with self._os_errors("list multipart uploads"):
            try:
                names = os.listdir(self._uploads)
            except FileNotFoundError:
                return []
            for upload_id in names:
                try:
                    info = self._read_info(os.path.join(self._uploads, upload_id), upload_id)
                except DamagedObject as exc:
                    log.warning("%s (left alone)", exc)
                    continue
                if info is not None and info["key"].startswith(prefix):
                    uploads.append(Upload(info["key"], upload_id, info["initiated"]))
        uploads.sort(key=lambda u: (u.key, u.initiated))
        return uploads

    # -- paths -------------------------------------------------------------
    def _dir_path(self, key_prefix: str) -> str:
        """The directory holding the objects whose keys start with ``key_prefix + '/'``."""
        return os.path.join(self._objects, *(s + _DIR_SUFFIX for s in key_prefix.split("/")))

    def _object_path(self, key: str) -> str:
        check_key(key)
        base, slash, name = key.rpartition("/")
        return os.path.join(self._dir_path(base), name) if slash else os.path.join(self._objects, name)

    # -- object files ------------------------------------------------------
    @contextlib.contextmanager
    def _open(self, key: str) -> Iterator[int]:
        """The object file of ``key``, open for reading; NotFound if none."""
        path = self._object_path(key)
        self._check_root()
        with self._os_errors("read", key):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(f"no object {key} in {self.url}") from None
            try:
                yield fd
            finally:
                os.close(fd)

    @staticmethod
    def _header(etag: str, metadata: dict[str, str]) -> bytes:
        lines = [_MAGIC, _ETAG + etag.encode() + b"\n"]
        lines += [f"{name}={value}\n".encode("ascii") for name, value in metadata.items()]
        header = b"".join(lines) + b"\n"
        if len(header) > HEADER_SIZE:
            raise ValueError(f"user metadata with {len(metadata)} items does not fit a local object header")
        return header.ljust(HEADER_SIZE, b"\0")

    def _read_header(self, fd: int, key: str) -> tuple[str, dict[str, str]]:
        """The etag and metadata of the open object file ``fd``."""
        with self._os_errors("read", key):
            raw = os.pread(fd, HEADER_SIZE, 0)
        end = raw.find(b"\n\n")
        lines = raw[len(_MAGIC) : end].split(b"\n")
        if len(raw) < HEADER_SIZE or not raw.startswith(_MAGIC) or end < 0 or not lines[0].startswith(_ETAG):
            raise DamagedObject(f"object {key} in {self.url} is damaged (bad local header)")
        metadata = {}
        for line in lines[1:]:
            name, equals, value = line.decode("ascii", "replace").partition("=")
            if not equals:
                raise DamagedObject(f"object {key} in {self.url} is damaged (bad local header)")
            metadata[name] = value
        return lines[0][len(_ETAG) :].decode("ascii", "replace"), metadata

    def _info(self, fd: int, key: str, *, with_metadata: bool) -> ObjectInfo:
        etag, metadata = self._read_header(fd, key)
        st = os.fstat(fd)
        return ObjectInfo(
            key=key,
            size=st.st_size - HEADER_SIZE,
            etag=etag,
            metadata=metadata if with_metadata else None,
            mtime=st.st_mtime,
        )

    def _list_info(self, key: str, path: str) -> ObjectInfo | None:
        """The info of a listed object file; ``None`` if it is gone."""
        with self._os_errors("list", key):
            try:
                with _opened(path) as fd:
                    try:
                        return self._info(fd, key, with_metadata=False)
                    except DamagedObject:
                        st = os.fstat(fd)
                        return ObjectInfo(key, max(0, st.st_size - HEADER_SIZE), "", mtime=st.st_mtime)
            except FileNotFoundError:
                return None

    def _pread(self, fd: int, key: str, offset: int, length: int) -> bytes:
        chunks = []
        while length > 0:
            chunk = os.pread(fd, min(length, _CHUNK), offset)
            if not chunk:
                raise DamagedObject(f"object {key} in {self.url} is shorter than its size")
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def _write_all(self, fd: int, key: str, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        with self._os_errors("write", key):
            while view:
                written = os.pwrite(fd, view[:_CHUNK], offset)
                view = view[written:]
                offset += written

    def _copy_range(self, src_fd: int, src_off: int, dst_fd: int, dst_off: int, count: int, key: str) -> None:
        """Copy ``count`` bytes between open files, in the kernel where it
        can (copy_file_range, which may share extents on btrfs/XFS)."""
        in_kernel = True
        with self._os_errors("copy", key):
            while count > 0:
                if in_kernel:
                    try:
                        n = os.copy_file_range(src_fd, dst_fd, min(count, _CHUNK), src_off, dst_off)
                    except OSError as e:
                        if e.errno not in _NO_COPY_FILE_RANGE:
                            raise
                        in_kernel = False
                        continue
                else:
                    n = os.pwrite(dst_fd, os.pread(src_fd, min(count, _CHUNK), src_off), dst_off)
                if n == 0:
                    raise StoreError(f"object {key} in {self.url} is shorter than its size")
                src_off += n
                dst_off += n
                count -= n

    @contextlib.contextmanager
    def _temp_file(self, purpose: str, key: str) -> Iterator[tuple[int, str]]:
        """A new private file in ``tmp/`` (mode 0600) for the caller to fill
        and rename away; removed if the block raises."""
        fd, path = self._new_temp_file(purpose, key)
        try:
            with self._os_errors("write", key):
                yield fd, path
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        finally:
            os.close(fd)

    def _new_temp_file(self, purpose: str, key: str) -> tuple[int, str]:
        """A new private file in ``tmp/`` (mode 0600): its descriptor and path."""
        self._check_root()
        with self._os_errors("write", key):
            self._makedirs(self._tmp)
            return tempfile.mkstemp(prefix=purpose + "-", dir=self._tmp)

    def _install(
        self,
        tmp: str,
        path: str,
        key: str,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        retire: tuple[str, str] | None = None,
    ) -> str | None:
        """Rename the finished file ``tmp`` to the object file ``path``, if
        the conditions hold, and make that durable.  With ``retire=(upload
        directory, upload id)`` the upload ends in the same step; the
        directory to remove afterwards is returned."""
        exclusive = if_match is not None or if_none_match or retire is not None
        retired = None
        with self._locked(exclusive=exclusive):
            if if_match is not None or if_none_match:
                current = self._current_etag(path, key)
                if if_none_match and current is not None:
                    raise PreconditionFailed(f"object {key} already exists in {self.url}")
                if if_match is not None and current != if_match:
                    raise PreconditionFailed(f"object {key} in {self.url} has changed (or is gone)")
            if retire is not None and not os.path.isdir(retire[0]):
                # Aborted or completed meanwhile (both take the lock exclusively).
                raise NotFound(f"no multipart upload {retire[1]} for {key} in {self.url}")
            created = self._makedirs(os.path.dirname(path))
            os.replace(tmp, path)
            if retire is not None:
                retired = self._retire(*retire)
        for directory in created + [os.path.dirname(path)]:
            self._sync_dir(directory)
        return retired

    def _current_etag(self, path: str, key: str) -> str | None:
        """The etag of the object file ``path``; None if there is none, ""
        if its header is damaged (it exists, and matches no etag)."""
        try:
            with _opened(path) as fd:
                return self._read_header(fd, key)[0]
        except FileNotFoundError:
            return None
        except DamagedObject:
            return ""

    def _install_part(self, tmp: str, upload_dir: str, part_number: int, key: str, upload_id: str) -> None:
        try:
            os.replace(tmp, os.path.join(upload_dir, f"{part_number:05d}"))
        except FileNotFoundError:
            raise NotFound(f"no multipart upload {upload_id} for {key} in {self.url}") from None

    # -- directories and locking -------------------------------------------
    def _makedirs(self, path: str) -> list[str]:
        """Make ``path`` and its missing parents (mode 0700); return the
        parents that got a new entry, whose fsync makes the new directories
        durable.  Never makes the store's root or objects/: a store removed
        under our feet is an error, not something to recreate."""
        if path in (self.root, self._objects) or os.path.isdir(path):
            return []
        parent = os.path.dirname(path)
        created = self._makedirs(parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return created
        return created + [parent]

    def _prune(self, directory: str) -> str:
        """Remove ``directory`` and its ancestors below objects/ while they
        are empty (called with the exclusive lock held, so no writer is
        between creating a directory and renaming a file into it); return
        the deepest directory that remains."""
        while directory != self._objects:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass  # pruned already, by an earlier key of the same batch
            except OSError:
                break  # not empty
            directory = os.path.dirname(directory)
        return directory

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        self._check_root()  # (before the lock file is made: never in another directory)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- walking for list --------------------------------------------------
    def _walk(
        self, directory: str, key_base: str, prefix: str, start_after: str, stop_at_dirs: bool
    ) -> Iterator[tuple[bool, str, str]]:
        """Yield ``(is_dir, key, path)`` for the objects under ``directory``
        (whose keys start with ``key_base``) that start with ``prefix`` and
        sort after ``start_after``, in key order.  With ``stop_at_dirs``
        (delimiter '/'), a subdirectory holding such objects is yielded once,
        as ``(True, its key prefix ending in '/', path)``, not entered."""
        entries = []
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if entry.name.endswith(_DIR_SUFFIX):
                        if entry.is_dir(follow_symlinks=False):
                            entries.append((key_base + entry.name[: -len(_DIR_SUFFIX)] + "/", True, entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        entries.append((key_base + entry.name, False, entry.path))
        except FileNotFoundError:
            return  # removed by a concurrent delete
        # Sorting files by their key and directories by key + '/' is key
        # order: no other entry's keys fall between those of one directory.
        entries.sort()
        for name, is_dir, path in entries:
            if not is_dir:
                if name.startswith(prefix) and name > start_after:
                    yield False, name, path
            elif name.startswith(prefix) or prefix.startswith(name):
                if start_after >= name and not start_after.startswith(name):
                    continue  # every key under it sorts before start_after
                if stop_at_dirs and name.startswith(prefix):
                    if name > start_after and self._has_objects(path):
                        yield True, name, path
                else:
                    yield from self._walk(path, name, prefix, start_after, stop_at_dirs)

    def _has_objects(self, directory: str) -> bool:
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if entry.name.endswith(_DIR_SUFFIX):
                        if entry.is_dir(follow_symlinks=False) and self._has_objects(entry.path):
                            return True
                    elif entry.is_file(follow_symlinks=False):
                        return True
        except FileNotFoundError:
            pass
        return False

    # -- multipart uploads -------------------------------------------------
    def _upload(self, key: str, upload_id: str) -> tuple[str, dict]:
        """The directory and info of the upload ``upload_id`` of ``key``;
        NotFound if there is no such upload (or it is another key's)."""
        check_key(key)
        missing = NotFound(f"no multipart upload {upload_id} for {key} in {self.url}")
        # The id becomes a path component: accept only ids we make.
        if len(upload_id) != _UPLOAD_ID_LEN or not all(c in "0123456789abcdef" for c in upload_id):
            raise missing
        upload_dir = os.path.join(self._uploads, upload_id)
        self._check_root()
        with self._os_errors("read the multipart upload", key):
            info = self._read_info(upload_dir, upload_id)
        if info is None or info["key"] != key:
            raise missing
        return upload_dir, info

    def _read_info(self, upload_dir: str, upload_id: str) -> dict | None:
        try:
            with open(os.path.join(upload_dir, _INFO), encoding="ascii") as f:
                info = json.load(f)
            if (
                isinstance(info, dict)
                and isinstance(info.get("key"), str)
                and isinstance(info.get("metadata"), dict)
                and isinstance(info.get("initiated"), (int, float))
            ):
                return info
        except FileNotFoundError:
            return None
        except ValueError:
            pass
        raise DamagedObject(f"multipart upload {upload_id} in {self.url} is damaged (bad {_INFO})")

    def _retire(self, upload_dir: str, upload_id: str) -> str | None:
        """Move an upload's directory out of multipart/ (the lock held), so
        it ends atomically; return its new path, or None if it was gone."""
        retired = os.path.join(self._tmp, f"retired-{upload_id}-{secrets.token_hex(4)}")
        try:
            os.rename(upload_dir, retired)
        except FileNotFoundError:
            return None
        return retired

    # -- errors ------------------------------------------------------------
    @contextlib.contextmanager
    def _os_errors(self, action: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise self._error(e, action, key) from e

    def _error(self, e: OSError, action: str, key: str | None) -> StoreError:
        what = f"{action} {key}" if key else action
        return StoreError(f"local store {self.root}: cannot {what}: {e.strerror or e}")


class _LocalObjectWriter(ObjectWriter):
    """A new object file in ``tmp/``, renamed into place by :meth:`commit`
    (its header, which holds the etag and metadata, written last)."""

    def __init__(self, store: LocalStore, key: str):
        self.store = store
        self.key = key
        self._path = store._object_path(key)
        self._fd, self._tmp = store._new_temp_file("put", key)
        self._end = HEADER_SIZE

    def append(self, *data: bytes | bytearray | memoryview) -> None:
        end = self._end
        for piece in data:
            self.store._write_all(self._fd, self.key, piece, end)
            end += memoryview(piece).nbytes
        self._end = end  # (what a failed append wrote past it is cut at commit)

    @property
    def size(self) -> int:
        return self._end - HEADER_SIZE

    def truncate(self, size: int) -> None:
        check_range(0, size)
        self._end = HEADER_SIZE + min(size, self.size)  # (the file is cut to it at commit)

    def read(self, start: int, length: int) -> bytes:
        check_range(start, start + length)
        return self.store._pread(self._fd, self.key, HEADER_SIZE + start, min(length, self._end - HEADER_SIZE - start))

    def commit(
        self, metadata: dict[str, str] | None = None, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        store = self.store
        md = check_metadata(metadata)
        check_conditions(if_match, if_none_match)
        etag = secrets.token_hex(16)
        store._write_all(self._fd, self.key, store._header(etag, md), 0)
        with store._os_errors("write", self.key):
            os.ftruncate(self._fd, self._end)
            store._sync_file(self._fd)
            store._install(self._tmp, self._path, self.key, if_match=if_match, if_none_match=if_none_match)
        self._close()
        return etag

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _file_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable.  A directory removed
    meanwhile (by a delete that emptied it) needs nothing: its removal is
    made durable by whoever removed it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
