"""The check that an S3 store still holds the volume it was opened with.

A bucket deleted and made again (or emptied) under a mounted volume reads
as an empty volume of the same name.  Once :meth:`BucketWatch.watch` is
given the volume config, the store checks it whenever an answer could come
from such a bucket -- a missing object, a lost conditional write, an empty
first listing page -- and before every write that could create an object
there (one not conditional on an etag).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import DamagedObject, NotFound, StoreUnavailable

if TYPE_CHECKING:
    from .s3 import S3Store


class BucketWatch:
    """The watched object of ``store`` (see :meth:`~sealfs.store.base.Store.watch`),
    looked at through the store's own ``head`` and ``get_object``."""

    def __init__(self, store: S3Store):
        self._store = store
        #: (key, etag, whether its bytes are ours), once watched.
        self._watched: tuple[str, str, Callable[[bytes], bool]] | None = None

    def watch(self, key: str, etag: str, ours: Callable[[bytes], bool]) -> None:
        self._watched = (key, etag, ours)

    def after_miss(self, key: str | None) -> None:
        """A call about ``key`` got a 404 or lost a conditional write: check,
        unless ``key`` is the watched object itself (the check's own calls)."""
        watched = self._watched
        if watched is not None and key != watched[0]:
            self.check()

    def check(self) -> None:
        """StoreUnavailable unless the watched object is there with its
        etag, or with bytes that are ours (then its new etag is watched):
        one HEAD, and a GET when the etag changed (by a key command)."""
        watched = self._watched
        if watched is None:
            return
        key, etag, ours = watched
        store = self._store
        gone = (
            f"{store.url} no longer holds the volume this store was opened with (its {key} is "
            "{}): refusing to use it, so as not to read an empty volume or write into another bucket"
        )
        try:
            info = store.head(key)
            if info.etag != etag:
                data, info = store.get_object(key)
                if not ours(data):
                    raise StoreUnavailable(gone.format("another volume's"))
                self._watched = (key, info.etag, ours)
        except NotFound:
            raise StoreUnavailable(gone.format("gone: the bucket was emptied, or deleted and made again")) from None
        except DamagedObject:
            raise StoreUnavailable(gone.format("damaged")) from None
