"""docs/DEVELOPMENT.md's module map against the tree: one paragraph per
module of ``sealfs/``, each saying its job and the layers it may import,
and every module importing nothing it does not list.

A paragraph of the map is a list item that starts with the module's path
in bold code, and ends with ``Imports:`` and the layers, in code, or
``nothing``::

    - **`sealfs/codec/names.py`** Sealed file names. Imports: `codec`, `errors`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from test_layers import MODULES, PKG, _imports, _layer

DOC = PKG.parent / "docs" / "DEVELOPMENT.md"
ITEM = re.compile(r"^- \*\*`(sealfs/[\w/]+\.py)`\*\* (.+?)(?=^- \*\*`|^#|\Z)", re.M | re.S)
IMPORTS = re.compile(r"Imports: ((?:`\w+`(?:, )?)+|nothing)\.\s*$")


def _map() -> dict[str, tuple[str, set[str]]]:
    """path -> (job, layers it may import), as the map says."""
    text = DOC.read_text()
    start = text.index("\n## Modules\n")
    section = text[start : text.index("\n## ", start + 1)]
    out = {}
    for path, body in ITEM.findall(section):
        body = " ".join(body.split())
        m = IMPORTS.search(body)
        assert m, f"{path}: the paragraph must end with 'Imports: `layer`, ...' or 'Imports: nothing.'"
        assert path not in out, f"{path} is in the map twice"
        out[path] = (body[: m.start()].strip(), set(re.findall(r"`(\w+)`", m.group(1))))
    return out


def _documented(path: Path) -> bool:
    """Every module with code: an ``__init__.py`` that holds only a
    docstring is its package's, not a module of its own."""
    tree = ast.parse(path.read_text())
    return path.name != "__init__.py" or len(tree.body) > (1 if ast.get_docstring(tree) else 0)


def test_every_module_has_one_paragraph_and_no_paragraph_is_stale():
    tree = {str(p.relative_to(PKG.parent)) for p in MODULES if _documented(p)}
    documented = set(_map())
    assert not tree - documented, f"modules missing from the map in docs/DEVELOPMENT.md: {sorted(tree - documented)}"
    assert not documented - tree, f"the map names modules that do not exist: {sorted(documented - tree)}"


@pytest.mark.parametrize("path", sorted(_map()))
def test_a_module_imports_only_what_its_paragraph_says(path):
    job, allowed = _map()[path]
    assert len(job) > 20, f"{path}: say the module's job"
    module = PKG.parent / path
    own = _layer(".".join(Path(path).with_suffix("").parts))
    used = {_layer(name) for name, _ in _imports(module)} - {None, own}
    assert used <= allowed, f"{path} imports {sorted(used - allowed)}, which its paragraph does not list"
    assert allowed - {own} <= used, f"{path}: the paragraph lists {sorted(allowed - {own} - used)}, not imported"
