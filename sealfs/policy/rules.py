"""The policy file: TOML read and checked into a :class:`.decisions.Policy`.

The file (see sealfs-policy(5) for the reference and a full example)::

    audit = "deny"                       # or "all": allowed operations too

    [workloads.payments]                 # a workload: selectors, all must match
    exe = "/opt/shop/bin/payments"
    exe_sha256 = "9f2c…"                 # 64 hex digits
    user = "sealfs-payments"
    untraced = true
    no_preload = true

    [[rule]]                             # rules: paths x workloads x operations
    paths = ["/payments/**"]
    workloads = ["payments"]
    allow = ["read", "write", "create", "delete", "list", "rename", "setattr"]

What the workloads and rules mean is in :mod:`.workloads` and
:mod:`.decisions`, the globs in :mod:`.globs`.  The limits (MAX_RULES and
the others below, and those of the globs) keep any policy cheap to load
and to match.

Every error names the file, the line and the reason
(:class:`~.source.PolicyError`, see :mod:`.source`).
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import stat
import tomllib
from typing import Any

from .decisions import MAX_HASH_MIB, OPERATIONS, Policy, Rule
from .globs import Glob, compile_glob
from .host import policy_warnings
from .interpreters import interpreter_family
from .source import PolicyError, Source
from .workloads import SELECTORS, Workload

AUDIT_LEVELS = ("deny", "all")
#: Selectors that say what a process may carry, not who it is.
_CONDITIONS = ("untraced", "no_preload", "libraries", "jit", "nondumpable")
RULE_KEYS = ("paths", "workloads", "allow", "deny", "hide")
TOP_KEYS = ("audit", "max_hash_mib", "workloads", "rule")
#: Largest ``max_hash_mib`` (the default is :data:`.decisions.MAX_HASH_MIB`).
MAX_HASH_MIB_LIMIT = 16384
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_WORKLOAD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


#: Limits on what a policy may hold, so that loading it and matching a path
#: stay cheap whatever the file says (``sealfs policy check`` refuses a
#: policy past them, naming the line); the globs have theirs (:mod:`.globs`).
MAX_RULES = 50_000
MAX_WORKLOADS = 10_000


def load_policy(path: str) -> Policy:
    """Read and validate the policy file at ``path``.  Its warnings include
    what the host leaves open (:func:`sealfs.policy.host.policy_warnings`):
    a policy file others may change, workloads whose memory others of
    their uid may write."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise PolicyError(path, None, f"cannot read the policy file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PolicyError(path, line, "the policy file is not valid UTF-8") from None
    policy = parse_policy(text, path)
    policy.warnings.extend(policy_warnings(policy))
    return policy


def parse_policy(text: str, file: str = "<policy>") -> Policy:
    """Parse and validate policy source ``text`` (``file`` names it in
    errors).  Raises :class:`PolicyError`, never anything else."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(file, text, exc) from None
    except (ValueError, RecursionError) as exc:
        raise PolicyError(file, None, f"invalid TOML: {exc}") from None
    return _Builder(Source(file, text), doc).build()


def _syntax_error(file: str, text: str, exc: Exception) -> PolicyError:
    msg = str(exc)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if m:
        return PolicyError(file, int(m.group(1)), f"invalid TOML: {msg[: m.start()]}", int(m.group(2)))
    m = re.search(r"\s*\(at end of document\)$", msg)
    if m:
        return PolicyError(file, text.count("\n") + 1, f"invalid TOML: {msg[: m.start()]} (at the end of the file)")
    return PolicyError(file, None, f"invalid TOML: {msg}")


class _Builder:
    """Builds the :class:`Policy` of a parsed document ``doc`` of ``src``:
    its top-level keys and its rules (the workloads: :func:`_workload`)."""

    def __init__(self, src: Source, doc: dict):
        self.src = src
        self.doc = doc
        self.globs: dict[str, Glob] = {}

    def build(self) -> Policy:
        doc = self.doc
        for key in doc:
            if key not in TOP_KEYS:
                hint = " (rules are written [[rule]], one per rule)" if key in ("rules", "rule") else ""
                raise self.src.error(f"unknown top-level key {key!r}; expected one of {', '.join(TOP_KEYS)}{hint}", key)
        audit = doc.get("audit", "deny")
        if audit not in AUDIT_LEVELS:
            raise self.src.error(f'audit = {audit!r}: use "deny" (log denials) or "all" (log every decision)', "audit")
        raw_workloads = doc.get("workloads", {})
        if not isinstance(raw_workloads, dict):
            raise self.src.error("workloads must be tables: [workloads.NAME]", "workloads")
        if len(raw_workloads) > MAX_WORKLOADS:
            raise self.src.error(f"{len(raw_workloads)} workloads: the limit is {MAX_WORKLOADS}", "workloads")
        workloads = {name: _workload(self.src, name, body) for name, body in raw_workloads.items()}
        raw_rules = doc.get("rule", [])
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            raise self.src.error("rules must be written as [[rule]] tables", "rule")
        if len(raw_rules) > MAX_RULES:
            raise self.src.error(
                f"{len(raw_rules)} rules: the limit is {MAX_RULES} (a rule may list several paths and workloads)",
                "rule",
                MAX_RULES,
            )
        rules = tuple(self.rule(i, body, workloads) for i, body in enumerate(raw_rules))
        named = set().union(*(r.workloads for r in rules))
        for name in workloads:
            if name not in named:
                self.src.warn(f"workload {name!r} is named by no rule: it is allowed nothing", "workloads", name)
        mib = doc.get("max_hash_mib", MAX_HASH_MIB)
        if not isinstance(mib, int) or isinstance(mib, bool) or not 1 <= mib <= MAX_HASH_MIB_LIMIT:
            raise self.src.error(
                f"max_hash_mib = {mib!r}: give a whole number of MiB from 1 to {MAX_HASH_MIB_LIMIT}", "max_hash_mib"
            )
        return Policy(self.src.file, audit, workloads, rules, self.src.warnings, mib << 20)

    def rule(self, index: int, body: dict, workloads: dict[str, Workload]) -> Rule:
        where = ("rule", index)
        n = index + 1
        for key in body:
            if key not in RULE_KEYS:
                raise self.src.error(f"unknown key {key!r} in rule {n}; rules have {', '.join(RULE_KEYS)}", *where, key)
        for key in ("paths", "workloads"):
            if key not in body:
                raise self.src.error(f"rule {n} has no {key}", *where)
        paths = body["paths"]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise self.src.error(
                f'paths of rule {n} must be a non-empty list of globs such as ["/data/**"]', *where, "paths"
            )
        globs = []
        for p in paths:
            try:
                globs.append(self.glob(p))
            except ValueError as exc:
                raise self.src.error(f"rule {n}: {exc}", *where, "paths") from None
        names = body["workloads"]
        if not isinstance(names, list) or not names or not all(isinstance(w, str) for w in names):
            raise self.src.error(
                f"workloads of rule {n} must be a non-empty list of workload names", *where, "workloads"
            )
        for w in names:
            if w not in workloads:
                known = ", ".join(workloads) or "none are defined"
                raise self.src.error(
                    f"rule {n} names workload {w!r}, which is not defined ([workloads.{w}]); defined: {known}",
                    *where,
                    "workloads",
                )
        ops = {}
        for key in ("allow", "deny"):
            value = body.get(key, [])
            if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
                raise self.src.error(f"{key} of rule {n} must be a list of operations", *where, key)
            for op in value:
                if op not in OPERATIONS:
                    raise self.src.error(
                        f"unknown operation {op!r} in {key} of rule {n}; operations are {', '.join(OPERATIONS)}",
                        *where,
                        key,
                    )
            ops[key] = frozenset(value)
        if not ops["allow"] and not ops["deny"]:
            raise self.src.error(f"rule {n} allows and denies nothing: give allow = [...] or deny = [...]", *where)
        hide = body.get("hide", False)
        if not isinstance(hide, bool):
            raise self.src.error(f"hide in rule {n} must be true or false", *where, "hide")
        if hide and not ops["deny"] & {"read", "list"}:
            raise self.src.error(
                f"rule {n} has hide = true but does not deny read or list: hiding applies to what a rule denies",
                *where,
                "hide",
            )
        return Rule(
            n, self.src.lines.of(*where), tuple(paths), tuple(globs), frozenset(names), ops["allow"], ops["deny"], hide
        )

    def glob(self, pattern: str) -> Glob:
        """compile_glob, once per distinct pattern of the file."""
        g = self.globs.get(pattern)
        if g is None:
            g = self.globs[pattern] = compile_glob(pattern)
        return g


# -- workloads ----------------------------------------------------------------------


def _ids(src: Source, body: dict, name: str, where: tuple, number_key: str, name_key: str, resolve) -> set[int]:
    """The numeric ids a workload names, by number (``uid``/``gid``)
    or by name (``user``/``group``).  Names that do not exist match no
    one (a warning), never everyone."""
    ids: set[int] = set()
    if number_key in body:
        ids |= set(src.ints(body[number_key], *where, number_key))
    if name_key in body:
        for item in src.strings(body[name_key], *where, name_key):
            try:
                ids.add(resolve(item))
            except KeyError:
                src.warn(
                    f"{name_key} {item!r} of workload {name!r} does not exist: it matches no one", *where, name_key
                )
        if not ids:
            ids.add(-1)  # matches no one, rather than everyone
    return ids


def _workload(src: Source, name: str, body: Any) -> Workload:
    """The :class:`Workload` of the table ``[workloads.NAME]``, checked
    (its warnings go to ``src``)."""
    where = ("workloads", name)
    if not _WORKLOAD_NAME.fullmatch(name):
        raise src.error(f"workload name {name!r}: use letters, digits, '_', '-' and '.'", *where)
    if not isinstance(body, dict):
        raise src.error(f"workload {name!r} must be a table of selectors: [workloads.{name}]", *where)
    if not body:
        raise src.error(
            f"workload {name!r} has no selectors, so it would match every process; "
            f"give at least one of {', '.join(SELECTORS)}",
            *where,
        )
    for key in body:
        if key not in SELECTORS:
            raise src.error(
                f"unknown selector {key!r} in workload {name!r}; selectors are {', '.join(SELECTORS)}", *where, key
            )
    kw: dict[str, Any] = {}
    uids = _ids(src, body, name, where, "uid", "user", lambda n: pwd.getpwnam(n).pw_uid)
    gids = _ids(src, body, name, where, "gid", "group", lambda n: grp.getgrnam(n).gr_gid)
    if "uid" in body and "user" in body:
        raise src.error(f"workload {name!r} has both uid and user; give one (a list if several)", *where, "user")
    if "gid" in body and "group" in body:
        raise src.error(f"workload {name!r} has both gid and group; give one (a list if several)", *where, "group")
    if uids:
        kw["uids"] = frozenset(uids)
    if gids:
        kw["gids"] = frozenset(gids)
    for key, attr in (("exe", "exes"), ("script", "scripts")):
        if key in body:
            paths = src.strings(body[key], *where, key)
            for p in paths:
                if not p.startswith("/") or os.path.normpath(p) != p:
                    raise src.error(
                        f"{key} = {p!r} in workload {name!r}: give an absolute, normalised "
                        "path (no '.', '..', '//' or trailing '/')",
                        *where,
                        key,
                    )
            kw[attr] = frozenset(paths)
    for key, attr in (("exe_sha256", "exe_hashes"), ("script_sha256", "script_hashes")):
        if key in body:
            hashes = src.strings(body[key], *where, key)
            for h in hashes:
                if not _SHA256.fullmatch(h):
                    raise src.error(
                        f"{key} = {h!r} in workload {name!r} is not a sha256: 64 hex digits (sha256sum prints it)",
                        *where,
                        key,
                    )
            kw[attr] = frozenset(h.lower() for h in hashes)
    if "cgroup" in body:
        globs = []
        for g in src.strings(body["cgroup"], *where, "cgroup"):
            try:
                globs.append(compile_glob(g, "cgroup"))
            except ValueError as exc:
                raise src.error(f"workload {name!r}: {exc}", *where, "cgroup") from None
        kw["cgroups"] = tuple(globs)
    for key in ("untraced", "no_preload", "jit", "nondumpable"):
        if key in body:
            if not isinstance(body[key], bool):
                raise src.error(f"{key} in workload {name!r} must be true or false", *where, key)
            kw[key] = body[key]
    if "libraries" in body:
        kw["libraries"] = _libraries(src, name, body["libraries"], where)
    if kw.get("jit") and not (kw.get("no_preload") or "libraries" in kw):
        raise src.error(
            f"jit in workload {name!r} says what code it may run, which only no_preload or "
            "libraries checks: add one of them",
            *where,
            "jit",
        )
    if kw.get("no_preload") and any(interpreter_family(e) == "python" for e in kw.get("exes", ())):
        src.warn(
            f"workload {name!r} runs Python with no_preload: it is admitted only when started with -I "
            "(or -E -s) and without -i; put -I in the #! line",
            *where,
            "no_preload",
        )
    if not any(k in kw for k in ("uids", "gids", "exes", "exe_hashes", "scripts", "script_hashes", "cgroups")):
        raise src.error(
            f"workload {name!r} selects only on {'/'.join(_CONDITIONS)}, so it would match almost "
            "every process; add a selector that says who it is (user, exe, …)",
            *where,
        )
    if ("scripts" in kw or "script_hashes" in kw) and not ("exes" in kw or "exe_hashes" in kw):
        src.warn(
            f"workload {name!r} names a script but not its interpreter: any interpreter of root's may "
            "claim the script, and some run the caller's code before it (PERL5OPT, node -r); name the "
            "interpreter in exe",
            *where,
            "script",
        )
    for p in sorted(kw.get("exes", ())):
        if os.path.islink(p):
            target = os.path.realpath(p)
            src.warn(
                f"exe {p!r} of workload {name!r} is a symbolic link to {target}: the kernel names the "
                f'program by its target, so this never matches; write exe = "{target}"',
                *where,
                "exe",
            )
    if kw.get("nondumpable") and 0 in kw.get("uids", ()):
        src.warn(
            f"workload {name!r} requires nondumpable and names uid 0: whether a root process is dumpable "
            "cannot be seen from outside, so it never matches as root",
            *where,
            "nondumpable",
        )
    return Workload(name, src.lines.of(*where), **kw)


def _libraries(src: Source, name: str, value: Any, where: tuple) -> frozenset[str]:
    """``libraries = {"/path/lib.so" = "SHA256", …}``: the hashes.  The
    paths say what the hash is of: one that does not exist now, or
    whose file has another hash, is a warning (processes that map that
    file are refused, which the audit log names)."""
    if not isinstance(value, dict):
        raise src.error(
            f'libraries in workload {name!r} must be a table of PATH = "SHA256", such as '
            '{"/opt/app/lib/libapp.so" = "9f2c…"}',
            *where,
            "libraries",
        )
    hashes = set()
    for path, digest in value.items():
        if not path.startswith("/") or os.path.normpath(path) != path:
            raise src.error(
                f"library {path!r} in workload {name!r}: give an absolute, normalised path", *where, "libraries"
            )
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise src.error(
                f"library {path!r} in workload {name!r}: {digest!r} is not a sha256: 64 hex "
                "digits (sha256sum prints it)",
                *where,
                "libraries",
            )
        hashes.add(digest.lower())
        try:
            # only a regular file is ever opened for reading: opening a device can have side effects
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(pfd).st_mode):
                    raise OSError(0, "not a regular file")
                with open(f"/proc/self/fd/{pfd}", "rb") as f:
                    actual = hashlib.file_digest(f, "sha256").hexdigest()
            finally:
                os.close(pfd)
        except OSError as exc:
            src.warn(
                f"library {path} of workload {name!r} cannot be read ({exc.strerror}): its pin matches "
                "only a file with that hash",
                *where,
                "libraries",
            )
            continue
        if actual != digest.lower():
            src.warn(
                f"library {path} of workload {name!r} has sha256 {actual}, not the pinned one: a process "
                "that maps it is refused",
                *where,
                "libraries",
            )
    if not hashes:
        raise src.error(f"libraries in workload {name!r} is empty: leave it out instead", *where, "libraries")
    return frozenset(hashes)
