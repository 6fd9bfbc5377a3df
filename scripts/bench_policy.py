"""W8 alone: the cost of the access policy on the hot path (a benchmark, not a test).

    .venv/bin/python scripts/bench_policy.py [--runs N] [--quick]

W8 now lives in scripts/bench.py (see its docstring): 10,000 open+read+close
of a 4 KiB file on a sealfs mount without a policy and on one with a policy
naming this process, the two mounts taking turns every 500 iterations.  This
runs only that, on the local store, with sealfs alone; extra arguments go to
scripts/bench.py.
"""

import os
import sys
from pathlib import Path

bench = Path(__file__).resolve().with_name("bench.py")
os.execv(sys.executable, [sys.executable, str(bench), "--only", "W8", "--stores", "local", "--peers", "none",
                          *sys.argv[1:]])
