"""sealfs: an encrypted filesystem over an object store, with access decided
per calling workload.

The layers and every module's job: docs/DEVELOPMENT.md.

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
