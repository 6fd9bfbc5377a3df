"""The one ``-o`` option parser, shared by ``sealfs mount``, the fstab path
(mount.fuse3 → ``sealfs STORE MOUNTPOINT -o …``) and ``mount.sealfs``.

Options are ``name`` or ``name=value`` separated by commas.  Generic mount
options that mount(8), systemd or mount.fuse3 pass along (``_netdev``,
``nofail``, ``noauto``, ``x-systemd.*``, ``rw``, ``nosuid``, …) are accepted
and ignored; anything else unknown is an error, so a typo is not silently
dropped.
"""

from __future__ import annotations

import os
import re

from ..errors import UsageError

#: sealfs's own options and whether they take a value.
KNOWN = {
    # store
    "endpoint": True,
    "region": True,
    "path_style": False,
    # keys
    "keyfile": True,
    "passfile": True,
    "extpass": True,
    "kms": False,
    "kms_endpoint": True,
    "kms_region": True,
    # mount behaviour
    "allow_other": False,
    "ro": False,
    "rw": False,
    "foreground": False,
    "log": True,
    "log_level": True,
    "cache_size": True,
    "dirty_size": True,
    "cache_dir": True,
    "attr_timeout": True,
    "entry_timeout": True,
    # policy (see sealfs-policy(5))
    "policy": True,
    "audit_log": True,
}
#: Passed by mount(8)/systemd/mount.fuse3; no meaning for sealfs.
IGNORED = {
    "_netdev",
    "nofail",
    "noauto",
    "auto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "defaults",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "sync",
    "async",
    "default_permissions",
    "comment",
}
IGNORED_PREFIXES = ("x-systemd.", "x-", "comment=")
LEVELS = {"debug", "info", "warning", "error"}


def parse(text: str | list[str] | None) -> dict[str, str]:
    """``"a,b=c"`` (or several such strings) → ``{"a": "", "b": "c"}``."""
    out: dict[str, str] = {}
    chunks = [text] if isinstance(text, str) else list(text or [])
    for chunk in chunks:
        for item in _split(chunk):
            name, eq, value = item.partition("=")
            name = name.strip()
            if not name:
                continue
            if name in IGNORED or item.startswith(IGNORED_PREFIXES):
                continue
            if name not in KNOWN:
                raise UsageError(f"unknown mount option {name!r} (see sealfs(1), section MOUNT OPTIONS)")
            if KNOWN[name] and not eq:
                raise UsageError(f"mount option {name} needs a value: {name}=...")
            if not KNOWN[name] and eq and value.lower() not in ("", "1", "true", "yes", "0", "false", "no"):
                raise UsageError(f"mount option {name} takes no value")
            if not KNOWN[name] and value.lower() in ("0", "false", "no"):
                out.pop(name, None)
                continue
            out[name] = value
    return out


def _split(text: str) -> list[str]:
    """Split on commas, except inside quotes (an extpass command may need them)."""
    items, cur, quote = [], [], ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                cur.append(ch)
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quote:
        raise UsageError("unbalanced quote in mount options")
    items.append("".join(cur))
    return items


def size(value: str, name: str) -> int:
    """``"64M"``, ``"1G"``, ``"4096"`` → bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*", value)
    if not m:
        raise UsageError(f"mount option {name}={value}: expected a size like 256M or 1G")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def seconds(value: str, name: str) -> float:
    try:
        out = float(value)
    except ValueError:
        out = -1
    if out < 0:
        raise UsageError(f"mount option {name}={value}: expected a number of seconds")
    return out


def store_options(opts: dict[str, str]) -> dict[str, str]:
    from ..store import STORE_OPTIONS

    return {k: opts[k] for k in STORE_OPTIONS if k in opts}


def absolute(path: str, name: str) -> str:
    if not path:
        raise UsageError(f"mount option {name} needs a path")
    return os.path.abspath(path)


def log_level(value: str) -> str:
    if value.lower() not in LEVELS:
        raise UsageError(f"log_level={value}: use one of {', '.join(sorted(LEVELS))}")
    return value.lower()
