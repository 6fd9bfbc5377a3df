"""The object-store interface every backend implements.

The contract, for every backend:

* Keys are ``str`` of 1..1024 bytes UTF-8, relative to the store's root (an
  S3 ``prefix`` is added and removed by the backend, never seen by callers).
  sealfs itself only produces keys of ``[a-z0-9._/-]``.  Every backend
  accepts exactly the keys :func:`check_key` accepts (``[A-Za-z0-9._-]``
  segments joined by ``/``, none empty, ``.`` or ``..``, none longer than
  :data:`MAX_KEY_SEGMENT`) and refuses others with ``ValueError``, so a key
  that works on one backend works on all of them.
* User metadata is a ``dict[str, str]`` of lowercase ASCII names
  (``[a-z0-9-]``) and printable ASCII values.  Its total size (sum of the
  lengths of names and values) must not exceed :data:`MAX_METADATA_BYTES`
  (S3's 2 KB limit); every backend refuses more with ``ValueError`` so that
  code tested on a lenient backend cannot break on S3.
* Writes are atomic: a reader sees the old object or the new one, never a mix.
* ``etag`` is an opaque string that changes whenever the object's bytes
  change.  It need not change otherwise: S3's etag of a single-part write
  is the MD5 of the bytes, so rewriting the same bytes, or replacing only
  the metadata with ``copy``, keeps it.  Never use it to detect a metadata
  change.
* Calls are thread-safe; one store object is shared by many worker threads.
* A missing key raises :class:`~sealfs.errors.NotFound` from ``get``,
  ``head``, ``copy`` (source) and ``upload_part_copy``; ``delete`` and
  ``delete_many`` of a missing key succeed (as on S3).
* A conditional write that loses raises
  :class:`~sealfs.errors.PreconditionFailed`.
* Anything else the backend cannot do raises :class:`~sealfs.errors.StoreError`
  (or ``StoreUnavailable`` once retries are exhausted), with a one-line message
  naming the store and never the object's contents.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

MAX_METADATA_BYTES = 2048
#: Smallest part S3 accepts for any but the last part of a multipart upload.
S3_MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10000
#: S3's limit on a key (with the backend's prefix), in bytes.
MAX_KEY_BYTES = 1024
#: Longest key segment (the text between two '/'): a local directory store
#: turns segments into file names (NAME_MAX 255) and may append one character.
MAX_KEY_SEGMENT = 254
#: The characters of a key segment.
KEY_SEGMENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


class ByteStream(Protocol):
    """What ``get_stream`` returns."""

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the object."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    #: User metadata; ``None`` when the call does not return it (LIST).
    metadata: dict[str, str] | None = None
    #: Last-modified time in seconds since the epoch (the store's clock).
    mtime: float = 0.0
    #: The store's clock when it answered a HEAD or GET (S3: the Date
    #: header), if it says; see :meth:`sealfs.volume.Volume.unchanged`.
    checked: float | None = None


@dataclass
class ListPage:
    objects: list[ObjectInfo] = field(default_factory=list)
    #: With a delimiter: the common prefixes, each ending in the delimiter.
    prefixes: list[str] = field(default_factory=list)
    #: Pass to the next ``list`` call; ``None`` when this was the last page.
    next_token: str | None = None


@dataclass(frozen=True)
class Upload:
    key: str
    upload_id: str
    initiated: float


def metadata_size(metadata: dict[str, str] | None) -> int:
    return sum(len(k) + len(v) for k, v in (metadata or {}).items())


def check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """Refuse metadata S3 would refuse (or silently mangle)."""
    md = dict(metadata or {})
    for k, v in md.items():
        if not k or not all(c.islower() or c.isdigit() or c == "-" for c in k) or not k.isascii():
            raise ValueError(f"metadata name {k!r} must be lowercase ASCII letters, digits or '-'")
        if not (v.isascii() and v.isprintable()):
            raise ValueError(f"metadata value of {k!r} must be printable ASCII")
    if metadata_size(md) > MAX_METADATA_BYTES:
        raise ValueError(f"user metadata of {metadata_size(md)} bytes exceeds the {MAX_METADATA_BYTES}-byte limit")
    return md


def check_key(key: str) -> str:
    """Refuse a key some backend could not store faithfully or safely: a
    local directory store maps segments to path components, so ``..`` or an
    empty segment must never reach it, and S3-compatible servers differ on
    how they normalise such paths."""
    if not isinstance(key, str) or not key:
        raise ValueError("an object key must be a non-empty string")
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(f"object key of {len(key)} bytes exceeds the {MAX_KEY_BYTES}-byte limit")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"object key {key!r} has an empty, '.' or '..' segment")
        if len(segment) > MAX_KEY_SEGMENT:
            raise ValueError(
                f"object key segment of {len(segment)} characters exceeds the {MAX_KEY_SEGMENT}-character limit"
            )
        if not KEY_SEGMENT_CHARS.issuperset(segment):
            raise ValueError(f"object key {key!r} may only contain A-Z a-z 0-9 . _ - and /")
    return key


def check_range(start: int, end: int | None) -> None:
    """Refuse a byte range no read can mean: a negative start, or an end
    before the start."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range [{start}, {end})")


def check_conditions(if_match: str | None, if_none_match: bool) -> None:
    if if_match is not None and if_none_match:
        raise ValueError("if_match and if_none_match cannot be combined")
    if if_match == "":
        raise ValueError("if_match must be an etag, not an empty string")


def check_part_number(part_number: int) -> None:
    if not 1 <= part_number <= MAX_PARTS:
        raise ValueError(f"part number {part_number} is outside 1..{MAX_PARTS}")


def check_parts(parts: list[tuple[int, str]]) -> None:
    """Refuse a part list S3 would refuse: empty, or not in strictly
    ascending part-number order (``InvalidPartOrder``)."""
    if not parts:
        raise ValueError("a multipart upload needs at least one part to complete")
    previous = 0
    for number, _etag in parts:
        check_part_number(number)
        if number <= previous:
            raise ValueError(f"part numbers must be strictly ascending, got {number} after {previous}")
        previous = number


class Store(abc.ABC):
    """An object store: a flat namespace of keys holding immutable objects."""

    #: A URL naming this store, for messages (never contains credentials).
    url: str = ""
    #: Smallest size of a non-last multipart part this store accepts.
    min_part_size: int = S3_MIN_PART_SIZE
    #: Largest single PUT / CopyObject the store accepts.
    max_put_size: int = 5 * 1024**3
    #: Whether ``copy`` happens inside the store (S3) rather than moving
    #: the bytes again (a local directory).  Uploading a file while it is
    #: written needs a metadata copy at the end: only worth it when cheap.
    server_side_copy: bool = False
    #: Whether the store writes an object of any size in one pass
    #: (``open_put``, ``put_chunks``: a local directory); else large objects
    #: go up in multipart parts.
    streaming_put: bool = False

    # -- reading -----------------------------------------------------------
    @abc.abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (``end=None``: to the end).
        A range past the end is clipped (an empty result if ``start`` is at
        or past the end).  ``if_match``: only from the version with this
        etag, else PreconditionFailed (so that reads of one open file never
        mix two versions)."""

    @abc.abstractmethod
    def get_stream(self, key: str, start: int = 0, *, if_match: str | None = None) -> ByteStream:
        """A stream of the object's bytes from ``start`` to its end, for
        sequential reading with one request.  Errors as for ``get``, raised
        when the stream is opened; a stream that breaks off later raises
        StoreError (or StoreUnavailable) from ``read``."""

    @abc.abstractmethod
    def get_object(self, key: str, limit: int | None = None) -> tuple[bytes, ObjectInfo]:
        """The whole object (its first ``limit`` bytes at most) and its info
        (with metadata and the whole size), read consistently in one request."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size, etag and metadata of the object."""

    @abc.abstractmethod
    def list(
        self,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """One page of the keys under ``prefix`` in lexicographic order."""

    def list_all(self, prefix: str = "", *, delimiter: str | None = None) -> Iterator[ObjectInfo | str]:
        """Every object (as ObjectInfo) and, with a delimiter, every common
        prefix (as str) under ``prefix``, across pages."""
        token = None
        while True:
            page = self.list(prefix, delimiter=delimiter, token=token)
            yield from page.objects
            yield from page.prefixes
            if page.next_token is None:
                return
            token = page.next_token

    # -- writing -----------------------------------------------------------
    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        metadata: dict[str, str] | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Store ``data`` under ``key`` atomically; return the new etag.
        ``if_match``: only if the current etag is this one.
        ``if_none_match``: only if the key does not exist."""

    def put_chunks(
        self,
        key: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        metadata: dict[str, str] | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """``put`` of the concatenation of ``chunks``, written as they come
        (only where ``streaming_put``)."""
        check_metadata(metadata)
        check_conditions(if_match, if_none_match)
        writer = self.open_put(key)
        try:
            for chunk in chunks:
                writer.append(chunk)
            return writer.commit(metadata, if_match=if_match, if_none_match=if_none_match)
        except BaseException:
            writer.abort()
            raise

    def open_put(self, key: str) -> ObjectWriter:
        """A new version of ``key``, written front to back and installed by
        :meth:`ObjectWriter.commit` (only where ``streaming_put``)."""
        raise NotImplementedError(f"{type(self).__name__} writes large objects in parts")

    @abc.abstractmethod
    def copy(self, src: str, dst: str, metadata: dict[str, str], *, if_match: str | None = None) -> str:
        """Server-side copy of ``src`` to ``dst`` (which may equal ``src``),
        replacing the user metadata with ``metadata``; return the new etag.
        Objects larger than ``max_put_size`` are copied in parts.  With
        ``if_match``: only if ``src``'s etag is that, else PreconditionFailed
        (a metadata change never lands on another version)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)

    # -- multipart ---------------------------------------------------------
    @abc.abstractmethod
    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        """Start a multipart upload; return its upload id."""

    @abc.abstractmethod
    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | memoryview) -> str:
        """Upload part ``part_number`` (1..10000); return its etag.  Uploading
        the same number again replaces the part."""

    @abc.abstractmethod
    def upload_part_copy(self, key: str, upload_id: str, part_number: int, src: str, start: int, end: int) -> str:
        """Make part ``part_number`` a server-side copy of ``src[start:end]``."""

    @abc.abstractmethod
    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Assemble ``parts`` (number, etag), in order, into the object."""

    @abc.abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Discard an upload and its parts; an unknown upload is not an error."""

    @abc.abstractmethod
    def list_multipart_uploads(self, prefix: str = "") -> list[Upload]:
        """Uploads started and neither completed nor aborted."""

    def temporaries(self) -> list[tuple[str, float]]:
        """Files the store writes beside its objects while it builds one
        (name, modification time): left only by a crash.  None on S3."""
        return []

    def remove_temporary(self, name: str) -> None:
        """Remove one of :meth:`temporaries` (a store must not be writing it)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no temporary files")

    def watch(self, key: str, etag: str, ours: Callable[[bytes], bool]) -> None:
        """Object ``key`` (now with ``etag``) says whose store this is (a
        volume's config): from now on, whenever an answer could come from
        a store emptied or replaced behind this one's back (an S3 bucket
        deleted and made again: a missing object, a lost conditional
        write, an empty listing) and before every write that is not
        conditional on an object's etag, make sure ``key`` is still there
        with ``etag`` or bytes that ``ours`` accepts, else raise
        :class:`~sealfs.errors.StoreUnavailable`: never read the new
        namespace as an empty volume nor write into it.  A local store
        checks the identity of its directory on every call instead, and
        ignores this."""

    def check(self) -> None:
        """Raise :class:`~sealfs.errors.StoreError` (with a message saying
        what is wrong: missing directory or bucket, credentials, network)
        unless the store can be used; a cheap call for commands to fail fast."""

    def defer_sync(self) -> None:
        """From now on, a write need only survive a crash of this process
        when it returns; :meth:`sync` makes writes durable.  (Nothing
        changes for a store whose writes are durable once acknowledged.)"""

    def sync(self) -> None:
        """Make every write acknowledged so far durable (survive a power
        loss): what fsync() asks of a mounted volume."""

    def close(self) -> None:
        """Release connections/handles."""


class ObjectWriter(abc.ABC):
    """A new object being written front to back (see :meth:`Store.open_put`):
    invisible until :meth:`commit`, gone after :meth:`abort`."""

    @abc.abstractmethod
    def append(self, *data: bytes | bytearray | memoryview) -> None:
        """Add each of ``data``, in order, at the end of what was written:
        all of them, or (if it fails) none."""

    @abc.abstractmethod
    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes written, from offset ``start``."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Bytes appended so far."""

    @abc.abstractmethod
    def truncate(self, size: int) -> None:
        """Forget what was appended after the first ``size`` bytes."""

    @abc.abstractmethod
    def commit(
        self, metadata: dict[str, str] | None = None, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Install what was written as the object, with ``metadata``, under
        the conditions of :meth:`Store.put`; the new etag.  If it fails
        (PreconditionFailed, say), what was written is still there to read
        and the writer must still be committed or aborted."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Throw away what was written (no effect once done)."""
