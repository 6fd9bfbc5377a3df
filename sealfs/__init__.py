"""sealfs: an encrypted filesystem over an object store, with access decided
per calling workload.

General layout (imports only go downwards):

    cli/          argparse tree and dispatch, the commands, the one -o parser, the
                  mount.sealfs helper
    daemon.py     mount lifecycle: harden, fork, serve, flush, unmount
    fuseops/      the pyfuse3 adapter: request -> policy -> filesystem core -> reply
    policy/       who is calling (/proc), the TOML access policy, the audit log
    fs/           the filesystem core: inodes, open files, write-back, caches
                  (FUSE-shaped, never imports pyfuse3 or trio)
    volume/       the library API: entries, names, contents by plaintext path
    fileio/       file I/O: file objects read and written (sealed metadata in, etag out)
    keys/         key slots, key sources, KMS
    store/        object stores: local directory, S3
    codec/        the format: pure crypto and byte layouts, no I/O
    errors.py     one error hierarchy with exit codes

The format and store layers never import pyfuse3 or trio, so programs that
cannot mount can use :func:`open_volume`.
"""

__version__ = "0.1.0"


def open_volume(url: str, credentials, options: dict[str, str] | None = None):
    """Open and unlock the volume at ``url`` (``file:///path`` or
    ``s3://bucket[/prefix]``) with a list of credentials from
    :mod:`sealfs.keys.slots` (Passphrase, KeyFile, KmsKey)."""
    from .store import open_store
    from .volume import Volume

    return Volume.open(open_store(url, options or {}), list(credentials))
