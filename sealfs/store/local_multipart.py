"""Multipart uploads to a local store.

Each upload is a directory ``multipart/<upload id>/``: its ``info.json``
(key, metadata, start time) and one file per part, named by its number and
laid out as an object file (header with the part's etag, then its bytes).
An upload directory is built in ``tmp/`` and renamed in, so it always has
its info; completing or aborting an upload moves its directory back out
(the lock held exclusively), so an upload ends once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time

from ..errors import DamagedObject, NotFound, StoreError
from .base import Upload, check_conditions, check_key, check_metadata, check_part_number, check_parts
from .local_files import HEADER_SIZE, ObjectFiles, opened

#: (The log lines of the local store keep the name of its module.)
log = logging.getLogger("sealfs.store.local")

_UPLOAD_ID_LEN = 32
_INFO = "info.json"


class LocalMultipart:
    """The multipart uploads of the store whose object files are ``files``
    (its Store methods delegate here)."""

    def __init__(self, files: ObjectFiles):
        self.files = files
        self.d = files.d
        self.url = files.url

    def create(self, key: str, metadata: dict[str, str] | None) -> str:
        d = self.d
        check_key(key)
        md = check_metadata(metadata)
        self.files.header("", md)  # refuse now metadata that could not be stored at the end
        d.check_root()
        upload_id = secrets.token_hex(_UPLOAD_ID_LEN // 2)
        info = {"key": key, "metadata": md, "initiated": time.time()}
        with d.os_errors("start a multipart upload", key):
            d.makedirs(d.tmp)
            d.makedirs(d.uploads)
            # Built aside and renamed in, so an upload directory always has its info.
            staging = tempfile.mkdtemp(prefix="upload-", dir=d.tmp)
            try:
                with open(os.path.join(staging, _INFO), "w", encoding="ascii") as f:
                    json.dump(info, f)
                os.rename(staging, os.path.join(d.uploads, upload_id))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | memoryview) -> str:
        files = self.files
        check_part_number(part_number)
        upload_dir, _info = self._upload(key, upload_id)
        etag = secrets.token_hex(16)
        with self.d.temp_file("part", key) as (fd, tmp):
            files.write_all(fd, key, files.header(etag, {}), 0)
            files.write_all(fd, key, data, HEADER_SIZE)
            self._install_part(tmp, upload_dir, part_number, key, upload_id)
        return etag

    def upload_part_copy(self, key: str, upload_id: str, part_number: int, src: str, start: int, end: int) -> str:
        files = self.files
        check_part_number(part_number)
        if not 0 <= start < end:
            raise ValueError(f"invalid source range [{start}, {end}) for a part copy")
        upload_dir, _info = self._upload(key, upload_id)
        etag = secrets.token_hex(16)
        with files.open(src) as src_fd, self.d.temp_file("part", key) as (fd, tmp):
            files.read_header(src_fd, src)
            size = os.fstat(src_fd).st_size - HEADER_SIZE
            if end > size:
                raise StoreError(f"range [{start}, {end}) is past the end of {src} ({size} bytes) in {self.url}")
            files.write_all(fd, key, files.header(etag, {}), 0)
            files.copy_range(src_fd, HEADER_SIZE + start, fd, HEADER_SIZE, end - start, src)
            self._install_part(tmp, upload_dir, part_number, key, upload_id)
        return etag

    def complete(
        self,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        if_match: str | None,
        if_none_match: bool,
        min_part_size: int,
    ) -> str:
        """The upload assembled into the object, every part but the last of
        at least ``min_part_size`` bytes."""
        files = self.files
        path = self.d.object_path(key)
        check_conditions(if_match, if_none_match)
        check_parts(parts)
        upload_dir, info = self._upload(key, upload_id)
        etag = secrets.token_hex(16)
        with contextlib.ExitStack() as stack:
            sources = []
            for i, (number, part_etag) in enumerate(parts):
                part_path = os.path.join(upload_dir, f"{number:05d}")
                try:
                    fd = stack.enter_context(opened(part_path))
                except FileNotFoundError:
                    raise StoreError(f"part {number} of the upload of {key} in {self.url} was not uploaded") from None
                if files.read_header(fd, key)[0] != part_etag:
                    raise StoreError(f"part {number} of the upload of {key} in {self.url} has changed (etag mismatch)")
                size = os.fstat(fd).st_size - HEADER_SIZE
                if size < min_part_size and i < len(parts) - 1:
                    raise StoreError(
                        f"part {number} of the upload of {key} is {size} bytes; every part but the last "
                        f"must be at least {min_part_size} bytes"
                    )
                sources.append((fd, size))
            fd, tmp = stack.enter_context(self.d.temp_file("complete", key))
            files.write_all(fd, key, files.header(etag, info["metadata"]), 0)
            offset = HEADER_SIZE
            for src_fd, size in sources:
                files.copy_range(src_fd, HEADER_SIZE, fd, offset, size, key)
                offset += size
            self.d.sync_file(fd)
            retired = files.install(
                tmp, path, key, if_match=if_match, if_none_match=if_none_match, retire=(upload_dir, upload_id)
            )
        shutil.rmtree(retired, ignore_errors=True)
        return etag

    def abort(self, key: str, upload_id: str) -> None:
        try:
            upload_dir, _info = self._upload(key, upload_id)
        except NotFound:
            return
        with self.d.os_errors("abort the multipart upload", key), self.d.locked(exclusive=True):
            retired = self.d.retire(upload_dir, upload_id)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)

    def list_uploads(self, prefix: str) -> list[Upload]:
        d = self.d
        d.check_root()
        uploads = []
        with d.os_errors("list multipart uploads"):
            try:
                names = os.listdir(d.uploads)
            except FileNotFoundError:
                return []
            for upload_id in names:
                try:
                    info = self._read_info(os.path.join(d.uploads, upload_id), upload_id)
                except DamagedObject as exc:
                    log.warning("%s (left alone)", exc)
                    continue
                if info is not None and info["key"].startswith(prefix):
                    uploads.append(Upload(info["key"], upload_id, info["initiated"]))
        uploads.sort(key=lambda u: (u.key, u.initiated))
        return uploads

    def _upload(self, key: str, upload_id: str) -> tuple[str, dict]:
        """The directory and info of the upload ``upload_id`` of ``key``;
        NotFound if there is no such upload (or it is another key's)."""
        check_key(key)
        missing = NotFound(f"no multipart upload {upload_id} for {key} in {self.url}")
        # The id becomes a path component: accept only ids we make.
        if len(upload_id) != _UPLOAD_ID_LEN or not all(c in "0123456789abcdef" for c in upload_id):
            raise missing
        upload_dir = os.path.join(self.d.uploads, upload_id)
        self.d.check_root()
        with self.d.os_errors("read the multipart upload", key):
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

    def _install_part(self, tmp: str, upload_dir: str, part_number: int, key: str, upload_id: str) -> None:
        try:
            os.replace(tmp, os.path.join(upload_dir, f"{part_number:05d}"))
        except FileNotFoundError:
            raise NotFound(f"no multipart upload {upload_id} for {key} in {self.url}") from None
