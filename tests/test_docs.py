"""Keep the docs honest: the man pages against the code, the README's fstab
lines against the option parser.

The man pages are checked as a reader sees them: rendered to plain text by
groff (``-Tascii``), or, so that the checks also run where groff is
missing, by a small roff stripper over the source.  Both renderings go
through the same checks.  A search tolerates what rendering does to text:
roff escapes (``\\-`` for ``-``), line breaks and hyphenation at the end
of a line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sealfs.cli import main as cli_main
from sealfs.cli import options as cli_options
from sealfs.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
SEALFS_1 = ROOT / "man" / "sealfs.1"
MOUNT_SEALFS_8 = ROOT / "man" / "mount.sealfs.8"
SEALFS_POLICY_5 = ROOT / "man" / "sealfs-policy.5"
PAGES = [SEALFS_1, MOUNT_SEALFS_8, SEALFS_POLICY_5]
README = ROOT / "README.md"
FSTAB_TYPES = ("fuse.sealfs", "sealfs")

needs_groff = pytest.mark.skipif(
    shutil.which("groff") is None, reason="groff is not installed (apt-get install groff-base)"
)


# -- rendering ----------------------------------------------------------------


def render_groff(page: Path) -> str:
    out = subprocess.run(
        ["groff", "-man", "-Tascii", "-P-cbou", str(page)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    return out.stdout


_ESCAPES = [
    (re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\\(bu"), "*"),
    (re.compile(r"\\\(em"), "--"),
    (re.compile(r"\\[-&c]"), lambda m: "-" if m.group(0) == "\\-" else ""),
    (re.compile(r"\\e"), "\\\\"),
]
_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}
_NO_TEXT = {
    "TH",
    "PP",
    "P",
    "LP",
    "TP",
    "TQ",
    "RS",
    "RE",
    "nf",
    "fi",
    "br",
    "sp",
    "IP",
    "nh",
    "hy",
    "ad",
    "na",
    "EX",
    "EE",
}


def _unescape(text: str) -> str:
    for pattern, repl in _ESCAPES:
        text = pattern.sub(repl, text)
    return text


def _macro_args(rest: str) -> list[str]:
    """Arguments of a macro line: separated by spaces, grouped by double quotes."""
    return [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"|\S+', rest)]


def render_source(page: Path) -> str:
    """A rough plain-text rendering without groff: section headings at
    column 0, subsection headings indented 3, everything else indented 7,
    one output line per source line."""
    lines = []
    for raw in page.read_text().splitlines():
        if raw.startswith(('.\\"', "'\\\"")):
            continue
        if raw.startswith("."):
            name, _, rest = raw[1:].partition(" ")
            args = _macro_args(rest)
            if name in _NO_TEXT:
                continue
            if name == "SH":
                lines.append(_unescape(" ".join(args)))
            elif name == "SS":
                lines.append("   " + _unescape(" ".join(args)))
            elif name in _ALTERNATING:
                lines.append("       " + _unescape("".join(args)))
            elif name in ("B", "I"):
                lines.append("       " + _unescape(" ".join(args)))
            else:
                raise AssertionError(f"{page.name}: the fallback renderer does not know .{name}; teach it")
        else:
            lines.append("       " + _unescape(raw))
    return "\n".join(lines) + "\n"


RENDERERS = {
    "groff": pytest.param(render_groff, marks=needs_groff, id="groff"),
    "source": pytest.param(render_source, id="source"),
}


@pytest.fixture(params=list(RENDERERS.values()))
def render(request):
    return request.param


# -- searching rendered text --------------------------------------------------

#: Between any two characters, rendering may have put a line break,
#: possibly after a hyphenation hyphen, then the indent of the next line.
_BREAK = r"(?:-?\n[ \t]*)?"


def pattern(needle: str, *, at_line_start: bool = False, word: bool = True) -> re.Pattern:
    body = _BREAK.join(re.escape(c) for c in needle)
    before = r"(?m)^[ \t]*" if at_line_start else (r"(?<![\w-])" if word else "")
    after = r"(?![\w-])" if word and needle[-1] not in "=." else ""
    return re.compile(before + body + after)


def found(needle: str, text: str, **kw) -> bool:
    return pattern(needle, **kw).search(text) is not None


def sections(text: str) -> dict[str, str]:
    """Top-level sections by heading (a line at column 0 in capitals)."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if re.fullmatch(r"[A-Z][A-Z .]*[A-Z]", line):
            current = line
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def subsections(section: str) -> dict[str, str]:
    """Subsections of a section by heading (a line indented exactly 3)."""
    out: dict[str, str] = {}
    current = ""
    out[current] = ""
    for line in section.splitlines():
        m = re.fullmatch(r" {3}(\S.*?)\s*", line)
        if m:
            current = m.group(1)
            out[current] = ""
        else:
            out[current] += line + "\n"
    return out


# -- the argparse tree ------------------------------------------------------------------


def commands() -> list[tuple[str, argparse.ArgumentParser]]:
    """(``"init"``, parser), ..., (``"key add"``, parser), ... for every
    subcommand, nested ones included."""
    out = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    sub_path = path + [name]
                    out.append((" ".join(sub_path), sub))
                    walk(sub, sub_path)

    walk(cli_main.build_parser(), [])
    return out


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]


def shared_unlocking_options() -> set[str]:
    p = argparse.ArgumentParser(add_help=False)
    cli_main._key_flags(p)
    return set(option_strings(p))


# -- (a) the pages render without warnings -------------------------------------------


@needs_groff
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_renders_without_warnings(page):
    out = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(page)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert out.returncode == 0
    assert out.stdout + out.stderr == "", f"groff warnings for {page.name}:\n{out.stderr}"


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_renders_the_page(page):
    out = subprocess.run(
        ["man", "-l", str(page)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"},
    )
    assert out.returncode == 0, out.stderr
    assert "NAME" in out.stdout and "SEE ALSO" in out.stdout


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_has_the_usual_sections(page, render):
    heads = sections(render(page))
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert name in heads, f"{page.name} has no {name} section"


def test_sealfs_1_has_every_section_it_promises(render):
    heads = sections(render(SEALFS_1))
    for name in (
        "COMMANDS",
        "STORES",
        "MOUNT OPTIONS",
        "KEYS AND PASSPHRASES",
        "ENVIRONMENT",
        "EXIT STATUS",
        "SIGNALS",
        "FILES",
        "SECURITY",
        "LIMITATIONS",
        "EXAMPLES",
    ):
        assert name in heads, f"sealfs.1 has no {name} section"
    for ref in ("mount.sealfs(8)", "fusermount3(1)", "mount.fuse3(8)"):
        assert found(ref, heads["SEE ALSO"], word=False), f"SEE ALSO does not name {ref}"


# -- (b) every subcommand and every option of the argparse tree -------------------------


def test_every_subcommand_has_its_subsection(render):
    subs = subsections(sections(render(SEALFS_1))["COMMANDS"])
    missing = [path for path, _ in commands() if f"sealfs {path}" not in subs]
    assert not missing, f"sealfs.1 COMMANDS has no subsection 'sealfs <command>' for: {missing}"
    assert "sealfs STORE MOUNTPOINT" in subs, "the implicit mount form (used by mount.fuse3) is not documented"


def test_every_option_of_every_subcommand_is_documented(render):
    """Each option appears in its command's subsection; the unlocking
    options shared by most commands appear once, in their own subsection,
    and each command that takes them says so."""
    text = render(SEALFS_1)
    subs = subsections(sections(text)["COMMANDS"])
    shared = shared_unlocking_options()
    problems = []
    for path, parser in commands():
        own = subs.get(f"sealfs {path}", "")
        opts = set(option_strings(parser)) - {"-h", "--help"}
        if opts & shared == shared:
            if not found("unlocking options", own):
                problems.append(f"{path}: takes the unlocking options but its subsection does not say so")
            opts -= shared
        for opt in sorted(opts):
            if not found(opt, own):
                problems.append(f"{path}: {opt} is not in its subsection")
    for opt in sorted(shared):
        if not found(opt, subs.get("Unlocking options", "")):
            problems.append(f"unlocking option {opt} is not in the 'Unlocking options' subsection")
    for opt in ("--help", "-h", "--version"):
        if not found(opt, text):
            problems.append(f"{opt} is not mentioned")
    assert not problems, "sealfs.1 does not match the argparse tree:\n" + "\n".join(problems)


def test_every_long_option_appears_somewhere(render):
    text = render(SEALFS_1)
    longs = {s for _, p in commands() for s in option_strings(p) if s.startswith("--")}
    longs |= {s for s in option_strings(cli_main.build_parser()) if s.startswith("--")}
    missing = sorted(s for s in longs if not found(s, text))
    assert not missing, f"long options missing from sealfs.1: {missing}"


# -- (c) every -o option ---------------------------------------------------------------


def test_every_mount_option_is_documented(render):
    section = sections(render(SEALFS_1))["MOUNT OPTIONS"]
    missing = []
    for name, takes_value in cli_options.KNOWN.items():
        needle = f"{name}=" if takes_value else name
        if not found(needle, section, at_line_start=True):
            missing.append(needle)
    assert not missing, f"mount options not documented as items in MOUNT OPTIONS: {missing}"


def test_every_ignored_option_is_listed(render):
    section = sections(render(SEALFS_1))["MOUNT OPTIONS"]
    missing = [n for n in sorted(cli_options.IGNORED) if not found(n, section)]
    missing += [p for p in cli_options.IGNORED_PREFIXES if not found(p, section, word=False)]
    assert not missing, f"ignored generic options not listed in MOUNT OPTIONS: {missing}"


def test_policy_options_are_documented_with_their_page(render):
    section = sections(render(SEALFS_1))["MOUNT OPTIONS"]
    subs = subsections(section)
    assert "Access policy" in subs
    for name in ("policy", "audit_log"):
        assert found(f"{name}=", subs["Access policy"], at_line_start=True)
    assert found("sealfs-policy(5)", subs["Access policy"], word=False)


# -- (d) exit codes -----------------------------------------------------------------------


def exit_codes() -> dict[str, int]:
    return {k: v for k, v in vars(ExitCode).items() if k.isupper() and isinstance(v, int)}


def test_every_exit_code_is_documented(render):
    section = sections(render(SEALFS_1))["EXIT STATUS"]
    missing = []
    for name, value in exit_codes().items():
        if not re.search(rf"(?m)^[ \t]+{value}\s+\({_BREAK.join(map(re.escape, name))}\)", section):
            missing.append(f"{value} ({name})")
    assert not missing, f"EXIT STATUS lacks items '<value> (<NAME>)' for: {missing}"


def test_no_exit_code_is_documented_that_does_not_exist(render):
    section = sections(render(SEALFS_1))["EXIT STATUS"]
    documented = {int(v) for v in re.findall(r"(?m)^[ \t]+(\d+)\s+\(", section)}
    unknown = documented - set(exit_codes().values())
    assert not unknown, f"EXIT STATUS documents codes that sealfs.errors.ExitCode does not have: {sorted(unknown)}"


# -- (e) fstab lines parse --------------------------------------------------------------


def fstab_lines(text: str) -> list[list[str]]:
    """Lines that look like fstab entries of a sealfs type."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[2] in FSTAB_TYPES and "://" in fields[0]:
            out.append(fields)
    return out


def _option_names(opts: str) -> set[str]:
    return {item.partition("=")[0] for item in opts.split(",")}


def _check_fstab_entry(fields: list[str]) -> None:
    store, _mountpoint, _type, opts, dump, passno = fields
    assert store.startswith(("file:///", "s3://")), f"not a store URL: {store}"
    parsed = cli_options.parse(opts.replace("\\040", " "))  # raises UsageError on an unknown option
    assert "audit_log" not in parsed or "policy" in parsed, f"{store}: audit_log= without policy= is refused"
    assert (dump, passno) == ("0", "0"), f"{store}: dump and pass should be 0 0 (there is no fsck.sealfs)"


def test_readme_fstab_lines_parse():
    lines = fstab_lines(README.read_text())
    assert lines, "the README has no fstab example line"
    for fields in lines:
        _check_fstab_entry(fields)


def test_man_page_fstab_lines_parse(render):
    lines = fstab_lines(render(MOUNT_SEALFS_8))
    assert {f[2] for f in lines} == set(FSTAB_TYPES), "mount.sealfs.8 should show both entry types"
    assert any(
        f[0].startswith("s3://") and {"_netdev", "allow_other", "keyfile"} <= _option_names(f[3]) for f in lines
    ), "mount.sealfs.8 has no S3 example with _netdev,allow_other,keyfile="
    assert any(f[0].startswith("file:///") for f in lines), "mount.sealfs.8 has no local-store example"
    for fields in lines:
        _check_fstab_entry(fields)
