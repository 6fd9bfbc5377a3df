"""Large policies and hard globs: loading and matching stay near-linear,
the answers stay those of the original regex semantics, and the limits
are refused with a clear reason (also by ``sealfs policy check``)."""

from __future__ import annotations

import functools
import random
import re
from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealfs.policy import decisions, rules
from sealfs.policy.globs import compile_glob
from sealfs.policy.identity import Identity
from sealfs.policy.rules import PolicyError, parse_policy

from .policyhelp import sealfs


@functools.cache
def old_regex(pattern: str) -> re.Pattern:
    """The glob semantics as they were first written (a backtracking regex:
    right, but exponential in the number of ``**``): the reference."""
    if pattern == "/":
        return re.compile("", re.DOTALL)
    out = []
    for part in pattern[1:].split("/"):
        if part == "**":
            out.append("(?:/[^/]+)*")
            continue
        comp, i = [], 0
        while i < len(part):
            c = part[i]
            if c == "*":
                comp.append("[^/]*")
            elif c == "?":
                comp.append("[^/]")
            elif c == "\\":
                i += 1
                comp.append(re.escape(part[i]))
            elif c == "[":
                start = i + 2 if part[i + 1 : i + 2] in ("!", "^") else i + 1
                end = part.find("]", start)
                chars = "".join("\\" + ch if ch in "\\^[]" else ch for ch in part[start:end])
                comp.append(f"(?!/)[^{chars}]" if start == i + 2 else f"(?!/)[{chars}]")
                i = end
            else:
                comp.append(re.escape(c))
            i += 1
        out.append("/" + "".join(comp))
    return re.compile("".join(out), re.DOTALL)


def old_matches(pattern: str, path: str) -> bool:
    return old_regex(pattern).fullmatch("" if path == "/" else path) is not None


def reference(pattern: str, path: str) -> bool:
    """An independent matcher for globs with ``*``, ``?`` and ``**`` only:
    names by fnmatch, ``**`` by a memoised walk over the components
    (polynomial, so it also answers for paths the old regex cannot)."""
    pats = [] if pattern == "/" else pattern[1:].split("/")
    names = [] if path == "/" else path[1:].split("/")

    @functools.cache
    def at(i: int, j: int) -> bool:
        if i == len(pats):
            return j == len(names)
        if pats[i] == "**":
            return at(i + 1, j) or (j < len(names) and at(i, j + 1))
        return j < len(names) and fnmatchcase(names[j], pats[i]) and at(i + 1, j + 1)

    return at(0, 0)


def normal(name: str) -> bool:
    return name not in (".", "..")


names = st.text("ab.", min_size=1, max_size=4).filter(normal)
glob_names = st.one_of(
    st.just("**"),
    st.lists(st.sampled_from(["a", "b", ".", "*", "?", "[ab]", "[!a]", "\\*", "[a-b]"]), min_size=1, max_size=5)
    .map("".join)
    .filter(lambda n: normal(n) and "**" not in n),
)


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(glob_names, max_size=5).filter(lambda g: g.count("**") <= 3),
    st.lists(st.one_of(names, st.just("*"), st.just("a*b")), max_size=6),
)
def test_globs_match_as_the_original_regex_did(glob_parts, path_parts):
    glob = "/" + "/".join(glob_parts)
    path = "/" + "/".join(path_parts)
    assert compile_glob(glob).matches(path) is old_matches(glob, path), (glob, path)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["**", "a", "*", "a*", "*b", "?", "*a*b*"]), min_size=1, max_size=10),
    st.lists(st.sampled_from(["a", "b", "ab", "ba", "aab", "x"]), max_size=40),
)
def test_many_double_stars_against_an_independent_matcher(glob_parts, path_parts):
    glob = "/" + "/".join(glob_parts)
    path = "/" + "/".join(path_parts)
    assert compile_glob(glob).matches(path) is reference(glob, path), (glob, path)


def test_eight_double_stars_on_a_deep_path():
    """The glob that took the old regex 12 s; with a path of 400 names and
    one near-miss at the end (each '**' may start at any of them)."""
    glob = "/" + "/".join(["**", "a*"] * 8) + "/z"
    deep = "/" + "/".join(["aa"] * 400)
    assert compile_glob(glob).matches(deep + "/z") is True
    assert compile_glob(glob).matches(deep + "/y") is False
    assert compile_glob(glob).matches(deep + "/y") is reference(glob, deep + "/y")
    name_glob = "/**/" + "*a" * 8 + "*b"  # the same inside one name
    assert compile_glob(name_glob).matches("/x/" + "a" * 250) is False
    assert compile_glob(name_glob).matches("/x/" + "a" * 250 + "b") is True


def generated_policy(n_rules: int, n_workloads: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    out = []
    for w in range(n_workloads):
        out.append(f"[workloads.w{w}]\nuid = {1000 + w}\n")
    for i in range(n_rules):
        shape = rnd.choice(["/d{i}/**", "/d{i}/**/x{i}/*", "/d{j}/f{i}", "/**/*.k{i}", "/d{j}/*{i}*"])
        paths = [shape.format(i=i, j=i % 97)]
        verb = rnd.choice(["allow", "deny"])
        ops = rnd.sample(sorted(decisions.OPERATIONS), 2)
        hide = verb == "deny" and "read" in ops and rnd.random() < 0.5
        out.append(
            f'[[rule]]\npaths = {paths!r}\nworkloads = ["w{i % n_workloads}", "w{(i * 7) % n_workloads}"]\n'
            f"{verb} = {ops!r}\n" + ("hide = true\n" if hide else "")
        )
    return "\n".join(out).replace("'", '"')


def naive_decision(policy, ident, op: str, path: str) -> tuple:
    """Decide as the rules say, rule by rule over the whole file."""
    mine = set(policy.workloads_of(ident))
    allowed = None
    for r in policy.rules:
        if r.workloads & mine and any(old_matches(p, path) for p in r.paths):
            if op in r.deny:
                return False, r.number
            if op in r.allow and allowed is None:
                allowed = r.number
    return allowed is not None, allowed


def test_a_20000_rule_policy_loads_and_decides_like_the_rules_say():
    policy = parse_policy(generated_policy(20_000, 50), "big.toml")
    assert len(policy.rules) == 20_000
    rnd = random.Random(2)
    for _ in range(200):
        uid = 1000 + rnd.randrange(50)
        ident = Identity(pid=1, uid=uid, gid=uid, start_time=1)
        i = rnd.randrange(20_000)
        path = rnd.choice(
            [f"/d{i}/x", f"/d{i}/a/x{i}/b", f"/d{i % 97}/f{i}", f"/q/r.k{i}", f"/d{i % 97}/a{i}b", "/", "/none"]
        )
        op = rnd.choice(sorted(decisions.OPERATIONS))
        d = policy.decide(ident, op, path)
        assert (d.allowed, d.rule) == naive_decision(policy, ident, op, path), (uid, op, path)
        hidden = policy.hiding(ident, path)
        want = any(r.hide and r.workloads & set(policy.workloads_of(ident)) and r.matches(path) for r in policy.rules)
        assert (hidden is not None) is want


@pytest.mark.parametrize(
    "what, text, reason",
    [
        (
            "double stars",
            '[[rule]]\npaths = ["/' + "/".join(["**", "a"] * 17) + '"]\nworkloads = ["w"]\nallow = ["read"]\n',
            "has 17 '**' components; the limit is 16",
        ),
        (
            "components",
            '[[rule]]\npaths = ["/' + "/".join(["a"] * 257) + '"]\nworkloads = ["w"]\nallow = ["read"]\n',
            "has 257 components; the limit is 256",
        ),
        (
            "length",
            '[[rule]]\npaths = ["/' + "a" * 5000 + '"]\nworkloads = ["w"]\nallow = ["read"]\n',
            "is 5001 characters long; the limit is 4096",
        ),
    ],
)
def test_limits_of_a_glob_are_refused_with_the_line(what, text, reason, tmp_path):
    text = "[workloads.w]\nuid = 0\n\n" + text
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    assert reason in str(info.value) and str(info.value).startswith("p.toml:5: rule 1: "), str(info.value)
    f = tmp_path / "p.toml"
    f.write_text(text)
    proc = sealfs("policy", "check", str(f), check=False)
    assert proc.returncode == 2 and reason in proc.stderr.decode(), proc.stderr


def test_limits_on_rules_and_workloads(monkeypatch):
    monkeypatch.setattr(rules, "MAX_RULES", 30)
    monkeypatch.setattr(rules, "MAX_WORKLOADS", 10)
    parse_policy(generated_policy(30, 10), "p.toml")
    with pytest.raises(PolicyError, match=r"31 rules: the limit is 30"):
        parse_policy(generated_policy(31, 10), "p.toml")
    with pytest.raises(PolicyError, match=r"11 workloads: the limit is 10"):
        parse_policy(generated_policy(30, 11), "p.toml")
