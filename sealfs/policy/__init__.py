"""Access policy: who is calling, what the policy says, what gets recorded.

    identity.py   the caller of a FUSE request, from /proc (exe and its
                  sha256, script, cgroup, tracer, LD_PRELOAD, start time)
    rules.py      the TOML policy file: workloads, rules, decisions, errors
                  with file:line (sealfs-policy(5))
    audit.py      one JSON line per decision that matters, rate-limited
    guard.py      the three together, as the FUSE adapter uses them

Nothing here imports pyfuse3 or trio; everything blocks (reads /proc,
hashes binaries), so the adapter calls it from worker threads.
"""
