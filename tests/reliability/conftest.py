"""Fixtures of the reliability tests (load, bad input, crashes, faults).

They mount for real, like tests/fs: the fixtures and helpers of
tests/fs/conftest.py (``make_mount``, ``Mount``, ``sealfs``, …) are loaded
from that file under another module name, not copied (as tests/policy does).
Test modules import the helpers from ``.conftest``.
"""

from __future__ import annotations

from fs_helpers import fs_helpers  # tests/fs_helpers.py

Mount = fs_helpers.Mount
sealfs = fs_helpers.sealfs
daemon_pids = fs_helpers.daemon_pids
is_mounted = fs_helpers.is_mounted
unmount_all = fs_helpers.unmount_all
raises_errno = fs_helpers.raises_errno
make_mount = fs_helpers.make_mount  # the fixture (registered by this import)
mounted = fs_helpers.mounted  # the fixture
