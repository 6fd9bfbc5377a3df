"""Workloads: named sets of selectors (who a process is, what it runs,
what it carries), and whether an identity is in one.

When a selector does not match, :meth:`Workload.mismatch` says which, as
a phrase for the audit log and ``sealfs policy explain``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .globs import Glob, glob_matches
from .identity import Identity
from .interpreters import PYTHON_INTERACTIVE

#: Every selector a workload can have.
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
