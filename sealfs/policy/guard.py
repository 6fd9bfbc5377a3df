"""The policy of one mount, as the FUSE adapter uses it.

A :class:`Guard` holds the policy in force (replaced as a whole by
:meth:`Guard.reload` on SIGHUP, so a request sees either the old or the new
one, never a mix), the identity caches and the audit log.  Its methods
block (they read /proc and may hash a binary): call them from a worker
thread, in the same call as the filesystem operation they guard.

Denials raise :class:`PolicyDenied`, an :class:`~sealfs.errors.FsError`
with EACCES (ENOENT when a hiding rule denied), so the adapter's one error
path turns them into the reply; each is also an audit line.

**Hidden is absent.**  A path hidden from the caller is refused before
anything else is asked of the policy or the filesystem, and never by the
filesystem's answer: whether the name exists must not show.  An operation
that creates the path (mkdir, mknod, create, symlink, the target of a
rename) fails with EACCES, as a denied create of an absent name does;
every other one with ENOENT, as for an absent name (the kernel's lookup,
answered by :meth:`Guard.visible`, usually stops the call before that).

Requests from the daemon's own threads (it opens a script that lives on
its own mount to hash it) are not checked: the daemon holds the keys and
reads everything anyway.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os

from ..errors import FsError, UsageError
from .audit import AuditLog
from .decisions import Policy
from .identity import Identifier, Identity
from .rules import PolicyError, load_policy

log = logging.getLogger("sealfs")

#: Where ``audit_log=syslog`` sends lines.
SYSLOG_SOCKET = "/dev/log"


class PolicyDenied(FsError):
    """The policy refused an operation (EACCES, or ENOENT when hidden)."""


class Guard:
    """Policy + identities + audit for one mount.  Thread-safe."""

    def __init__(
        self,
        policy: Policy,
        audit: AuditLog | None = None,
        *,
        identifier: Identifier | None = None,
        policy_file: str | None = None,
    ):
        self.policy = policy
        self.policy_file = policy_file or policy.file
        self.audit = audit or AuditLog()
        self.identifier = identifier or Identifier()
        # read only what the policy can use: whether a process is dumpable costs a stat per request
        self.identifier.check_dumpable = _needs_dumpable(policy)
        self._use_hashing_of(policy)

    def _use_hashing_of(self, policy: Policy) -> None:
        """Hash only what ``policy`` can need, up to its size limit."""
        ident = self.identifier
        ident.needs_hash = policy.needs_hash
        ident.hashes.max_bytes = policy.max_hash_bytes

    # -- checks (worker threads) ---------------------------------------------------------

    def identify(self, pid: int, uid: int, gid: int) -> Identity:
        return self.identifier.identify(pid, uid, gid)

    def _is_self(self, ident: Identity) -> bool:
        return ident.valid and ident.tgid == os.getpid()

    def check(self, pid: int, uid: int, gid: int, ops: tuple[str, ...], path: str) -> Identity:
        """Raise :class:`PolicyDenied` unless the caller may do every
        operation in ``ops`` on ``path``; return its identity."""
        policy = self.policy
        ident = self.identifier.identify(pid, uid, gid)
        if self._is_self(ident):
            return ident
        names = policy.workloads_of(ident)
        hidden = policy.hiding(ident, path, names)
        if hidden is not None:
            creates = "create" in ops
            d = dataclasses.replace(
                hidden,
                op="create" if creates else ops[0],
                reason=hidden.reason + (": it cannot be created" if creates else ""),
            )
            self.audit.record(d, ident)
            raise PolicyDenied(errno.EACCES if creates else errno.ENOENT, f"{path} is hidden: {d.reason}")
        for op in ops:
            d = policy.decide(ident, op, path, names)
            if not d.allowed:
                self.audit.record(d, ident)
                raise PolicyDenied(errno.ENOENT if d.hide else errno.EACCES, f"{op} {path}: {d.reason}")
            if policy.audit == "all":
                self.audit.record(d, ident)
        return ident

    def visible(self, pid: int, uid: int, gid: int, path: str) -> None:
        """For a lookup: raise ENOENT when a hiding rule hides ``path`` from
        the caller."""
        policy = self.policy
        if not policy.may_hide(path):
            return
        ident = self.identifier.identify(pid, uid, gid)
        if self._is_self(ident):
            return
        d = policy.hiding(ident, path)
        if d is not None:
            self.audit.record(dataclasses.replace(d, op="lookup"), ident)
            raise PolicyDenied(errno.ENOENT, f"{path} is hidden: {d.reason}")

    def hidden(self, ident: Identity, path: str) -> bool:
        """Whether ``path`` is hidden from ``ident`` (quietly: for listings)."""
        policy = self.policy
        return policy.may_hide(path) and policy.hiding(ident, path) is not None

    def may_hide(self, path: str) -> bool:
        return self.policy.may_hide(path)

    def hides_anything(self) -> bool:
        """Whether the policy has a hiding rule (then directories show one
        link: their link count would count the hidden subdirectories)."""
        return self.policy.hides_anything

    # -- operations --------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the policy file again.  An invalid one is refused (logged
        with file:line and reason) and the old policy stays in force.  The
        audit file is reopened either way (for logrotate)."""
        self.audit.reopen()
        try:
            new = load_policy(self.policy_file)
        except PolicyError as exc:
            log.error("policy NOT reloaded, the previous one stays in force: %s", exc)
            return False
        for warning in new.warnings:
            log.warning("policy: %s", warning)
        needs = _needs_dumpable(new)
        if needs:
            self.identifier.check_dumpable = True  # before the policy that needs it is in force
        self.policy = new
        self.identifier.check_dumpable = needs
        self._use_hashing_of(new)
        self.identifier.forget()  # (identities gathered without a hash the new policy may need)
        log.info(
            "policy reloaded from %s: %d workloads, %d rules, audit = %s",
            self.policy_file,
            len(new.workloads),
            len(new.rules),
            new.audit,
        )
        return True

    def tick(self) -> None:
        self.audit.tick()

    def close(self) -> None:
        self.audit.close()
        self.identifier.close()


def _needs_dumpable(policy: Policy) -> bool:
    return any(w.nondumpable for w in policy.workloads.values())


def open_guard(policy_file: str, audit_log: str | None) -> Guard:
    """Load ``policy_file`` and open the audit destination, for a mount:
    every error is a :class:`~sealfs.errors.UsageError` with one line
    (``FILE:LINE: reason`` for the policy)."""
    policy = load_policy(policy_file)
    if audit_log is None:
        audit = AuditLog()
    elif audit_log == "syslog":
        if not os.path.exists(SYSLOG_SOCKET):
            raise UsageError(
                f"audit_log=syslog: there is no syslog socket {SYSLOG_SOCKET} on this host; "
                "give a file: audit_log=/var/log/sealfs-audit.log"
            )
        audit = AuditLog(syslog_address=SYSLOG_SOCKET)
    else:
        try:
            audit = AuditLog(os.path.abspath(audit_log))
        except OSError as exc:
            raise UsageError(f"audit_log={audit_log}: cannot open it for appending: {exc.strerror}") from None
    return Guard(policy, audit, policy_file=policy_file)
