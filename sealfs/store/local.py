"""A local directory acting as a bucket: the embedded default store.

Layout of the store directory (``file:///path``)::

    objects/      one file per object
    tmp/          files being written; renamed into objects/ when complete
    multipart/    one directory per multipart upload: info.json and parts
    lock          flock(2)ed by writers (see "Concurrency" below)

:class:`LocalStore` keeps the Store methods; its collaborators have one job
each: ``local_dir`` (the directory: paths and key segments, the check
that it is the directory opened, the lock, tmp/, syncing, errors),
``local_files`` (object files: their header, their bytes, installing one),
``local_list`` (listing) and ``local_multipart`` (multipart uploads).

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

import os
from typing import BinaryIO

from ..errors import NotFound, PreconditionFailed
from .base import (
    S3_MIN_PART_SIZE,
    ListPage,
    ObjectInfo,
    Store,
    Upload,
    check_metadata,
    check_range,
)
from .local_dir import StoreDir
from .local_files import HEADER_SIZE, LocalObjectWriter, ObjectFiles
from .local_list import list_page
from .local_multipart import LocalMultipart


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
        self._dir = StoreDir(self.root, self.url, create=create)
        self._files = ObjectFiles(self._dir)
        self._multipart = LocalMultipart(self._files)
        self.check()

    def defer_sync(self) -> None:
        self._dir.defer_sync()

    def sync(self) -> None:
        self._dir.sync()

    def check(self) -> None:
        self._dir.check()

    # -- reading -----------------------------------------------------------
    def get(self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None) -> bytes:
        check_range(start, end)
        with self._files.open(key) as fd:
            etag, _ = self._files.read_header(fd, key)
            if if_match is not None and etag != if_match:
                raise PreconditionFailed(f"{key} in {self.url} changed (etag is no longer {if_match})")
            size = os.fstat(fd).st_size - HEADER_SIZE
            stop = size if end is None else min(end, size)
            if start >= stop:
                return b""
            return self._files.pread(fd, key, HEADER_SIZE + start, stop - start)

    def get_stream(self, key: str, start: int = 0, *, if_match: str | None = None) -> BinaryIO:
        check_range(start, None)
        path = self._dir.object_path(key)
        self._dir.check_root()
        with self._dir.os_errors("read", key):
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                raise NotFound(f"no object {key} in {self.url}") from None
        try:
            etag, _ = self._files.read_header(f.fileno(), key)
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
        with self._files.open(key) as fd:
            info = self._files.info(fd, key, with_metadata=True)
            return self._files.pread(fd, key, HEADER_SIZE, info.size if limit is None else min(limit, info.size)), info

    def head(self, key: str) -> ObjectInfo:
        with self._files.open(key) as fd:
            return self._files.info(fd, key, with_metadata=True)

    def list(
        self,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """See :func:`~sealfs.store.local_list.list_page`."""
        return list_page(self._files, prefix, delimiter, token, max_keys)

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

    def open_put(self, key: str) -> LocalObjectWriter:
        return LocalObjectWriter(self._files, key)

    def temporaries(self) -> list[tuple[str, float]]:
        return self._dir.temporaries()

    def remove_temporary(self, name: str) -> None:
        self._dir.remove_temporary(name)

    def copy(self, src: str, dst: str, metadata: dict[str, str], *, if_match: str | None = None) -> str:
        files = self._files
        dst_path = self._dir.object_path(dst)
        md = check_metadata(metadata)
        with files.open(src) as src_fd, self._dir.temp_file("copy", dst) as (fd, tmp):
            # The same bytes keep the same etag, as on S3 (whose etag of a
            # single-part object is their MD5): readers holding the etag of
            # the content are not disturbed by a metadata change.
            etag, _ = files.read_header(src_fd, src)
            if if_match is not None and etag != if_match:
                raise PreconditionFailed(f"{src} in {self.url} changed (etag is no longer {if_match})")
            header = files.header(etag, md)
            size = os.fstat(src_fd).st_size - HEADER_SIZE
            files.write_all(fd, dst, header, 0)
            files.copy_range(src_fd, HEADER_SIZE, fd, HEADER_SIZE, size, src)
            if src == dst:  # a metadata change replaces the object as a put does
                self._dir.sync_file(fd)
            else:  # a rename is a copy and a delete: a power loss must not keep the delete and lose the copy
                os.fsync(fd)
            # (in place: only over the version read, under the store's lock)
            files.install(tmp, dst_path, dst, if_match=if_match if src == dst else None)
        return etag

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: list[str]) -> None:
        d = self._dir
        paths = [d.object_path(key) for key in keys]
        emptied: set[str] = set()
        with d.os_errors("delete objects"):
            with d.locked(exclusive=True):
                for path in paths:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        continue
                    emptied.add(os.path.dirname(path))
                remaining = {d.prune(directory) for directory in emptied}
            for directory in remaining:
                d.sync_dir(directory)

    # -- multipart (see local_multipart) -----------------------------------
    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        return self._multipart.create(key, metadata)

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | memoryview) -> str:
        return self._multipart.upload_part(key, upload_id, part_number, data)

    def upload_part_copy(self, key: str, upload_id: str, part_number: int, src: str, start: int, end: int) -> str:
        return self._multipart.upload_part_copy(key, upload_id, part_number, src, start, end)

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        return self._multipart.complete(key, upload_id, parts, if_match, if_none_match, self.min_part_size)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._multipart.abort(key, upload_id)

    def list_multipart_uploads(self, prefix: str = "") -> list[Upload]:
        return self._multipart.list_uploads(prefix)
