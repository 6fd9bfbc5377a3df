"""The access policy: a TOML file of workloads and rules, and decisions.

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

Decisions (:meth:`Policy.decide`):

* The caller's workloads are all those whose selectors all match it.
* A rule applies when one of its path globs matches the path and one of
  its workloads is among the caller's.
* An operation listed in ``deny`` of any applying rule is denied, whatever
  allows it elsewhere (deny wins); otherwise it is allowed when listed in
  ``allow`` of an applying rule; otherwise it is denied (default deny).
  Root gets no implicit pass; an invalid identity is denied everything.

Globs are anchored at the volume root: ``*`` and ``?`` and ``[…]`` stay
within one name, ``**`` (a whole component) matches any number of names,
none included, so ``/payments/**`` matches ``/payments`` itself and
everything below it.  Matching never backtracks through the ways the
``**`` could split a path (see :class:`Glob`); the limits (MAX_RULES and
the others below) keep any policy cheap to load and to match.

Every error names the file, the line and the reason
(:class:`PolicyError`): TOML syntax errors come with tomllib's line, and
for semantic ones (an unknown key, operation or workload, a bad glob or
hash) the line of the offending key is found in the source text.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import stat
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .host import policy_warnings
from .identity import Identity
from .interpreters import PYTHON_INTERACTIVE, interpreter_family

#: Every operation a rule can name, and what it covers.
OPERATIONS = {
    "read": "open a file for reading; read a symlink",
    "write": "open a file for writing or with O_TRUNC; truncate",
    "create": "create a file, directory or symlink; the target of a rename",
    "delete": "unlink a file or symlink; rmdir; the source of a rename, and a target it replaces",
    "list": "open a directory to list it",
    "rename": "rename, at the source and at the target",
    "setattr": "chmod, chown, utimens",
    "xattr": "get, set, list and remove extended attributes",
}
AUDIT_LEVELS = ("deny", "all")
SELECTORS = (
    "uid",
    "user",
    "gid",
    "group",
    "exe",
    "exe_sha256",
    "script",
    "script_sha256",
    "cgroup",
    "untraced",
    "no_preload",
    "libraries",
    "jit",
    "nondumpable",
)
#: Selectors that say what a process may carry, not who it is.
_CONDITIONS = ("untraced", "no_preload", "libraries", "jit", "nondumpable")
RULE_KEYS = ("paths", "workloads", "allow", "deny", "hide")
TOP_KEYS = ("audit", "max_hash_mib", "workloads", "rule")
#: Default and largest ``max_hash_mib``: the size of the largest executable
#: or script that is hashed (for exe_sha256 / script_sha256).
MAX_HASH_MIB = 256
MAX_HASH_MIB_LIMIT = 16384
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_WORKLOAD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class PolicyError(UsageError):
    """A policy file that cannot be used: ``str()`` is ``FILE:LINE: reason``
    (``FILE:LINE:COLUMN:`` for TOML syntax errors)."""

    def __init__(self, file: str, line: int | None, reason: str, column: int | None = None):
        self.file = file
        self.line = line
        self.column = column
        self.reason = reason
        where = file if line is None else f"{file}:{line}" + (f":{column}" if column else "")
        super().__init__(f"{where}: {reason}")


# -- globs ------------------------------------------------------------------------------

#: Limits on what a policy may hold, so that loading it and matching a path
#: stay cheap whatever the file says (``sealfs policy check`` refuses a
#: policy past them, naming the line).
MAX_RULES = 50_000
MAX_WORKLOADS = 10_000
#: Characters in one glob, and components (names between '/') in one glob.
MAX_GLOB_LENGTH = 4096
MAX_GLOB_COMPONENTS = 256
#: ``**`` components in one glob.
MAX_DOUBLE_STARS = 16


class Glob:
    """A compiled absolute glob (see the module docstring).

    Matching costs at most a few passes over the path, whatever the glob:
    a glob without wildcards is a string comparison, ``/some/dir/**`` a
    prefix test, and anything else one regex built so that it never
    backtracks far.  Between two ``**`` (and between two ``*`` in a name)
    there is a run of fixed width; such a run is matched at the first place
    it fits and the regex never comes back to try a later one (an atomic
    group).  That first place is always right: whatever a later place would
    leave to match, the next ``**`` (or ``*``) can also take from the first.
    So the cost grows with the length of the path times the length of the
    glob, never exponentially in the number of ``**``.
    """

    __slots__ = ("pattern", "_exact", "_prefix", "_regex")

    def __init__(self, pattern: str, what: str = "path"):
        self.pattern = pattern
        self._exact: str | None = None
        self._prefix: str | None = None
        self._regex: re.Pattern | None = None
        parts = _glob_parts(pattern, what)
        literal = [not any(c in p for c in "*?[\\") for p in parts]
        if all(literal):
            self._exact = pattern
        elif parts[-1] == "**" and all(literal[:-1]):
            self._prefix = "/" + "/".join(parts[:-1])  # "/" for "/**"
        else:
            self._regex = re.compile(_glob_regex(parts, pattern, what), re.DOTALL)

    def matches(self, path: str) -> bool:
        """Whether ``path`` (absolute, normalised; ``/`` for the root) matches."""
        if self._exact is not None:
            return path == self._exact
        if self._prefix is not None:
            prefix = self._prefix
            return prefix == "/" or path == prefix or path.startswith(prefix + "/")
        return self._regex.fullmatch("" if path == "/" else path) is not None

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def compile_glob(pattern: str, what: str = "path") -> Glob:
    """The :class:`Glob` for an absolute glob; raises ValueError with a
    plain reason for a pattern that is not one."""
    return Glob(pattern, what)


def glob_matches(glob: Glob, path: str) -> bool:
    """Whether ``path`` (absolute, normalised; ``/`` for the root) matches."""
    return glob.matches(path)


def _glob_parts(pattern: str, what: str) -> list[str]:
    """The components of ``pattern`` (none for ``/``), checked."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ValueError(f"{what} glob {pattern!r} must be absolute (start with '/')")
    if "\0" in pattern:
        raise ValueError(f"{what} glob {pattern!r} contains a NUL character")
    if len(pattern) > MAX_GLOB_LENGTH:
        raise ValueError(
            f"{what} glob {pattern[:40]!r}... is {len(pattern)} characters long; the limit is {MAX_GLOB_LENGTH}"
        )
    if pattern == "/":
        return []
    parts = pattern[1:].split("/")
    if len(parts) > MAX_GLOB_COMPONENTS:
        raise ValueError(
            f"{what} glob {pattern[:40]!r}... has {len(parts)} components; the limit is {MAX_GLOB_COMPONENTS}"
        )
    if parts.count("**") > MAX_DOUBLE_STARS:
        raise ValueError(
            f"{what} glob {pattern!r} has {parts.count('**')} '**' components; the limit is "
            f"{MAX_DOUBLE_STARS} (one '**' already matches any depth)"
        )
    for part in parts:
        if part == "":
            raise ValueError(f"{what} glob {pattern!r} has an empty component ('//' or a trailing '/')")
        if part in (".", ".."):
            raise ValueError(f"{what} glob {pattern!r} has a '{part}' component; write the path it means")
        if "**" in part and part != "**":
            raise ValueError(f"{what} glob {pattern!r}: '**' must be a whole path component, like /a/**/b")
    return parts


def _glob_regex(parts: list[str], pattern: str, what: str) -> str:
    """The regex source for the components ``parts`` (see :class:`Glob`):
    runs of components between ``**`` are matched at the first place they
    fit, the last run at the end of the path."""
    runs: list[list[str]] = [[]]
    for part in parts:
        if part == "**":
            runs.append([])
        else:
            runs[-1].append("/" + _component(part, pattern, what))
    out = ["".join(runs[0])]
    for run in runs[1:-1]:
        out.append("(?>(?:/[^/]++)*?" + "".join(run) + "(?![^/]))")  # (ending where a name ends)
    if len(runs) > 1:
        out.append(("(?:/[^/]++)*" + "".join(runs[-1])) if runs[-1] else "(?:/[^/]++)*+")
    return "".join(out)


def _component(part: str, pattern: str, what: str) -> str:
    """The regex for one name: fixed-width runs between its ``*``, the
    first at the start of the name, the middle ones at the first place
    they fit, the last at the end of the name."""
    runs: list[list[str]] = [[]]
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            runs.append([])
        elif c == "?":
            runs[-1].append("[^/]")
        elif c == "\\":
            if i + 1 >= len(part):
                raise ValueError(f"{what} glob {pattern!r} ends with a lone backslash")
            i += 1
            runs[-1].append(re.escape(part[i]))
        elif c == "[":
            start = i + 2 if part[i + 1 : i + 2] in ("!", "^") else i + 1
            end = part.find("]", start)
            if end < 0:
                raise ValueError(f"{what} glob {pattern!r} has a '[' without its closing ']'")
            if end == start:
                raise ValueError(f"{what} glob {pattern!r} has an empty character class")
            body = part[start:end]
            chars = "".join("\\" + ch if ch in "\\^[]" else ch for ch in body)
            try:
                re.compile(f"[{chars}]")
            except re.error as exc:
                raise ValueError(f"{what} glob {pattern!r} has a bad character class: {exc}") from None
            # (?!/): a range such as [+-0] would otherwise match the separator
            runs[-1].append(f"(?!/)[^{chars}]" if start == i + 2 else f"(?!/)[{chars}]")
            i = end
        else:
            runs[-1].append(re.escape(c))
        i += 1
    if len(runs) == 1:
        return "".join(runs[0])
    middle = "".join("(?>[^/]*?" + "".join(run) + ")" for run in runs[1:-1])
    last = "(?>[^/]*" + "".join(runs[-1]) + ")(?![^/])" if runs[-1] else "[^/]*+"
    return "".join(runs[0]) + middle + last


# -- the model --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A named set of selectors; a caller is in it when all match.  Each
    selector holds the accepted values (any one of them matches)."""

    name: str
    line: int | None
    uids: frozenset[int] | None = None
    gids: frozenset[int] | None = None
    exes: frozenset[str] | None = None
    exe_hashes: frozenset[str] | None = None
    scripts: frozenset[str] | None = None
    script_hashes: frozenset[str] | None = None
    cgroups: tuple[Glob, ...] | None = None
    untraced: bool = False
    no_preload: bool = False
    #: sha256 of the files (other than root's) it may map executable.
    libraries: frozenset[str] | None = None
    #: Anonymous executable memory and memory-only files are allowed.
    jit: bool = False
    nondumpable: bool = False

    def mismatch(self, ident: Identity) -> str | None:
        """None when ``ident`` is in this workload, else the first selector
        that does not match, as a phrase."""
        miss = self.mismatch_of(ident)
        return None if miss is None else miss[1]

    def mismatch_of(self, ident: Identity) -> tuple[str, str] | None:
        """None when ``ident`` is in this workload, else (selector, phrase)
        for the first selector that does not match (who, then what)."""
        why = self._mismatch(ident)
        if why is None:
            return None
        return ("who" if why.startswith(("uid ", "not in group")) else "what"), why

    def _mismatch(self, ident: Identity) -> str | None:
        if self.uids is not None and ident.uid not in self.uids:
            return f"uid {ident.uid} is not {_one_of(self.uids)}"
        if self.gids is not None and not (ident.groups | {ident.gid}) & self.gids:
            return f"not in group {_one_of(self.gids)}"
        if self.exes is not None:
            if ident.exe is None:
                return "its executable could not be read"
            if ident.exe_deleted or ident.exe_replaced:
                return f"its executable {ident.exe} was deleted or replaced since it started"
            if ident.exe not in self.exes:
                return f"exe {ident.exe} is not {_one_of(self.exes)}"
        if self.exe_hashes is not None and ident.exe_sha256 not in self.exe_hashes:
            return f"exe sha256 {ident.exe_sha256 or '(unreadable)'} is not {_one_of(self.exe_hashes)}"
        if self.scripts is not None and ident.script not in self.scripts:
            return f"script {ident.script or '(none)'} is not {_one_of(self.scripts)}"
        if self.script_hashes is not None and ident.script_sha256 not in self.script_hashes:
            return f"script sha256 {ident.script_sha256 or '(none)'} is not {_one_of(self.script_hashes)}"
        if self.scripts is not None or self.script_hashes is not None:
            if PYTHON_INTERACTIVE in ident.startup:
                return f"{PYTHON_INTERACTIVE}, so the script is not all it runs"
            if self.exes is None and self.exe_hashes is None:
                why = _unnamed_interpreter(ident)
                if why:
                    return why
        if self.cgroups is not None and (
            ident.cgroup is None or not any(glob_matches(c, ident.cgroup) for c in self.cgroups)
        ):
            return f"cgroup {ident.cgroup or '(unreadable)'} matches none of its cgroup globs"
        if self.untraced and ident.traced:
            return f"it is traced (by pid {ident.tracer_pid}) and the workload requires untraced"
        if self.untraced and ident.traced_since_exec:
            return (
                f"it was traced (by pid {ident.traced_since_exec}) since it started its program and the "
                "workload requires untraced"
            )
        if self.nondumpable and ident.dumpable is not False:
            if ident.dumpable is None:
                return (
                    "whether it is dumpable cannot be seen (it runs as root, or it could not be read) and the "
                    "workload requires nondumpable"
                )
            return "it is dumpable (processes of its uid may write its memory) and the workload requires nondumpable"
        if self.no_preload and ident.preload:
            return f"its environment sets {', '.join(ident.preload)} and the workload requires no_preload"
        if self.no_preload or self.libraries is not None:
            return self._code_mismatch(ident)
        return None

    def _code_mismatch(self, ident: Identity) -> str | None:
        """Whether the process runs only code the workload allows (its
        executable mappings, see sealfs/policy/mappings.py), and, for
        no_preload, an interpreter started so that it loads nothing of the
        caller's."""
        need = "no_preload" if self.no_preload else "libraries"
        if ident.code_problem:
            return f"{ident.code_problem}, and the workload requires {need}"
        if ident.memory_code and not self.jit:
            return f"it runs {ident.memory_code[0]} and the workload does not say jit = true"
        pinned = (self.libraries or frozenset()) | (self.exe_hashes or frozenset())
        for path, digest, is_exe in ident.foreign_code:
            if is_exe and (self.exes is not None or self.exe_hashes is not None):
                continue  # the executable itself, already matched by exe/exe_sha256
            if digest is None or digest not in pinned:
                return (
                    f"it runs code from {path} (sha256 {digest or 'unreadable'}), which is neither root's "
                    "(owned by root, writable by no one else, on a file system without nosuid) nor pinned in "
                    "libraries"
                )
        if self.no_preload and ident.startup:
            return f"{ident.startup[0]}, and the workload requires no_preload"
        return None


def _unnamed_interpreter(ident: Identity) -> str | None:
    """Why the interpreter of a script workload that names none (no exe,
    no exe_sha256) does not count: it must be root's (as a library is,
    :mod:`.mappings`), else any program named like an interpreter could
    claim the script."""
    if ident.exe is None:
        return "its interpreter could not be read"
    if ident.exe_deleted or ident.exe_replaced:
        return f"its interpreter {ident.exe} was deleted or replaced since it started"
    if ident.code_problem:
        return f"{ident.code_problem}, so whether its interpreter is root's cannot be told"
    if any(is_exe for _, _, is_exe in ident.foreign_code):
        return (
            f"its interpreter {ident.exe} is not root's (owned by root, writable by no one else, on a file "
            "system without nosuid), and the workload names no exe for its script"
        )
    return None


def _one_of(values) -> str:
    vals = sorted(str(v) for v in values)
    return vals[0] if len(vals) == 1 else "one of " + ", ".join(vals)


@dataclass(frozen=True)
class Rule:
    """Paths x workloads x operations.  ``number`` counts rules from 1 in
    file order; ``line`` is where its ``[[rule]]`` starts."""

    number: int
    line: int | None
    paths: tuple[str, ...]
    globs: tuple[Glob, ...]
    workloads: frozenset[str]
    allow: frozenset[str]
    deny: frozenset[str]
    hide: bool

    def matches(self, path: str) -> bool:
        return any(g.matches(path) for g in self.globs)

    def describe(self) -> str:
        return f"rule {self.number}" + (f" (line {self.line})" if self.line else "")


@dataclass(frozen=True)
class Decision:
    """The answer for one (identity, operation, path).

    ``rule`` and ``line`` name the rule that decided (None for the default
    deny); ``hide`` is set when a hiding rule denied, so the caller should
    see ENOENT rather than EACCES."""

    allowed: bool
    op: str
    path: str
    workloads: tuple[str, ...]
    rule: int | None
    line: int | None
    hide: bool
    reason: str


@dataclass
class Policy:
    """A loaded, validated policy.  Immutable once built; decisions are pure
    functions of (identity, operation, path)."""

    file: str
    audit: str
    workloads: dict[str, Workload]
    rules: tuple[Rule, ...]
    #: Non-fatal findings (``FILE:LINE: …``), such as a user that does not exist.
    warnings: list[str] = field(default_factory=list)
    #: Executables and scripts larger than this are not hashed (callers that
    #: would need their hash are refused).
    max_hash_bytes: int = MAX_HASH_MIB << 20

    def __post_init__(self) -> None:
        self._hiding = tuple(r for r in self.rules if r.hide)
        #: op -> the rules that allow or deny it, in file order
        self._by_op = {op: tuple(r for r in self.rules if op in r.allow or op in r.deny) for op in OPERATIONS}
        #: (op, caller's workloads) -> the rules of _by_op[op] that apply to them (filled as callers come)
        self._applying: dict[tuple, tuple[Rule, ...]] = {}
        #: identity -> workloads_of (an Identity is immutable, and the identifier reuses one while nothing changed)
        self._workloads_of: dict[Identity, tuple[str, ...]] = {}

    def _rules_for(self, op: str, names: tuple[str, ...]) -> tuple[Rule, ...]:
        """The rules that say something about ``op`` to a caller in the
        workloads ``names``, in file order (cached: a decision then looks
        at these rules only, not at every rule of a large policy); for
        ``op`` "hide", its hiding rules."""
        key = (op, names)
        rules = self._applying.get(key)
        if rules is None:
            mine = set(names)
            rules = tuple(r for r in (self._hiding if op == "hide" else self._by_op[op]) if r.workloads & mine)
            if len(self._applying) >= _APPLYING_ENTRIES:
                self._applying.clear()
            self._applying[key] = rules
        return rules

    # -- decisions ------------------------------------------------------------------

    def workloads_of(self, ident: Identity) -> tuple[str, ...]:
        """Names of the workloads ``ident`` is in (file order)."""
        if not ident.valid:
            return ()
        try:
            names = self._workloads_of.get(ident)
        except TypeError:  # (an identity with a field that cannot be hashed: not cached)
            return tuple(name for name, w in self.workloads.items() if w.mismatch(ident) is None)
        if names is None:
            names = tuple(name for name, w in self.workloads.items() if w.mismatch(ident) is None)
            if len(self._workloads_of) >= _APPLYING_ENTRIES:
                self._workloads_of.clear()
            self._workloads_of[ident] = names
        return names

    def decide(self, ident: Identity, op: str, path: str, workloads: tuple[str, ...] | None = None) -> Decision:
        """Whether ``ident`` may do ``op`` on ``path`` (absolute, ``/`` for
        the root).  ``workloads`` may pass a precomputed
        :meth:`workloads_of` result."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}")
        if not ident.valid:
            return Decision(False, op, path, (), None, None, False, f"the caller cannot be identified: {ident.problem}")
        names = self.workloads_of(ident) if workloads is None else workloads
        if not names:
            return Decision(
                False,
                op,
                path,
                (),
                None,
                None,
                False,
                f"the caller is in no workload of the policy{self._near_misses(ident)} (default deny)",
            )
        mine = set(names)
        allowed_by: Rule | None = None
        for rule in self._rules_for(op, names):
            if allowed_by is not None and op not in rule.deny:
                continue  # (only a deny can change the answer now)
            if not rule.matches(path):
                continue
            if op in rule.deny:
                return Decision(
                    False,
                    op,
                    path,
                    names,
                    rule.number,
                    rule.line,
                    rule.hide,
                    f"{rule.describe()} denies {op} to {_joined(rule.workloads & mine)}",
                )
            if allowed_by is None:
                allowed_by = rule
        if allowed_by is not None:
            return Decision(
                True,
                op,
                path,
                names,
                allowed_by.number,
                allowed_by.line,
                False,
                f"{allowed_by.describe()} allows {op} to {_joined(allowed_by.workloads & mine)}",
            )
        return Decision(
            False,
            op,
            path,
            names,
            None,
            None,
            False,
            f"no rule allows {op} on this path to {_joined(names)}{self._near_misses(ident)} (default deny)",
        )

    def _near_misses(self, ident: Identity) -> str:
        """For a default denial (the caller is in no workload, or none of
        its workloads is allowed the operation): the workloads whose
        user/group it has but whose other selectors failed, and why (a
        traced or tampered service is then plain in the audit log)."""
        misses = []
        for name, w in self.workloads.items():
            miss = w.mismatch_of(ident)
            if miss is not None and miss[0] == "what" and (w.uids is not None or w.gids is not None):
                misses.append(f"{name}: {miss[1]}")
        return f" ({'; '.join(misses)})" if misses else ""

    def hiding(self, ident: Identity, path: str, workloads: tuple[str, ...] | None = None) -> Decision | None:
        """The deny of a ``hide = true`` rule that makes ``path`` not exist
        for ``ident`` (None when it is visible).  A caller that cannot be
        identified might be any workload: what any rule hides is hidden
        from it."""
        if not self._hiding:
            return None
        if not ident.valid:
            for rule in self._hiding:
                if rule.matches(path):
                    return Decision(
                        False,
                        "list",
                        path,
                        (),
                        rule.number,
                        rule.line,
                        True,
                        f"{rule.describe()} hides this path, and the caller cannot be identified: {ident.problem}",
                    )
            return None
        names = self.workloads_of(ident) if workloads is None else workloads
        mine = set(names)
        for rule in self._rules_for("hide", names):
            if rule.matches(path):
                op = "read" if "read" in rule.deny else "list"
                return Decision(
                    False,
                    op,
                    path,
                    tuple(sorted(mine)),
                    rule.number,
                    rule.line,
                    True,
                    f"{rule.describe()} hides this path from {_joined(rule.workloads & mine)}",
                )
        return None

    @property
    def hides_anything(self) -> bool:
        return bool(self._hiding)

    def needs_hash(self, kind: str, uid: int, path: str) -> bool:
        """Whether the sha256 of the ``kind`` ("exe" or "script") at
        ``path`` can decide if a caller of ``uid`` is in a workload: some
        workload pins that hash and its uid and path selectors do not
        already rule the caller out.  (Groups are not known at that point:
        a group selector never rules out.)  Otherwise the file need not be
        hashed at all."""
        for w in self.workloads.values():
            hashes, paths = (w.exe_hashes, w.exes) if kind == "exe" else (w.script_hashes, w.scripts)
            if hashes is None or (w.uids is not None and uid not in w.uids):
                continue
            if paths is None or path in paths:
                return True
        return False

    def may_hide(self, path: str) -> bool:
        """Whether some hiding rule matches ``path`` for some workload (the
        kernel must then not cache the name: it may exist for one caller
        and not for another)."""
        return any(r.matches(path) for r in self._hiding)

    def explain(self, ident: Identity, op: str, path: str) -> list[str]:
        """Lines saying which workloads matched (or why not), which rules
        applied and what decided: ``sealfs policy explain``."""
        lines = [f"caller: {ident.describe()}"]
        if ident.exe_sha256:
            lines.append(f"  exe sha256: {ident.exe_sha256}")
        if ident.script_sha256:
            lines.append(f"  script sha256: {ident.script_sha256}")
        for name, w in self.workloads.items():
            why = w.mismatch(ident) if ident.valid else "the caller cannot be identified"
            where = f" (line {w.line})" if w.line else ""
            lines.append(f"workload {name}{where}: " + ("matches" if why is None else f"no: {why}"))
        names = self.workloads_of(ident)
        for rule in self.rules:
            if not rule.matches(path):
                continue
            who = rule.workloads & set(names)
            verdict = "deny" if op in rule.deny else "allow" if op in rule.allow else "says nothing about"
            tail = f"{verdict} {op}" + (" (hide)" if rule.hide and op in rule.deny else "")
            lines.append(
                f"{rule.describe()} matches the path; "
                + (
                    f"applies to {_joined(who)}: {tail}"
                    if who
                    else f"not for this caller ({tail} for {_joined(rule.workloads)})"
                )
            )
        d = self.decide(ident, op, path, names)
        lines.append(f"decision: {'ALLOW' if d.allowed else 'DENY'} {op} {path}: {d.reason}")
        return lines


#: Entries of Policy._applying and _workloads_of before they are emptied.
_APPLYING_ENTRIES = 4096


def _joined(names) -> str:
    return ", ".join(sorted(names)) if names else "(none)"


# -- loading ----------------------------------------------------------------------------


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
    return _Builder(file, text, doc).build()


def _syntax_error(file: str, text: str, exc: Exception) -> PolicyError:
    msg = str(exc)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if m:
        return PolicyError(file, int(m.group(1)), f"invalid TOML: {msg[: m.start()]}", int(m.group(2)))
    m = re.search(r"\s*\(at end of document\)$", msg)
    if m:
        return PolicyError(file, text.count("\n") + 1, f"invalid TOML: {msg[: m.start()]} (at the end of the file)")
    return PolicyError(file, None, f"invalid TOML: {msg}")


class _Lines:
    """Where tables and keys are in the source text.

    A light scan (not a TOML parser): it follows ``[table]`` and
    ``[[array]]`` headers and ``key =`` lines, which is how policies are
    written.  Keys written another way (inline tables, dotted keys) fall
    back to the line of their table, or to the first line that names them.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*(.*?)\s*\]\]?\s*(?:#.*)?$")
    _KEY = re.compile(r"""^\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")

    def __init__(self, text: str):
        self.text_lines = text.split("\n")  # (TOML ends lines with LF or CRLF only, not U+0085 and the like)
        self.tables: dict[tuple, int] = {}
        self.keys: dict[tuple, int] = {}
        counts: dict[tuple, int] = {}
        current: tuple = ()
        in_multiline = None
        for no, line in enumerate(self.text_lines, 1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            m = self._HEADER.match(line)
            if m and not self._KEY.match(line):
                path = tuple(_split_dotted(m.group(2)))
                if m.group(1) == "[[":
                    idx = counts.get(path, 0)
                    counts[path] = idx + 1
                    self.tables.setdefault(path, no)
                    current = path + (idx,)
                else:
                    current = path
                self.tables.setdefault(current, no)
                continue
            k = self._KEY.match(line)
            if k:
                key = _unquote(k.group(1))
                self.keys.setdefault(current + (key,), no)
                rest = line[k.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote

    def of(self, *path) -> int | None:
        """The line of the key or table at ``path`` (or of its nearest
        ancestor; or the first line mentioning the last name)."""
        for n in range(len(path), 0, -1):
            p = tuple(path[:n])
            if p in self.keys:
                return self.keys[p]
            if p in self.tables:
                return self.tables[p]
        if path:
            name = str(path[-1])
            for no, line in enumerate(self.text_lines, 1):
                if name in line:
                    return no
        return 1 if self.text_lines else None


def _split_dotted(key: str) -> list[str]:
    parts, cur, quote, i = [], "", "", 0
    while i < len(key):
        c = key[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(key):
                cur += key[i + 1]
                i += 2
                continue
            if c == quote:
                quote = ""
            else:
                cur += c
        elif c in "\"'":
            quote = c
        elif c == ".":
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur.strip())
    return parts


def _unquote(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        return key[1:-1]
    return key


class _Builder:
    def __init__(self, file: str, text: str, doc: dict):
        self.file = file
        self.lines = _Lines(text)
        self.doc = doc
        self.warnings: list[str] = []
        self.globs: dict[str, Glob] = {}

    def error(self, reason: str, *where) -> PolicyError:
        return PolicyError(self.file, self.lines.of(*where), reason)

    def warn(self, reason: str, *where) -> None:
        line = self.lines.of(*where)
        self.warnings.append(f"{self.file}:{line}: {reason}" if line else f"{self.file}: {reason}")

    def build(self) -> Policy:
        doc = self.doc
        for key in doc:
            if key not in TOP_KEYS:
                hint = " (rules are written [[rule]], one per rule)" if key in ("rules", "rule") else ""
                raise self.error(f"unknown top-level key {key!r}; expected one of {', '.join(TOP_KEYS)}{hint}", key)
        audit = doc.get("audit", "deny")
        if audit not in AUDIT_LEVELS:
            raise self.error(f'audit = {audit!r}: use "deny" (log denials) or "all" (log every decision)', "audit")
        raw_workloads = doc.get("workloads", {})
        if not isinstance(raw_workloads, dict):
            raise self.error("workloads must be tables: [workloads.NAME]", "workloads")
        if len(raw_workloads) > MAX_WORKLOADS:
            raise self.error(f"{len(raw_workloads)} workloads: the limit is {MAX_WORKLOADS}", "workloads")
        workloads = {name: self.workload(name, body) for name, body in raw_workloads.items()}
        raw_rules = doc.get("rule", [])
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            raise self.error("rules must be written as [[rule]] tables", "rule")
        if len(raw_rules) > MAX_RULES:
            raise self.error(
                f"{len(raw_rules)} rules: the limit is {MAX_RULES} (a rule may list several paths and workloads)",
                "rule",
                MAX_RULES,
            )
        rules = tuple(self.rule(i, body, workloads) for i, body in enumerate(raw_rules))
        named = set().union(*(r.workloads for r in rules))
        for name in workloads:
            if name not in named:
                self.warn(f"workload {name!r} is named by no rule: it is allowed nothing", "workloads", name)
        mib = doc.get("max_hash_mib", MAX_HASH_MIB)
        if not isinstance(mib, int) or isinstance(mib, bool) or not 1 <= mib <= MAX_HASH_MIB_LIMIT:
            raise self.error(
                f"max_hash_mib = {mib!r}: give a whole number of MiB from 1 to {MAX_HASH_MIB_LIMIT}", "max_hash_mib"
            )
        return Policy(self.file, audit, workloads, rules, self.warnings, mib << 20)

    # -- workloads ------------------------------------------------------------------

    def _ids(self, body: dict, name: str, where: tuple, number_key: str, name_key: str, resolve) -> set[int]:
        """The numeric ids a workload names, by number (``uid``/``gid``)
        or by name (``user``/``group``).  Names that do not exist match no
        one (a warning), never everyone."""
        ids: set[int] = set()
        if number_key in body:
            ids |= set(self.ints(body[number_key], *where, number_key))
        if name_key in body:
            for item in self.strings(body[name_key], *where, name_key):
                try:
                    ids.add(resolve(item))
                except KeyError:
                    self.warn(
                        f"{name_key} {item!r} of workload {name!r} does not exist: it matches no one", *where, name_key
                    )
            if not ids:
                ids.add(-1)  # matches no one, rather than everyone
        return ids

    def workload(self, name: str, body: Any) -> Workload:
        where = ("workloads", name)
        if not _WORKLOAD_NAME.fullmatch(name):
            raise self.error(f"workload name {name!r}: use letters, digits, '_', '-' and '.'", *where)
        if not isinstance(body, dict):
            raise self.error(f"workload {name!r} must be a table of selectors: [workloads.{name}]", *where)
        if not body:
            raise self.error(
                f"workload {name!r} has no selectors, so it would match every process; "
                f"give at least one of {', '.join(SELECTORS)}",
                *where,
            )
        for key in body:
            if key not in SELECTORS:
                raise self.error(
                    f"unknown selector {key!r} in workload {name!r}; selectors are {', '.join(SELECTORS)}", *where, key
                )
        kw: dict[str, Any] = {}
        uids = self._ids(body, name, where, "uid", "user", lambda n: pwd.getpwnam(n).pw_uid)
        gids = self._ids(body, name, where, "gid", "group", lambda n: grp.getgrnam(n).gr_gid)
        if "uid" in body and "user" in body:
            raise self.error(f"workload {name!r} has both uid and user; give one (a list if several)", *where, "user")
        if "gid" in body and "group" in body:
            raise self.error(f"workload {name!r} has both gid and group; give one (a list if several)", *where, "group")
        if uids:
            kw["uids"] = frozenset(uids)
        if gids:
            kw["gids"] = frozenset(gids)
        for key, attr in (("exe", "exes"), ("script", "scripts")):
            if key in body:
                paths = self.strings(body[key], *where, key)
                for p in paths:
                    if not p.startswith("/") or os.path.normpath(p) != p:
                        raise self.error(
                            f"{key} = {p!r} in workload {name!r}: give an absolute, normalised "
                            "path (no '.', '..', '//' or trailing '/')",
                            *where,
                            key,
                        )
                kw[attr] = frozenset(paths)
        for key, attr in (("exe_sha256", "exe_hashes"), ("script_sha256", "script_hashes")):
            if key in body:
                hashes = self.strings(body[key], *where, key)
                for h in hashes:
                    if not _SHA256.fullmatch(h):
                        raise self.error(
                            f"{key} = {h!r} in workload {name!r} is not a sha256: 64 hex digits (sha256sum prints it)",
                            *where,
                            key,
                        )
                kw[attr] = frozenset(h.lower() for h in hashes)
        if "cgroup" in body:
            globs = []
            for g in self.strings(body["cgroup"], *where, "cgroup"):
                try:
                    globs.append(compile_glob(g, "cgroup"))
                except ValueError as exc:
                    raise self.error(f"workload {name!r}: {exc}", *where, "cgroup") from None
            kw["cgroups"] = tuple(globs)
        for key in ("untraced", "no_preload", "jit", "nondumpable"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise self.error(f"{key} in workload {name!r} must be true or false", *where, key)
                kw[key] = body[key]
        if "libraries" in body:
            kw["libraries"] = self.libraries(name, body["libraries"], where)
        if kw.get("jit") and not (kw.get("no_preload") or "libraries" in kw):
            raise self.error(
                f"jit in workload {name!r} says what code it may run, which only no_preload or "
                "libraries checks: add one of them",
                *where,
                "jit",
            )
        if kw.get("no_preload") and any(interpreter_family(e) == "python" for e in kw.get("exes", ())):
            self.warn(
                f"workload {name!r} runs Python with no_preload: it is admitted only when started with -I "
                "(or -E -s) and without -i; put -I in the #! line",
                *where,
                "no_preload",
            )
        if not any(k in kw for k in ("uids", "gids", "exes", "exe_hashes", "scripts", "script_hashes", "cgroups")):
            raise self.error(
                f"workload {name!r} selects only on {'/'.join(_CONDITIONS)}, so it would match almost "
                "every process; add a selector that says who it is (user, exe, …)",
                *where,
            )
        if ("scripts" in kw or "script_hashes" in kw) and not ("exes" in kw or "exe_hashes" in kw):
            self.warn(
                f"workload {name!r} names a script but not its interpreter: any interpreter of root's may "
                "claim the script, and some run the caller's code before it (PERL5OPT, node -r); name the "
                "interpreter in exe",
                *where,
                "script",
            )
        for p in sorted(kw.get("exes", ())):
            if os.path.islink(p):
                target = os.path.realpath(p)
                self.warn(
                    f"exe {p!r} of workload {name!r} is a symbolic link to {target}: the kernel names the "
                    f'program by its target, so this never matches; write exe = "{target}"',
                    *where,
                    "exe",
                )
        if kw.get("nondumpable") and 0 in kw.get("uids", ()):
            self.warn(
                f"workload {name!r} requires nondumpable and names uid 0: whether a root process is dumpable "
                "cannot be seen from outside, so it never matches as root",
                *where,
                "nondumpable",
            )
        return Workload(name, self.lines.of(*where), **kw)

    def libraries(self, name: str, value: Any, where: tuple) -> frozenset[str]:
        """``libraries = {"/path/lib.so" = "SHA256", …}``: the hashes.  The
        paths say what the hash is of: one that does not exist now, or
        whose file has another hash, is a warning (processes that map that
        file are refused, which the audit log names)."""
        if not isinstance(value, dict):
            raise self.error(
                f'libraries in workload {name!r} must be a table of PATH = "SHA256", such as '
                '{"/opt/app/lib/libapp.so" = "9f2c…"}',
                *where,
                "libraries",
            )
        hashes = set()
        for path, digest in value.items():
            if not path.startswith("/") or os.path.normpath(path) != path:
                raise self.error(
                    f"library {path!r} in workload {name!r}: give an absolute, normalised path", *where, "libraries"
                )
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise self.error(
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
                self.warn(
                    f"library {path} of workload {name!r} cannot be read ({exc.strerror}): its pin matches "
                    "only a file with that hash",
                    *where,
                    "libraries",
                )
                continue
            if actual != digest.lower():
                self.warn(
                    f"library {path} of workload {name!r} has sha256 {actual}, not the pinned one: a process "
                    "that maps it is refused",
                    *where,
                    "libraries",
                )
        if not hashes:
            raise self.error(f"libraries in workload {name!r} is empty: leave it out instead", *where, "libraries")
        return frozenset(hashes)

    def strings(self, value: Any, *where) -> list[str]:
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise self.error(f"{where[-1]} must be a non-empty string or a list of them", *where)
        return values

    def ints(self, value: Any, *where) -> list[int]:
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in values):
            raise self.error(f"{where[-1]} must be a number from 0 to 4294967295, or a list of them", *where)
        return values

    # -- rules ----------------------------------------------------------------------

    def rule(self, index: int, body: dict, workloads: dict[str, Workload]) -> Rule:
        where = ("rule", index)
        n = index + 1
        for key in body:
            if key not in RULE_KEYS:
                raise self.error(f"unknown key {key!r} in rule {n}; rules have {', '.join(RULE_KEYS)}", *where, key)
        for key in ("paths", "workloads"):
            if key not in body:
                raise self.error(f"rule {n} has no {key}", *where)
        paths = body["paths"]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise self.error(
                f'paths of rule {n} must be a non-empty list of globs such as ["/data/**"]', *where, "paths"
            )
        globs = []
        for p in paths:
            try:
                globs.append(self.glob(p))
            except ValueError as exc:
                raise self.error(f"rule {n}: {exc}", *where, "paths") from None
        names = body["workloads"]
        if not isinstance(names, list) or not names or not all(isinstance(w, str) for w in names):
            raise self.error(f"workloads of rule {n} must be a non-empty list of workload names", *where, "workloads")
        for w in names:
            if w not in workloads:
                known = ", ".join(workloads) or "none are defined"
                raise self.error(
                    f"rule {n} names workload {w!r}, which is not defined ([workloads.{w}]); defined: {known}",
                    *where,
                    "workloads",
                )
        ops = {}
        for key in ("allow", "deny"):
            value = body.get(key, [])
            if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
                raise self.error(f"{key} of rule {n} must be a list of operations", *where, key)
            for op in value:
                if op not in OPERATIONS:
                    raise self.error(
                        f"unknown operation {op!r} in {key} of rule {n}; operations are {', '.join(OPERATIONS)}",
                        *where,
                        key,
                    )
            ops[key] = frozenset(value)
        if not ops["allow"] and not ops["deny"]:
            raise self.error(f"rule {n} allows and denies nothing: give allow = [...] or deny = [...]", *where)
        hide = body.get("hide", False)
        if not isinstance(hide, bool):
            raise self.error(f"hide in rule {n} must be true or false", *where, "hide")
        if hide and not ops["deny"] & {"read", "list"}:
            raise self.error(
                f"rule {n} has hide = true but does not deny read or list: hiding applies to what a rule denies",
                *where,
                "hide",
            )
        return Rule(
            n, self.lines.of(*where), tuple(paths), tuple(globs), frozenset(names), ops["allow"], ops["deny"], hide
        )

    def glob(self, pattern: str) -> Glob:
        """compile_glob, once per distinct pattern of the file."""
        g = self.globs.get(pattern)
        if g is None:
            g = self.globs[pattern] = compile_glob(pattern)
        return g
