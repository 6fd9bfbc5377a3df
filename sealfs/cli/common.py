"""What the commands share: the store and the volume named on the command
line, unlocked with the key flags and ``-o`` options, and a progress meter."""

from __future__ import annotations

import sys
import time

from ..keys import sources
from ..keys.slots import Credential, KeyFile, KmsKey, Passphrase
from . import options as optparse


def store_for(url: str, opts: dict[str, str], *, create: bool = False):
    """The store at ``url``, opened with the store options among ``opts``."""
    from ..store import open_store

    return open_store(url, optparse.store_options(opts), create=create)


def credentials(opts: dict[str, str], *, confirm: bool = False, prompt: str = "Passphrase: ") -> list[Credential]:
    """What unlocks the volume: the key file, the KMS slot, or a passphrase."""
    if "keyfile" in opts:
        path = opts["keyfile"]
        return [KeyFile(path, sources.read_keyfile(path))]
    if "kms" in opts:
        return [KmsKey(region=opts.get("kms_region"), endpoint=opts.get("kms_endpoint"))]
    secret = sources.read_passphrase(
        passfile=opts.get("passfile"), extpass=opts.get("extpass"), confirm=confirm, prompt=prompt
    )
    return [Passphrase(secret)]


def options_of(args) -> dict[str, str]:
    """-o options plus the explicit key flags, in one dict."""
    opts = optparse.parse(getattr(args, "o", None))
    for flag in ("keyfile", "passfile", "extpass"):
        value = getattr(args, flag, None)
        if value:
            opts[flag] = value
    if getattr(args, "kms", False):
        opts["kms"] = ""
    return opts


def open_volume(args):
    """The volume in ``args.store``, unlocked."""
    from ..volume import Volume

    opts = options_of(args)
    store = store_for(args.store, opts)
    return Volume.open(store, credentials(opts))


class Progress:
    """A one-line progress meter on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str):
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.done >= self.total):
            self._last = now
            pct = min(100, 100 * self.done // self.total)
            rate = self.done / max(now - self._start, 1e-6) / 1e6
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}% {rate:7.1f} MB/s")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
