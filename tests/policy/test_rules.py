"""The policy file: parsing, errors with their line, glob semantics and
decisions (deny wins, default deny, no pass for root, every selector)."""

from __future__ import annotations

import re
import textwrap

import pytest

from sealfs.policy.decisions import OPERATIONS
from sealfs.policy.globs import compile_glob, glob_matches
from sealfs.policy.identity import Identity
from sealfs.policy.rules import PolicyError, load_policy, parse_policy

from .policyhelp import man_page_example

H1 = "a" * 64
H2 = "b" * 64


def policy(text: str):
    return parse_policy(textwrap.dedent(text), "p.toml")


def caller(**kw) -> Identity:
    base = {
        "pid": 100,
        "uid": 1000,
        "gid": 1000,
        "groups": frozenset({1000}),
        "exe": "/opt/app/bin/app",
        "exe_sha256": H1,
        "cgroup": "/system.slice/app.service",
        "start_time": 1,
    }
    base.update(kw)
    return Identity(**base)


# -- loading ---------------------------------------------------------------------------


def test_the_man_page_example_loads():
    p = parse_policy(man_page_example(), "shop.toml")
    assert list(p.workloads) == ["customer", "payments", "business", "frontend"]
    assert len(p.rules) == 6 and p.audit == "deny"
    assert p.workloads["payments"].untraced and p.workloads["payments"].no_preload
    assert [r.hide for r in p.rules] == [False] * 5 + [True]


def test_values_may_be_lists_and_names_resolve():
    p = policy(f"""
        audit = "all"
        [workloads.w]
        user = ["root", "no-such-user-here"]
        exe_sha256 = ["{H1}", "{H2.upper()}"]
        [[rule]]
        paths = ["/a/**"]
        workloads = ["w"]
        allow = ["read"]
    """)
    w = p.workloads["w"]
    assert w.uids == frozenset({0}) and w.exe_hashes == frozenset({H1, H2})
    assert p.audit == "all"
    assert any(re.match(r"p\.toml:4: user 'no-such-user-here'", x) for x in p.warnings), p.warnings


def test_an_unknown_user_alone_matches_no_one():
    p = policy("""
        [workloads.w]
        user = "no-such-user-here"
        [[rule]]
        paths = ["/**"]
        workloads = ["w"]
        allow = ["read"]
    """)
    assert not p.decide(caller(uid=0), "read", "/x").allowed
    assert p.warnings


ERRORS = [
    # (source, line, reason regex)
    ('audit = "some"\n', 1, r"audit = 'some': use \"deny\""),
    ("colour = 1\n", 1, r"unknown top-level key 'colour'"),
    ('[[rules]]\npaths = ["/a"]\n', 1, r"unknown top-level key 'rules'.*\[\[rule\]\]"),
    ("[workloads.w]\nuid = 1\nuidd = 2\n", 3, r"unknown selector 'uidd' in workload 'w'"),
    ("[workloads.w]\n", 1, r"workload 'w' has no selectors"),
    ("[workloads.w]\nuntraced = true\n", 1, r"selects only on untraced/no_preload"),
    ('[workloads.w]\nuid = 1\nexe = "bin/app"\n', 3, r"exe = 'bin/app' .*absolute"),
    ('[workloads.w]\nuid = 1\nexe = "/a/../b"\n', 3, r"normalised"),
    ("[workloads.w]\nuid = -1\n", 2, r"uid must be a number"),
    ("[workloads.w]\nuid = true\n", 2, r"uid must be a number"),
    ('[workloads.w]\nuid = 1\nuser = "root"\n', 3, r"both uid and user"),
    ('[workloads.w]\nuid = 1\nexe_sha256 = "abc"\n', 3, r"exe_sha256 = 'abc' .*not a sha256"),
    ('[workloads.w]\nuid = 1\nscript_sha256 = ["' + "g" * 64 + '"]\n', 3, r"script_sha256 .*not a sha256"),
    ('[workloads.w]\nuid = 1\ncgroup = "system.slice/*"\n', 3, r"cgroup glob .*absolute"),
    ('[workloads.w]\nuid = 1\nuntraced = "yes"\n', 3, r"untraced in workload 'w' must be true or false"),
    ('[workloads.w]\nuid = 1\nlibraries = ["/lib/x.so"]\n', 3, r"libraries in workload 'w' must be a table"),
    ('[workloads.w]\nuid = 1\nlibraries = {"lib/x.so" = "' + "a" * 64 + '"}\n', 3, r"library 'lib/x.so' .*absolute"),
    ('[workloads.w]\nuid = 1\nlibraries = {"/lib/x.so" = "abc"}\n', 3, r"library '/lib/x.so' .*not a sha256"),
    ("[workloads.w]\nuid = 1\nlibraries = {}\n", 3, r"libraries in workload 'w' is empty"),
    ("[workloads.w]\nuid = 1\njit = true\n", 3, r"jit in workload 'w' .*add one of them"),
    ("[workloads.w]\nuid = 1\nno_preload = true\njit = 1\n", 4, r"jit in workload 'w' must be true or false"),
    ("[workloads.w]\njit = true\nno_preload = true\n", 1, r"selects only on untraced/no_preload/libraries/jit"),
    ('[workloads."a b"]\nuid = 1\n', 1, r"workload name 'a b'"),
    (
        '[workloads.w]\nuid = 1\n\n[[rule]]\npaths = ["/a/**"]\nworkloads = ["w"]\nallow = ["reed"]\n',
        7,
        r"unknown operation 'reed' in allow of rule 1; operations are read, write",
    ),
    (
        (
            '[workloads.w]\nuid = 1\n[[rule]]\npaths = ["/a"]\nworkloads = ["w"]\nallow = ["read"]\n'
            '[[rule]]\npaths = ["/b"]\nworkloads = ["v"]\ndeny = ["read"]\n'
        ),
        9,
        r"rule 2 names workload 'v', which is not defined",
    ),
    (
        '[workloads.w]\nuid = 1\n[[rule]]\npaths = ["/a/[x"]\nworkloads = ["w"]\nallow = ["read"]\n',
        4,
        r"rule 1: path glob '/a/\[x' has a '\[' without its closing",
    ),
    ('[workloads.w]\nuid = 1\n[[rule]]\npaths = ["a/**"]\nworkloads = ["w"]\nallow = ["read"]\n', 4, r"absolute"),
    (
        '[workloads.w]\nuid = 1\n[[rule]]\npaths = ["/a/b**"]\nworkloads = ["w"]\nallow = ["read"]\n',
        4,
        r"'\*\*' must be a whole path component",
    ),
    ('[workloads.w]\nuid = 1\n[[rule]]\npaths = []\nworkloads = ["w"]\nallow = ["read"]\n', 4, r"non-empty list"),
    ('[workloads.w]\nuid = 1\n[[rule]]\nworkloads = ["w"]\nallow = ["read"]\n', 3, r"rule 1 has no paths"),
    ('[workloads.w]\nuid = 1\n[[rule]]\npaths = ["/a"]\nworkloads = ["w"]\n', 3, r"allows and denies nothing"),
    (
        '[workloads.w]\nuid = 1\n[[rule]]\npaths = ["/a"]\nworkloads = ["w"]\ndeny = ["write"]\nhide = true\n',
        7,
        r"hide = true but does not deny read or list",
    ),
    (
        '[workloads.w]\nuid = 1\n[[rule]]\npaths = ["/a"]\nworkloads = ["w"]\nallow = ["read"]\nwhy = "x"\n',
        7,
        r"unknown key 'why' in rule 1",
    ),
    ("workloads = { w = { uid = 1, colour = 2 } }\n", 1, r"unknown selector 'colour'"),
    ("rule = 3\n", 1, r"rules must be written as \[\[rule\]\]"),
]


@pytest.mark.parametrize("text, line, reason", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_errors_name_the_line_and_the_reason(text, line, reason):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "/etc/sealfs/p.toml")
    err = info.value
    assert (err.file, err.line) == ("/etc/sealfs/p.toml", line), str(err)
    assert re.search(reason, err.reason), str(err)
    assert str(err).startswith(f"/etc/sealfs/p.toml:{line}: ")


def test_toml_syntax_errors_carry_line_and_column():
    with pytest.raises(PolicyError) as info:
        parse_policy("[workloads.w]\nuid = 1\nexe = \n", "p.toml")
    assert (info.value.line, info.value.column) == (3, 7)
    assert str(info.value).startswith("p.toml:3:7: invalid TOML: ")
    with pytest.raises(PolicyError) as info:
        parse_policy("[workloads.w]\nuid = [1,\n", "p.toml")
    assert info.value.line in (2, 3)


def test_load_policy_file_errors(tmp_path):
    with pytest.raises(PolicyError, match=r"missing\.toml: cannot read the policy file: No such file"):
        load_policy(str(tmp_path / "missing.toml"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'audit = "deny"\n# caf\xe9\n')
    with pytest.raises(PolicyError, match=r"latin1\.toml:2: the policy file is not valid UTF-8"):
        load_policy(str(bad))


# -- globs -----------------------------------------------------------------------------

GLOBS = [
    ("/payments/**", "/payments", True),
    ("/payments/**", "/payments/a", True),
    ("/payments/**", "/payments/a/b/c", True),
    ("/payments/**", "/paymentsX", False),
    ("/payments/**", "/x/payments/a", False),
    ("/payments/**", "/", False),
    ("/**", "/", True),
    ("/**", "/anything/at/all", True),
    ("/", "/", True),
    ("/", "/a", False),
    ("/a/*.csv", "/a/jan.csv", True),
    ("/a/*.csv", "/a/.hidden.csv", True),
    ("/a/*.csv", "/a/b/jan.csv", False),
    ("/a/*", "/a", False),
    ("/a/**/x", "/a/x", True),
    ("/a/**/x", "/a/b/c/x", True),
    ("/a/**/x", "/a/b/c/xy", False),
    ("/a/?", "/a/b", True),
    ("/a/?", "/a/bc", False),
    ("/a/[bc]", "/a/c", True),
    ("/a/[!bc]", "/a/c", False),
    ("/a/[!bc]", "/a/d", True),
    ("/a/[+-0]", "/a//", False),  # a range that spans '/' still stays in one name
    ("/a/\\*", "/a/*", True),
    ("/a/\\*", "/a/b", False),
    ("/a.b", "/aXb", False),
    ("/a/(x)", "/a/(x)", True),
    ("/payments", "/payments/a", False),
    ("/caf\u00e9/**", "/caf\u00e9/x", True),
]


@pytest.mark.parametrize("glob, path, matches", GLOBS)
def test_glob_semantics(glob, path, matches):
    assert glob_matches(compile_glob(glob), path) is matches


@pytest.mark.parametrize(
    "glob", ["", "a", "/a//b", "/a/", "/a/./b", "/a/../b", "/a**", "/a/[", "/a/[]", "/a/[z-a]", "/a\\", "/a\0b"]
)
def test_bad_globs(glob):
    with pytest.raises(ValueError):
        compile_glob(glob)


# -- decisions -------------------------------------------------------------------------

RW = '["read", "write", "create", "delete", "list", "rename", "setattr", "xattr"]'


def test_allow_deny_and_default_deny():
    p = policy(f"""
        [workloads.app]
        uid = 1000
        exe = "/opt/app/bin/app"
        [[rule]]
        paths = ["/data/secret/**"]
        workloads = ["app"]
        deny = ["read"]
        [[rule]]
        paths = ["/data/**"]
        workloads = ["app"]
        allow = {RW}
    """)
    me = caller()
    d = p.decide(me, "read", "/data/x")
    assert d.allowed and d.rule == 2 and d.line == 9 and d.workloads == ("app",) and "rule 2" in d.reason
    d = p.decide(me, "read", "/data/secret/x")
    assert not d.allowed and d.rule == 1 and d.line == 5, "deny wins, though rule 2 allows"
    assert p.decide(me, "write", "/data/secret/x").allowed, "the deny is for read only"
    d = p.decide(me, "read", "/other")
    assert not d.allowed and d.rule is None and "default deny" in d.reason


def test_deny_wins_whatever_the_order():
    allow = '[[rule]]\npaths = ["/**"]\nworkloads = ["app"]\nallow = ["read"]\n'
    deny = '[[rule]]\npaths = ["/x/**"]\nworkloads = ["app"]\ndeny = ["read"]\n'
    head = "[workloads.app]\nuid = 1000\n"
    for text in (head + allow + deny, head + deny + allow):
        p = parse_policy(text)
        assert not p.decide(caller(), "read", "/x/y").allowed
        assert p.decide(caller(), "read", "/y").allowed


def test_root_gets_no_pass_and_strangers_are_denied():
    p = policy(f"""
        [workloads.app]
        uid = 1000
        [[rule]]
        paths = ["/**"]
        workloads = ["app"]
        allow = {RW}
    """)
    for who in (caller(uid=0, gid=0, groups=frozenset({0})), caller(uid=1001)):
        d = p.decide(who, "read", "/x")
        assert not d.allowed and d.workloads == () and "in no workload" in d.reason


def test_every_selector_must_match():
    p = policy(f"""
        [workloads.app]
        uid = 1000
        group = "root"
        exe = "/opt/app/bin/app"
        exe_sha256 = "{H1}"
        script = "/opt/app/run.py"
        script_sha256 = "{H2}"
        cgroup = "/system.slice/app*.service"
        untraced = true
        no_preload = true
        [[rule]]
        paths = ["/**"]
        workloads = ["app"]
        allow = ["read"]
    """)
    good = caller(groups=frozenset({1000, 0}), script="/opt/app/run.py", script_sha256=H2)
    assert p.workloads_of(good) == ("app",)
    assert p.decide(good, "read", "/x").allowed
    spoilers = {
        "uid": {"uid": 1001},
        "group": {"groups": frozenset({1000})},
        "exe": {"exe": "/tmp/app"},
        "exe missing": {"exe": None},
        "exe_sha256": {"exe_sha256": H2},
        "script": {"script": "/tmp/run.py"},
        "script_sha256": {"script_sha256": H1},
        "cgroup": {"cgroup": "/user.slice/app.service"},
        "no cgroup": {"cgroup": None},
        "untraced": {"tracer_pid": 4242},
        "no_preload": {"preload": ("LD_PRELOAD",)},
        "exe deleted": {"exe_deleted": True},
        "exe replaced": {"exe_replaced": True},
        "invalid": {"problem": "the process exited"},
    }
    for name, change in spoilers.items():
        bad = caller(**{"groups": frozenset({1000, 0}), "script": "/opt/app/run.py", "script_sha256": H2, **change})
        assert p.workloads_of(bad) == (), f"{name} should spoil the match"
        assert not p.decide(bad, "read", "/x").allowed


def test_near_misses_are_in_the_reason():
    """A service that is traced or tampered is in no workload; the reason
    says which selector failed for the workloads of its user."""
    p = policy(f"""
        [workloads.pay]
        uid = 1000
        exe_sha256 = "{H1}"
        untraced = true
        [workloads.other]
        uid = 2000
        [[rule]]
        paths = ["/**"]
        workloads = ["pay", "other"]
        allow = ["read"]
    """)
    assert "pay: it is traced (by pid 7)" in p.decide(caller(tracer_pid=7), "read", "/x").reason
    assert "pay: exe sha256 " + H2 in p.decide(caller(exe_sha256=H2), "read", "/x").reason
    assert "other" not in p.decide(caller(tracer_pid=7), "read", "/x").reason


def test_an_exe_hash_matches_a_deleted_binary_but_an_exe_path_does_not():
    p = policy(f"""
        [workloads.byhash]
        exe_sha256 = "{H1}"
        [workloads.bypath]
        exe = "/opt/app/bin/app"
        [[rule]]
        paths = ["/**"]
        workloads = ["byhash", "bypath"]
        allow = ["read"]
    """)
    assert p.workloads_of(caller()) == ("byhash", "bypath")
    assert p.workloads_of(caller(exe_deleted=True)) == ("byhash",)


def test_hiding():
    p = policy(f"""
        [workloads.front]
        uid = 33
        [workloads.biz]
        uid = 34
        [[rule]]
        paths = ["/**"]
        workloads = ["front", "biz"]
        allow = {RW}
        [[rule]]
        paths = ["/customers/**"]
        workloads = ["front"]
        deny = ["read", "list"]
        hide = true
    """)
    front, biz = caller(uid=33), caller(uid=34)
    assert p.may_hide("/customers") and p.may_hide("/customers/a") and not p.may_hide("/reports")
    h = p.hiding(front, "/customers/a")
    assert h is not None and h.hide and h.rule == 2 and "hides" in h.reason
    assert p.hiding(biz, "/customers/a") is None and p.hiding(front, "/reports") is None
    d = p.decide(front, "read", "/customers/a")
    assert not d.allowed and d.hide
    assert p.decide(front, "write", "/customers/a").allowed, "the rule denies read and list only"


def test_decide_refuses_unknown_operations():
    p = parse_policy("[workloads.w]\nuid = 1\n")
    with pytest.raises(ValueError):
        p.decide(caller(), "execute", "/x")


@pytest.mark.parametrize("op", OPERATIONS)
def test_each_operation_is_granted_alone(op):
    """A rule that allows one operation allows that one and no other."""
    p = policy(f"""
        [workloads.w]
        uid = 1000
        [[rule]]
        paths = ["/d/**"]
        workloads = ["w"]
        allow = ["{op}"]
    """)
    granted = [o for o in OPERATIONS if p.decide(caller(), o, "/d/f").allowed]
    assert granted == [op]


def test_explain_says_which_selector_and_rule():
    p = policy(f"""
        [workloads.app]
        uid = 1000
        exe = "/opt/app/bin/app"
        [workloads.other]
        uid = 2000
        [[rule]]
        paths = ["/data/**"]
        workloads = ["app"]
        allow = {RW}
        [[rule]]
        paths = ["/data/**"]
        workloads = ["other"]
        deny = ["read"]
    """)
    text = "\n".join(p.explain(caller(), "read", "/data/x"))
    assert "workload app (line 2): matches" in text
    assert "workload other (line 5): no: uid 1000 is not 2000" in text
    assert "rule 1 (line 7) matches the path; applies to app: allow read" in text
    assert "rule 2 (line 11) matches the path; not for this caller (deny read for other)" in text
    assert text.endswith("decision: ALLOW read /data/x: rule 1 (line 7) allows read to app")
