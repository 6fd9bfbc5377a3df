"""The directory of a local store: its paths, the check that it is still
the directory opened, its lock, the directories under objects/, the files
in tmp/, syncing, and OSError turned into StoreError.

Key segments become path components.  A key segment followed by ``/``
becomes a directory named ``<segment>~``; the last segment is the file
name.  ``~`` is not a key character, so the object ``a`` (file ``a``) and
the objects under ``a/`` (directory ``a~``) coexist as they do on S3.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import tempfile
from collections.abc import Iterator

from ..errors import StoreError, StoreUnavailable
from .base import check_key

_libc = ctypes.CDLL(None, use_errno=True)
#: The suffix of the directory of a key segment followed by '/'.
DIR_SUFFIX = "~"


class StoreDir:
    """The store directory ``root`` (an absolute path), for the store
    ``url``; ``create=True`` makes it (mode 0700) and its layout if missing.
    Its paths: ``objects``, ``tmp``, ``uploads`` (multipart/)."""

    def __init__(self, root: str, url: str, *, create: bool):
        self.root = root
        self.url = url
        self.objects = os.path.join(self.root, "objects")
        self.tmp = os.path.join(self.root, "tmp")
        self.uploads = os.path.join(self.root, "multipart")
        self._lock_path = os.path.join(self.root, "lock")
        self._sync_each_write = True
        #: (st_dev, st_ino) of the root and of objects/ when the store was
        #: opened: see :meth:`check_root`.
        self._identity: tuple[tuple[int, int], tuple[int, int]] | None = None
        if create:
            with self.os_errors("create the store directory"):
                for path in (self.root, self.objects, self.tmp, self.uploads):
                    os.makedirs(path, mode=0o700, exist_ok=True)

    # -- the directory opened ----------------------------------------------
    def check(self) -> None:
        if self._identity is not None:
            self.check_root()
            return
        if not os.path.isdir(self.root):
            raise StoreError(f"no sealfs store directory at {self.root}")
        if not os.path.isdir(self.objects):
            raise StoreError(f"{self.root} is not a sealfs store directory (it has no objects/ subdirectory)")
        with self.os_errors("open the store directory"):
            self._identity = (_file_id(self.root), _file_id(self.objects))

    def check_root(self) -> None:
        """Refuse to go on if the store directory (or its objects/) is no
        longer the one opened: deleted, renamed away, its disk unmounted,
        or replaced by another directory (another volume's store, an empty
        one).  Otherwise a missing directory would read as an empty volume,
        and writes would build a new store under the old path.  Every call
        checks first (two stat(2) calls); the same directory put back
        (renamed back, its disk mounted again) is accepted again."""
        try:
            now = (_file_id(self.root), _file_id(self.objects))
        except OSError as e:
            raise StoreUnavailable(
                f"local store {self.root} is gone (deleted, moved away or its disk unmounted: {e.strerror or e})"
            ) from None
        if now != self._identity:
            raise StoreUnavailable(
                f"local store {self.root} was replaced by another directory since it was "
                "opened (another store or an empty one): refusing to use it"
            )

    # -- durability ----------------------------------------------------------
    def defer_sync(self) -> None:
        self._sync_each_write = False

    def sync(self) -> None:
        if self._sync_each_write:
            return
        self.check_root()
        with self.os_errors("sync the store to disk"):
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if _libc.syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)

    def sync_file(self, fd: int) -> None:
        if self._sync_each_write:
            os.fsync(fd)

    def sync_dir(self, path: str) -> None:
        if self._sync_each_write:
            _fsync_dir(path)

    # -- paths -------------------------------------------------------------
    def dir_path(self, key_prefix: str) -> str:
        """The directory holding the objects whose keys start with ``key_prefix + '/'``."""
        return os.path.join(self.objects, *(s + DIR_SUFFIX for s in key_prefix.split("/")))

    def object_path(self, key: str) -> str:
        check_key(key)
        base, slash, name = key.rpartition("/")
        return os.path.join(self.dir_path(base), name) if slash else os.path.join(self.objects, name)

    # -- directories and locking -------------------------------------------
    def makedirs(self, path: str) -> list[str]:
        """Make ``path`` and its missing parents (mode 0700); return the
        parents that got a new entry, whose fsync makes the new directories
        durable.  Never makes the store's root or objects/: a store removed
        under our feet is an error, not something to recreate."""
        if path in (self.root, self.objects) or os.path.isdir(path):
            return []
        parent = os.path.dirname(path)
        created = self.makedirs(parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return created
        return created + [parent]

    def prune(self, directory: str) -> str:
        """Remove ``directory`` and its ancestors below objects/ while they
        are empty (called with the exclusive lock held, so no writer is
        between creating a directory and renaming a file into it); return
        the deepest directory that remains."""
        while directory != self.objects:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass  # pruned already, by an earlier key of the same batch
            except OSError:
                break  # not empty
            directory = os.path.dirname(directory)
        return directory

    @contextlib.contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        self.check_root()  # (before the lock file is made: never in another directory)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- temporaries -------------------------------------------------------
    @contextlib.contextmanager
    def temp_file(self, purpose: str, key: str) -> Iterator[tuple[int, str]]:
        """A new private file in ``tmp/`` (mode 0600) for the caller to fill
        and rename away; removed if the block raises."""
        fd, path = self.new_temp_file(purpose, key)
        try:
            with self.os_errors("write", key):
                yield fd, path
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        finally:
            os.close(fd)

    def new_temp_file(self, purpose: str, key: str) -> tuple[int, str]:
        """A new private file in ``tmp/`` (mode 0600): its descriptor and path."""
        self.check_root()
        with self.os_errors("write", key):
            self.makedirs(self.tmp)
            return tempfile.mkstemp(prefix=purpose + "-", dir=self.tmp)

    def retire(self, upload_dir: str, upload_id: str) -> str | None:
        """Move an upload's directory out of multipart/ (the lock held), so
        it ends atomically; return its new path, or None if it was gone."""
        retired = os.path.join(self.tmp, f"retired-{upload_id}-{secrets.token_hex(4)}")
        try:
            os.rename(upload_dir, retired)
        except FileNotFoundError:
            return None
        return retired

    def temporaries(self) -> list[tuple[str, float]]:
        """The files in ``tmp/`` (objects being written; a crash leaves them)."""
        self.check_root()
        out = []
        with self.os_errors("list", "tmp/"):
            try:
                entries = list(os.scandir(self.tmp))
            except FileNotFoundError:
                return []
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False):
                        out.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
        return sorted(out)

    def remove_temporary(self, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a temporary file name: {name!r}")
        self.check_root()
        with self.os_errors("remove", f"tmp/{name}"), contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.tmp, name))

    # -- errors ------------------------------------------------------------
    @contextlib.contextmanager
    def os_errors(self, action: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise self._error(e, action, key) from e

    def _error(self, e: OSError, action: str, key: str | None) -> StoreError:
        what = f"{action} {key}" if key else action
        return StoreError(f"local store {self.root}: cannot {what}: {e.strerror or e}")


def _file_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable.  A directory removed
    meanwhile (by a delete that emptied it) needs nothing: its removal is
    made durable by whoever removed it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
