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


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_codec_and_store_load_no_fuse_or_trio(tmp_path):
    # Every module below the adapter (codec, keys, both stores, the volume,
    # the filesystem core...), imported and a local store used as a library:
    # no FUSE and no trio, and no boto3 until the S3 store is imported.
    below = [m for m in map(_module, MODULES) if (layer := _layer(m)) and RANK[layer] < RANK["fuseops"]]
    s3 = [m for m in below if m.startswith("sealfs.store.s3")]
    library = [m for m in below if m not in s3]
    assert "sealfs.store.local" in library and "sealfs.codec.blocks" in library and "sealfs.volume" in library
    assert "sealfs.store.s3" in s3
    code = (
        "import importlib, sys\n"
        "def loaded(): return ','.join(m for m in ('pyfuse3', 'trio', 'boto3') if m in sys.modules)\n"
        "for name in sys.argv[1].split(','): importlib.import_module(name)\n"
        "from sealfs.store import open_store\n"
        "store = open_store('file://' + sys.argv[3], create=True)\n"
        "store.put('probe', b'x')\n"
        "assert store.get('probe') == b'x'\n"
        "print(loaded())\n"
        "for name in sys.argv[2].split(','): importlib.import_module(name)\n"
        "print(loaded())\n"
    )
    argv = [sys.executable, "-c", code, ",".join(library), ",".join(s3), str(tmp_path / "s")]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    without_s3, with_s3 = out.stdout.splitlines()
    assert without_s3 == "", f"the library layers loaded {without_s3}"
    assert with_s3 == "boto3", f"with the S3 store, the library layers loaded {with_s3} (boto3 alone expected)"
