"""Interpreters: which executables run a script, which script their
command line names, and what in their command line or environment makes
them load code from elsewhere (Python's flags, PYTHONPATH, NODE_OPTIONS,
…; and the loader's own LD_PRELOAD and the like for any program).

This reads only what it is given: the bytes of ``cmdline`` and
``environ``, which the process itself may have rewritten (see "What this
cannot see" in :mod:`.identity`).
"""

from __future__ import annotations

import os
import re

#: Loader variables that make a process run code it did not ship with.
LOADER_VARIABLES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT")

# Interpreters: basename pattern -> family.  The family says how its
# command line names the script (see _SCRIPT_OPTIONS).
_INTERPRETERS = [
    (re.compile(r"(?:python|pypy)[0-9.]*(?:-dbg)?"), "python"),
    (re.compile(r"(?:node|nodejs|deno|bun)"), "node"),
    (re.compile(r"(?:bash|sh|dash|zsh|ksh|ksh93|mksh|ash|busybox)"), "sh"),
    (re.compile(r"perl[0-9.]*"), "perl"),
    (re.compile(r"ruby[0-9.]*"), "ruby"),
    (re.compile(r"php[0-9.]*(?:-cli)?"), "php"),
    (re.compile(r"lua(?:jit)?[0-9.]*"), "lua"),
    (re.compile(r"tclsh[0-9.]*|wish[0-9.]*"), "tcl"),
]
# Per family: options after which no script file follows (code given
# inline, a module, stdin), options that take the next argument as a value,
# and options whose value *is* the script.
_SCRIPT_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    "python": (frozenset({"-c", "-m"}), frozenset({"-W", "-X", "--check-hash-based-pycs"}), frozenset()),
    "node": (
        frozenset({"-e", "--eval", "-p", "--print", "-i", "--interactive"}),
        frozenset(
            {
                "-r",
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--input-type",
                "-C",
                "--conditions",
                "--env-file",
            }
        ),
        frozenset(),
    ),
    "sh": (frozenset({"-c", "-s", "-i"}), frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"}), frozenset()),
    "perl": (frozenset({"-e", "-E"}), frozenset(), frozenset()),
    "ruby": (frozenset({"-e"}), frozenset({"-I", "-r", "-C", "-E", "--encoding"}), frozenset()),
    "php": (frozenset({"-r", "-a"}), frozenset({"-c", "-d", "-z"}), frozenset({"-f"})),
    "lua": (frozenset({"-e", "-i"}), frozenset({"-l"}), frozenset()),
    "tcl": (frozenset(), frozenset(), frozenset()),
}
#: Variables that make an interpreter load code from elsewhere.
_INTERPRETER_VARIABLES = {
    "python": ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT", "PYTHONUSERBASE"),
    "node": ("NODE_OPTIONS", "NODE_PATH"),
    "sh": ("BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4"),
    "perl": ("PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB"),
    "ruby": ("RUBYLIB", "RUBYOPT"),
    "php": ("PHP_INI_SCAN_DIR", "PHPRC"),
    "lua": ("LUA_PATH", "LUA_CPATH", "LUA_INIT"),
    "tcl": ("TCLLIBPATH",),
}


def interpreter_family(exe: str | None) -> str | None:
    """The interpreter family of an executable path, or None."""
    if not exe:
        return None
    name = os.path.basename(exe)
    for pattern, family in _INTERPRETERS:
        if pattern.fullmatch(name):
            return family
    return None


def script_argument(family: str, cmdline: bytes) -> bytes | None:
    """The script an interpreter of ``family`` was started with: the first
    non-option argument of ``cmdline`` (NUL-separated argv).  None when the
    code comes inline (``-c``, ``-e``), from a module (``-m``) or stdin."""
    argv = cmdline.split(b"\0")
    if argv and argv[-1] == b"":
        argv.pop()
    stop, takes_value, names_script = _SCRIPT_OPTIONS[family]
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i].decode("utf-8", "surrogateescape")
        if arg == "--":
            return args[i + 1] if i + 1 < len(args) else None
        if arg == "-":
            return None
        is_option = arg.startswith("-") or (family == "sh" and arg.startswith("+") and len(arg) > 1)
        if not is_option:
            return args[i]
        if "=" in arg and arg.startswith("--"):
            i += 1
            continue
        if arg in stop:
            return None
        if arg in names_script:
            return args[i + 1] if i + 1 < len(args) else None
        if arg in takes_value:
            i += 2
            continue
        if not arg.startswith("--") and len(arg) > 2:
            # a cluster of short options such as -Bc or -xe
            letters = arg[1:]
            for j, letter in enumerate(letters):
                opt = arg[0] + letter
                if opt in stop:
                    return None
                if opt in takes_value or opt in names_script:
                    if j + 1 < len(letters):  # the value is attached: -Wignore
                        break
                    if opt in names_script:
                        return args[i + 1] if i + 1 < len(args) else None
                    i += 1
                    break
        i += 1
    return None


#: What :func:`python_startup` says of ``python -i`` (and PYTHONINSPECT):
#: it is not the script alone that runs (script selectors refuse it).
PYTHON_INTERACTIVE = "python -i (or PYTHONINSPECT) reads code from stdin after the program"


def python_flags(cmdline: bytes) -> set[str]:
    """The one-letter options of a Python command line (``{"I", "B"}``
    for ``python3 -IB app.py``), up to the script, ``-c`` or ``-m``."""
    argv = cmdline.split(b"\0")
    if argv and argv[-1] == b"":
        argv.pop()
    flags: set[str] = set()
    takes_value = _SCRIPT_OPTIONS["python"][1]
    args = [a.decode("utf-8", "surrogateescape") for a in argv[1:]]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or arg == "-" or not arg.startswith("-"):
            break
        if arg in takes_value:
            i += 2
            continue
        if arg.startswith("--"):
            i += 1
            continue
        for j, letter in enumerate(arg[1:]):
            if "-" + letter in takes_value:  # -Wignore, -Xdev: the rest is its value
                if j == len(arg) - 2:
                    i += 1  # and the value is the next argument
                break
            flags.add(letter)
            if letter in "cm":  # the rest of the line is the code or the module's
                break
        if flags & {"c", "m"}:
            break
        i += 1
    return flags


def python_startup(cmdline: bytes) -> tuple[str, ...]:
    """What a Python command line lets the caller add to the program:
    without ``-I`` (or both ``-E`` and ``-s``) Python imports code named by
    the environment (PYTHONPATH, PYTHONSTARTUP, …) and the user
    site-packages of ``$HOME`` (``.pth`` files, ``usercustomize``), which
    the environment check cannot see once that code erased its traces;
    ``-i`` reads more code from stdin after the script."""
    return python_startup_of_flags(python_flags(cmdline))


def python_startup_of_flags(flags: set[str]) -> tuple[str, ...]:
    """:func:`python_startup` of the :func:`python_flags` ``flags``."""
    found = []
    if "i" in flags:
        found.append(PYTHON_INTERACTIVE)
    if "I" not in flags and not {"E", "s"} <= flags:
        found.append(
            "python runs without -I (or -E and -s), so it loads code that its environment and the "
            "user site-packages of $HOME name"
        )
    return tuple(found)


def injection_variables(environ: bytes, family: str | None) -> tuple[str, ...]:
    """Names of the code-injecting variables set (non-empty) in a
    NUL-separated environment."""
    wanted = set(LOADER_VARIABLES)
    if family is not None:
        wanted.update(_INTERPRETER_VARIABLES.get(family, ()))
    found = []
    for item in environ.split(b"\0"):
        name, eq, value = item.partition(b"=")
        if eq and value:
            text = name.decode("ascii", "replace")
            if text in wanted:
                found.append(text)
    return tuple(sorted(set(found)))
