"""Rules and decisions: the :class:`Policy` as loaded, and what it
answers for (identity, operation, path).

Decisions (:meth:`Policy.decide`):

* The caller's workloads are all those whose selectors all match it.
* A rule applies when one of its path globs matches the path and one of
  its workloads is among the caller's.
* An operation listed in ``deny`` of any applying rule is denied, whatever
  allows it elsewhere (deny wins); otherwise it is allowed when listed in
  ``allow`` of an applying rule; otherwise it is denied (default deny).
  Root gets no implicit pass; an invalid identity is denied everything.

A rule with ``hide = true`` that denies read or list makes its paths not
exist for the workloads it names (:meth:`Policy.hiding`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .globs import Glob
from .identity import Identity
from .workloads import Workload

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
#: Default ``max_hash_mib``: the size of the largest executable or script
#: that is hashed (for exe_sha256 / script_sha256).
MAX_HASH_MIB = 256


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
