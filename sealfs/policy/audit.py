"""The audit log: one JSON object per line for each decision that matters.

Every denial is recorded; allowed operations too when the policy says
``audit = "all"``.  A line holds::

    {"time": "2025-01-31T12:00:00.123Z", "decision": "deny", "op": "read",
     "path": "/payments/x", "pid": 4242, "uid": 33, "gid": 33,
     "exe": "/opt/shop/bin/frontend", "sha256": "…", "script": null,
     "workload": ["frontend"], "rule": null, "rule_line": null,
     "reason": "no rule allows read on this path to frontend (default deny)"}

``op`` is an operation of the policy, or ``lookup`` when a hiding rule
made a name not exist.  Paths are plaintext paths inside the volume; bytes
that are not UTF-8 appear as ``\\udcXX`` escapes.

**Rate limit.**  A denied loop must not fill the disk: per (workload, path,
op) — the workload being the exe for callers in no workload — at most
``burst`` lines are written per ``window`` seconds.  Further ones are
counted, and when the window ends (:meth:`AuditLog.tick`, called every
second by the daemon, or the next line for the same key) one line
``{"event": "suppressed", "count": N, …}`` says how many were dropped.
The number of keys tracked is bounded; when it is reached, the oldest
windows are closed early (their counts written).

A caller that uses a new name for every request gets a new key each time,
so denials are limited per *caller* too: at most ``identity_burst`` lines
per window for one (uid, executable), and at most ``uid_burst`` for one uid
whatever executables it runs (copies of a program under new names do not
buy more lines).  What these budgets drop is said when their window ends
in one line ``{"event": "suppressed", "scope": "caller", "count": N,
"uid": X, "exe": Y, "message": "N denials of uid X exe Y dropped in the
last Ts", …}`` (``"scope": "uid"`` and ``exe`` null for the uid budget).
So one uid writes at most ``uid_burst`` denial lines, plus a few
summaries, per window: a few kilobytes a second.  Allowed lines (with
``audit = "all"``) are limited per path only: they come from the workloads
the operator allowed.

**Destinations.**  A file (opened in append mode, line-buffered, reopened
on :meth:`reopen` so logrotate can move it), syslog (facility authpriv,
through ``/dev/log`` or another socket), or, when neither is configured,
the daemon's own log (logger ``sealfs.audit``).
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .decisions import Decision
from .identity import Identity

log = logging.getLogger("sealfs.audit")

#: Lines per key per window before suppression starts.
BURST = 5
#: Seconds in one rate-limit window.
WINDOW = 10.0
#: Lines per (uid, executable) per window, whatever the paths.
IDENTITY_BURST = 50
#: Lines per uid per window, whatever the paths and executables.
UID_BURST = 200
#: Keys (workload, path, op) tracked at once.
MAX_KEYS = 10_000


#: Mode of the log and audit files sealfs creates: they hold plaintext
#: paths, identities and the names of damaged files.
LOG_FILE_MODE = 0o600


def open_private_log(path: str):
    """``path`` opened for appending, as text, line-buffered, created mode
    0600 whatever the umask.  An existing file that group or others may
    read or write is tightened to 0600, with a warning in the log: the
    lines to come are as sensitive as the ones that made it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            os.fchmod(fd, LOG_FILE_MODE)
            logging.getLogger("sealfs").warning(
                "%s was mode %04o: made 0600 (it holds paths and identities)", path, stat.S_IMODE(st.st_mode)
            )
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


@dataclass
class _Window:
    start: float
    written: int = 0
    suppressed: int = 0
    sample: dict | None = None


class AuditLog:
    """Where audit lines go.  Thread-safe; never raises from :meth:`record`
    (a failing destination is reported once in the daemon log)."""

    def __init__(
        self,
        path: str | None = None,
        *,
        syslog_address: str | None = None,
        burst: int = BURST,
        identity_burst: int = IDENTITY_BURST,
        uid_burst: int = UID_BURST,
        window: float = WINDOW,
        max_keys: int = MAX_KEYS,
        clock=time.monotonic,
        wallclock=time.time,
    ):
        self.path = path
        self.burst = burst
        self.identity_burst = identity_burst
        self.uid_burst = uid_burst
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self.wallclock = wallclock
        self._lock = threading.Lock()
        self._windows: OrderedDict[tuple, _Window] = OrderedDict()
        #: ("caller", uid, exe, decision) and ("uid", uid, None, decision) -> window
        self._callers: OrderedDict[tuple, _Window] = OrderedDict()
        self._file = open_private_log(path) if path else None
        self._syslog: logging.Handler | None = None
        if syslog_address:
            handler = logging.handlers.SysLogHandler(
                syslog_address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
            )
            handler.ident = "sealfs-audit: "  # type: ignore[attr-defined]
            self._syslog = handler
        self._failed = False

    # -- writing ----------------------------------------------------------------------

    def record(self, decision: Decision, ident: Identity) -> None:
        """Write the line for ``decision`` about ``ident`` (subject to the
        rate limit)."""
        line = self.line(decision, ident)
        key = (
            tuple(decision.workloads) or (ident.exe or f"uid {ident.uid}",),
            decision.path,
            line["op"],
            line["decision"],
        )
        now = self.clock()
        out: list[dict] = []
        with self._lock:
            w = self._window(self._windows, key, now, out)
            if w.written >= self.burst:
                w.suppressed += 1
                w.sample = line
            else:
                # a denial also counts against its caller's budgets: the one of its uid and
                # executable, the one of its uid (allowed lines, with audit = "all", do not)
                budgets: tuple = ()
                if not decision.allowed:
                    budgets = (
                        (
                            self._window(self._callers, ("caller", ident.uid, ident.exe, "deny"), now, out),
                            self.identity_burst,
                        ),
                        (self._window(self._callers, ("uid", ident.uid, None, "deny"), now, out), self.uid_burst),
                    )
                full = next((b for b, limit in budgets if b.written >= limit), None)
                if full is not None:
                    full.suppressed += 1
                    full.sample = line
                else:
                    for b, _ in budgets:
                        b.written += 1
                    w.written += 1
                    out.append(line)
            self._emit(out)

    def _window(self, windows: OrderedDict, key: tuple, now: float, out: list[dict]) -> _Window:
        """The open window of ``key`` in ``windows`` (a new one if it ended
        or there was none; what closes is summarised into ``out``).  Caller
        holds the lock."""
        w = windows.get(key)
        if w is not None and now - w.start >= self.window:
            del windows[key]
            out += self._summary(key, w)
            w = None
        if w is None:
            w = windows[key] = _Window(now)
            while len(windows) > self.max_keys:
                old_key, old = windows.popitem(last=False)
                out += self._summary(old_key, old)
        return w

    def line(self, decision: Decision, ident: Identity) -> dict:
        """The JSON object for one decision (without rate limiting)."""
        t = datetime.datetime.fromtimestamp(self.wallclock(), datetime.UTC)
        return {
            "time": t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z",
            "decision": "allow" if decision.allowed else "deny",
            "op": decision.op,
            "path": decision.path,
            "pid": ident.pid,
            "uid": ident.uid,
            "gid": ident.gid,
            "exe": ident.exe,
            "sha256": ident.exe_sha256,
            "script": ident.script,
            "workload": list(decision.workloads),
            "rule": decision.rule,
            "rule_line": decision.line,
            "hide": decision.hide,
            "reason": decision.reason,
        }

    def tick(self) -> None:
        """Close the windows that ended: write their suppression counts."""
        now = self.clock()
        out: list[dict] = []
        with self._lock:
            for windows in (self._windows, self._callers):
                for key in [k for k, w in windows.items() if now - w.start >= self.window]:
                    out += self._summary(key, windows.pop(key))
            self._emit(out)

    def _summary(self, key: tuple, w: _Window) -> list[dict]:
        if not w.suppressed:
            return []
        sample = w.sample or {}
        t = datetime.datetime.fromtimestamp(self.wallclock(), datetime.UTC)
        out = {
            "time": t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z",
            "event": "suppressed",
            "count": w.suppressed,
            "window_seconds": self.window,
            "decision": sample.get("decision"),
        }
        if key[0] in ("caller", "uid"):
            scope, uid, exe, _ = key
            who = f"uid {uid}" + (f" exe {exe}" if scope == "caller" else " (any executable)")
            out.update(
                {
                    "scope": scope,
                    "uid": uid,
                    "exe": exe,
                    "last_path": sample.get("path"),
                    "last_exe": sample.get("exe"),
                    "last_pid": sample.get("pid"),
                    "message": f"{w.suppressed} denials of {who} dropped in the last {self.window:g}s "
                    "(too many audit lines from one caller)",
                }
            )
        else:
            out.update(
                {
                    "scope": "path",
                    "op": sample.get("op"),
                    "path": sample.get("path"),
                    "workload": sample.get("workload"),
                    "exe": sample.get("exe"),
                    "uid": sample.get("uid"),
                    "last_pid": sample.get("pid"),
                }
            )
        return [out]

    def _emit(self, lines: list[dict]) -> None:
        """Caller holds the lock."""
        for obj in lines:
            text = json.dumps(obj, ensure_ascii=True, separators=(", ", ": "))
            try:
                if self._file is not None:
                    self._file.write(text + "\n")
                if self._syslog is not None:
                    self._syslog.emit(logging.LogRecord("sealfs.audit", logging.WARNING, "", 0, text, None, None))
                if self._file is None and self._syslog is None:
                    level = logging.INFO if obj.get("decision") == "allow" else logging.WARNING
                    log.log(level, "%s", text)
            except (OSError, ValueError) as exc:
                if not self._failed:
                    self._failed = True
                    logging.getLogger("sealfs").error("cannot write the audit log %s: %s", self.path or "(syslog)", exc)

    # -- lifecycle --------------------------------------------------------------------

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it)."""
        if self.path is None:
            return
        with self._lock:
            try:
                new = open_private_log(self.path)
            except OSError as exc:
                logging.getLogger("sealfs").error(
                    "cannot reopen the audit log %s: %s (still writing to the old file)", self.path, exc
                )
                return
            old, self._file = self._file, new
            self._failed = False
            if old is not None:
                old.close()

    def close(self) -> None:
        """Write every pending suppression count, then close."""
        with self._lock:
            out: list[dict] = []
            for windows in (self._windows, self._callers):
                while windows:
                    out += self._summary(*windows.popitem(last=False))
            self._emit(out)
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._syslog is not None:
                self._syslog.close()
                self._syslog = None
