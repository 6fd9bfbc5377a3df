"""The object files of a local store: their header, reading and writing
their bytes, installing a finished file as an object, and the writer of a
new object (:class:`LocalObjectWriter`).

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
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator

from ..errors import DamagedObject, NotFound, PreconditionFailed, StoreError
from .base import ObjectInfo, ObjectWriter, check_conditions, check_metadata, check_range
from .local_dir import StoreDir

HEADER_SIZE = 4096
_MAGIC = b"sealfs-local-object 1\n"
_ETAG = b"etag "
#: Bytes moved per copy_file_range / pread call.
_CHUNK = 64 * 1024 * 1024
#: copy_file_range errors that mean "not possible here", not "failed".
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class ObjectFiles:
    """The object files in the store directory ``d``."""

    def __init__(self, d: StoreDir):
        self.d = d
        self.url = d.url

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[int]:
        """The object file of ``key``, open for reading; NotFound if none."""
        path = self.d.object_path(key)
        self.d.check_root()
        with self.d.os_errors("read", key):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(f"no object {key} in {self.url}") from None
            try:
                yield fd
            finally:
                os.close(fd)

    @staticmethod
    def header(etag: str, metadata: dict[str, str]) -> bytes:
        lines = [_MAGIC, _ETAG + etag.encode() + b"\n"]
        lines += [f"{name}={value}\n".encode("ascii") for name, value in metadata.items()]
        header = b"".join(lines) + b"\n"
        if len(header) > HEADER_SIZE:
            raise ValueError(f"user metadata with {len(metadata)} items does not fit a local object header")
        return header.ljust(HEADER_SIZE, b"\0")

    def read_header(self, fd: int, key: str) -> tuple[str, dict[str, str]]:
        """The etag and metadata of the open object file ``fd``."""
        with self.d.os_errors("read", key):
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

    def info(self, fd: int, key: str, *, with_metadata: bool) -> ObjectInfo:
        etag, metadata = self.read_header(fd, key)
        st = os.fstat(fd)
        return ObjectInfo(
            key=key,
            size=st.st_size - HEADER_SIZE,
            etag=etag,
            metadata=metadata if with_metadata else None,
            mtime=st.st_mtime,
        )

    def pread(self, fd: int, key: str, offset: int, length: int) -> bytes:
        chunks = []
        while length > 0:
            chunk = os.pread(fd, min(length, _CHUNK), offset)
            if not chunk:
                raise DamagedObject(f"object {key} in {self.url} is shorter than its size")
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def write_all(self, fd: int, key: str, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        with self.d.os_errors("write", key):
            while view:
                written = os.pwrite(fd, view[:_CHUNK], offset)
                view = view[written:]
                offset += written

    def copy_range(self, src_fd: int, src_off: int, dst_fd: int, dst_off: int, count: int, key: str) -> None:
        """Copy ``count`` bytes between open files, in the kernel where it
        can (copy_file_range, which may share extents on btrfs/XFS)."""
        in_kernel = True
        with self.d.os_errors("copy", key):
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

    def install(
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
        d = self.d
        exclusive = if_match is not None or if_none_match or retire is not None
        retired = None
        with d.locked(exclusive=exclusive):
            if if_match is not None or if_none_match:
                current = self.current_etag(path, key)
                if if_none_match and current is not None:
                    raise PreconditionFailed(f"object {key} already exists in {self.url}")
                if if_match is not None and current != if_match:
                    raise PreconditionFailed(f"object {key} in {self.url} has changed (or is gone)")
            if retire is not None and not os.path.isdir(retire[0]):
                # Aborted or completed meanwhile (both take the lock exclusively).
                raise NotFound(f"no multipart upload {retire[1]} for {key} in {self.url}")
            created = d.makedirs(os.path.dirname(path))
            os.replace(tmp, path)
            if retire is not None:
                retired = d.retire(*retire)
        for directory in created + [os.path.dirname(path)]:
            d.sync_dir(directory)
        return retired

    def current_etag(self, path: str, key: str) -> str | None:
        """The etag of the object file ``path``; None if there is none, ""
        if its header is damaged (it exists, and matches no etag)."""
        try:
            with opened(path) as fd:
                return self.read_header(fd, key)[0]
        except FileNotFoundError:
            return None
        except DamagedObject:
            return ""


class LocalObjectWriter(ObjectWriter):
    """A new object file in ``tmp/``, renamed into place by :meth:`commit`
    (its header, which holds the etag and metadata, written last)."""

    def __init__(self, files: ObjectFiles, key: str):
        self.files = files
        self.key = key
        self._path = files.d.object_path(key)
        self._fd, self._tmp = files.d.new_temp_file("put", key)
        self._end = HEADER_SIZE

    def append(self, *data: bytes | bytearray | memoryview) -> None:
        end = self._end
        for piece in data:
            self.files.write_all(self._fd, self.key, piece, end)
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
        return self.files.pread(self._fd, self.key, HEADER_SIZE + start, min(length, self._end - HEADER_SIZE - start))

    def commit(
        self, metadata: dict[str, str] | None = None, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        files = self.files
        md = check_metadata(metadata)
        check_conditions(if_match, if_none_match)
        etag = secrets.token_hex(16)
        files.write_all(self._fd, self.key, files.header(etag, md), 0)
        with files.d.os_errors("write", self.key):
            os.ftruncate(self._fd, self._end)
            files.d.sync_file(self._fd)
            files.install(self._tmp, self._path, self.key, if_match=if_match, if_none_match=if_none_match)
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
def opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
