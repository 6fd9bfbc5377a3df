"""``sealfs policy check|explain``, and sealfs-policy(5) against the code:
its example is a valid policy, and it documents every operation, selector
and variable the code knows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from sealfs.cli import main as cli_main
from sealfs.policy import decisions, interpreters, rules, workloads

from .policyhelp import CLEAN_ENV, MAN_POLICY, man_page_example, sealfs

SLEEP = os.path.realpath(shutil.which("sleep"))


def test_check_accepts_the_man_page_example(tmp_path):
    f = tmp_path / "shop.toml"
    f.write_text(man_page_example())
    proc = sealfs("policy", "check", str(f))
    assert proc.stdout.decode().strip() == f"{f}: valid: 4 workloads, 6 rules, audit = deny"


def test_check_refuses_with_file_line_and_reason(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(man_page_example().replace('deny = ["read", "list"]', 'deny = ["read", "lsit"]'))
    proc = sealfs("policy", "check", str(f), check=False)
    assert proc.returncode == 2
    err = proc.stderr.decode().strip().splitlines()
    line = next(n for n, text in enumerate(f.read_text().splitlines(), 1) if "lsit" in text)
    assert err == [
        (
            f"sealfs: {f}:{line}: unknown operation 'lsit' in deny of rule 6; operations are read, write, "
            "create, delete, list, rename, setattr, xattr"
        )
    ]


def test_explain_a_running_process(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(f"""
[workloads.sleeper]
exe = "{SLEEP}"
uid = {os.getuid()}
untraced = true

[workloads.nobody]
uid = 65534

[[rule]]
paths = ["/data/**"]
workloads = ["sleeper"]
allow = ["read", "list"]
""")
    proc = subprocess.Popen([SLEEP, "60"], env=CLEAN_ENV)

    def explain(op: str, path: str, **kw):
        return sealfs("policy", "explain", "--policy", str(f), "--pid", str(proc.pid), "--op", op, path, **kw)

    try:
        out = explain("read", "/data/x.csv")
        text = out.stdout.decode()
        assert f"caller: pid {proc.pid}, uid {os.getuid()}" in text and f"exe {SLEEP}" in text
        assert "workload sleeper (line 2): matches" in text
        assert "workload nobody (line 7): no: uid" in text
        assert "rule 1 (line 10) matches the path; applies to sleeper: allow read" in text
        assert text.strip().endswith("decision: ALLOW read /data/x.csv: rule 1 (line 10) allows read to sleeper")
        denied = explain("write", "data/../data/x.csv", check=False)
        assert denied.returncode == 2 and "starting with /" in denied.stderr.decode()
        denied = explain("write", "/data/../data/x.csv", check=False)
        assert denied.returncode == 1
        assert "decision: DENY write /data/x.csv: no rule allows write" in denied.stdout.decode()
    finally:
        proc.kill()
        proc.wait()
    gone = sealfs("policy", "explain", "--policy", str(f), "--pid", str(proc.pid), "/data/x", check=False)
    assert gone.returncode == 2 and f"no process with pid {proc.pid}" in gone.stderr.decode()


def test_the_cli_knows_every_operation():
    assert cli_main.POLICY_OPERATIONS == tuple(decisions.OPERATIONS)


# -- the man page against the code -------------------------------------------------------


def _page() -> str:
    return MAN_POLICY.read_text().replace("\\-", "-").replace("\\(dq", '"')


def test_every_operation_and_selector_is_an_item_of_the_page():
    page = _page()
    for op in decisions.OPERATIONS:
        assert re.search(rf"^\.TP(?: \d+)?\n\.B {op}\n", page, re.MULTILINE), (
            f"operation {op} is not an item of the page"
        )
    for sel in workloads.SELECTORS:
        assert re.search(rf"^\.(?:BI|B) {sel}\b", page, re.MULTILINE), f"selector {sel} is not an item of the page"
    for key in rules.RULE_KEYS:
        assert re.search(rf"^\.(?:BI|B) {key}\b", page, re.MULTILINE), f"rule key {key} is not an item of the page"


def test_every_injection_variable_is_listed():
    page = _page()
    names = set(interpreters.LOADER_VARIABLES) | {v for vs in interpreters._INTERPRETER_VARIABLES.values() for v in vs}
    missing = sorted(n for n in names if n not in page)
    assert not missing, f"sealfs-policy(5) does not list {missing} under no_preload"


def test_the_example_keeps_its_scenario():
    p = rules.parse_policy(man_page_example())
    assert set(p.workloads) == {"customer", "payments", "business", "frontend"}
    assert p.workloads["business"].scripts and p.workloads["payments"].exe_hashes
    assert any(r.hide and r.workloads == {"frontend"} for r in p.rules)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_page_renders_without_warnings():
    out = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(MAN_POLICY)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stderr
