"""The policy parser on anything: random text, random TOML documents made
of the policy's own vocabulary, and the man page example with random
edits.  It must return a Policy or raise PolicyError — never anything
else — and an error must name a line of the file."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sealfs.policy.decisions import OPERATIONS, Policy
from sealfs.policy.identity import Identity
from sealfs.policy.rules import PolicyError, parse_policy
from sealfs.policy.workloads import SELECTORS

from .policyhelp import man_page_example

KEYS = ["audit", "workloads", "rule", "paths", "allow", "deny", "hide", "w", "payments", "x", "", "a b", *SELECTORS]
STRINGS = [
    "deny",
    "all",
    "/",
    "/**",
    "/a/**",
    "/a/*.csv",
    "/a/[b",
    "a",
    "",
    "w",
    "payments",
    "root",
    "/usr/bin/cat",
    "a" * 64,
    "/a//b",
    "/a/**b",
    *OPERATIONS,
]


def toml_key(k: str) -> str:
    return json.dumps(k, ensure_ascii=False)  # (ASCII escapes would split astral characters into surrogates)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)  # (TOML has no lone surrogates)
scalars = st.one_of(st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.sampled_from(STRINGS), text)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=20,
)
# mostly plausible values, so that parsing gets past the first check
selector_values = st.one_of(
    st.integers(0, 70000),
    st.sampled_from(STRINGS),
    st.booleans(),
    st.lists(st.sampled_from(STRINGS), max_size=3),
    values,
)
workload = st.dictionaries(st.sampled_from(list(SELECTORS) + ["color"]), selector_values, max_size=4)
names = st.sampled_from(["w", "w", "payments", "payments", "a b", ""])
rule = st.fixed_dictionaries(
    {},
    optional={
        "paths": st.one_of(st.lists(st.sampled_from(STRINGS), max_size=3), values),
        "workloads": st.one_of(st.lists(names, max_size=3), values),
        "allow": st.one_of(st.lists(st.sampled_from([*OPERATIONS, "reed"]), max_size=4), values),
        "deny": st.one_of(st.lists(st.sampled_from([*OPERATIONS, "reed"]), max_size=4), values),
        "hide": st.one_of(st.booleans(), values),
        "why": values,
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "audit": st.one_of(st.sampled_from(["deny", "all"]), values),
        "workloads": st.dictionaries(names, workload, max_size=3),
        "rule": st.lists(rule, max_size=3),
    },
)


def render(doc: dict) -> str:
    """A TOML text for ``doc``: workloads as [workloads.NAME] tables and
    rules as [[rule]] tables (how policies are written), the rest inline."""
    out = []
    for k, v in doc.items():
        if k not in ("workloads", "rule"):
            out.append(f"{toml_key(k)} = {toml_value(v)}")
    for name, body in doc.get("workloads", {}).items():
        out.append(f"[workloads.{toml_key(name)}]")
        out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items()]
    for body in doc.get("rule", []):
        out.append("[[rule]]")
        out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(out) + "\n"


def check(text: str) -> None:
    try:
        p = parse_policy(text, "f.toml")
    except PolicyError as exc:
        assert str(exc).startswith("f.toml"), str(exc)
        n_lines = max(text.count("\n") + 1, 1)
        assert exc.line is None or 1 <= exc.line <= n_lines, (exc.line, n_lines, str(exc))
        return
    assert isinstance(p, Policy)
    # a policy that loads must decide without raising
    someone = Identity(pid=1, uid=0, gid=0, exe="/usr/bin/cat")
    for op in OPERATIONS:
        p.decide(someone, op, "/a/b")
    p.hiding(someone, "/a")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text(text):
    check(text)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_random_documents(doc):
    check(render(doc))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_man_page_example_with_random_edits(data):
    text = man_page_example()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 12))
        insert = data.draw(st.one_of(st.text(max_size=6), st.sampled_from(['"', "[", "]", "=", "\n", "**", ","])))
        text = text[:at] + insert + text[at + cut :]
    check(text)


def test_the_renderer_makes_valid_policies():
    """The document strategy can reach valid policies (else it would test
    only the first error path)."""
    doc = {
        "audit": "all",
        "workloads": {"w": {"uid": 5}},
        "rule": [{"paths": ["/a/**"], "workloads": ["w"], "allow": ["read"]}],
    }
    assert isinstance(parse_policy(render(doc)), Policy)
