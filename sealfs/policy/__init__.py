"""Access policy: who is calling, what the policy says, what gets recorded.

    identity.py      the caller of a FUSE request, from /proc (exe and its
                     sha256, script, cgroup, tracer, LD_PRELOAD, start
                     time, dumpable, traced since exec), made of:
      proc.py        reading a process's /proc files; its stat and status
      handles.py     its stat, status and maps held open per exec; exec
                     detection
      programs.py    what it runs, gathered once per exec (exe, script,
                     environment, cgroup, executable mappings)
      interpreters.py  interpreters: their script, startup options and
                     variables
      hashing.py     sha256 of files, cached and bounded
      tracers.py     its tracers, now and since its exec
      mappings.py    its executable mappings, and whose code they are
    rules.py         the TOML policy file read into a Policy, errors with
                     file:line (sealfs-policy(5)); made of:
      source.py      the text: lines of keys, errors and warnings
      globs.py       path and cgroup globs
      workloads.py   workloads and whether an identity is in one
      decisions.py   rules, the Policy and its decisions
    host.py          what a policy relies on outside it (Yama, the policy
                     file's permissions, …): its warnings, ``sealfs doctor``
    audit.py         one JSON line per decision that matters, rate-limited
    guard.py         the three together, as the FUSE adapter uses them

Nothing here imports pyfuse3 or trio; everything blocks (reads /proc,
hashes binaries), so the adapter calls it from worker threads.
"""
