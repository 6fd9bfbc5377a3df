"""Object stores: where a volume's encrypted objects live.

``base`` states the contract every backend keeps; ``local`` is a directory
acting as a bucket (``file:///path``), ``s3`` is S3 or an S3-compatible
server (``s3://bucket[/prefix]``).  :func:`open_store` turns a store URL and
its options into a store.  boto3 is imported only when an ``s3://`` store
is opened.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

from ..errors import UsageError
from .base import ListPage, ObjectInfo, Store, Upload

__all__ = ["STORE_OPTIONS", "ListPage", "ObjectInfo", "Store", "Upload", "open_store"]

#: The options (``-o name=value``) that configure a store; all are for s3://.
STORE_OPTIONS = ("endpoint", "region", "path_style")

_URL_FORMS = "use file:///path or s3://bucket[/prefix]"
_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# S3 bucket names: 3..63 of lowercase letters, digits, '.' and '-'.  (Older
# buckets may have other names; those need no support here.)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def open_store(url: str, options: dict[str, str] | None = None, *, create: bool = False) -> Store:
    """The store named by ``url``.

    ``file:///abs/path`` is a :class:`~sealfs.store.local.LocalStore`;
    ``create=True`` makes the directory if it is missing.  ``s3://bucket``
    or ``s3://bucket/prefix`` is an :class:`~sealfs.store.s3.S3Store` (the
    bucket must exist; ``create`` does not make it) configured by the
    options ``endpoint=URL``, ``region=NAME`` and ``path_style`` (a flag:
    present with no value, or 1/true/yes).  Options not in
    :data:`STORE_OPTIONS` are ignored, so a whole mount option dict may be
    passed.  A malformed URL or option raises UsageError; a store that
    cannot be used raises StoreError.
    """
    options = options or {}
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UsageError(f"malformed store URL: {_URL_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("file", "s3"):
        # Only the scheme is echoed: the rest could hold credentials.
        shown = f"scheme {scheme!r}" if scheme else "without a scheme"
        raise UsageError(f"unsupported store URL ({shown}): {_URL_FORMS}")
    if parts.query or parts.fragment:
        raise UsageError(f"a store URL takes no '?' or '#' part: {_URL_FORMS}")
    if "@" in parts.netloc:
        raise UsageError("a store URL must not contain credentials: the AWS credential chain provides them")
    if scheme == "file":
        return _open_local(parts.netloc, unquote(parts.path), options, create)
    return _open_s3(parts.netloc, parts.path, options)


def _open_local(host: str, path: str, options: dict[str, str], create: bool) -> Store:
    from .local import LocalStore

    if host not in ("", "localhost") or not os.path.isabs(path):
        raise UsageError("a local store URL needs an absolute path: file:///absolute/path (three slashes)")
    given = [name for name in STORE_OPTIONS if name in options]
    if given:
        raise UsageError(f"option {given[0]}= applies only to s3:// stores")
    return LocalStore(os.path.normpath(path), create=create)


def _open_s3(bucket: str, path: str, options: dict[str, str]) -> Store:
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise UsageError(f"invalid S3 bucket name {bucket!r} in the store URL: {_URL_FORMS}")
    endpoint = options.get("endpoint") or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"endpoint={endpoint} must be an http:// or https:// URL")
    path_style = options.get("path_style")
    if path_style is not None and path_style.lower() not in _TRUE | _FALSE:
        raise UsageError(f"path_style={path_style} must be one of 1/true/yes or 0/false/no")
    prefix = path.strip("/")
    from .s3 import S3Store

    try:
        return S3Store(
            bucket,
            prefix,
            endpoint=endpoint,
            region=options.get("region") or None,
            path_style=path_style is not None and path_style.lower() in _TRUE,
        )
    except ValueError as e:
        raise UsageError(f"invalid prefix {prefix!r} in the store URL: {e}") from None
