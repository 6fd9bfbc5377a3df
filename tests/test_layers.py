"""The layering of DESIGN.md, held by parsing every import.

    cli → daemon → fuseops → {policy, fs, fsck, rollback} → volume → fileio → {keys, store} → codec → errors

A module may import its own package and anything on a lower layer, never
upwards or sideways."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sealfs"
RANK = {
    "cli": 8,
    "daemon": 7,
    "fuseops": 6,
    "policy": 5,
    "fs": 5,
    "fsck": 5,
    "rollback": 5,
    "volume": 4,
    "fileio": 3,
    "keys": 2,
    "store": 2,
    "codec": 1,
    "errors": 0,
}


def _layer(module: str) -> str | None:
    """The top-level part of ``sealfs`` a module belongs to (None for the
    package itself and names it defines, such as ``__version__``)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "sealfs" or parts[1] == "__init__":
        return None
    exists = (PKG / parts[1]).is_dir() or (PKG / f"{parts[1]}.py").is_file()
    return parts[1] if exists else None


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute names of the sealfs modules that ``path`` imports."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("sealfs")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
                    continue
            else:
                name = node.module or ""
            if name.startswith("sealfs"):
                out.append((name, node.lineno))
    return out


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG.parent)))
def test_imports_only_go_down(path):
    own = _layer(".".join(path.relative_to(PKG.parent).with_suffix("").parts))
    if own is None:
        return
    for name, line in _imports(path):
        target = _layer(name)
        if target is None or target == own:
            continue
        assert target in RANK, f"{path.name}:{line} imports unknown layer {target}"
        assert RANK[target] < RANK[own], f"{path.relative_to(PKG.parent)}:{line}: {own} must not import {target}"


def test_codec_and_store_load_no_fuse_or_trio():
    # The local store and the volume on it, used as a library: no FUSE, no
    # trio, and no boto3 until an s3:// store is opened.
    code = (
        "import sys, tempfile, sealfs.codec.blocks, sealfs.codec.names, sealfs.codec.meta, sealfs.volume; "
        "from sealfs.store import open_store; "
        "store = open_store('file://' + tempfile.mkdtemp() + '/s', create=True); store.put('probe', b'x'); "
        "assert store.get('probe') == b'x'; "
        "bad = [m for m in ('pyfuse3', 'trio', 'boto3') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the library layers loaded {out.stdout.strip()}"
