"""The text of a policy file: where its tables and keys are, and the
errors and warnings that name their line (``FILE:LINE: reason``).

TOML syntax errors come with tomllib's line; for semantic ones (an
unknown key, operation or workload, a bad glob or hash) the line of the
offending key is found in the source text (:class:`Lines`).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import UsageError


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


class Lines:
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


class Source:
    """The policy text being read (``file`` names it): its errors, its
    warnings, and the checks of plain values shared by its tables."""

    def __init__(self, file: str, text: str):
        self.file = file
        self.lines = Lines(text)
        self.warnings: list[str] = []

    def error(self, reason: str, *where) -> PolicyError:
        return PolicyError(self.file, self.lines.of(*where), reason)

    def warn(self, reason: str, *where) -> None:
        line = self.lines.of(*where)
        self.warnings.append(f"{self.file}:{line}: {reason}" if line else f"{self.file}: {reason}")

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
