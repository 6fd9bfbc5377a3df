"""The pyfuse3 adapter: request -> policy -> filesystem core -> reply.

``ops`` has the handlers (SealfsOps, one per FUSE operation) and the mount
options; ``gate`` the access policy's checks and the hiding of names;
``run`` the worker threads and the one error path.
"""
