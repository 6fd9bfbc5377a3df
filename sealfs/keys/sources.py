"""Where secrets come from.  Never from argv: a passphrase is read from a
prompt, a pass file, the ``SEALFS_PASSPHRASE`` environment variable, or the
standard output of an ``extpass`` command; key files are read from disk."""

from __future__ import annotations

import ctypes
import getpass
import os
import shlex
import subprocess
import sys

from ..errors import UsageError

ENV_PASSPHRASE = "SEALFS_PASSPHRASE"
ENV_NEW_PASSPHRASE = "SEALFS_NEW_PASSPHRASE"
#: Environment variables holding secrets, which a mount daemon must not
#: keep once the volume is open: sealfs's passphrases, and the secret half
#: of static AWS credentials (boto3 read them when the store's and KMS's
#: clients were made, and keeps them in memory; AWS_ACCESS_KEY_ID is an
#: identifier, not a secret, and stays).
SECRET_ENV = (ENV_PASSPHRASE, ENV_NEW_PASSPHRASE, "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
MIN_KEYFILE_BYTES = 32


def _strip_newline(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\n") else data


def read_passfile(path: str) -> bytes:
    _warn_exposed(path, "pass file")
    try:
        with open(path, "rb") as f:
            data = f.read(65537)
    except OSError as exc:
        raise UsageError(f"cannot read pass file {path}: {exc.strerror}") from None
    lines = data.split(b"\n")
    secret = lines[0]
    if not secret:
        raise UsageError(f"pass file {path} is empty (its first line is the passphrase)")
    return secret


def run_extpass(command: str) -> bytes:
    """Run ``command`` (split like a shell would, but without a shell) and
    take the first line of its output as the passphrase."""
    argv = shlex.split(command)
    if not argv:
        raise UsageError("extpass command is empty")
    env = {k: v for k, v in os.environ.items() if k != ENV_PASSPHRASE}
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"extpass command {argv[0]} failed to run: {exc}") from None
    if out.returncode != 0:
        raise UsageError(f"extpass command {argv[0]} exited with status {out.returncode}")
    secret = _strip_newline(out.stdout.split(b"\n")[0])
    if not secret:
        raise UsageError(f"extpass command {argv[0]} printed no passphrase")
    return secret


def read_passphrase(
    *,
    passfile: str | None = None,
    extpass: str | None = None,
    prompt: str = "Passphrase: ",
    confirm: bool = False,
    use_env: bool = True,
) -> bytes:
    """The passphrase from the first source given: pass file, extpass
    command, environment, then an interactive prompt on a terminal."""
    if passfile:
        return read_passfile(passfile)
    if extpass:
        return run_extpass(extpass)
    if use_env and os.environ.get(ENV_PASSPHRASE):
        return os.environ[ENV_PASSPHRASE].encode()
    if not sys.stdin.isatty():
        raise UsageError(
            "no passphrase given: use --passfile/passfile=, --extpass/extpass=, "
            f"{ENV_PASSPHRASE}, a key file, or run on a terminal"
        )
    secret = getpass.getpass(prompt).encode()
    if confirm and getpass.getpass("Repeat passphrase: ").encode() != secret:
        raise UsageError("passphrases do not match")
    if not secret:
        raise UsageError("empty passphrase")
    return secret


def scrub_environment(names: tuple[str, ...] = SECRET_ENV) -> None:
    """Remove ``names`` from the environment, and overwrite them with zero
    bytes in the process's initial environment block too: that block (on
    the stack, where execve put it) is what /proc/PID/environ and ``ps e``
    show for the whole life of the process, whatever os.environ says
    later; a forked daemon inherits the overwritten copy."""
    for name in names:
        os.environ.pop(name, None)  # (unsetenv: libc no longer points into the block)
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end: fields 50 and 51 of proc(5)
    except (OSError, ValueError, IndexError):
        return
    if not 0 < start < end:
        return
    block = ctypes.string_at(start, end - start)
    prefixes = tuple(os.fsencode(name) + b"=" for name in names)
    offset = 0
    for entry in block.split(b"\0"):
        if entry.startswith(prefixes):
            ctypes.memset(start + offset, 0, len(entry))
        offset += len(entry) + 1


def file_exposure(path: str, *, secret: bool) -> list[str]:
    """Who besides root (and the user running sealfs) could change the
    file at ``path``, or, when ``secret``, read it: one phrase per finding,
    empty when there is none.

    Checked: the file (its owner and mode), and every directory above it,
    along the path as written and the path its symbolic links resolve to
    (whoever may write a directory may replace what is in it).  A
    directory that others may write but that is sticky and owned by a
    trusted user (``/tmp``) is fine: there only a file's owner may rename
    or remove it.  A file that does not exist (or cannot be seen) gives no
    finding: reading it gives the error."""
    trusted = {0, os.geteuid()}
    found: list[str] = []
    try:
        st = os.stat(path)
    except OSError:
        return found
    if st.st_uid not in trusted:
        found.append(f"{path} is owned by uid {st.st_uid}, who may change it")
    if st.st_mode & 0o022:
        found.append(f"{path} is writable by {_who(st.st_mode & 0o022)} (mode {st.st_mode & 0o7777:04o})")
    if secret and st.st_mode & 0o044:
        found.append(
            f"{path} is readable by {_who(st.st_mode & 0o044)} (mode {st.st_mode & 0o7777:04o}); chmod 600 {path}"
        )
    seen = set()
    for chain in (os.path.abspath(path), os.path.realpath(path)):
        d = os.path.dirname(chain)
        while d not in seen:
            seen.add(d)
            try:
                dst = os.stat(d)
            except OSError:
                break
            if dst.st_uid not in trusted:
                found.append(f"its directory {d} is owned by uid {dst.st_uid}, who may replace the file")
            elif dst.st_mode & 0o022 and not dst.st_mode & 0o1000:
                found.append(
                    f"its directory {d} is writable by {_who(dst.st_mode & 0o022)} (mode "
                    f"{dst.st_mode & 0o7777:04o}), who may replace the file"
                )
            if d == "/":
                break
            d = os.path.dirname(d)
    return found


def _who(bits: int) -> str:
    return " and ".join(w for w, mask in (("its group", 0o070), ("others", 0o007)) if bits & mask)


def secret_file_warnings(path: str, what: str) -> list[str]:
    """Warnings for a key or pass file that others may read or change
    (like ssh, which refuses such a private key; sealfs warns and goes on,
    see SECURITY.md)."""
    return [f"{what} {path}: {finding}" for finding in file_exposure(path, secret=True)]


def _warn_exposed(path: str, what: str) -> None:
    for warning in secret_file_warnings(path, what):
        print(f"sealfs: warning: {warning}", file=sys.stderr)


def read_keyfile(path: str) -> bytes:
    _warn_exposed(path, "key file")
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) < MIN_KEYFILE_BYTES:
        raise UsageError(
            f"key file {path} holds {len(data)} bytes; at least {MIN_KEYFILE_BYTES} random bytes are needed"
        )
    return data


def create_keyfile(path: str) -> bytes:
    """Write 64 random bytes to a new file readable by its owner only."""
    data = os.urandom(64)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"key file {path} already exists") from None
    except OSError as exc:
        raise UsageError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data
