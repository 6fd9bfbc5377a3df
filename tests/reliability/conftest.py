"""Fixtures of the reliability tests (load, bad input, crashes, faults).

They mount for real, like tests/fs: the fixtures and helpers of
tests/fs/conftest.py (``make_mount``, ``Mount``, ``sealfs``, …) are loaded
from that file under another module name, not copied (as tests/policy does).
Test modules import the helpers from ``.conftest``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("sealfs_tests_fs_helpers",
                                               Path(__file__).resolve().parent.parent / "fs" / "conftest.py")
fs_helpers = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(fs_helpers, "Mount"):
    _spec.loader.exec_module(fs_helpers)

Mount = fs_helpers.Mount
sealfs = fs_helpers.sealfs
daemon_pids = fs_helpers.daemon_pids
is_mounted = fs_helpers.is_mounted
unmount_all = fs_helpers.unmount_all
make_mount = fs_helpers.make_mount  # the fixture (registered by this import)
mounted = fs_helpers.mounted  # the fixture
