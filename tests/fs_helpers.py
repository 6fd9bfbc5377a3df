"""tests/fs/conftest.py once more, under its own module name, for the suites
outside tests/fs (policy, reliability) that mount volumes the same way:
its fixtures and helpers (``make_mount``, ``Mount``, ``sealfs``, …) are
loaded from that one file, not copied.  (pytest imports each directory's
conftest.py as ``conftest``; a second import under that name would clash.)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sealfs_tests_fs_helpers", Path(__file__).resolve().parent / "fs" / "conftest.py"
)
fs_helpers = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(fs_helpers, "Mount"):
    _spec.loader.exec_module(fs_helpers)
