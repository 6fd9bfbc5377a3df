"""Access policy: who is calling, what the policy says, what gets recorded.

    identity.py   the caller of a FUSE request, from /proc (exe and its
                  sha256, script, cgroup, tracer, LD_PRELOAD, start time,
                  dumpable, traced since exec); made of:
      proc.py          reading a process's /proc files; stat, status
      handles.py       its stat, status and maps held open per exec;
                       exec detection
      programs.py      what it runs, gathered once per exec (exe, script,
                       environment, cgroup, executable mappings)
      interpreters.py  interpreters, their scripts and startup options
      hashing.py       the bounded sha256 cache of files
      tracers.py       its tracers now and since its exec
      mappings.py      its executable mappings, and whose code they are
    rules.py      the TOML policy file: workloads, rules, decisions, errors
                  with file:line (sealfs-policy(5))
    host.py       what a policy relies on outside it (Yama, the policy
                  file's permissions, …): its warnings, ``sealfs doctor``
    audit.py      one JSON line per decision that matters, rate-limited
    guard.py      the three together, as the FUSE adapter uses them

Nothing here imports pyfuse3 or trio; everything blocks (reads /proc,
hashes binaries), so the adapter calls it from worker threads.
"""
