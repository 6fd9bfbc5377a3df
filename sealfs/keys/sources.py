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
    *, passfile: str | None = None, extpass: str | None = None, prompt: str = "Passphrase: ", confirm: bool = False,
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


def read_keyfile(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) < MIN_KEYFILE_BYTES:
        raise UsageError(f"key file {path} holds {len(data)} bytes; at least {MIN_KEYFILE_BYTES} random bytes are needed")
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
