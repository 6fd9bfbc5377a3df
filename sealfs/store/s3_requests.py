"""Requests to one S3 bucket: the botocore clients, their retries, and
botocore's exceptions turned into sealfs errors (:meth:`S3Requests.call`,
the one place that does it).

Retries.  botocore makes the attempts; :meth:`S3Requests._retry` (its
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
read timeout mid-body): :meth:`S3Requests.read` retries those itself.

A 409 ``ConditionalRequestConflict`` (a conditional write raced another)
is a lost conditional write, like 412.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any

import boto3
import botocore.exceptions as bce
import botocore.session
import urllib3.exceptions
from botocore.config import Config

from ..errors import NotFound, PreconditionFailed, StoreError, StoreUnavailable
from .base import MAX_KEY_BYTES, check_conditions, check_key
from .s3_answers import Parsers, quote

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


class RangeNotSatisfiable(StoreError):
    """416: the object exists and the range starts at or past its end."""


class Stream:
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


class S3Requests:
    """The requests to the objects under ``prefix`` (empty, or ending in
    '/') in ``bucket``, for the store ``url``: the arguments as for
    :class:`~sealfs.store.s3.S3Store`.  ``on_miss(key)`` is called when a
    call about ``key`` gets a 404 or a lost conditional write, before the
    error is raised (see :meth:`~sealfs.store.s3_watch.BucketWatch.after_miss`).
    """

    #: Seconds to wait for the answer to a copy or a multipart completion.
    slow_read_timeout = 120.0
    #: Attempts to read a GET's body that keeps breaking off, and the base
    #: of the (jittered, doubling) delay between them, in seconds.
    body_read_attempts = 4
    body_read_backoff = 0.1
    #: Base of the (jittered, doubling) delay between attempts of a request
    #: that failed, and of one that was throttled; the longest delay.
    retry_backoff = 0.1
    throttle_backoff = 0.5
    max_backoff = 5.0

    def __init__(
        self,
        bucket: str,
        prefix: str,
        url: str,
        *,
        endpoint: str | None,
        region: str | None,
        path_style: bool,
        max_pool: int,
        max_attempts: int,
        connect_timeout: float,
        read_timeout: float,
        call_timeout: float,
        on_miss: Callable[[str | None], None],
    ):
        self.bucket = bucket
        self.prefix = prefix
        self.url = url
        self._max_attempts = max_attempts
        self._on_miss = on_miss
        #: A call gave up without an answer from the server, and no answer
        #: came since: retry nothing (see "Retries" above).
        self._unreachable = False
        core = botocore.session.get_session()
        core.register_component("response_parser_factory", Parsers())
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

        self.client = client(read_timeout, call_timeout)
        #: For the calls S3 answers only once it has done the work: copies
        #: and the completion of multipart uploads, which take a while for
        #: large objects (a server is silent meanwhile, or sends spaces).
        self.slow_client = client(
            max(read_timeout, self.slow_read_timeout), call_timeout + max(read_timeout, self.slow_read_timeout)
        )
        self.endpoint = self.client.meta.endpoint_url

    def key(self, key: str) -> str:
        """The S3 key of the store's object ``key``."""
        full = self.prefix + check_key(key)
        if len(full) > MAX_KEY_BYTES:
            raise ValueError(f"object key {key!r} with the store prefix exceeds {MAX_KEY_BYTES} bytes")
        return full

    @staticmethod
    def conditions(if_match: str | None, if_none_match: bool) -> dict[str, str]:
        """The arguments of a write's conditions."""
        check_conditions(if_match, if_none_match)
        if if_none_match:
            return {"IfNoneMatch": "*"}
        if if_match is not None:
            return {"IfMatch": quote(if_match)}
        return {}

    def close(self) -> None:
        self.client.close()
        self.slow_client.close()

    def read(self, key: str, **args: Any) -> tuple[bytes, dict]:
        """GetObject and read its body, retrying a body that breaks off
        (each attempt re-requests the same bytes, so the result is one
        response's body, never a splice of two)."""
        full_key = self.key(key)
        attempt = 1
        while True:
            response = self.call("read", key, self.client.get_object, Bucket=self.bucket, Key=full_key, **args)
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

    def call(
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
            if isinstance(error, (NotFound, PreconditionFailed)):
                self._on_miss(key)
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
            return RangeNotSatisfiable(f"S3 {action} of {what} failed: the range starts past the end")
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


def body(data: bytes | bytearray | memoryview) -> bytes | bytearray:
    """A request body: botocore takes bytes, bytearray or a file, not a memoryview."""
    return bytes(data) if isinstance(data, memoryview) else data
