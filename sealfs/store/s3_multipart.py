"""Multipart uploads to S3, and the copies in parts of objects larger than
a single copy may be (:meth:`S3Multipart.copy_in_parts`).

Where moto (the test server) is more lenient than S3, the limits are
enforced here: part numbers 1..10000, part order.  moto ignores
``If-Match`` on CompleteMultipartUpload and ``x-amz-copy-source-if-match``
on UploadPartCopy, so those two conditions are only exercised against real
S3.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, PreconditionFailed, StoreError
from .base import MAX_PARTS, ObjectInfo, Upload, check_metadata, check_part_number, check_parts
from .s3_answers import etag_of, listed_uploads, multipart_etag, quote, upload_id_of
from .s3_requests import body

if TYPE_CHECKING:
    from .s3 import S3Store


class S3Multipart:
    """The multipart calls of ``store`` (its Store methods delegate here)."""

    def __init__(self, store: S3Store):
        self._store = store
        self._requests = store._requests

    def create(self, key: str, metadata: dict[str, str] | None) -> str:
        self._store._watch.check()
        r = self._requests
        response = r.call(
            "multipart start",
            key,
            r.client.create_multipart_upload,
            Bucket=r.bucket,
            Key=r.key(key),
            Metadata=check_metadata(metadata),
        )
        return upload_id_of(response, f"{key} in {r.url}")

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | memoryview) -> str:
        check_part_number(part_number)
        r = self._requests
        response = r.call(
            "part upload",
            key,
            r.client.upload_part,
            Bucket=r.bucket,
            Key=r.key(key),
            UploadId=upload_id,
            PartNumber=part_number,
            Body=body(data),
            upload_id=upload_id,
        )
        return etag_of(response, f"part {part_number} of {key} in {r.url}")

    def upload_part_copy(
        self, key: str, upload_id: str, part_number: int, src: str, start: int, end: int, src_etag: str | None
    ) -> str:
        """Part ``part_number`` copied from ``src[start:end]``; with
        ``src_etag``, only from that version of ``src``."""
        check_part_number(part_number)
        if not 0 <= start < end:
            raise ValueError(f"invalid source range [{start}, {end}) for a part copy")
        args: dict[str, Any] = {}
        if src_etag is not None:
            args["CopySourceIfMatch"] = quote(src_etag)
        r = self._requests
        response = r.call(
            "part copy",
            src,
            r.slow_client.upload_part_copy,
            Bucket=r.bucket,
            Key=r.key(key),
            UploadId=upload_id,
            PartNumber=part_number,
            CopySource={"Bucket": r.bucket, "Key": r.key(src)},
            CopySourceRange=f"bytes={start}-{end - 1}",
            upload_id=upload_id,
            **args,
        )
        return etag_of(response.get("CopyPartResult"), f"part {part_number} of {key} in {r.url}")

    def complete(
        self, key: str, upload_id: str, parts: list[tuple[int, str]], if_match: str | None, if_none_match: bool
    ) -> str:
        check_parts(parts)
        r = self._requests
        if if_match is not None:
            # Some S3-compatible servers (moto among them) ignore If-Match
            # on this call; look first, so that on those only the short
            # window between the two requests is unprotected.
            try:
                current = self._store.head(key).etag
            except NotFound:
                current = None
            if current != if_match:
                raise PreconditionFailed(f"{key} in {r.url} changed (etag is no longer {if_match})")
        try:
            response = r.call(
                "multipart completion",
                key,
                r.slow_client.complete_multipart_upload,
                Bucket=r.bucket,
                Key=r.key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": quote(etag)} for n, etag in parts]},
                upload_id=upload_id,
                conditional=if_match is not None,
                **r.conditions(if_match, if_none_match),
            )
        except PreconditionFailed as e:
            return self._store._own_write_after_retry(e, key, multipart_etag(parts))
        return etag_of(response, f"{key} in {r.url}")

    def abort(self, key: str, upload_id: str) -> None:
        r = self._requests
        with contextlib.suppress(NotFound):
            r.call(
                "multipart abort",
                key,
                r.client.abort_multipart_upload,
                Bucket=r.bucket,
                Key=r.key(key),
                UploadId=upload_id,
                upload_id=upload_id,
            )

    def list_uploads(self, prefix: str) -> list[Upload]:
        r = self._requests
        uploads = []
        args: dict[str, Any] = {"Bucket": r.bucket, "Prefix": r.prefix + prefix}
        while True:
            response = r.call("multipart listing", prefix or None, r.client.list_multipart_uploads, **args)
            uploads += listed_uploads(response, r.prefix, r.url)
            markers = response.get("NextKeyMarker"), response.get("NextUploadIdMarker")
            if not response.get("IsTruncated"):
                return uploads
            if not all(isinstance(m, str) for m in markers):
                raise StoreError(f"S3 listing of the multipart uploads of {r.url} has no next marker")
            args["KeyMarker"], args["UploadIdMarker"] = markers

    def copy_in_parts(self, source: ObjectInfo, dst: str, metadata: dict[str, str]) -> str:
        """A copy of ``source`` (that version of it) to ``dst``, in parts of
        the store's ``copy_part_size`` copied ``copy_threads`` at a time."""
        store = self._store
        part_size = max(store.copy_part_size, store.min_part_size, -(-source.size // MAX_PARTS))
        ranges = [(start, min(start + part_size, source.size)) for start in range(0, source.size, part_size)]
        upload_id = store.create_multipart(dst, metadata)
        try:
            with ThreadPoolExecutor(max_workers=min(store.copy_threads, len(ranges))) as pool:
                etags = list(
                    pool.map(
                        lambda i: self.upload_part_copy(dst, upload_id, i + 1, source.key, *ranges[i], source.etag),
                        range(len(ranges)),
                    )
                )
            return store.complete_multipart(dst, upload_id, list(enumerate(etags, start=1)))
        except BaseException:
            with contextlib.suppress(StoreError):
                store.abort_multipart(dst, upload_id)
            raise
