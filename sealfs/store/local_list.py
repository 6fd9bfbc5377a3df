"""Listing a local store: its directories walked in key order, a page at
a time.

Listing opens each listed object file for its etag (one open and one 4 KiB
read per object); sizes come from ``fstat``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..errors import DamagedObject
from .base import KEY_SEGMENT_CHARS, ListPage, ObjectInfo, check_key
from .local_dir import DIR_SUFFIX
from .local_files import HEADER_SIZE, ObjectFiles, opened

#: Sorts after every key character ('z' is the greatest): ``p + _AFTER``
#: is greater than every key that starts with ``p``.
_AFTER = "~"


def list_page(files: ObjectFiles, prefix: str, delimiter: str | None, token: str | None, max_keys: int) -> ListPage:
    """A page of keys under ``prefix``.  The token is the point to resume
    after: the last key returned, or a common prefix followed by ``~``
    (sorting after every key under that prefix).  An object file with a
    damaged header is listed (size from its length, etag empty): the
    listing is not the place to fail, a read of it fails."""
    d = files.d
    d.check_root()
    if max_keys < 1:
        raise ValueError(f"max_keys must be at least 1, not {max_keys}")
    if delimiter == "":
        raise ValueError("the delimiter must not be empty")
    max_keys = min(max_keys, 1000)
    page = ListPage()
    base, slash, partial = prefix.rpartition("/")
    try:
        if slash:
            check_key(base)
    except ValueError:
        return page  # no valid key starts with this prefix
    if not KEY_SEGMENT_CHARS.issuperset(partial):
        return page
    directory = d.dir_path(base) if slash else d.objects
    walk = _walk(directory, base + slash, prefix, token or "", delimiter == "/")
    last_prefix = None
    resume_after = ""
    for is_dir, name, path in walk:
        info = None
        if not is_dir and delimiter is not None:
            cut = name.find(delimiter, len(prefix))
            if cut >= 0:
                name, is_dir = name[: cut + len(delimiter)], True
        if is_dir:
            if name == last_prefix:
                continue
            last_prefix = name
        else:
            info = _list_info(files, name, path)
            if info is None:
                continue  # deleted since the directory was read
        if len(page.objects) + len(page.prefixes) == max_keys:
            page.next_token = resume_after
            break
        if info is None:
            page.prefixes.append(name)
            resume_after = name + _AFTER
        else:
            page.objects.append(info)
            resume_after = name
    return page


def _list_info(files: ObjectFiles, key: str, path: str) -> ObjectInfo | None:
    """The info of a listed object file; ``None`` if it is gone."""
    with files.d.os_errors("list", key):
        try:
            with opened(path) as fd:
                try:
                    return files.info(fd, key, with_metadata=False)
                except DamagedObject:
                    st = os.fstat(fd)
                    return ObjectInfo(key, max(0, st.st_size - HEADER_SIZE), "", mtime=st.st_mtime)
        except FileNotFoundError:
            return None


def _walk(
    directory: str, key_base: str, prefix: str, start_after: str, stop_at_dirs: bool
) -> Iterator[tuple[bool, str, str]]:
    """Yield ``(is_dir, key, path)`` for the objects under ``directory``
    (whose keys start with ``key_base``) that start with ``prefix`` and
    sort after ``start_after``, in key order.  With ``stop_at_dirs``
    (delimiter '/'), a subdirectory holding such objects is yielded once,
    as ``(True, its key prefix ending in '/', path)``, not entered."""
    entries = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.endswith(DIR_SUFFIX):
                    if entry.is_dir(follow_symlinks=False):
                        entries.append((key_base + entry.name[: -len(DIR_SUFFIX)] + "/", True, entry.path))
                elif entry.is_file(follow_symlinks=False):
                    entries.append((key_base + entry.name, False, entry.path))
    except FileNotFoundError:
        return  # removed by a concurrent delete
    # Sorting files by their key and directories by key + '/' is key
    # order: no other entry's keys fall between those of one directory.
    entries.sort()
    for name, is_dir, path in entries:
        if not is_dir:
            if name.startswith(prefix) and name > start_after:
                yield False, name, path
        elif name.startswith(prefix) or prefix.startswith(name):
            if start_after >= name and not start_after.startswith(name):
                continue  # every key under it sorts before start_after
            if stop_at_dirs and name.startswith(prefix):
                if name > start_after and _has_objects(path):
                    yield True, name, path
            else:
                yield from _walk(path, name, prefix, start_after, stop_at_dirs)


def _has_objects(directory: str) -> bool:
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.endswith(DIR_SUFFIX):
                    if entry.is_dir(follow_symlinks=False) and _has_objects(entry.path):
                        return True
                elif entry.is_file(follow_symlinks=False):
                    return True
    except FileNotFoundError:
        pass
    return False
