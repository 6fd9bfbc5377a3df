"""Version binding (docs/FORMAT.md, "Version binding"): an entry's sealed
metadata names the header of its file version, so metadata of another
version put on the content does not pass, nor does metadata of the form
before the extension on a bound header (a downgrade); entries written
before the extension still read, and are bound when next written.

The vectors of tests/vectors/binding.json are read through the library
(a Volume on a local store holding the volume of config.json), so what is
checked is what sealfs does when it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from sealfs.codec.header import FLAG_BOUND, HEADER_SIZE, header_hash, peek_header, seal_header
from sealfs.errors import IntegrityError
from sealfs.fileio.context import FileIO
from sealfs.keys.slots import KeyFile
from sealfs.store.local import LocalStore
from sealfs.volume import ROOT_ID, Volume
from sealfs.volume import sealed as sealed_mod

VECTORS = json.loads((Path(__file__).parent / "vectors" / "binding.json").read_text())
CONFIG = json.loads((Path(__file__).parent / "vectors" / "config.json").read_text())
KEY = KeyFile("k", os.urandom(64))


def vector_volume(tmp_path: Path, key: str, obj: bytes, m: str) -> Volume:
    """The volume of config.json with the root of binding.json and one
    entry, whose object ``key`` is ``obj`` with metadata ``m``."""
    store = LocalStore(str(tmp_path / "store"), create=True)
    store.put("sealfs.json", CONFIG["config"].encode())
    store.put("root", b"", {"m": VECTORS["root"]["m"]})
    store.put(key, obj, {"m": m})
    key_file = KeyFile("volume.key", bytes.fromhex(CONFIG["credentials"]["key_file"]))
    return Volume.open(store, [key_file])


def test_binding_vectors_name_their_headers():
    for v in VECTORS["versions"]:
        header = bytes.fromhex(v["header"])
        assert header[10:12] == b"\x00\x01" and peek_header(header).bound
        assert v["header_hash"] == hashlib.sha256(header).hexdigest()[:32] == v["fields"]["hh"]
        assert bytes.fromhex(v["object"])[:HEADER_SIZE] == header
    v1, v2 = VECTORS["versions"]
    assert v1["object"][2 * HEADER_SIZE :] == v2["object"][2 * HEADER_SIZE :]  # the same block under both
    for v in VECTORS["symlink"]["versions"]:
        assert v["fields"]["hh"] == hashlib.sha256(bytes.fromhex(v["body"])).hexdigest()[:32]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_binding_vector_reads_as_expected(tmp_path, case):
    vol = vector_volume(tmp_path, case["object_key"], bytes.fromhex(case["object"]), case["m"])
    try:
        e = vol.lookup(ROOT_ID, case["entry"].encode())  # the metadata opens on its own in every case
        if e.is_link:

            def read():
                return vol.readlink(e)

            expected = VECTORS["symlink"]["target"].encode()
        else:

            def read():
                return vol.reader(e).read(0, 1 << 20)

            expected = bytes.fromhex(VECTORS["plaintext"])
        if case["expect"] == "success":
            assert read() == expected
        else:
            with pytest.raises(IntegrityError):
                read()
    finally:
        vol.close()


@pytest.fixture
def vol(tmp_path):
    v = Volume.create(LocalStore(str(tmp_path / "s"), create=True), KEY, block_size=4096)
    yield v
    v.close()


def written_by_an_older_sealfs(vol: Volume, monkeypatch, name: bytes, data: bytes):
    """A file as sealfs wrote it before the extension: a header without
    the flag, metadata without hh and vn."""
    real_fields = sealed_mod.fields

    def old_header(self, file_id, dek):
        g = self.keyring.current
        return seal_header(
            self.keyring.kek(g), block_size=self.layout.block_size, generation=g, file_id=file_id, dek=dek
        )

    with monkeypatch.context() as mp:
        mp.setattr(FileIO, "new_header", old_header)
        mp.setattr(sealed_mod, "fields", lambda e: {k: v for k, v in real_fields(e).items() if k not in ("hh", "vn")})
        e = vol.new_file_entry(ROOT_ID, name, 0o644, 0, 0)
        vol.write_content(
            e, len(data), lambda i: data[i * 4096 : (i + 1) * 4096], base=vol.new_reader(e), if_none_match=True
        )
    return vol.lookup(ROOT_ID, name)


def test_an_old_file_reads_is_bound_when_written_and_cannot_be_downgraded(vol, monkeypatch):
    data = os.urandom(10_000)
    old = written_by_an_older_sealfs(vol, monkeypatch, b"f", data)
    assert old.header_hash is None and old.version == 0
    assert not vol.reader(old).header().bound
    assert vol.reader(old).read(0, len(data)) == data
    old_md = vol.store.head(old.key).metadata

    new = vol.set_meta(old, mode=old.mode & ~0o777 | 0o600)
    seen = vol.lookup(ROOT_ID, b"f")
    assert seen.header_hash == new.header_hash is not None and seen.version == 1
    assert vol.reader(seen).header().bound and vol.reader(seen).read(0, len(data)) == data
    raw = vol.store.get(seen.key, 0, HEADER_SIZE)
    assert header_hash(raw) == seen.header_hash and int.from_bytes(raw[10:12], "big") == FLAG_BOUND

    # the older sealfs's (unbound) metadata put back on the bound content
    vol.store.copy(seen.key, seen.key, old_md)
    stale = vol.lookup(ROOT_ID, b"f")
    assert stale.header_hash is None and stale.mode & 0o777 == 0o644
    with pytest.raises(IntegrityError, match="does not"):
        vol.reader(stale).read(0, 10)


def test_every_new_version_has_a_new_header_and_a_larger_number(vol):
    e = vol.create_file(ROOT_ID, b"f", 0o644, 0, 0)
    seen = [(e.version, e.header_hash)]
    e = vol.write_content(e, 5, lambda i: b"hello", base=vol.reader(e), if_match=e.etag)
    seen.append((e.version, e.header_hash))
    e = vol.write_content(e, 5, lambda i: b"HELLO", base=vol.reader(e), if_match=e.etag)  # same size, in place
    seen.append((e.version, e.header_hash))
    e = vol.set_meta(e, uid=7)
    seen.append((e.version, e.header_hash))
    e = vol.rename(e, ROOT_ID, b"g")  # (a rename moves the version: the key binds the metadata)
    assert e.header_hash == seen[-1][1]
    seen.append((e.version, None))
    assert [v for v, _ in seen] == [1, 2, 3, 4, 5]
    assert len({h for _, h in seen[:4]}) == 4
    stored = vol.lookup(ROOT_ID, b"g")
    assert (stored.version, stored.header_hash, stored.uid) == (5, e.header_hash, 7)
    assert vol.reader(stored).read(0, 5) == b"HELLO"
    d = vol.mkdir(ROOT_ID, b"d", 0o755, 0, 0)
    assert d.version == 1 and d.header_hash is None
    assert vol.set_meta(d, mode=d.mode & ~0o777 | 0o700).version == 2
    assert vol.lookup(ROOT_ID, b"d").version == 2


def test_rekey_rebinds(vol):
    e = vol.create_file(ROOT_ID, b"f", 0o644, 0, 0)
    e = vol.write_content(e, 3, lambda i: b"abc", base=vol.reader(e), if_match=e.etag)
    old_md = vol.store.head(e.key).metadata
    vol.config.rotate(vol.keyring)
    vol.save_config()
    assert vol.rekey_file(e)
    now = vol.lookup(ROOT_ID, b"f")
    assert now.header_hash != e.header_hash and now.version == e.version + 1
    assert vol.reader(now).header().generation == 2 and vol.reader(now).read(0, 3) == b"abc"
    vol.store.copy(now.key, now.key, old_md)  # the metadata before the rekey, on the re-wrapped content
    with pytest.raises(IntegrityError, match="another version"):
        vol.reader(vol.lookup(ROOT_ID, b"f")).read(0, 3)


def test_a_symlink_is_bound_to_its_body(vol):
    link = vol.symlink(ROOT_ID, b"l", b"target", 0, 0)
    assert link.header_hash is not None and link.version == 1
    old_md = vol.store.head(link.key).metadata
    new = vol.set_meta(link, uid=5)  # lchown: the target sealed anew
    assert new.header_hash != link.header_hash and new.version == 2
    seen = vol.lookup(ROOT_ID, b"l")
    assert vol.readlink(seen) == b"target" and seen.uid == 5
    vol.store.copy(seen.key, seen.key, old_md)  # the earlier metadata on the current body
    stale = vol.lookup(ROOT_ID, b"l")
    assert stale.uid == 0
    with pytest.raises(IntegrityError, match="another version"):
        vol.readlink(stale)
    from sealfs.fsck import check

    assert [(p, "another version" in why) for p, why in check(vol).damaged] == [("/l", True)]


def test_rotate_and_rekey_bind_every_old_file(vol, monkeypatch):
    olds = [written_by_an_older_sealfs(vol, monkeypatch, f"f{i}".encode(), os.urandom(5000 + i)) for i in range(3)]
    assert all(e.header_hash is None for e in olds)
    vol.config.rotate(vol.keyring)
    vol.save_config()
    assert all(vol.rekey_file(e) for e in olds)
    for i in range(3):
        e = vol.lookup(ROOT_ID, f"f{i}".encode())
        assert e.header_hash is not None and e.version == 1 and vol.reader(e).header().bound
        assert len(vol.reader(e).read(0, 1 << 20)) == 5000 + i
