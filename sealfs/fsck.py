"""``sealfs fsck``: authenticate every object of a volume and find leftovers.

Checks, without a mount:

* every directory entry's name and metadata, every file's header and every
  block, every symlink target (all authenticated: a damaged object is
  *reported*, never repaired — there is nothing to repair it from);
* objects nothing refers to: entries under a directory id that no reachable
  directory has, overflow metadata of no entry, times records of no entry
  version, files unlinked while open (``o/``) left by a crash, and multipart
  uploads, times records and (local store) temporary files older than a
  grace period;
* two directory entries holding one directory id (left by a crash in the
  middle of a directory rename), or one file or symlink id (a file rename).

``--repair`` removes only leftovers that hold no data a user can reach:
orphaned ``o/`` files, unreferenced overflow objects and times records,
stale multipart uploads and temporary files; entries under unreachable directory ids are moved into
``/lost+found`` (named ``<8 hex digits of the lost directory id>-<name>``).  It never deletes a
damaged object (the evidence, and maybe all that is left of a file).
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import FsError, IntegrityError, NotFound, SealfsError
from .volume import KIND_DIR, ROOT_ID, ROOT_KEY, Entry, Volume, times_key

LOST_AND_FOUND = b"lost+found"
#: Multipart uploads younger than this may belong to a running mount.
STALE_UPLOAD_SECONDS = 24 * 3600


@dataclass
class Report:
    files: int = 0
    dirs: int = 1
    links: int = 0
    bytes: int = 0
    #: (what, message): objects that failed authentication
    damaged: list[tuple[str, str]] = field(default_factory=list)
    #: (key or upload, why): safe to remove
    leftovers: list[tuple[str, str]] = field(default_factory=list)
    #: other findings that need a person (two names of one directory or file)
    warnings: list[str] = field(default_factory=list)
    repaired: int = 0
    #: (path, entry) of every reachable entry whose metadata opened, the
    #: root first (for ``--record`` and ``--since``: sealfs.rollback)
    entries: list[tuple[str, Entry]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.damaged or self.leftovers or self.warnings)


def check(
    vol: Volume,
    *,
    repair: bool = False,
    stale_seconds: float = STALE_UPLOAD_SECONDS,
    threads: int = 8,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> Report:
    """Check ``vol`` (and repair with ``repair``).  ``progress(total bytes)``,
    once the files are known, returns a callable told the bytes of each
    file authenticated."""
    report = Report()
    store = vol.store
    dir_ids = {ROOT_ID}
    entry_ids: set[bytes] = set()
    times_keys: set[str] = set()  # the times records reachable entries name
    files: list[tuple[str, Entry]] = []
    seen_dirs: dict[bytes, str] = {ROOT_ID: "/"}
    seen_others: dict[bytes, str] = {}  # files and symlinks

    def damaged(key: str, exc: Exception, where: str | None = None) -> None:
        report.damaged.append((where or key, str(exc)))
        named = vol.sealed.times_key_named_by(key)  # (evidence, not a leftover)
        if named is not None:
            times_keys.add(named)

    try:
        root = vol.root()
    except (IntegrityError, NotFound) as exc:
        damaged(ROOT_KEY, IntegrityError(f"root directory entry: {exc}"), "/")
        # (the root's entries are found by its fixed id: check them all the same)
        root = Entry(ROOT_ID, b"", ROOT_KEY, KIND_DIR, ROOT_ID, stat.S_IFDIR, 0, 0, 0, 0)
    else:
        report.entries.append(("/", root))
    stack = [(root, "/")]
    while stack:
        d, path = stack.pop()

        def bad(key: str, exc: Exception, path=path) -> None:
            damaged(key, exc, f"{path} ({key})")

        for e in vol.listdir(d.id, on_error=bad):
            child = path.rstrip("/") + "/" + e.name.decode(errors="replace")
            report.entries.append((child, e))
            entry_ids.add(e.id)
            if e.times_record is not None:
                times_keys.add(times_key(e.id, e.times_record))
            if e.is_dir:
                if e.id in seen_dirs:
                    report.warnings.append(
                        f"{child} and {seen_dirs[e.id]} are one directory "
                        "(a directory rename was interrupted): remove one name with "
                        "'sealfs rm' of the entry only after checking which to keep"
                    )
                    continue
                seen_dirs[e.id] = child
                dir_ids.add(e.id)
                report.dirs += 1
                stack.append((e, child))
                continue
            if e.id in seen_others:
                # (still checked below: both names are reachable copies)
                report.warnings.append(
                    f"{child} and {seen_others[e.id]} are one file (a file rename was "
                    "interrupted): two copies, which a mount treats as two files; check "
                    "which to keep and remove the other"
                )
            seen_others.setdefault(e.id, child)
            if e.is_link:
                report.links += 1
                try:
                    vol.readlink(e)
                except IntegrityError as exc:
                    report.damaged.append((child, str(exc)))
            else:
                files.append((child, e))

    def verify(item: tuple[str, Entry]) -> tuple[str, int, str | None]:
        path, e = item
        try:
            n = 0
            for chunk in vol.reader(e).iter_chunks(holes=False):  # (holes hold nothing to check)
                n += len(chunk)
            return path, n, None
        except (IntegrityError, SealfsError) as exc:
            return path, 0, str(exc)

    meter = progress(sum(e.size for _, e in files)) if progress else None
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, n, err in pool.map(verify, files):
            report.files += 1
            report.bytes += n
            if meter is not None:
                meter(n)
            if err:
                report.damaged.append((path, err))

    # Entries under a directory id that no reachable directory has: a file
    # created on one mount in a directory that another mount removed
    # meanwhile (see SEMANTICS.md, known gaps).  They hold users' data:
    # --repair moves the topmost ones into /lost+found (and with them what
    # lies below), it does not delete them.
    listed = {p: vol.listdir(p, on_error=damaged) for p in _unknown_ids(store, "d/", dir_ids, report)}
    inner = {e.id for entries in listed.values() for e in entries if e.is_dir}
    rescue = [e for p, entries in listed.items() if p not in inner for e in entries]
    stack = list(rescue)
    while stack:  # (all below them is reachable once they are moved)
        e = stack.pop()
        entry_ids.add(e.id)
        if e.times_record is not None:
            times_keys.add(times_key(e.id, e.times_record))
        stack.extend(listed.get(e.id, []) if e.is_dir else [])
    report.leftovers += [(e.key, "entry of a directory that no longer exists") for e in rescue]
    for x in _unknown_ids(store, "x/", entry_ids, report):
        report.leftovers.append((f"x/{x.hex()}", "overflow metadata of no entry"))
    for o in store.list_all("o/"):
        if not isinstance(o, str):
            report.leftovers.append((o.key, "file unlinked while open, left by a crash"))
    now = time.time()
    for t in store.list_all("t/"):
        # (a record is written just before the upload that names it completes)
        if not isinstance(t, str) and t.key not in times_keys and now - t.mtime > stale_seconds:
            report.leftovers.append((t.key, "times record of no entry version"))
    for up in store.list_multipart_uploads():
        if now - up.initiated > stale_seconds:
            report.leftovers.append((f"upload {up.upload_id} of {up.key}", "stale multipart upload"))
    temporaries = {f"temporary file {name}": name for name, mtime in store.temporaries() if now - mtime > stale_seconds}
    report.leftovers += [(what, "part of an object being written, left by a crash") for what in temporaries]

    if repair:
        uploads = {f"upload {u.upload_id} of {u.key}": u for u in store.list_multipart_uploads()}
        lost = {e.key: e for e in rescue}
        lost_and_found = _lost_and_found(vol) if lost else None
        for what, _ in report.leftovers:
            if what in uploads:
                store.abort_multipart(uploads[what].key, uploads[what].upload_id)
            elif what in temporaries:
                store.remove_temporary(temporaries[what])
            elif what in lost:
                _move_into(vol, lost_and_found, lost[what])
            else:
                store.delete(what)
            report.repaired += 1
    return report


def _unknown_ids(store, prefix: str, known: set[bytes], report: Report) -> list[bytes]:
    """The ids under ``prefix`` (``d/<id>/...``, ``x/<id>``) not in ``known``."""
    found: dict[bytes, None] = {}
    for o in store.list_all(prefix):
        if isinstance(o, str):
            continue
        i = _hex_id(o.key.split("/")[1])
        if i is None:
            report.warnings.append(f"{o.key}: not an object sealfs writes (left alone)")
        elif i not in known:
            found[i] = None
    return list(found)


def _lost_and_found(vol: Volume) -> Entry:
    """The /lost+found directory (made if missing)."""
    try:
        return vol.lookup(ROOT_ID, LOST_AND_FOUND)
    except FsError:
        return vol.mkdir(ROOT_ID, LOST_AND_FOUND, 0o700, 0, 0)


def _move_into(vol: Volume, lf: Entry, e: Entry) -> None:
    """Move ``e`` into directory ``lf`` as ``<its lost directory's id>-<name>``."""
    stem = e.parent_id.hex()[:8].encode() + b"-" + e.name
    for n in range(1, 1000):
        name = (stem if n == 1 else stem + b"." + str(n).encode())[-255:]
        try:
            vol.lookup(lf.id, name)
        except FsError:
            vol.rename(e, lf.id, name)
            return
    raise FsError(errno.EEXIST, "no free name in /lost+found")


def _hex_id(text: str) -> bytes | None:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) == 16 else None
