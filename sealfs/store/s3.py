"""Amazon S3 and S3-compatible servers (MinIO, Ceph RGW, moto, ...) via boto3.

Credentials come from the standard AWS chain (environment, shared config
and credentials files, SSO, container and instance roles); they are never
part of the store URL and never appear in messages.

:class:`S3Store` makes each Store call's requests, through collaborators
with one job each: ``s3_requests`` (the botocore clients, retries, errors
turned into sealfs errors), ``s3_answers`` (S3's answers read and
checked), ``s3_watch`` (the check that the bucket still holds the volume)
and ``s3_multipart`` (multipart uploads and copies in parts).

A conditional write (``If-Match``, ``If-None-Match``) is not idempotent:
when an attempt was carried out but its answer was lost (a reset
connection, a read timeout), botocore's next attempt finds the object
already changed -- by that very write -- and gets 412.  So a 412 that
comes after a retry is checked: if the object now holds exactly what this
call wrote (the etag S3 computes for these bytes, or for these parts, and
for a PUT the same user metadata and size), the write is reported as done
(:meth:`S3Store._own_write_after_retry`).  sealfs's metadata is sealed
with a fresh nonce on every write, so another writer's object cannot
match.  (Where the etag is not an MD5, as with SSE-KMS, no object matches
and the 412 stands: a spurious conflict, never a lost one.)

Where moto (the test server) is more lenient than S3, the limits are
enforced here (user metadata size: :func:`~sealfs.store.base.check_metadata`)
and in ``s3_multipart``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from ..errors import NotFound, PreconditionFailed, StoreError
from .base import (
    ListPage,
    ObjectInfo,
    Store,
    Upload,
    check_key,
    check_metadata,
    check_range,
)
from .s3_answers import etag_of, list_page, object_info, quote
from .s3_multipart import S3Multipart
from .s3_requests import RangeNotSatisfiable, S3Requests, Stream, body
from .s3_watch import BucketWatch

log = logging.getLogger(__name__)


class S3Store(Store):
    """The objects under ``prefix`` in an S3 bucket.

    ``endpoint`` is the URL of an S3-compatible server (default: AWS, in
    ``region`` or the region of the credential chain's configuration);
    ``path_style`` addresses the bucket in the path rather than the host
    name, which most servers other than AWS need.  ``max_pool`` bounds the
    connections, which should be at least the number of threads that use
    the store.  ``max_attempts``, ``connect_timeout``, ``read_timeout`` and
    ``call_timeout`` (seconds) tune how long a failing server is retried
    before calls raise :class:`~sealfs.errors.StoreUnavailable` (see
    "Retries" in ``s3_requests``).
    """

    #: Part size of a server-side copy of an object over ``max_put_size``.
    copy_part_size = 512 * 1024 * 1024
    #: Parts of such a copy that run at once.
    copy_threads = 4

    server_side_copy = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        max_pool: int = 32,
        max_attempts: int = 6,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        call_timeout: float = 30.0,
    ):
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.call_timeout = call_timeout
        self._watch = BucketWatch(self)
        self._requests = S3Requests(
            bucket,
            prefix + "/" if prefix else "",
            self.url,
            endpoint=endpoint,
            region=region,
            path_style=path_style,
            max_pool=max_pool,
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            call_timeout=call_timeout,
            on_miss=self._watch.after_miss,
        )
        self.endpoint = self._requests.endpoint
        self._multipart = S3Multipart(self)

    def check(self) -> None:
        """Raise a clear StoreError unless the bucket exists and the
        credentials may use it (HeadBucket)."""
        r = self._requests
        r.call("bucket check", None, r.client.head_bucket, Bucket=self.bucket, bucket_call=True)

    def close(self) -> None:
        self._requests.close()

    def watch(self, key: str, etag: str, ours: Callable[[bytes], bool]) -> None:
        """See :meth:`Store.watch`.  The check is one HEAD of ``key`` (and a
        GET when its etag changed, by a key command): made on a missing
        object, a lost conditional write, an empty first listing page, and
        before every write not conditional on an etag (new files,
        directories and symlinks, times records, overflow metadata,
        multipart uploads)."""
        self._watch.watch(key, etag, ours)

    # -- reading -----------------------------------------------------------
    def get(self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None) -> bytes:
        check_range(start, end)
        if end == start:
            info = self.head(key)  # HTTP cannot ask for no bytes; still report a missing key
            if if_match is not None and info.etag != if_match:
                raise PreconditionFailed(f"{key} in {self.url} changed (etag is no longer {if_match})")
            return b""
        cond = {"IfMatch": quote(if_match)} if if_match is not None else {}
        if start == 0 and end is None:
            return self._requests.read(key, **cond)[0]
        byte_range = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        try:
            return self._requests.read(key, Range=byte_range, **cond)[0]
        except RangeNotSatisfiable:
            return b""

    def get_stream(self, key: str, start: int = 0, *, if_match: str | None = None) -> Stream:
        check_range(start, None)
        args: dict[str, Any] = {"Range": f"bytes={start}-"}
        if if_match is not None:
            args["IfMatch"] = quote(if_match)
        r = self._requests
        try:
            response = r.call("read", key, r.client.get_object, Bucket=self.bucket, Key=r.key(key), **args)
        except RangeNotSatisfiable:
            return Stream(None, key, self.url)
        return Stream(response["Body"], key, self.url)

    def get_object(self, key: str, limit: int | None = None) -> tuple[bytes, ObjectInfo]:
        args: dict[str, Any] = {}
        if limit is not None:
            check_range(0, limit)
            args["Range"] = f"bytes=0-{limit - 1}" if limit else "bytes=0-0"
        try:
            data, response = self._requests.read(key, **args)
        except RangeNotSatisfiable:  # an empty object
            return b"", self.head(key)
        return data[:limit], object_info(key, response, self.url, with_metadata=True)

    def head(self, key: str) -> ObjectInfo:
        r = self._requests
        response = r.call("lookup", key, r.client.head_object, Bucket=self.bucket, Key=r.key(key))
        return object_info(key, response, self.url, with_metadata=True)

    def list(
        self,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        if delimiter == "":
            raise ValueError("the delimiter must not be empty")
        r = self._requests
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": r.prefix + prefix,
            "MaxKeys": min(max_keys, 1000),
            # (asked for here, not left to botocore, which would decode the
            # keys itself and fail the whole listing on an entry with none)
            "EncodingType": "url",
        }
        if delimiter is not None:
            args["Delimiter"] = delimiter
        if token is not None:
            args["ContinuationToken"] = token
        response = r.call("listing", prefix or None, r.client.list_objects_v2, **args)
        page = list_page(response, r.prefix, self.url)
        if not page.objects and not page.prefixes and token is None:
            self._watch.check()  # (an empty answer: maybe a bucket made again, empty)
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
        r = self._requests
        args = {"Bucket": self.bucket, "Key": r.key(key), "Metadata": check_metadata(metadata)}
        args |= r.conditions(if_match, if_none_match)
        if len(data) > self.max_put_size:
            raise ValueError(f"{len(data)} bytes exceed the single-put limit of {self.max_put_size}")
        if if_match is None:
            self._watch.check()
        try:
            response = r.call(
                "write", key, r.client.put_object, Body=body(data), conditional=if_match is not None, **args
            )
        except PreconditionFailed as e:
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            return self._own_write_after_retry(e, key, md5, args["Metadata"], len(data))
        return etag_of(response, f"{key} in {self.url}")

    def copy(self, src: str, dst: str, metadata: dict[str, str], *, if_match: str | None = None) -> str:
        """Server-side copy.  Above ``max_put_size`` (S3: 5 GiB) the copy is
        a multipart upload of ``copy_part_size`` parts copied from one
        version of ``src``; if ``src`` is replaced meanwhile the copy fails
        with PreconditionFailed instead of mixing versions."""
        r = self._requests
        dst_key = r.key(dst)
        md = check_metadata(metadata)
        source = self.head(src)
        if if_match is not None and source.etag != if_match:
            raise PreconditionFailed(f"{src} in {self.url} changed (etag is no longer {if_match})")
        if source.size > self.max_put_size:
            return self._multipart.copy_in_parts(source, dst, md)
        response = r.call(
            "copy",
            src,
            r.slow_client.copy_object,
            Bucket=self.bucket,
            Key=dst_key,
            CopySource={"Bucket": self.bucket, "Key": r.key(src)},
            CopySourceIfMatch=quote(source.etag),  # (the version looked at, whatever if_match)
            Metadata=md,
            MetadataDirective="REPLACE",
        )
        return etag_of(response.get("CopyObjectResult"), f"{dst} in {self.url}")

    def delete(self, key: str) -> None:
        r = self._requests
        r.call("delete", key, r.client.delete_object, Bucket=self.bucket, Key=r.key(key))

    def delete_many(self, keys: list[str]) -> None:
        r = self._requests
        full_keys = [r.key(key) for key in keys]
        for i in range(0, len(full_keys), 1000):
            batch = full_keys[i : i + 1000]
            response = r.call(
                "delete",
                None,
                r.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StoreError(
                    f"S3 did not delete {len(errors)} of {len(batch)} objects in {self.url} "
                    f"(first: {first['Key'][len(r.prefix) :]}: {first.get('Code', '?')})"
                )

    def _own_write_after_retry(
        self,
        lost: PreconditionFailed,
        key: str,
        etag: str | None,
        metadata: dict[str, str] | None = None,
        size: int | None = None,
    ) -> str:
        """The etag of ``key`` if a conditional write that ended in 412
        (``lost``) after a retry had in fact been done by an earlier attempt
        of the same call: the object has ``etag`` (and ``metadata`` and
        ``size`` when given).  Else ``lost`` stands: it is raised."""
        response = getattr(lost.__cause__, "response", None) or {}
        if not response.get("ResponseMetadata", {}).get("RetryAttempts") or etag is None:
            raise lost
        try:
            info = self.head(key)
        except NotFound:
            raise lost from None
        if (
            info.etag != etag
            or (metadata is not None and info.metadata != metadata)
            or (size is not None and info.size != size)
        ):
            raise lost
        log.info("a write of %s in %s was done, though its answer was lost (the retry found it done)", key, self.url)
        return info.etag

    # -- multipart (see s3_multipart) --------------------------------------
    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        return self._multipart.create(key, metadata)

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | memoryview) -> str:
        return self._multipart.upload_part(key, upload_id, part_number, data)

    def upload_part_copy(self, key: str, upload_id: str, part_number: int, src: str, start: int, end: int) -> str:
        return self._multipart.upload_part_copy(key, upload_id, part_number, src, start, end, None)

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        return self._multipart.complete(key, upload_id, parts, if_match, if_none_match)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._multipart.abort(key, upload_id)

    def list_multipart_uploads(self, prefix: str = "") -> list[Upload]:
        return self._multipart.list_uploads(prefix)
