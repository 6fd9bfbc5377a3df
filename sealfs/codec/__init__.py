"""Pure format and crypto: bytes in, bytes out, no I/O, no FUSE, no trio.

``crypto``  every key derivation and its label, in one place
``header``  the fixed-size header of a file object (wrapped DEK)
``blocks``  offset arithmetic and per-block AEAD
``names``   deterministic name encryption (AES-SIV) and the long-name scheme
``meta``    encrypted entry metadata (mode, owner, times, xattrs, link target)
``entry``   the entry-metadata schema: an Entry to and from its fields
"""
