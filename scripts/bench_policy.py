"""The cost of the access policy (a benchmark, not a test).

    .venv/bin/python scripts/bench_policy.py [--rules-only] [--runs N] [--quick]

First, one line each for loading a generated 20,000-rule policy and for
matching globs that a backtracking matcher would take seconds for (eight
``**`` against a path of 400 names; eight ``*`` in one name), then W8.

W8 lives in scripts/bench.py (see its docstring): 10,000 open+read+close
of a 4 KiB file on a sealfs mount without a policy and on one with a policy
naming this process, the two mounts taking turns every 500 iterations.  This
runs only that, on the local store, with sealfs alone; extra arguments go to
scripts/bench.py.  ``--rules-only`` stops after the policy lines.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sealfs.policy.globs import compile_glob  # noqa: E402
from sealfs.policy.identity import Identity  # noqa: E402
from sealfs.policy.rules import parse_policy  # noqa: E402


def policy_lines(rules: int = 20_000, workloads: int = 100) -> None:
    text = "".join(f"[workloads.w{w}]\nuid = {1000 + w}\n" for w in range(workloads))
    text += "".join(
        f'[[rule]]\npaths = ["/d{i}/**/x{i}/*", "/e{i}/**"]\nworkloads = ["w{i % workloads}"]\n'
        f'{"deny" if i % 3 == 0 else "allow"} = ["read", "list"]\n' + ("hide = true\n" if i % 6 == 0 else "")
        for i in range(rules)
    )
    t = time.perf_counter()
    policy = parse_policy(text, "generated.toml")
    load = time.perf_counter() - t
    ident = Identity(pid=1, uid=1007, gid=1007, start_time=1)
    t = time.perf_counter()
    for i in range(1000):
        policy.decide(ident, "read", f"/d{i * 7}/a/b/x{i * 7}/f")
    decide = (time.perf_counter() - t) / 1000
    print(
        f"policy: load {rules} rules, {workloads} workloads: {load:.2f} s; decide read (one caller): "
        f"{decide * 1e6:.0f} us"
    )
    deep = "/" + "/".join(["aa"] * 400) + "/y"
    for glob, path in (("/" + "/".join(["**", "a*"] * 8) + "/z", deep), ("/**/" + "*a" * 8 + "*b", "/x/" + "a" * 250)):
        g = compile_glob(glob)
        t = time.perf_counter()
        for _ in range(100):
            g.matches(path)
        print(
            f"policy: match {glob[:40]}... against {len(path)} characters: "
            f"{(time.perf_counter() - t) / 100 * 1e6:.0f} us"
        )


if __name__ == "__main__":
    policy_lines()
    if "--rules-only" in sys.argv[1:]:
        sys.exit(0)
    bench = Path(__file__).resolve().with_name("bench.py")
    os.execv(
        sys.executable,
        [sys.executable, str(bench), "--only", "W8", "--stores", "local", "--peers", "none", *sys.argv[1:]],
    )
