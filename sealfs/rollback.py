"""``sealfs fsck --record FILE`` and ``--since FILE``: rollback and deletion
detection against a state recorded earlier (docs/SECURITY.md, "Rollback";
the file's format: docs/FORMAT.md, "Fsck records").

Every object of a volume authenticates on its own, so an older version of
an entry put back whole (its object and its metadata, which belong
together), or an entry removed, leaves a volume that checks clean.  What
tells is a record of the state from before: every reachable entry's id,
parent, kind, version number (``vn``), ctime and header identity (``hh``),
with its path, sealed under the volume's metadata key so that the file
(kept on local disk) leaks no name and cannot be edited unnoticed.  An
entry whose version is older than recorded was rolled back; one whose id
is no longer reachable was deleted (by a bucket writer, or by a mount: the
record cannot tell which).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from dataclasses import dataclass

from .errors import IntegrityError, UsageError
from .volume import Entry, Volume

FORMAT = "sealfs-fsck-record"
VERSION = 1
_AAD = b"sealfs fsck record "


@dataclass(frozen=True)
class Finding:
    what: str  # "ROLLED BACK" or "DELETED"
    path: str
    message: str


def _state(path: str, e: Entry) -> dict:
    return {
        "id": e.id.hex(),
        "p": e.parent_id.hex(),
        "k": e.kind,
        "vn": e.version,
        "ct": e.ctime_ns,
        "hh": e.header_hash.hex() if e.header_hash is not None else "",
        "path": path,
    }


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def make(vol: Volume, entries: list[tuple[str, Entry]]) -> bytes:
    """The record file of ``entries`` ((path, entry) pairs, as fsck found them)."""
    state = {"made": int(time.time()), "entries": [_state(path, e) for path, e in entries]}
    sealed = vol.meta.seal_bytes(_json(state), _AAD + vol.config.volume_id)
    return (
        json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "volume_id": vol.config.volume_id.hex(),
                "record": base64.b64encode(sealed).decode("ascii"),
            },
            indent=1,
            sort_keys=True,
        ).encode()
        + b"\n"
    )


def write(path: str, data: bytes) -> None:
    """Write a record file readable by its owner only, replacing ``path``
    whole (a crash leaves the old record or the new one)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"cannot write the record {path}: {exc.strerror}") from None


def read(vol: Volume, path: str) -> tuple[int, list[dict]]:
    """(when it was made, the recorded entries) of record file ``path``."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 30))
    except OSError as exc:
        raise UsageError(f"cannot read the record {path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"{path} is not an fsck record (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise UsageError(f"{path} is not an fsck record of format version {VERSION}")
    if doc.get("volume_id") != vol.config.volume_id.hex():
        raise UsageError(f"{path} is the record of another volume")
    try:
        sealed = base64.b64decode(doc.get("record", ""), validate=True)
    except (binascii.Error, TypeError):
        raise IntegrityError(f"the record {path} is damaged (not base64)") from None
    try:
        data = vol.meta.open_bytes(sealed, _AAD + vol.config.volume_id, f"the record {path}")
    except IntegrityError:
        raise IntegrityError(
            f"the record {path} does not authenticate (modified, or not made with this volume's keys)"
        ) from None
    try:
        state = json.loads(data)
        made, entries = int(state["made"]), state["entries"]
        for r in entries:
            bytes.fromhex(r["id"]), bytes.fromhex(r["hh"]), int(r["vn"]), int(r["ct"]), str(r["path"])
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"the record {path} is malformed") from None
    return made, entries


def compare(recorded: list[dict], entries: list[tuple[str, Entry]]) -> list[Finding]:
    """What changed since the record, other than forward: entries whose
    version is older than recorded, and recorded entries no longer
    reachable.  Versions are ordered by version number, then by ctime
    (entries written before version numbers have none)."""
    now = {e.id.hex(): (path, e) for path, e in entries}
    out = []
    for r in recorded:
        found = now.get(r["id"])
        kind = {"f": "file", "d": "directory", "l": "symlink"}.get(r["k"], "entry")
        if found is None:
            out.append(
                Finding(
                    "DELETED",
                    r["path"],
                    f"a {kind} recorded at version {r['vn']}, no longer in the volume (removed, or its directory was)",
                )
            )
            continue
        path, e = found
        have, had = (e.version, e.ctime_ns), (int(r["vn"]), int(r["ct"]))
        hh = e.header_hash.hex() if e.header_hash is not None else ""
        if have < had or (have == had and hh != r["hh"]):
            where = "" if path == r["path"] else f" (recorded as {r['path']})"
            out.append(
                Finding(
                    "ROLLED BACK",
                    path,
                    f"version {e.version} (ctime {_when(e.ctime_ns)}) in the "
                    f"store, version {r['vn']} (ctime {_when(int(r['ct']))}) "
                    f"recorded{where}",
                )
            )
    return out


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))
