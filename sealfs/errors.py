"""One error hierarchy for the whole package.

Every error a user can cause or meet derives from :class:`SealfsError` and
carries the process exit code the command line uses for it.  Messages are one
plain sentence that names the thing at fault and, where there is one, the fix.
They never contain key material or plaintext file contents.
"""

from __future__ import annotations

import errno as _errno


class ExitCode:
    """Exit codes of the ``sealfs`` command (documented in sealfs(1))."""

    OK = 0
    FAILURE = 1  #: anything not listed below
    USAGE = 2  #: bad command line or options
    BAD_KEY = 3  #: wrong passphrase, key file or KMS key
    INTEGRITY = 4  #: an object failed authentication (tampered or corrupt)
    NOT_A_VOLUME = 5  #: no volume config, or a corrupted/foreign one
    STORE = 6  #: the object store failed or refused
    NOT_FOUND = 7  #: a plaintext path does not exist in the volume
    MOUNT = 8  #: the mount itself failed (mountpoint busy, FUSE error)


class SealfsError(Exception):
    exit_code = ExitCode.FAILURE


class UsageError(SealfsError):
    exit_code = ExitCode.USAGE


class BadKeyError(SealfsError):
    """The offered passphrase/key file/KMS key opens no key slot."""

    exit_code = ExitCode.BAD_KEY


class IntegrityError(SealfsError):
    """Authentication of stored data failed: it was modified, truncated,
    moved, or is not ours.  Never carries partial plaintext."""

    exit_code = ExitCode.INTEGRITY


class DamagedObject(IntegrityError):
    """The store holds an object whose stored form is damaged: a local
    object file whose header or length is not one the store writes, or an
    S3 answer about one object whose fields do not parse.  It concerns that
    object alone (an integrity failure, exit 4), not the store: a store
    that fails or is gone raises :class:`StoreError` (exit 6)."""


class ConfigError(SealfsError):
    """The store holds no sealfs volume, or its config is damaged/foreign."""

    exit_code = ExitCode.NOT_A_VOLUME


class StoreError(SealfsError):
    """The object store failed.  Subclasses say how."""

    exit_code = ExitCode.STORE


class NotFound(StoreError):
    """The object (key) does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object changed (If-Match) or already
    exists (If-None-Match)."""


class StoreUnavailable(StoreError):
    """The store could not be reached or kept failing after retries."""


class MountError(SealfsError):
    exit_code = ExitCode.MOUNT


class FsError(SealfsError):
    """A filesystem-level failure with the errno the caller should see."""

    def __init__(self, err: int, msg: str | None = None):
        self.errno = err
        super().__init__(msg or _errno.errorcode.get(err, str(err)))

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return ExitCode.NOT_FOUND if self.errno == _errno.ENOENT else ExitCode.FAILURE


class WouldBlock(Exception):
    """An operation called with ``nowait=True`` would have to wait: for a
    lock another thread holds, for the store or for the disk.  Raised
    before it changed anything, so the caller can run it again, waiting
    (the FUSE adapter then runs it in a worker thread).  Not a
    SealfsError: it never reaches a user."""
