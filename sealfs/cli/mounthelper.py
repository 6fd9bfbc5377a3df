"""``mount.sealfs``: the mount(8) helper for fstab entries of type ``sealfs``.

mount(8) runs ``mount.sealfs STORE MOUNTPOINT [-sfnv] [-o OPTIONS]``; this
turns it into ``sealfs mount STORE MOUNTPOINT -o OPTIONS``.  (Entries of
type ``fuse.sealfs`` go through mount.fuse3 instead, which runs
``sealfs STORE MOUNTPOINT -o OPTIONS``; both end in the same code.)
"""

from __future__ import annotations

import sys

from .main import main as sealfs_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    positional: list[str] = []
    options: list[str] = []
    fake = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-o", "-t", "-N") and i + 1 < len(argv):
            if arg == "-o":
                options.append(argv[i + 1])
            i += 2  # -t TYPE and -N NAMESPACE: nothing for us to do
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg == "-f":
            fake = True  # mount(8) --fake: do everything but the mount
        elif arg in ("-s", "-n", "-v") or arg.startswith(("-t", "-N")):
            pass  # sloppy, no-mtab, verbose, type, namespace
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        print("usage: mount.sealfs STORE MOUNTPOINT [-sfnv] [-o OPTIONS]", file=sys.stderr)
        return 2
    if fake:
        return 0
    out = ["mount", *positional]
    for o in options:
        out += ["-o", o]
    return sealfs_main(out)


if __name__ == "__main__":
    sys.exit(main())
