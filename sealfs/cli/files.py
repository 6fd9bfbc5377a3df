"""The offline file commands: ``ls``, ``cat``, ``get``, ``put``, ``rm`` and
``mkdir``, on a volume opened in this process (no mount)."""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

from ..errors import ExitCode, FsError, SealfsError, UsageError
from .common import Progress, open_volume


def cmd_ls(args) -> int:
    vol = open_volume(args)
    try:
        e = vol.resolve(args.path, follow=True)
        damaged = _ls(vol, e, args.path.rstrip("/") or "/", args, top=True)
    finally:
        vol.close()
    return ExitCode.INTEGRITY if damaged else 0


def _ls(vol, e, path: str, args, top: bool) -> int:
    """List ``e``; the number of damaged entries left out (each said on stderr)."""
    if not e.is_dir:
        print(_ls_line(vol, e, path, args))
        return 0
    damaged = 0

    def skip(key: str, exc: Exception) -> None:
        nonlocal damaged
        damaged += 1
        print(f"sealfs: skipping damaged entry of {path}: {exc}", file=sys.stderr)

    entries = sorted(vol.listdir(e.id, on_error=skip), key=lambda x: x.name)
    if args.recursive and not top:
        print()
    if args.recursive:
        print(f"{path}:")
    for child in entries:
        print(_ls_line(vol, child, os.fsdecode(child.name), args))
    if args.recursive:
        for child in entries:
            if child.is_dir:
                damaged += _ls(vol, child, path.rstrip("/") + "/" + os.fsdecode(child.name), args, top=False)
    return damaged


def _ls_line(vol, e, name: str, args) -> str:
    if not args.long:
        return name
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime_ns / 1e9))
    suffix = f" -> {os.fsdecode(vol.readlink(e))}" if e.is_link else ""
    return f"{stat.filemode(e.mode)} {e.uid:>5} {e.gid:>5} {e.size:>12} {when} {name}{suffix}"


def _file(vol, path: str):
    e = vol.resolve(path)
    if e.is_dir:
        raise FsError(errno.EISDIR, f"{path}: is a directory")
    return e


def _copy_out(vol, e, out, label: str) -> None:
    progress = Progress(e.size, label)
    reader = vol.reader(e)
    for chunk in reader.iter_chunks():
        out.write(chunk)
        progress(len(chunk))
    progress.finish()


def cmd_cat(args) -> int:
    vol = open_volume(args)
    try:
        out = sys.stdout.buffer
        for path in args.paths:
            e = _file(vol, path)
            for chunk in vol.reader(e).iter_chunks():
                out.write(chunk)
        out.flush()
    finally:
        vol.close()
    return 0


def cmd_get(args) -> int:
    vol = open_volume(args)
    try:
        e = _file(vol, args.path)
        dest = args.dest or os.path.basename(args.path.rstrip("/"))
        if dest == "-":
            _copy_out(vol, e, sys.stdout.buffer, args.path)
            return 0
        if os.path.isdir(dest):
            dest = os.path.join(dest, os.fsdecode(e.name))
        tmp = f"{dest}.sealfs-partial"
        try:
            with open(tmp, "wb") as f:
                _copy_out(vol, e, f, args.path)
            os.chmod(tmp, e.mode & 0o7777)
            os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    finally:
        vol.close()
    return 0


def cmd_put(args) -> int:
    from ..volume import now_ns

    vol = open_volume(args)
    try:
        if args.src == "-":
            data = sys.stdin.buffer.read()
            size, mode, mtime = len(data), 0o644, now_ns()

            def block(i: int, bs=vol.layout.block_size) -> bytes:
                return data[i * bs : (i + 1) * bs]
        else:
            try:
                fd = os.open(args.src, os.O_RDONLY)
            except OSError as exc:
                raise UsageError(f"cannot read {args.src}: {exc.strerror}") from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{args.src} is not a regular file")
            size, mode, mtime = st.st_size, st.st_mode & 0o7777, st.st_mtime_ns

            def block(i: int, bs=vol.layout.block_size) -> bytes:
                want = min(bs, size - i * bs)
                got = os.pread(fd, want, i * bs)
                if len(got) != want:
                    raise SealfsError(f"{args.src} changed size while being read")
                return got

        target = args.path
        try:
            existing = vol.resolve(target)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            existing = None
        if existing is not None and existing.is_dir:
            name = os.fsencode(os.path.basename(args.src.rstrip("/"))) if args.src != "-" else b""
            if not name:
                raise UsageError(f"{target} is a directory; give the file name")
            parent = existing
            try:
                existing = vol.lookup(parent.id, name)
            except FsError:
                existing = None
        else:
            parent, name = vol.split(target)
        progress = Progress(vol.layout.object_size_for(size), f"put {target}")
        if existing is not None:
            if not existing.is_file:
                raise FsError(errno.EISDIR, f"{target}: is not a regular file")
            entry = existing
            entry.mtime_ns = entry.ctime_ns = mtime
            vol.write_content(entry, size, block, if_match=existing.etag, progress=progress)
        else:
            entry = vol.new_file_entry(parent.id, name, mode, os.getuid(), os.getgid())
            entry.mtime_ns = mtime
            vol.write_content(entry, size, block, if_none_match=True, progress=progress)
        progress.finish()
    finally:
        vol.close()
    return 0


def cmd_rm(args) -> int:
    vol = open_volume(args)
    try:
        for path in args.paths:
            e = vol.resolve(path, follow=False)
            if e.is_dir and not args.recursive:
                raise FsError(errno.EISDIR, f"{path}: is a directory (use -r)")
            _remove_tree(vol, e)
    finally:
        vol.close()
    return 0


def _remove_tree(vol, e) -> None:
    if e.is_dir:
        for child in vol.listdir(e.id):
            _remove_tree(vol, child)
    vol.remove(e)


def cmd_mkdir(args) -> int:
    vol = open_volume(args)
    try:
        for path in args.paths:
            if args.parents:
                parts = [p for p in os.fsencode(path).split(b"/") if p]
                cur = vol.root()
                for part in parts:
                    try:
                        cur = vol.lookup(cur.id, part)
                    except FsError as exc:
                        if exc.errno != errno.ENOENT:
                            raise
                        cur = vol.mkdir(cur.id, part, 0o755, os.getuid(), os.getgid())
                    if not cur.is_dir:
                        raise FsError(errno.ENOTDIR, f"{os.fsdecode(part)} is not a directory")
            else:
                parent, name = vol.split(path)
                vol.mkdir(parent.id, name, 0o755, os.getuid(), os.getgid())
    finally:
        vol.close()
    return 0
