"""The volume: one unlocked volume on a store, created or opened with its
config and keys, its entries (:class:`~sealfs.volume.entries.Entries`)
and the contents of its files, read and written through sealfs.fileio with
metadata sealed here."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ..codec import crypto
from ..codec.blocks import FileCipher, Layout
from ..codec.entry import KIND_DIR, ROOT_ID, ROOT_KEY, TIMES_NONCE_SIZE, Entry, fields, untimed
from ..codec.meta import MetaCipher
from ..codec.names import NameCipher
from ..errors import ConfigError, DamagedObject, FsError, NotFound, PreconditionFailed, SealfsError, UsageError
from ..fileio.context import FileIO
from ..fileio.reader import FileReader
from ..fileio.streams import AppendStream, PartStream, stream_class
from ..fileio.writer import Blocks, ContentWriter, PlainBlocks
from ..keys.slots import CONFIG_KEY, Credential, Keyring, VolumeConfig
from ..keys.slots import create as create_config
from ..store.base import Store
from .entries import Entries, now_ns
from .sealed import SealedMeta, times_key


class Volume(Entries):
    """An unlocked volume on a store."""

    def __init__(self, store: Store, config: VolumeConfig, keyring: Keyring, config_etag: str = ""):
        self.config = config
        self.keyring = keyring
        self.config_etag = config_etag
        self.layout = Layout(config.block_size)
        names = NameCipher(keyring.name_key())
        sealed = SealedMeta(store, self.layout, names, MetaCipher(keyring.meta_keys(), keyring.current))
        pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sealfs-io")
        super().__init__(store, sealed, names, FileIO(store, self.layout, keyring, pool), pool)
        if config_etag:
            store.watch(CONFIG_KEY, config_etag, self._is_ours)

    @property
    def meta(self) -> MetaCipher:
        """The cipher of entry metadata (and of other small sealed records)."""
        return self.sealed.meta

    def _is_ours(self, raw: bytes) -> bool:
        """Whether config bytes ``raw`` are this volume's (see Store.watch)."""
        try:
            return VolumeConfig.parse(raw).volume_id == self.config.volume_id
        except SealfsError:
            return False

    # -- creating and opening -------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: Store,
        cred: Credential,
        *,
        block_size: int,
        argon2: dict | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Volume:
        store.check()
        config, keyring = create_config(block_size, cred, argon2)
        try:
            etag = store.put(CONFIG_KEY, config.to_bytes(), if_none_match=True)
        except PreconditionFailed:
            raise UsageError(f"{store.url} already holds a sealfs volume") from None
        vol = cls(store, config, keyring, etag)
        t = now_ns()
        root = Entry(
            ROOT_ID,
            b"",
            ROOT_KEY,
            KIND_DIR,
            ROOT_ID,
            stat.S_IFDIR | 0o755,
            os.getuid() if uid is None else uid,
            os.getgid() if gid is None else gid,
            t,
            t,
        )
        vol._put_entry(root, b"", if_none_match=True)
        return vol

    @classmethod
    def open(cls, store: Store, credentials: list[Credential]) -> Volume:
        config, etag = read_config(store)
        keyring = config.unlock(credentials)
        return cls(store, config, keyring, etag)

    def save_config(self) -> None:
        """Write the (changed) config back, refusing to clobber a concurrent change."""
        try:
            self.config_etag = self.store.put(CONFIG_KEY, self.config.to_bytes(), if_match=self.config_etag)
        except PreconditionFailed:
            raise UsageError("the volume config was changed by someone else meanwhile; run the command again") from None
        self.store.watch(CONFIG_KEY, self.config_etag, self._is_ours)
        self.sealed.meta = MetaCipher(self.keyring.meta_keys(), self.keyring.current)

    def submit(self, fn, *args):
        """Run ``fn`` on the volume's I/O threads (background reads)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()

    def defer_sync(self) -> None:
        """From now on writes need only survive a crash of this process;
        :meth:`sync` makes them durable (what a mount does: see Store.defer_sync)."""
        self.store.defer_sync()

    def sync(self) -> None:
        """Make every write acknowledged so far durable (fsync, syncfs)."""
        self.store.sync()

    def exists(self, key: str) -> bool:
        """Whether the entry object ``key`` exists now (one HEAD)."""
        try:
            self.store.head(key)
        except NotFound:
            return False
        return True

    # -- paths (for the offline CLI) ------------------------------------------------------------

    def resolve(self, path: str | bytes, *, follow: bool = True, _depth: int = 0) -> Entry:
        """The entry at a plaintext absolute path (``/`` is the root)."""
        parts = [p for p in os.fsencode(path).split(b"/") if p and p != b"."]
        e = self.root()
        stack = [e]
        for i, part in enumerate(parts):
            if part == b"..":
                if len(stack) > 1:
                    stack.pop()
                e = stack[-1]
                continue
            if not e.is_dir:
                raise FsError(errno.ENOTDIR, f"{part.decode(errors='replace')}: parent is not a directory")
            e = self.lookup(e.id, part)
            if e.is_link and (follow or i < len(parts) - 1):
                if _depth > 40:
                    raise FsError(errno.ELOOP, "too many levels of symbolic links")
                link = self.readlink(e)
                base = b"/".join([s.name for s in stack[1:]])
                target = link if link.startswith(b"/") else b"/" + base + b"/" + link
                e = self.resolve(target, follow=True, _depth=_depth + 1)
            stack.append(e)
        return e

    def split(self, path: str | bytes) -> tuple[Entry, bytes]:
        """(parent directory entry, last component) of a path."""
        raw = os.fsencode(path).rstrip(b"/")
        parent, _, name = raw.rpartition(b"/")
        if not name or name in (b".", b".."):
            raise FsError(errno.EINVAL, f"{os.fsdecode(path)}: not a file name")
        d = self.resolve(parent or b"/")
        if not d.is_dir:
            raise FsError(errno.ENOTDIR, f"{os.fsdecode(parent)}: not a directory")
        return d, name

    # -- file contents ---------------------------------------------------------------------------

    def reader(self, e: Entry) -> FileReader:
        return FileReader(self.io, e)

    def new_reader(self, e: Entry) -> FileReader:
        """The base of a file not yet in the store (see FileReader.new)."""
        return FileReader.new(self.io, e)

    def write_content(
        self,
        e: Entry,
        size: int,
        new_block: Callable[[int], bytes | None],
        *,
        base: FileReader | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        progress: Callable[[int], None] | None = None,
        extents: list[tuple[int, int]] | None = None,
    ) -> Entry:
        """Write a new version of file ``e`` with ``size`` plaintext bytes.

        ``new_block(i)`` returns the new plaintext of block ``i`` (exactly
        the block's length in the new file), or None where the block is
        unchanged from ``base`` (or a hole, read as zeros, past its end).
        Unchanged blocks are copied as ciphertext (server-side, with
        UploadPartCopy, where whole parts are unchanged).  ``new_block``
        is called once per block, in increasing order, so it may stream.
        ``extents``: see ContentWriter.  Returns the entry with its new
        etag; PreconditionFailed if the object's etag is no longer
        ``if_match``.
        """
        writer = ContentWriter(self.io, e, size, PlainBlocks(new_block), base, extents)
        return self.install(e, replace(e), writer, if_match=if_match, if_none_match=if_none_match, progress=progress)

    def rekey_file(self, e: Entry) -> bool:
        """Re-wrap a file's DEK under the current generation, rewriting only
        the header (the blocks are copied server-side where the store can).
        Returns False if it already used the current generation."""
        reader = self.reader(e)
        if reader.header().generation == self.keyring.current:
            return False
        self._rewrite(e, replace(e), reader)
        return True

    def start_stream(self, e: Entry, cipher: FileCipher) -> AppendStream | PartStream:
        """A new version of file ``e`` (data key ``cipher``) to be sent
        while it is written (see sealfs.fileio.streams), on a store that
        can take one.

        On S3 the upload's metadata is fixed here, and the mtime of a file
        being written changes until its last write, so the metadata names a
        times record (``t/<id>.<nonce>``, see SealedMeta.put_times) that
        :meth:`finish_stream` writes just before the completion.  Only if
        other metadata changed meanwhile (a chmod while writing) is the
        completed object then copied onto itself with its final metadata,
        which on S3 costs about as much as the upload did."""
        stream = stream_class(self.io)(self.io, e, cipher)  # type: ignore[misc]
        if isinstance(stream, PartStream):
            # (it is written from its start, every block)
            started = replace(e, sparse=False, header_hash=stream.header_hash)
            record = crypto.random_bytes(TIMES_NONCE_SIZE)
            stream.start(self.sealed.seal(started, record), started)
        return stream

    def finish_stream(
        self,
        stream: AppendStream | PartStream,
        e: Entry,
        size: int,
        blocks: Blocks,
        *,
        if_match: str | None,
        if_none_match: bool = False,
    ) -> Entry:
        """Send the rest of ``stream`` (the blocks after those sent, of a
        file of ``size`` bytes) and make it the new version of file ``e``,
        with ``e``'s metadata, on the given condition."""
        new = replace(e, size=size, sparse=False, object_size=self.layout.object_size_for(size))
        new.header_hash = stream.header_hash
        if isinstance(stream, PartStream):
            return self._finish_parts(stream, e, new, blocks, if_match=if_match, if_none_match=if_none_match)
        try:
            stream.send_rest(size, blocks)
            new.etag = stream.commit(self.sealed.seal(new), if_match=if_match, if_none_match=if_none_match)
        except BaseException:
            stream.take_back()
            raise
        self.sealed.drop_side_objects(e, new)
        return new

    def _finish_parts(
        self, stream: PartStream, e: Entry, new: Entry, blocks: Blocks, *, if_match: str | None, if_none_match: bool
    ) -> Entry:
        stream.send_rest(new.size, blocks)
        parts = stream.parts()
        started = stream.started
        assert started is not None
        new.overflow, new.times_record, new.version = started.overflow, started.times_record, started.version
        # The record first: the completed object names it.
        self.sealed.put_times(new, new.times_record)  # type: ignore[arg-type]
        try:
            new.etag = stream.complete(parts, if_match=if_match, if_none_match=if_none_match)
        except PreconditionFailed:  # (refused: nothing names the record.  Other errors
            # may hide a completion that happened: the record stays, for fsck)
            self.sealed.delete_side_object(times_key(new.id, new.times_record))  # type: ignore[arg-type]
            raise
        if untimed(fields(new)) != untimed(fields(started)):
            # Changed while written (a chmod, say): the metadata needs a new
            # version (a new header: see Entries._rewrite).
            new = self._rewrite(new, replace(new, times_record=None))
        self.sealed.drop_side_objects(e, new)
        return new


def read_config(store: Store) -> tuple[VolumeConfig, str]:
    store.check()
    try:
        raw, info = store.get_object(CONFIG_KEY)
    except NotFound:
        raise ConfigError(f"no sealfs volume at {store.url} (create one with: sealfs init {store.url})") from None
    except DamagedObject as exc:
        raise ConfigError(f"the volume config at {store.url} is damaged: {exc}") from None
    return VolumeConfig.parse(raw), info.etag
