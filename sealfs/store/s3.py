"""Amazon S3 and S3-compatible servers (MinIO, Ceph RGW, moto, ...) via boto3.

Credentials come from the standard AWS chain (environment, shared config
and credentials files, SSO, container and instance roles); they are never
part of the store URL and never appear in messages.

Retries.  botocore makes the attempts; :meth:`S3Store._retry` (its
``needs-retry`` hook) decides on each failure, with exponential backoff and
full jitter (base 100 ms, or 500 ms for throttling; each wait capped at
5 s).  Retried are:

* HTTP 500, 502, 503, 504 and 429;
* the throttling codes (``SlowDown``, ``Throttling``, ``RequestLimitExceeded``
  and kin) and the transient ones (``RequestTimeout``,
  ``RequestTimeoutException``, ``PriorRequestNotComplete``);
* connection errors, connect and read timeouts raised while sending the
  request or waiting for the response's headers;

up to ``max_attempts`` attempts, and only while another attempt could end
within ``call_timeout`` seconds of the call's start (for copies and the
completion of multipart uploads, which S3 answers only when done and
which take a while for large objects: reads wait ``slow_read_timeout``,
120 s, and the bound is ``call_timeout`` plus that) (an attempt that gets
no answer lasts at most ``connect_timeout + read_timeout``).  So a call
answers or raises StoreUnavailable within ``call_timeout`` (30 s) even
when the server accepts connections and never answers (then it makes two
attempts, of 10 s each) -- unless the server keeps sending, slowly:
the timeouts bound silence, not the time a transfer takes.  Once a call
has given up without any answer from the server (it is unreachable), later
calls make one attempt each, without retries, until the server answers
again: during an outage each call fails after one attempt (at most
``connect_timeout + read_timeout``), so that an unmount with many
uploads pending does not take ``call_timeout`` per upload.  botocore's own
"standard" retries are off: their retry quota, shared by all threads, is
spent by a few calls during an outage and refills by one retry's worth
per 14 successful calls, so for a long while after the store is back
transient errors would not be retried.  Other errors (4xx) are answers,
not failures, and are not retried.  botocore does *not* retry a body that
breaks off while it is being read (a reset connection, a short read, a
read timeout mid-body): :meth:`S3Store._get` retries those itself.

A conditional write (``If-Match``, ``If-None-Match``) is not idempotent:
when an attempt was carried out but its answer was lost (a reset
connection, a read timeout), botocore's next attempt finds the object
already changed -- by that very write -- and gets 412.  So a 412 that
comes after a retry is checked: if the object now holds exactly what this
call wrote (the etag S3 computes for these bytes, or for these parts, and
for a PUT the same user metadata and size), the write is reported as done.
sealfs's metadata is sealed with a fresh nonce on every write, so another
writer's object cannot match.  (Where the etag is not an MD5, as with
SSE-KMS, no object matches and the 412 stands: a spurious conflict, never
a lost one.)

Etags are handed to callers without S3's quotes and sent back quoted, as
HTTP's If-Match wants them.  A 409 ``ConditionalRequestConflict`` (a
conditional write raced another) is a lost conditional write, like 412.

Answers that do not parse.  An answer about one object (HEAD, GET, the
answer to a write) whose ETag, Last-Modified, Content-Length,
Content-Range or user metadata does not parse raises DamagedObject, an
integrity error of that object, never a KeyError or ValueError: botocore's
parser is given :class:`_Parser`, which keeps a number or date that does
not parse as None, and each field is checked here.  In a listing, such an
entry is given with what parses (size -1, etag "" when unknown: a caller
that needs them reads the object) and one without a usable key is left
out, each with a log line, so one bad entry never fails a listing.

A bucket deleted and made again.  See :meth:`S3Store.watch`: once a
volume is opened, the store checks the volume config whenever an answer
could come from a new, empty bucket of the same name, and before every
write that could create an object there.

Where moto (the test server) is more lenient than S3, the limits are
enforced here: user metadata size (:func:`~sealfs.store.base.check_metadata`),
part numbers 1..10000, part order.  moto ignores ``If-Match`` on
CompleteMultipartUpload and ``x-amz-copy-source-if-match`` on UploadPartCopy,
so those two conditions are only exercised against real S3.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import logging
import random
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import botocore.exceptions as bce
import botocore.parsers
import botocore.session
import urllib3.exceptions
from botocore.config import Config

from ..errors import DamagedObject, NotFound, PreconditionFailed, StoreError, StoreUnavailable
from .base import (
    MAX_KEY_BYTES,
    MAX_PARTS,
    ListPage,
    ObjectInfo,
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

#: Error codes meaning the credentials are wrong or lack a permission.
_ACCESS_CODES = {
    "AccessDenied": "access denied",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "InvalidAccessKeyId": "the AWS access key id is not known to the server",
    "SignatureDoesNotMatch": "the AWS secret access key does not match the access key id",
    "ExpiredToken": "the AWS session token has expired",
    "InvalidToken": "the AWS session token is not valid",
    "TokenRefreshRequired": "the AWS session token must be refreshed",
}
#: Codes of a server too busy for the rate of requests: back off longer.
_THROTTLING_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
}
#: Codes of failures that are retried (see "Retries" above).
_RETRIED_CODES = _THROTTLING_CODES | {
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "ServiceUnavailable",
    "InternalError",
}
#: Errors raised while reading a response body, which botocore does not retry.
_BODY_ERRORS = (
    bce.IncompleteReadError,
    bce.ResponseStreamingError,
    bce.ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
)


class _RangeNotSatisfiable(StoreError):
    """416: the object exists and the range starts at or past its end."""


class _Stream:
    """A GetObject body read in pieces; a body that breaks off is a
    StoreUnavailable (the caller falls back to ranged reads, which retry)."""

    def __init__(self, body, key: str, url: str):
        self._body = body
        self._what = f"{key} in {url}"

    def read(self, n: int) -> bytes:
        if self._body is None:
            return b""
        try:
            return self._body.read(n)
        except _BODY_ERRORS as e:
            raise StoreUnavailable(f"reading {self._what} broke off ({type(e).__name__})") from e

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


class _Parser(botocore.parsers.RestXMLParser):
    """botocore's S3 answer parser, except that a number or a date that
    does not parse is kept as None instead of failing the whole answer: a
    listing with one garbled entry still lists the others, and S3Store
    checks each field it uses (see :func:`_info_fields`)."""

    def _handle_integer(self, shape, text):
        try:
            return super()._handle_integer(shape, text)
        except (ValueError, TypeError):
            return None

    _handle_long = _handle_integer

    def _handle_timestamp(self, shape, text):
        # (RuntimeError: botocore's "Unable to calculate correct timezone
        # offset", for a number of seconds far out of range)
        try:
            return super()._handle_timestamp(shape, text)
        except (ValueError, TypeError, OverflowError, RuntimeError):
            return None


class _Parsers(botocore.parsers.ResponseParserFactory):
    def create_parser(self, protocol_name):
        if protocol_name == "rest-xml":
            return _Parser(**self._defaults)
        return super().create_parser(protocol_name)


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
    "Retries" above).
    """

    #: Part size of a server-side copy of an object over ``max_put_size``.
    copy_part_size = 512 * 1024 * 1024
    #: Parts of such a copy that run at once.
    copy_threads = 4
    #: Attempts to read a GET's body that keeps breaking off, and the base
    #: of the (jittered, doubling) delay between them, in seconds.
    body_read_attempts = 4
    #: Seconds to wait for the answer to a copy or a multipart completion.
    slow_read_timeout = 120.0
    body_read_backoff = 0.1
    #: Base of the (jittered, doubling) delay between attempts of a request
    #: that failed, and of one that was throttled; the longest delay.
    retry_backoff = 0.1
    throttle_backoff = 0.5
    max_backoff = 5.0

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
        self._prefix = prefix + "/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._max_attempts = max_attempts
        self.call_timeout = call_timeout
        #: A call gave up without an answer from the server, and no answer
        #: came since: retry nothing (see "Retries" above).
        self._unreachable = False
        #: See :meth:`watch`: (key, etag, whether its bytes are ours).
        self._watched: tuple[str, str, Callable[[bytes], bool]] | None = None
        core = botocore.session.get_session()
        core.register_component("response_parser_factory", _Parsers())
        session = boto3.session.Session(botocore_session=core)

        def client(read_timeout: float, call_timeout: float):
            config = Config(
                retries={"mode": "standard", "total_max_attempts": 1},  # (see _retry)
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max_pool,
                s3={"addressing_style": "path"} if path_style else None,
            )
            try:
                c = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
            except bce.ProfileNotFound as e:
                raise StoreError(f"AWS profile {e.kwargs.get('profile')!r} is not configured") from e
            except (bce.BotoCoreError, ValueError) as e:
                raise StoreError(f"cannot set up an S3 client for {self.url}: {type(e).__name__}") from e
            c.meta.events.register("before-call.s3", self._started, unique_id="sealfs-call-start")
            retry = functools.partial(
                self._retry, attempt_timeout=connect_timeout + read_timeout, call_timeout=call_timeout
            )
            c.meta.events.register("needs-retry.s3", retry, unique_id="sealfs-retry")
            return c

        self._client = client(read_timeout, call_timeout)
        #: For the calls S3 answers only once it has done the work: copies
        #: and the completion of multipart uploads, which take a while for
        #: large objects (a server is silent meanwhile, or sends spaces).
        self._slow_client = client(
            max(read_timeout, self.slow_read_timeout), call_timeout + max(read_timeout, self.slow_read_timeout)
        )
        self.endpoint = self._client.meta.endpoint_url

    def check(self) -> None:
        """Raise a clear StoreError unless the bucket exists and the
        credentials may use it (HeadBucket)."""
        self._call("bucket check", None, self._client.head_bucket, Bucket=self.bucket, bucket_call=True)

    def close(self) -> None:
        self._client.close()
        self._slow_client.close()

    def watch(self, key: str, etag: str, ours: Callable[[bytes], bool]) -> None:
        """See :meth:`Store.watch`.  The check is one HEAD of ``key`` (and a
        GET when its etag changed, by a key command): made on a missing
        object, a lost conditional write, an empty first listing page, and
        before every write not conditional on an etag (new files,
        directories and symlinks, times records, overflow metadata,
        multipart uploads)."""
        self._watched = (key, etag, ours)

    def _check_watched(self) -> None:
        watched = self._watched
        if watched is None:
            return
        key, etag, ours = watched
        gone = (
            f"{self.url} no longer holds the volume this store was opened with (its {key} is "
            "{}): refusing to use it, so as not to read an empty volume or write into another bucket"
        )
        try:
            info = self.head(key)
            if info.etag != etag:
                data, info = self.get_object(key)
                if not ours(data):
                    raise StoreUnavailable(gone.format("another volume's"))
                self._watched = (key, info.etag, ours)
        except NotFound:
            raise StoreUnavailable(gone.format("gone: the bucket was emptied, or deleted and made again")) from None
        except DamagedObject:
            raise StoreUnavailable(gone.format("damaged")) from None

    # -- reading -----------------------------------------------------------
    def get(self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None) -> bytes:
        check_range(start, end)
        if end == start:
            info = self.head(key)  # HTTP cannot ask for no bytes; still report a missing key
            if if_match is not None and info.etag != if_match:
                raise PreconditionFailed(f"{key} in {self.url} changed (etag is no longer {if_match})")
            return b""
        cond = {"IfMatch": _quote(if_match)} if if_match is not None else {}
        if start == 0 and end is None:
            return self._get(key, **cond)[0]
        byte_range = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        try:
            return self._get(key, Range=byte_range, **cond)[0]
        except _RangeNotSatisfiable:
            return b""

    def get_stream(self, key: str, start: int = 0, *, if_match: str | None = None) -> _Stream:
        check_range(start, None)
        args: dict[str, Any] = {"Range": f"bytes={start}-"}
        if if_match is not None:
            args["IfMatch"] = _quote(if_match)
        try:
            response = self._call("read", key, self._client.get_object, Bucket=self.bucket, Key=self._key(key), **args)
        except _RangeNotSatisfiable:
            return _Stream(None, key, self.url)
        return _Stream(response["Body"], key, self.url)

    def get_object(self, key: str, limit: int | None = None) -> tuple[bytes, ObjectInfo]:
        args: dict[str, Any] = {}
        if limit is not None:
            check_range(0, limit)
            args["Range"] = f"bytes=0-{limit - 1}" if limit else "bytes=0-0"
        try:
            data, response = self._get(key, **args)
        except _RangeNotSatisfiable:  # an empty object
            return b"", self.head(key)
        return data[:limit], self._info(key, response, with_metadata=True)

    def head(self, key: str) -> ObjectInfo:
        response = self._call("lookup", key, self._client.head_object, Bucket=self.bucket, Key=self._key(key))
        return self._info(key, response, with_metadata=True)

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
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self._prefix + prefix,
            "MaxKeys": min(max_keys, 1000),
            # (asked for here, not left to botocore, which would decode the
            # keys itself and fail the whole listing on an entry with none)
            "EncodingType": "url",
        }
        if delimiter is not None:
            args["Delimiter"] = delimiter
        if token is not None:
            args["ContinuationToken"] = token
        response = self._call("listing", prefix or None, self._client.list_objects_v2, **args)
        page = ListPage(
            objects=[o for o in map(self._listed, response.get("Contents") or []) if o is not None],
            prefixes=[p for p in (self._listed_prefix(p) for p in response.get("CommonPrefixes") or []) if p],
            next_token=response.get("NextContinuationToken") if response.get("IsTruncated") else None,
        )
        if not page.objects and not page.prefixes and token is None:
            self._check_watched()  # (an empty answer: maybe a bucket made again, empty)
        return page

    def _listed(self, o: dict) -> ObjectInfo | None:
        """One object of a listing.  Its fields that do not parse are not
        the listing's failure: a key that does not parse is left out (with a
        log line), other fields are given as unknown (size -1, etag "",
        mtime 0), so that a caller that needs them reads the object, which
        fails alone if it is damaged."""
        key = self._unprefixed(o.get("Key"))
        if key is None:
            log.warning("S3 listing of %s has an entry with no valid key (left out)", self.url)
            return None
        try:
            return ObjectInfo(key=key, **_info_fields(o, "Size", "listing entry"))
        except DamagedObject as exc:
            log.warning("S3 listing of %s: object %s: %s (read it to check it)", self.url, key, exc)
            size = _size_field(o.get("Size"))
            return ObjectInfo(
                key=key,
                size=-1 if size is None else size,
                etag=_etag_field(o.get("ETag")) or "",
                mtime=_mtime_field(o.get("LastModified")) or 0.0,
            )

    def _listed_prefix(self, p: dict) -> str | None:
        text = self._unprefixed(p.get("Prefix"))
        if text is None:
            log.warning("S3 listing of %s has a common prefix that is not valid (left out)", self.url)
        return text

    def _unprefixed(self, text: object) -> str | None:
        """A key or common prefix of a listing (URL-encoded: see
        ``EncodingType`` in :meth:`list`) without this store's prefix;
        None if it is not a string under the prefix, or is the prefix."""
        text = urllib.parse.unquote(text) if isinstance(text, str) else None
        if text is None or not text.startswith(self._prefix) or len(text) == len(self._prefix):
            return None
        return text[len(self._prefix) :]

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
        args = {"Bucket": self.bucket, "Key": self._key(key), "Metadata": check_metadata(metadata)}
        args |= self._conditions(if_match, if_none_match)
        if len(data) > self.max_put_size:
            raise ValueError(f"{len(data)} bytes exceed the single-put limit of {self.max_put_size}")
        if if_match is None:
            self._check_watched()
        try:
            response = self._call(
                "write", key, self._client.put_object, Body=_body(data), conditional=if_match is not None, **args
            )
        except PreconditionFailed as e:
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            return self._own_write_after_retry(e, key, md5, args["Metadata"], len(data))
        return _etag_of(response, f"{key} in {self.url}")

    def copy(self, src: str, dst: str, metadata: dict[str, str], *, if_match: str | None = None) -> str:
        """Server-side copy.  Above ``max_put_size`` (S3: 5 GiB) the copy is
        a multipart upload of ``copy_part_size`` parts copied from one
        version of ``src``; if ``src`` is replaced meanwhile the copy fails
        with PreconditionFailed instead of mixing versions."""
        dst_key = self._key(dst)
        md = check_metadata(metadata)
        source = self.head(src)
        if if_match is not None and source.etag != if_match:
            raise PreconditionFailed(f"{src} in {self.url} changed (etag is no longer {if_match})")
        if source.size > self.max_put_size:
            return self._copy_in_parts(source, dst, md)
        response = self._call(
            "copy",
            src,
            self._slow_client.copy_object,
            Bucket=self.bucket,
            Key=dst_key,
            CopySource={"Bucket": self.bucket, "Key": self._key(src)},
            CopySourceIfMatch=_quote(source.etag),  # (the version looked at, whatever if_match)
            Metadata=md,
            MetadataDirective="REPLACE",
        )
        return _etag_of(response.get("CopyObjectResult"), f"{dst} in {self.url}")

    def delete(self, key: str) -> None:
        self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def delete_many(self, keys: list[str]) -> None:
        full_keys = [self._key(key) for key in keys]
        for i in range(0, len(full_keys), 1000):
            batch = full_keys[i : i + 1000]
            response = self._call(
                "delete",
                None,
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StoreError(
                    f"S3 did not delete {len(errors)} of {len(batch)} objects in {self.url} "
                    f"(first: {first['Key'][len(self._prefix) :]}: {first.get('Code', '?')})"
                )

    # -- multipart ---------------------------------------------------------
    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        self._check_watched()
        response = self._call(
            "multipart start",
            key,
            self._client.create_multipart_upload,
            Bucket=self.bucket,
            Key=self._key(key),
            Metadata=check_metadata(metadata),
        )
        upload_id = response.get("UploadId")
        if not isinstance(upload_id, str) or not upload_id:
            raise DamagedObject(f"{key} in {self.url}: S3's answer to a multipart start has no upload id")
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | memoryview) -> str:
        check_part_number(part_number)
        response = self._call(
            "part upload",
            key,
            self._client.upload_part,
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            PartNumber=part_number,
            Body=_body(data),
            upload_id=upload_id,
        )
        return _etag_of(response, f"part {part_number} of {key} in {self.url}")

    def upload_part_copy(self, key: str, upload_id: str, part_number: int, src: str, start: int, end: int) -> str:
        return self._upload_part_copy(key, upload_id, part_number, src, start, end, None)

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        check_parts(parts)
        if if_match is not None:
            # Some S3-compatible servers (moto among them) ignore If-Match
            # on this call; look first, so that on those only the short
            # window between the two requests is unprotected.
            try:
                current = self.head(key).etag
            except NotFound:
                current = None
            if current != if_match:
                raise PreconditionFailed(f"{key} in {self.url} changed (etag is no longer {if_match})")
        try:
            response = self._call(
                "multipart completion",
                key,
                self._slow_client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": _quote(etag)} for n, etag in parts]},
                upload_id=upload_id,
                conditional=if_match is not None,
                **self._conditions(if_match, if_none_match),
            )
        except PreconditionFailed as e:
            return self._own_write_after_retry(e, key, _multipart_etag(parts))
        return _etag_of(response, f"{key} in {self.url}")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                "multipart abort",
                key,
                self._client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                upload_id=upload_id,
            )

    def list_multipart_uploads(self, prefix: str = "") -> list[Upload]:
        uploads = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._prefix + prefix}
        while True:
            response = self._call("multipart listing", prefix or None, self._client.list_multipart_uploads, **args)
            for u in response.get("Uploads") or []:
                key, upload_id, initiated = u.get("Key"), u.get("UploadId"), u.get("Initiated")
                if (
                    isinstance(key, str)
                    and key.startswith(self._prefix)
                    and isinstance(upload_id, str)
                    and upload_id
                    and hasattr(initiated, "timestamp")
                ):
                    uploads.append(Upload(key[len(self._prefix) :], upload_id, initiated.timestamp()))
                else:
                    log.warning(
                        "S3 listing of the multipart uploads of %s has an entry that does not parse (left out)",
                        self.url,
                    )
            markers = response.get("NextKeyMarker"), response.get("NextUploadIdMarker")
            if not response.get("IsTruncated"):
                return uploads
            if not all(isinstance(m, str) for m in markers):
                raise StoreError(f"S3 listing of the multipart uploads of {self.url} has no next marker")
            args["KeyMarker"], args["UploadIdMarker"] = markers

    # -- helpers -----------------------------------------------------------
    def _key(self, key: str) -> str:
        full = self._prefix + check_key(key)
        if len(full) > MAX_KEY_BYTES:
            raise ValueError(f"object key {key!r} with the store prefix exceeds {MAX_KEY_BYTES} bytes")
        return full

    @staticmethod
    def _conditions(if_match: str | None, if_none_match: bool) -> dict[str, str]:
        check_conditions(if_match, if_none_match)
        if if_none_match:
            return {"IfNoneMatch": "*"}
        if if_match is not None:
            return {"IfMatch": _quote(if_match)}
        return {}

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

    def _info(self, key: str, response: dict, *, with_metadata: bool) -> ObjectInfo:
        """The info of ``key`` from the answer to a HEAD or GET of it;
        DamagedObject if a field does not parse (it concerns that object
        alone)."""
        what = f"object {key} in {self.url}"
        if "ContentRange" in response:  # (a ranged GET: the whole object's size)
            whole = response["ContentRange"]
            total = whole.rpartition("/")[2] if isinstance(whole, str) else ""
            if not (total.isascii() and total.isdigit()):
                raise DamagedObject(f"{what}: S3 gave a Content-Range that does not parse")
            response = {**response, "ContentLength": int(total)}
        metadata = response.get("Metadata", {})
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise DamagedObject(f"{what}: S3 gave user metadata that does not parse")
        return ObjectInfo(
            key=key,
            **_info_fields(response, "ContentLength", what),
            metadata=dict(metadata) if with_metadata else None,
            checked=_server_time(response),
        )

    def _get(self, key: str, **args: Any) -> tuple[bytes, dict]:
        """GetObject and read its body, retrying a body that breaks off
        (each attempt re-requests the same bytes, so the result is one
        response's body, never a splice of two)."""
        full_key = self._key(key)
        attempt = 1
        while True:
            response = self._call("read", key, self._client.get_object, Bucket=self.bucket, Key=full_key, **args)
            body = response["Body"]
            try:
                return body.read(), response
            except _BODY_ERRORS as e:
                if attempt == self.body_read_attempts:
                    raise StoreUnavailable(
                        f"reading {key} from {self.url} kept breaking off ({type(e).__name__} after {attempt} attempts)"
                    ) from e
            finally:
                body.close()
            time.sleep(random.uniform(0, self.body_read_backoff * 2**attempt))
            attempt += 1

    def _upload_part_copy(
        self, key: str, upload_id: str, part_number: int, src: str, start: int, end: int, src_etag: str | None
    ) -> str:
        check_part_number(part_number)
        if not 0 <= start < end:
            raise ValueError(f"invalid source range [{start}, {end}) for a part copy")
        args: dict[str, Any] = {}
        if src_etag is not None:
            args["CopySourceIfMatch"] = _quote(src_etag)
        response = self._call(
            "part copy",
            src,
            self._slow_client.upload_part_copy,
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            PartNumber=part_number,
            CopySource={"Bucket": self.bucket, "Key": self._key(src)},
            CopySourceRange=f"bytes={start}-{end - 1}",
            upload_id=upload_id,
            **args,
        )
        return _etag_of(response.get("CopyPartResult"), f"part {part_number} of {key} in {self.url}")

    def _copy_in_parts(self, source: ObjectInfo, dst: str, metadata: dict[str, str]) -> str:
        part_size = max(self.copy_part_size, self.min_part_size, -(-source.size // MAX_PARTS))
        ranges = [(start, min(start + part_size, source.size)) for start in range(0, source.size, part_size)]
        upload_id = self.create_multipart(dst, metadata)
        try:
            with ThreadPoolExecutor(max_workers=min(self.copy_threads, len(ranges))) as pool:
                etags = list(
                    pool.map(
                        lambda i: self._upload_part_copy(dst, upload_id, i + 1, source.key, *ranges[i], source.etag),
                        range(len(ranges)),
                    )
                )
            return self.complete_multipart(dst, upload_id, list(enumerate(etags, start=1)))
        except BaseException:
            with contextlib.suppress(StoreError):
                self.abort_multipart(dst, upload_id)
            raise

    @staticmethod
    def _started(context: dict, **_: Any) -> None:
        """botocore's ``before-call`` hook (once per call, before its first
        attempt): note the time, for :meth:`_retry`."""
        context["sealfs_started"] = time.monotonic()

    def _retry(
        self,
        attempts: int,
        response: tuple | None = None,
        caught_exception: Exception | None = None,
        request_dict: dict | None = None,
        *,
        attempt_timeout: float,
        call_timeout: float,
        **_: Any,
    ) -> float | None:
        """botocore's ``needs-retry`` hook, after each attempt: the seconds
        to wait before the next attempt, or None for no more attempts (see
        "Retries" above)."""
        if caught_exception is not None:
            if self._unreachable or not isinstance(caught_exception, (bce.ConnectionError, bce.HTTPClientError)):
                return None
            throttled = False
        elif response is not None:
            self._unreachable = False
            status = response[0].status_code
            code = str(response[1].get("Error", {}).get("Code", ""))
            if status not in (429, 500, 502, 503, 504) and code not in _RETRIED_CODES:
                return None
            throttled = status == 429 or code in _THROTTLING_CODES
        else:
            return None
        if attempts >= self._max_attempts:
            return None
        base = self.throttle_backoff if throttled else self.retry_backoff
        delay = random.uniform(0, min(self.max_backoff, base * 2 ** (attempts - 1)))
        started = (request_dict or {}).get("context", {}).get("sealfs_started")
        elapsed = time.monotonic() - started if started is not None else 0.0
        if elapsed + delay + attempt_timeout > call_timeout:
            return None
        return delay

    def _call(
        self,
        action: str,
        key: str | None,
        method: Callable[..., dict],
        *,
        upload_id: str | None = None,
        conditional: bool = False,
        bucket_call: bool = False,
        **args: Any,
    ) -> dict:
        """``method(**args)`` with its exceptions turned into sealfs errors.
        ``key`` (and ``upload_id``) name what the call is about in messages;
        ``conditional`` (an If-Match write): a 404 means the write lost, not
        a missing key; ``bucket_call``: a 404 means the bucket is missing."""
        started = time.monotonic()
        try:
            return method(**args)
        except bce.ClientError as e:
            error = self._client_error(e, action, key, upload_id, conditional, bucket_call, time.monotonic() - started)
            watched = self._watched
            if isinstance(error, (NotFound, PreconditionFailed)) and watched is not None and key != watched[0]:
                self._check_watched()
            raise error from e
        except bce.NoCredentialsError as e:
            raise StoreError(
                "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "configure a profile, or run with an instance role)"
            ) from e
        except bce.PartialCredentialsError as e:
            raise StoreError(f"incomplete AWS credentials: {e.kwargs.get('cred_var')} is missing") from e
        except (bce.ConnectionError, bce.HTTPClientError) as e:
            self._unreachable = True
            raise StoreUnavailable(
                f"cannot reach S3 endpoint {self.endpoint} ({type(e).__name__}, "
                f"after {time.monotonic() - started:.1f} s of attempts)"
            ) from e
        except bce.ParamValidationError:
            raise  # a bug in the caller, not a store failure
        except bce.BotoCoreError as e:
            what = f"{key} in {self.url}" if key is not None else self.url
            raise StoreError(f"S3 {action} of {what} failed: {type(e).__name__}") from e

    def _client_error(
        self,
        e: bce.ClientError,
        action: str,
        key: str | None,
        upload_id: str | None,
        conditional: bool,
        bucket_call: bool,
        elapsed: float = 0.0,
    ) -> StoreError:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        what = f"{key} in {self.url}" if key is not None else self.url
        if code == "NoSuchBucket" or (bucket_call and status == 404):
            return StoreError(f"bucket '{self.bucket}' does not exist at {self.endpoint}")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
            return PreconditionFailed(
                f"conditional {action} of {what} failed: the object changed or already exists ({code or status})"
            )
        if code == "NoSuchUpload":
            return NotFound(f"no multipart upload {upload_id} for {what}")
        if code in ("NoSuchKey", "NotFound") or status == 404:
            if conditional:
                return PreconditionFailed(f"conditional {action} of {what} failed: the object is gone")
            return NotFound(f"no object {what}")
        if code == "InvalidRange" or status == 416:
            return _RangeNotSatisfiable(f"S3 {action} of {what} failed: the range starts past the end")
        if code in _ACCESS_CODES or status == 403:
            reason = _ACCESS_CODES.get(code, "access denied")
            return StoreError(
                f"S3 refused the {action} of {what}: {reason} ({code or status}); "
                "check the AWS credentials and the bucket's permissions"
            )
        if code in _RETRIED_CODES or status >= 500:
            return StoreUnavailable(
                f"S3 at {self.endpoint} kept failing ({code or status}) "
                f"for {elapsed:.1f} s of attempts ({action} of {what})"
            )
        message = " ".join(str(error.get("Message", "")).split())[:200]
        return StoreError(f"S3 {action} of {what} failed: {code or status} {message}".rstrip())


def _body(data: bytes | bytearray | memoryview) -> bytes | bytearray:
    """botocore takes bytes, bytearray or a file, not a memoryview."""
    return bytes(data) if isinstance(data, memoryview) else data


def _multipart_etag(parts: list[tuple[int, str]]) -> str | None:
    """The etag S3 gives an object assembled from ``parts``: the MD5 of
    the parts' binary MD5s, a dash, the number of parts (None when a part's
    etag is not an MD5)."""
    try:
        md5s = b"".join(bytes.fromhex(etag) for _, etag in parts)
    except ValueError:
        return None
    if len(md5s) != 16 * len(parts):
        return None
    return f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(parts)}"


def _size_field(value: object) -> int | None:
    """A size from an S3 answer, or None if it does not parse (see _Parser)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _etag_field(value: object) -> str | None:
    if not isinstance(value, str) or not value.isprintable() or not _unquote(value):
        return None
    return _unquote(value)


def _mtime_field(value: object) -> float | None:
    try:
        return value.timestamp()  # type: ignore[union-attr]
    except (AttributeError, ValueError, OverflowError, OSError):
        return None


def _info_fields(answer: dict, size_field: str, what: str) -> dict:
    """size, etag and mtime of one object from an S3 answer (a HEAD or
    GET's, or a listing entry), checked: DamagedObject if one does not
    parse."""
    fields = {
        "size": _size_field(answer.get(size_field)),
        "etag": _etag_field(answer.get("ETag")),
        "mtime": _mtime_field(answer.get("LastModified")),
    }
    for name, header in (("size", "size"), ("etag", "ETag"), ("mtime", "Last-Modified time")):
        if fields[name] is None:
            raise DamagedObject(f"{what}: S3 gave a{'n' if header[0] == 'E' else ''} {header} that does not parse")
    return fields


def _etag_of(answer: dict | None, what: str) -> str:
    """The etag of the object a write made, from S3's answer to it."""
    etag = _etag_field(answer.get("ETag")) if isinstance(answer, dict) else None
    if etag is None:
        raise DamagedObject(f"{what}: S3's answer to the write gave an ETag that does not parse")
    return etag


def _quote(etag: str) -> str:
    return f'"{etag}"'


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _server_time(response: dict) -> float | None:
    """The server's clock when it answered (its Date header), if it says."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return email.utils.parsedate_to_datetime(date).timestamp() if date else None
    except (TypeError, ValueError):
        return None
