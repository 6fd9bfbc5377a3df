"""What a policy relies on that is not in the policy: the host's settings.

A workload selector proves something about the process at the moment of a
request.  Whether that is still true a moment later depends on who else
may change the process or the files the policy names:

* **The process's memory.**  Unless the kernel says otherwise, any process
  of the same uid may write into a dumpable process's memory
  (``/proc/PID/mem``, ``process_vm_writev``, ptrace) and read it.  Yama's
  ``kernel.yama.ptrace_scope`` closes that for a whole host (2: only
  CAP_SYS_PTRACE, 3: nobody; 1 still lets a process trace its own
  children, so a same-uid process that starts the program itself may), and
  the ``nondumpable`` selector for one workload (the kernel refuses ptrace
  and ``/proc/PID/mem`` of a non-dumpable process to any unprivileged
  process).  ``fs.suid_dumpable`` says whether a setuid or setgid program
  is non-dumpable from its exec (0 or 2) or stays dumpable (1).
* **The files.**  Whoever may write the policy file, or a directory above
  it, may grant themselves access at the next reload; whoever may write a
  workload's executable or script may run their own code as it.

:func:`policy_warnings` gives the findings that a mount, a reload and
``sealfs policy check`` warn about; :func:`report` the longer account of
``sealfs doctor``.  All of this is read from ``/proc`` (``proc``) and the
file system at the moment of the call: it describes the host as it is,
which may change later (a sysctl, a chmod).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from ..keys.sources import file_exposure, secret_file_warnings

YAMA = "sys/kernel/yama/ptrace_scope"
SUID_DUMPABLE = "sys/fs/suid_dumpable"
#: Processes named per uid in the report.
EXAMPLES = 5


def _sysctl(proc: str, name: str) -> int | None:
    try:
        with open(os.path.join(proc, name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def ptrace_scope(proc: str = "/proc") -> int | None:
    """Yama's ptrace_scope, None when Yama is not in the kernel."""
    return _sysctl(proc, YAMA)


def suid_dumpable(proc: str = "/proc") -> int | None:
    return _sysctl(proc, SUID_DUMPABLE)


def same_uid_memory(scope: int | None) -> str | None:
    """What ptrace_scope ``scope`` leaves open to a process of the same uid
    (a phrase), None when it leaves nothing."""
    if scope is None:
        return (
            "this kernel has no Yama, so any process of the same uid may write its memory (/proc/PID/mem, "
            "process_vm_writev, ptrace)"
        )
    if scope == 0:
        return (
            "kernel.yama.ptrace_scope is 0, so any process of the same uid may write its memory "
            "(/proc/PID/mem, process_vm_writev, ptrace)"
        )
    if scope == 1:
        return (
            "kernel.yama.ptrace_scope is 1, so a process of the same uid that starts the program itself "
            "may write its memory"
        )
    return None


def tells_one_uid_apart(w) -> bool:
    """Whether workload ``w`` claims to tell processes of one uid apart
    (by program, script, cgroup or a condition), which only holds while no
    other process of that uid can change the program that runs."""
    return (
        any(v is not None for v in (w.exes, w.exe_hashes, w.scripts, w.script_hashes, w.cgroups))
        or w.untraced
        or w.no_preload
    )


def exposed_workloads(policy) -> list[str]:
    """Names of the workloads whose memory other processes of their uid may
    write on a host without Yama: they tell processes of one uid apart and
    do not require nondumpable."""
    return [name for name, w in policy.workloads.items() if tells_one_uid_apart(w) and not w.nondumpable]


def policy_warnings(policy, proc: str = "/proc") -> list[str]:
    """The host findings a mount, a reload and ``policy check`` warn
    about: a policy file that others may change, and workloads that rely
    on the memory of their processes while the kernel leaves it open."""
    out = [
        f"{policy.file}: the policy file: {finding}; whoever that is may grant themselves access at the next reload"
        for finding in file_exposure(policy.file, secret=False)
    ]
    open_memory = same_uid_memory(ptrace_scope(proc))
    exposed = exposed_workloads(policy)
    if open_memory and exposed:
        many = len(exposed) > 1
        out.append(
            f"{policy.file}: workload{'s' if many else ''} {', '.join(exposed)} tell{'' if many else 's'} "
            f"processes of one uid apart, but {open_memory}: the code that runs can be replaced after the "
            "check. Add "
            "nondumpable = true (sealfs-policy(5), MEMORY), or set kernel.yama.ptrace_scope = 2"
        )
    return out


# -- sealfs doctor -----------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``ok``, ``info`` or ``warning``."""

    level: str
    text: str


def _processes_of(proc: str, uids) -> dict[int, list[tuple[int, str]]]:
    """uid -> (pid, exe or command name) of its running processes."""
    out: dict[int, list[tuple[int, str]]] = {u: [] for u in uids}
    try:
        pids = [int(n) for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        uid = None
        for line in status.split(b"\n"):
            if line.startswith(b"Uid:"):
                uid = int(line.split()[2])  # the effective uid
                break
        if uid not in out:
            continue
        try:
            what = os.readlink(f"{proc}/{pid}/exe")
        except OSError:
            what = "(exe unreadable)"
        out[uid].append((pid, what))
    return out


def _primary_gid(uid: int) -> int | None:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return None


def report(policy=None, secrets: tuple[tuple[str, str], ...] = (), proc: str = "/proc") -> list[Finding]:
    """Every host setting ``policy`` (and the key or pass files
    ``secrets``: (what, path) pairs) relies on, and what it is now."""
    out: list[Finding] = []
    scope = ptrace_scope(proc)
    open_memory = same_uid_memory(scope)
    if scope is None:
        out.append(
            Finding(
                "info",
                "kernel: no Yama (no /proc/" + YAMA + "): any process may ptrace and open "
                "/proc/PID/mem of a dumpable process of its own uid",
            )
        )
    else:
        meaning = {
            0: "any process may trace a dumpable process of its own uid",
            1: "a process may trace its own descendants only (of its uid)",
            2: "only CAP_SYS_PTRACE may trace",
            3: "no process may trace",
        }.get(scope, "unknown value")
        out.append(Finding("info", f"kernel.yama.ptrace_scope = {scope}: {meaning}"))
    dump = suid_dumpable(proc)
    if dump is not None:
        if dump == 1:
            out.append(
                Finding(
                    "warning",
                    "fs.suid_dumpable = 1: setuid and setgid programs stay dumpable, so "
                    "they do not satisfy nondumpable unless they call prctl(PR_SET_DUMPABLE, 0)",
                )
            )
        else:
            out.append(
                Finding("ok", f"fs.suid_dumpable = {dump}: a setuid or setgid program is not dumpable from its exec")
            )
    for what, path in secrets:
        warnings = secret_file_warnings(path, what)
        exists = os.path.exists(path)
        if not exists:
            out.append(Finding("warning", f"{what} {path} does not exist"))
        out += [Finding("warning", w) for w in warnings]
        if exists and not warnings:
            out.append(Finding("ok", f"{what} {path}: readable and writable by trusted users only"))
    if policy is None:
        return out
    findings = file_exposure(policy.file, secret=False)
    for f in findings:
        out.append(Finding("warning", f"policy file: {f}"))
    if not findings:
        out.append(
            Finding(
                "ok", f"policy file {policy.file}: writable by trusted users only, and so are the directories above it"
            )
        )
    said_below = set(policy_warnings(policy, proc))  # (the same findings, told below one by one)
    for w in policy.warnings:
        if w not in said_below:
            out.append(Finding("warning", f"policy: {w}"))
    uids = sorted({u for w in policy.workloads.values() for u in (w.uids or ()) if u >= 0})
    running = _processes_of(proc, uids)
    for name, w in policy.workloads.items():
        out += _workload_report(name, w, open_memory, running)
    return out


def _workload_report(name: str, w, open_memory: str | None, running) -> list[Finding]:
    out = []
    relies = tells_one_uid_apart(w)
    if relies and not w.nondumpable:
        if open_memory:
            out.append(Finding("warning", f"workload {name}: {open_memory}; add nondumpable = true"))
        else:
            out.append(Finding("ok", f"workload {name}: the kernel refuses processes of its uid its memory (Yama)"))
    elif w.nondumpable:
        out.append(
            Finding(
                "ok", f"workload {name}: requires nondumpable: no unprivileged process may write or read its memory"
            )
        )
    if w.uids is not None:
        for uid in sorted(u for u in w.uids if u >= 0):
            procs = running.get(uid, [])
            if not procs:
                out.append(Finding("info", f"workload {name}: no process of uid {uid} runs now"))
                continue
            progs = sorted({exe for _, exe in procs})
            others = [p for p in progs if w.exes is None or p not in w.exes]
            level = "warning" if others and relies and not w.nondumpable and open_memory else "info"
            shown = ", ".join(others[:EXAMPLES]) + (", …" if len(others) > EXAMPLES else "")
            if others:
                out.append(
                    Finding(
                        level,
                        f"workload {name}: uid {uid} also runs other programs ({shown}); each may "
                        "change a dumpable process of that uid",
                    )
                )
            else:
                out.append(Finding("ok", f"workload {name}: uid {uid} runs only the workload's programs now"))
    elif relies:
        out.append(Finding("info", f"workload {name}: names no user, so processes of any uid may be in it"))
    for key, paths in (("exe", w.exes), ("script", w.scripts)):
        for p in sorted(paths or ()):
            try:
                st = os.stat(p)
            except OSError as exc:
                out.append(Finding("warning", f"workload {name}: {key} {p}: {exc.strerror}"))
                continue
            exposure = file_exposure(p, secret=False)
            for f in exposure:
                out.append(
                    Finding(
                        "warning",
                        f"workload {name}: {key} {f}: they may run their own code as it"
                        + ("" if (w.exe_hashes if key == "exe" else w.script_hashes) else " (no sha256 pinned)"),
                    )
                )
            if not exposure:
                out.append(Finding("ok", f"workload {name}: {key} {p} is writable by trusted users only"))
            if key == "exe" and w.nondumpable:
                if st.st_mode & 0o4000 or (
                    st.st_mode & 0o2000 and (w.uids is None or st.st_gid not in {_primary_gid(u) for u in w.uids})
                ):
                    out.append(
                        Finding(
                            "ok",
                            f"workload {name}: exe {p} is set{'u' if st.st_mode & 0o4000 else 'g'}id: "
                            "not dumpable from its exec",
                        )
                    )
                elif st.st_mode & 0o2000:
                    out.append(
                        Finding(
                            "warning",
                            f"workload {name}: exe {p} is setgid to its users' own group, "
                            "which changes nothing: it stays dumpable",
                        )
                    )
                else:
                    out.append(
                        Finding(
                            "info",
                            f"workload {name}: exe {p} is neither setuid nor setgid: it matches "
                            "nondumpable only once it calls prctl(PR_SET_DUMPABLE, 0), and "
                            "what is done to it before that is not seen",
                        )
                    )
    return out
