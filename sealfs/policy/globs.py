"""Globs of the policy file: absolute paths (of the volume) and cgroups.

Globs are anchored at the volume root: ``*`` and ``?`` and ``[…]`` stay
within one name, ``**`` (a whole component) matches any number of names,
none included, so ``/payments/**`` matches ``/payments`` itself and
everything below it.  Matching never backtracks through the ways the
``**`` could split a path (see :class:`Glob`); the limits below keep any
glob cheap to compile and to match.
"""

from __future__ import annotations

import re

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
