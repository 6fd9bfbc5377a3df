"""Attacks on the workload identity after the merge of issue 13, each by a
real process of the workload's own uid (setpriv) with small C programs
and libraries compiled here (the ``lab`` of test_code_identity.py: the
allowed programs are root's, the attacker's files are his).  The identity
is read by an :class:`Identifier` as the daemon reads it and decided by a
policy parsed from TOML."""

from __future__ import annotations

from pathlib import Path

from sealfs.policy.identity import Identifier

from .test_code_identity import _cc, attack, identify, lab, policy, verdict  # noqa: F401  (lab: a fixture)

#: Looks at one process, each with a new Identifier (as after an exec).
ATTEMPTS = 300

# A preload that erases LD_PRELOAD= and starts a thread that makes one
# page in the middle of its own text non-executable and executable again,
# over and over: the text mapping splits in three and merges back, so a
# range read from maps is often gone by the time map_files/START-END is
# looked up.
SPLITTER_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
extern char **environ;
__attribute__((aligned(4096), used)) void sealfs_pad(void) { __asm__ volatile(".skip 12288, 0x90"); }
static void *flip(void *arg) {
    char *page = (char *)(((uintptr_t)sealfs_pad + 8191) & ~(uintptr_t)4095);
    for (;;) {
        mprotect(page, 4096, PROT_READ);
        mprotect(page, 4096, PROT_READ | PROT_EXEC);
    }
    return arg;
}
__attribute__((constructor)) static void start(void) {
    pthread_t t;
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, "LD_PRELOAD=", 11)) memset(*e, 'x', strlen(*e));
    pthread_create(&t, 0, flip, 0);
}
"""


def _own_lib(lab, name: str, source: str) -> str:
    import os

    out = lab.own / name
    if not out.exists():
        _cc(out, source, "-shared", "-fPIC", "-lpthread")
        os.chown(out, lab.attacker.uid, lab.attacker.gid)
    return str(out)


def test_a_library_whose_mapping_keeps_splitting_is_never_overlooked(lab):
    """A range of maps that is gone when its map_files entry is looked up
    was skipped as "unmapped meanwhile": a library that keeps splitting
    and merging its own text mapping was then not seen at all."""
    lib = _own_lib(lab, "libsplitter.so", SPLITTER_C)
    text = policy(lab, exe=f'"{lab.prog("waiter")}"', no_preload="true")
    with attack(lab.attacker, [lab.prog("waiter")], env={"LD_PRELOAD": lib}) as p:
        assert b"LD_PRELOAD" not in Path(f"/proc/{p.pid}/environ").read_bytes(), "the library did not hide itself"
        looks = [identify(p, lab.attacker, Identifier()) for _ in range(ATTEMPTS)]
    whys = [verdict(text, i) for i in looks]
    missed = [i for i, why in zip(looks, whys) if why is None]
    assert not missed, f"{len(missed)} of {ATTEMPTS} looks missed the library: {missed[0].describe()}"
    assert any("libsplitter.so" in why for why in whys), whys[:3]


# The hiding preload of test_code_identity.py, linked to load at a low
# address (below 0x10000000), where maps writes the range with leading
# zeros and map_files names it without.
LOW_C = r"""
#include <string.h>
extern char **environ;
__attribute__((constructor)) static void hide(void) {
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, "LD_PRELOAD=", 11)) memset(*e, 'x', strlen(*e));
}
"""


def test_a_library_mapped_at_a_low_address_is_seen(lab):
    """The map_files entry of a range was looked up by the text of maps
    (``00800000-00801000``), which names no entry (``800000-801000``): the
    library was skipped as if unmapped, and so was all of a non-PIE
    program's code."""
    import os
    import subprocess

    lib = lab.own / "liblow.so"
    if not lib.exists():
        src = lab.own / "liblow.c"
        src.write_text(LOW_C)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-Wl,-Ttext-segment=0x800000", "-o", str(lib), str(src)],
                       check=True, capture_output=True)
        os.chown(lib, lab.attacker.uid, lab.attacker.gid)
    text = policy(lab, exe=f'"{lab.prog("waiter")}"', no_preload="true")
    with attack(lab.attacker, [lab.prog("waiter")], env={"LD_PRELOAD": str(lib)}) as p:
        maps = Path(f"/proc/{p.pid}/maps").read_text()
        assert any(line.startswith("00") and "liblow.so" in line for line in maps.splitlines()), \
            "control: the library is mapped at a low address"
        assert b"LD_PRELOAD" not in Path(f"/proc/{p.pid}/environ").read_bytes(), "the library did not hide itself"
        i = identify(p, lab.attacker)
    why = verdict(text, i)
    assert why and "liblow.so" in why and "neither root's" in why, why
