"""S3's answers read and checked: what :class:`~sealfs.store.s3.S3Store`
takes from them, and DamagedObject where they do not parse.

An answer about one object (HEAD, GET, the answer to a write) whose ETag,
Last-Modified, Content-Length, Content-Range or user metadata does not
parse raises DamagedObject, an integrity error of that object, never a
KeyError or ValueError: botocore's parser is given :class:`_Parser`, which
keeps a number or date that does not parse as None, and each field is
checked here.  In a listing, such an entry is given with what parses (size
-1, etag "" when unknown: a caller that needs them reads the object) and
one without a usable key is left out, each with a log line, so one bad
entry never fails a listing.

Etags are handed to callers without S3's quotes and sent back quoted, as
HTTP's If-Match wants them (:func:`quote`).
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import urllib.parse

import botocore.parsers

from ..errors import DamagedObject
from .base import ListPage, ObjectInfo, Upload

#: (The log lines of the S3 store keep the name of its module.)
log = logging.getLogger("sealfs.store.s3")


class _Parser(botocore.parsers.RestXMLParser):
    """botocore's S3 answer parser, except that a number or a date that
    does not parse is kept as None instead of failing the whole answer: a
    listing with one garbled entry still lists the others, and each field
    used is checked here (see :func:`_info_fields`)."""

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


class Parsers(botocore.parsers.ResponseParserFactory):
    """botocore's parser factory, giving :class:`_Parser` for S3's answers."""

    def create_parser(self, protocol_name):
        if protocol_name == "rest-xml":
            return _Parser(**self._defaults)
        return super().create_parser(protocol_name)


def object_info(key: str, response: dict, url: str, *, with_metadata: bool) -> ObjectInfo:
    """The info of ``key`` (in the store ``url``) from the answer to a HEAD
    or GET of it; DamagedObject if a field does not parse (it concerns that
    object alone)."""
    what = f"object {key} in {url}"
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


def list_page(response: dict, prefix: str, url: str) -> ListPage:
    """The page of a ListObjectsV2 answer, under the store prefix ``prefix``
    (empty, or ending in '/') of the store ``url``."""
    return ListPage(
        objects=[o for o in (_listed(o, prefix, url) for o in response.get("Contents") or []) if o is not None],
        prefixes=[p for p in (_listed_prefix(p, prefix, url) for p in response.get("CommonPrefixes") or []) if p],
        next_token=response.get("NextContinuationToken") if response.get("IsTruncated") else None,
    )


def _listed(o: dict, prefix: str, url: str) -> ObjectInfo | None:
    """One object of a listing.  Its fields that do not parse are not the
    listing's failure: a key that does not parse is left out (with a log
    line), other fields are given as unknown (size -1, etag "", mtime 0),
    so that a caller that needs them reads the object, which fails alone if
    it is damaged."""
    key = _unprefixed(o.get("Key"), prefix)
    if key is None:
        log.warning("S3 listing of %s has an entry with no valid key (left out)", url)
        return None
    try:
        return ObjectInfo(key=key, **_info_fields(o, "Size", "listing entry"))
    except DamagedObject as exc:
        log.warning("S3 listing of %s: object %s: %s (read it to check it)", url, key, exc)
        size = _size_field(o.get("Size"))
        return ObjectInfo(
            key=key,
            size=-1 if size is None else size,
            etag=_etag_field(o.get("ETag")) or "",
            mtime=_mtime_field(o.get("LastModified")) or 0.0,
        )


def _listed_prefix(p: dict, prefix: str, url: str) -> str | None:
    text = _unprefixed(p.get("Prefix"), prefix)
    if text is None:
        log.warning("S3 listing of %s has a common prefix that is not valid (left out)", url)
    return text


def _unprefixed(text: object, prefix: str) -> str | None:
    """A key or common prefix of a listing (URL-encoded: the listing asks
    for ``EncodingType`` url) without the store prefix ``prefix``; None if
    it is not a string under the prefix, or is the prefix."""
    text = urllib.parse.unquote(text) if isinstance(text, str) else None
    if text is None or not text.startswith(prefix) or len(text) == len(prefix):
        return None
    return text[len(prefix) :]


def listed_uploads(response: dict, prefix: str, url: str) -> list[Upload]:
    """The uploads of one ListMultipartUploads answer, under the store
    prefix ``prefix``; an entry that does not parse is left out (with a log
    line)."""
    uploads = []
    for u in response.get("Uploads") or []:
        key, upload_id, initiated = u.get("Key"), u.get("UploadId"), u.get("Initiated")
        if (
            isinstance(key, str)
            and key.startswith(prefix)
            and isinstance(upload_id, str)
            and upload_id
            and hasattr(initiated, "timestamp")
        ):
            uploads.append(Upload(key[len(prefix) :], upload_id, initiated.timestamp()))
        else:
            log.warning("S3 listing of the multipart uploads of %s has an entry that does not parse (left out)", url)
    return uploads


def upload_id_of(answer: dict, what: str) -> str:
    """The upload id in S3's answer to a multipart start (of ``what``)."""
    upload_id = answer.get("UploadId")
    if not isinstance(upload_id, str) or not upload_id:
        raise DamagedObject(f"{what}: S3's answer to a multipart start has no upload id")
    return upload_id


def etag_of(answer: dict | None, what: str) -> str:
    """The etag of the object a write made, from S3's answer to it."""
    etag = _etag_field(answer.get("ETag")) if isinstance(answer, dict) else None
    if etag is None:
        raise DamagedObject(f"{what}: S3's answer to the write gave an ETag that does not parse")
    return etag


def multipart_etag(parts: list[tuple[int, str]]) -> str | None:
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


def quote(etag: str) -> str:
    return f'"{etag}"'


def _unquote(etag: str) -> str:
    return etag.strip('"')


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


def _server_time(response: dict) -> float | None:
    """The server's clock when it answered (its Date header), if it says."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return email.utils.parsedate_to_datetime(date).timestamp() if date else None
    except (TypeError, ValueError):
        return None
