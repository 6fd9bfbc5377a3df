"""Format v1 (docs/FORMAT.md): the codec against its test vectors, and the
guarantees the format promises.

* Vectors: the current code must reproduce every checked-in byte and open
  every positive vector, and must refuse every negative one.  Some vectors
  are re-checked with the ``cryptography`` primitives directly, so a bug
  shared by our helpers and the generator cannot hide.
* Tampering: every byte of a file object, blocks moved/swapped/cut/added,
  headers swapped; each must raise IntegrityError, never return data.
* Sizes, names, metadata, headers, the volume config, and fuzzing of every
  parser with random input.

Argon2 runs with tiny parameters here (8 MiB, one pass) to stay fast.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealfs.codec import crypto
from sealfs.codec import meta as meta_module
from sealfs.codec.blocks import BLOCK_OVERHEAD, FileCipher, Layout, block_aad
from sealfs.codec.header import HEADER_SIZE, Header, check_block_size, open_header, peek_header, seal_header
from sealfs.codec.meta import MetaCipher
from sealfs.codec.names import NameCipher
from sealfs.errors import BadKeyError, ConfigError, IntegrityError, UsageError
from sealfs.keys import slots
from sealfs.keys.slots import KeyFile, Keyring, KmsKey, Passphrase, VolumeConfig

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
FAST_ARGON2 = {"iterations": 1, "memory_kib": 8192, "lanes": 1}
VALID_BLOCK_SIZES = [1 << s for s in range(12, 21)]
B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def unhex(text: str) -> bytes:
    return bytes.fromhex(text)


def kek_lookup(keks: dict[int, bytes]):
    """``kek_for`` for open_header: unknown generations are integrity failures."""

    def kek_for(generation: int) -> bytes:
        if generation not in keks:
            raise IntegrityError(f"unknown key generation {generation}")
        return keks[generation]

    return kek_for


def read_object(obj: bytes, keks: dict[int, bytes]) -> bytes:
    """Read a whole file object the way FORMAT.md says: header, then size,
    then every block.  Returns the plaintext or raises IntegrityError."""
    header, dek = open_header(obj, kek_lookup(keks))
    layout = Layout(header.block_size)
    size = layout.plain_size_for(len(obj))
    cipher = FileCipher(dek, header.file_id, layout)
    return b"".join(cipher.open_span(0, memoryview(obj)[HEADER_SIZE:], size))


def write_object(kek: bytes, generation: int, file_id: bytes, dek: bytes, data: bytes, block_size: int = 4096) -> bytes:
    header = seal_header(kek, block_size=block_size, generation=generation, file_id=file_id, dek=dek)
    return header + b"".join(FileCipher(dek, file_id, Layout(block_size)).seal_all(data))


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


# == the vectors ============================================================================


def test_generator_reproduces_the_checked_in_vectors(tmp_path):
    """scripts/make-vectors, run against the current code, writes exactly the
    files in tests/vectors: the format has not changed."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-vectors"), "--out", str(tmp_path)], check=True)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in VECTORS.glob("*.json"))
    for name in made:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), f"{name} differs: the format changed"


# -- key derivation --------------------------------------------------------------------------

KDF = load("kdf.json")
HKDF_BY_NAME = {v["name"]: v for v in KDF["hkdf"]}


@pytest.mark.parametrize("v", KDF["hkdf"], ids=lambda v: v["name"])
def test_hkdf_vector_is_rfc5869_hkdf_sha256(v):
    """Independent of our helper: cryptography's HKDF gives the same key."""
    okm = HKDF(algorithm=hashes.SHA256(), length=v["length"], salt=unhex(v["salt"]), info=unhex(v["info"])).derive(
        unhex(v["ikm"])
    )
    assert okm.hex() == v["okm"]


@pytest.mark.parametrize("length", [1, 16, 32, 33, 64, 100, 255 * 32])
@pytest.mark.parametrize("salt", [b"", b"s" * 16, os.urandom(80)])
def test_our_hkdf_is_cryptography_s(length, salt):
    """sealfs computes HKDF with hmac (it runs once per block): the same
    output as cryptography's HKDF, for any length and salt."""
    ikm, info = os.urandom(32), os.urandom(20)
    want = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
    assert crypto.hkdf(ikm, salt=salt, info=info, length=length) == want


def test_code_derives_every_key_of_the_kdf_vectors():
    """Each derivation through the code path that uses it, so a changed label,
    salt or length breaks this test."""
    okm = {name: unhex(v["okm"]) for name, v in HKDF_BY_NAME.items()}
    block = HKDF_BY_NAME["block key, block 0"]
    dek, file_id = unhex(block["ikm"]), unhex(block["salt"])
    assert crypto.block_key(dek, file_id, 0) == okm["block key, block 0"]
    assert crypto.block_key(dek, file_id, 5) == okm["block key, block 5"]

    volume_id = unhex(HKDF_BY_NAME["KEK, generation 1"]["salt"])
    generations = {g: unhex(HKDF_BY_NAME[f"KEK, generation {g}"]["ikm"]) for g in (1, 2)}
    master = unhex(HKDF_BY_NAME["keyring key"]["ikm"])
    keyring = Keyring(volume_id, master, unhex(HKDF_BY_NAME["name key"]["ikm"]), generations, 2)
    assert keyring.kek(1) == okm["KEK, generation 1"]
    assert keyring.kek(2) == okm["KEK, generation 2"]
    assert keyring.meta_keys() == {1: okm["metadata key, generation 1"], 2: okm["metadata key, generation 2"]}
    assert keyring.name_key() == okm["name key"]
    assert keyring._keyring_key() == okm["keyring key"]
    assert keyring._mac_key() == okm["config MAC key"]

    argon = KDF["argon2id"][0]
    kdf = {"name": "argon2id", "salt": base64.b64encode(unhex(argon["salt"])).decode(), **FAST_ARGON2}
    assert slots._argon2(unhex(argon["password"]), kdf) == okm["passphrase slot key"]
    keyfile = HKDF_BY_NAME["key file slot key"]
    slot = {"salt": base64.b64encode(unhex(keyfile["salt"])).decode()}
    assert slots._slot_key(slot, KeyFile("k", unhex(keyfile["ikm"])), volume_id) == okm["key file slot key"]


def test_argon2id_vector_is_rfc9106_argon2id():
    v = KDF["argon2id"][0]
    raw = Argon2id(
        salt=unhex(v["salt"]),
        length=v["length"],
        iterations=v["iterations"],
        lanes=v["lanes"],
        memory_cost=v["memory_kib"],
    ).derive(unhex(v["password"]))
    assert raw.hex() == v["output"]
    assert HKDF_BY_NAME["passphrase slot key"]["ikm"] == v["output"]


def test_format_md_states_every_label_and_the_worked_sizes():
    """docs/FORMAT.md must not drift from the code: every HKDF label appears
    in it literally, and its worked-size table matches the size functions."""
    doc = (ROOT / "docs" / "FORMAT.md").read_text()
    labels = [value for name, value in vars(crypto).items() if name.startswith("LABEL_")]
    assert len(labels) == 10
    for label in labels:
        assert f'"{label.decode()}' in doc, f"label {label!r} is not in FORMAT.md"
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \|", doc, re.M)
    assert len(rows) >= 5
    layout = Layout(64 * 1024)
    for plain, blocks, obj in rows:
        assert layout.block_count(int(plain)) == int(blocks)
        assert layout.object_size_for(int(plain)) == int(obj)
    for name in (p.name for p in VECTORS.glob("*.json")):
        assert f"`{name}`" in doc, f"{name} is not described in FORMAT.md"


# -- headers ---------------------------------------------------------------------------------

HEADERS = load("header.json")["vectors"]


@pytest.mark.parametrize("v", HEADERS, ids=lambda v: v["name"])
def test_header_vector_is_reproduced_and_opens(v):
    raw = seal_header(
        unhex(v["kek"]),
        block_size=v["block_size"],
        generation=v["generation"],
        file_id=unhex(v["file_id"]),
        dek=unhex(v["dek"]),
        nonce=unhex(v["nonce"]),
    )
    assert raw.hex() == v["header"]
    assert len(raw) == HEADER_SIZE == 92
    header, dek = open_header(raw, kek_lookup({v["generation"]: unhex(v["kek"])}))
    assert header == Header(v["block_size"], v["generation"], unhex(v["file_id"]))
    assert dek.hex() == v["dek"]


@pytest.mark.parametrize("v", HEADERS, ids=lambda v: v["name"])
def test_header_vector_matches_the_byte_table_independently(v):
    raw = unhex(v["header"])
    magic, version, shift, reserved, generation, file_id = struct.unpack(">8sBBHI16s", raw[:32])
    assert (magic, version, shift, reserved) == (b"SEALFS\x00F", 1, v["block_shift"], 0)
    assert (generation, file_id.hex()) == (v["generation"], v["file_id"])
    dek = AESGCM(unhex(v["kek"])).decrypt(raw[32:44], raw[44:92], raw[:32])
    assert dek.hex() == v["dek"]


# -- blocks ----------------------------------------------------------------------------------

BLOCKS = load("blocks.json")


@pytest.mark.parametrize("v", BLOCKS["vectors"], ids=lambda v: v["name"])
def test_block_vector_is_reproduced_and_opens(v):
    cipher = FileCipher(unhex(BLOCKS["dek"]), unhex(BLOCKS["file_id"]), Layout(BLOCKS["block_size"]))
    sealed = cipher.seal_block(v["index"], v["last"], unhex(v["plaintext"]), nonce=unhex(v["nonce"]))
    assert sealed.hex() == v["sealed"]
    assert len(sealed) == len(unhex(v["plaintext"])) + BLOCK_OVERHEAD
    assert block_aad(unhex(BLOCKS["file_id"]), v["index"], v["last"]).hex() == v["aad"]
    assert cipher.open_block(v["index"], v["last"], sealed).hex() == v["plaintext"]
    with pytest.raises(IntegrityError):
        cipher.open_block(v["index"], not v["last"], sealed)


@pytest.mark.parametrize("v", BLOCKS["vectors"], ids=lambda v: v["name"])
def test_block_vector_opens_with_raw_primitives(v):
    """The spec's recipe with cryptography alone: HKDF label, salt, aad."""
    dek, file_id = unhex(BLOCKS["dek"]), unhex(BLOCKS["file_id"])
    info = b"sealfs v1 block key " + v["index"].to_bytes(8, "big")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id, info=info).derive(dek)
    assert key.hex() == v["block_key"]
    sealed = unhex(v["sealed"])
    aad = file_id + v["index"].to_bytes(8, "big") + bytes([1 if v["last"] else 0])
    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], aad).hex() == v["plaintext"]


# -- whole file objects (testkit style) -------------------------------------------------------

FILES = load("files.json")
FILE_KEKS = {int(g): unhex(k) for g, k in FILES["keks"].items()}
POSITIVE = [v for v in FILES["vectors"] if v["expect"] == "success"]
NEGATIVE = [v for v in FILES["vectors"] if v["expect"] == "integrity failure"]


def test_file_vectors_cover_success_and_failure():
    assert {v["expect"] for v in FILES["vectors"]} == {"success", "integrity failure"}
    assert {v["plain_size"] for v in POSITIVE} >= {0, 1, 5000}
    assert len(NEGATIVE) >= 15


@pytest.mark.parametrize("v", POSITIVE, ids=lambda v: v["name"])
def test_file_vector_is_reproduced_from_its_inputs(v):
    bs = FILES["block_size"]
    dek, file_id, plain = unhex(v["dek"]), unhex(v["file_id"]), unhex(v["plaintext"])
    header = seal_header(
        FILE_KEKS[v["generation"]],
        block_size=bs,
        generation=v["generation"],
        file_id=file_id,
        dek=dek,
        nonce=unhex(v["header_nonce"]),
    )
    cipher = FileCipher(dek, file_id, Layout(bs))
    n = Layout(bs).block_count(len(plain))
    assert n == v["block_count"] == len(v["block_nonces"])
    blocks = [
        cipher.seal_block(i, i == n - 1, plain[i * bs : (i + 1) * bs], nonce=unhex(v["block_nonces"][i]))
        for i in range(n)
    ]
    assert (header + b"".join(blocks)).hex() == v["object"]


@pytest.mark.parametrize("v", POSITIVE, ids=lambda v: v["name"])
def test_file_vector_opens_to_its_plaintext(v):
    obj = unhex(v["object"])
    layout = Layout(FILES["block_size"])
    assert len(obj) == v["object_size"] == layout.object_size_for(v["plain_size"])
    assert layout.plain_size_for(len(obj)) == v["plain_size"]
    assert read_object(obj, FILE_KEKS).hex() == v["plaintext"]


@pytest.mark.parametrize("v", NEGATIVE, ids=lambda v: v["name"])
def test_file_vector_with_integrity_failure_is_refused(v):
    with pytest.raises(IntegrityError):
        read_object(unhex(v["object"]), FILE_KEKS)


def test_5000_byte_file_vector_decrypts_with_raw_primitives():
    """A complete independent reader of one object, from FORMAT.md alone."""
    v = next(v for v in POSITIVE if v["plain_size"] == 5000)
    obj = unhex(v["object"])
    magic, version, shift, _, generation, file_id = struct.unpack(">8sBBHI16s", obj[:32])
    assert (magic, version) == (b"SEALFS\x00F", 1)
    B = 1 << shift
    dek = AESGCM(FILE_KEKS[generation]).decrypt(obj[32:44], obj[44:92], obj[:32])
    body, out, index = obj[92:], [], 0
    n = -(-5000 // B)
    while body:
        size = min(B + 28, len(body))
        info = b"sealfs v1 block key " + index.to_bytes(8, "big")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id, info=info).derive(dek)
        aad = file_id + index.to_bytes(8, "big") + bytes([index == n - 1])
        out.append(AESGCM(key).decrypt(body[:12], body[12:size], aad))
        body, index = body[size:], index + 1
    assert index == n == 2
    assert b"".join(out).hex() == v["plaintext"]


# -- names ---------------------------------------------------------------------------------

NAMES = load("names.json")


def _dbl(block: bytes) -> bytes:
    n = int.from_bytes(block, "big") << 1
    return ((n ^ 0x87) & ((1 << 128) - 1) if n >> 128 else n).to_bytes(16, "big")


def _cmac(key: bytes, data: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def aes_siv_rfc5297(key: bytes, associated: list[bytes], plaintext: bytes) -> bytes:
    """RFC 5297 section 2.6, from AES-CMAC and AES-CTR: an independent
    check of the AES-SIV construction the names use."""
    k1, k2 = key[:32], key[32:]
    d = _cmac(k1, bytes(16))
    for item in associated:
        d = bytes(a ^ b for a, b in zip(_dbl(d), _cmac(k1, item), strict=True))
    if len(plaintext) >= 16:
        t = plaintext[:-16] + bytes(a ^ b for a, b in zip(plaintext[-16:], d, strict=True))
    else:
        padded = plaintext + b"\x80" + bytes(15 - len(plaintext))
        t = bytes(a ^ b for a, b in zip(padded, _dbl(d), strict=True))
    v = _cmac(k1, t)
    q = bytearray(v)
    q[8] &= 0x7F
    q[12] &= 0x7F
    enc = Cipher(algorithms.AES(k2), modes.CTR(bytes(q))).encryptor()
    return v + enc.update(plaintext) + enc.finalize()


@pytest.mark.parametrize("v", NAMES["vectors"], ids=lambda v: v["name"])
def test_name_vector_is_reproduced_and_decrypts(v):
    names = NameCipher(unhex(NAMES["name_key"]))
    dir_id, name = unhex(v["dir_id"]), unhex(v["plaintext"])
    component, long_ct = names.encrypt(dir_id, name)
    assert component == v["component"]
    assert (long_ct.hex() if long_ct else None) == v.get("long_ciphertext")
    assert names.decrypt(dir_id, component, long_ct) == name


@pytest.mark.parametrize("v", NAMES["vectors"], ids=lambda v: v["name"])
def test_name_vector_matches_rfc5297_independently(v):
    ct = aes_siv_rfc5297(unhex(NAMES["name_key"]), [unhex(v["dir_id"])], unhex(v["plaintext"]))
    text = base64.b32encode(ct).decode().rstrip("=").lower()
    if len(text) <= 200:
        assert v["component"] == text
    else:
        digest = base64.b32encode(hashlib.sha256(ct).digest()).decode().rstrip("=").lower()
        assert v["component"] == digest + ".ln"
        assert v["long_ciphertext"] == ct.hex()
        assert base64.b64decode(v["n_metadata"]) == ct


def test_name_vectors_cover_the_short_long_boundary():
    by_len = {len(unhex(v["plaintext"])): v["component"] for v in NAMES["vectors"]}
    assert not by_len[109].endswith(".ln") and len(by_len[109]) == 200
    assert by_len[110].endswith(".ln") and by_len[255].endswith(".ln")


# -- metadata -------------------------------------------------------------------------------

META = load("meta.json")
META_KEYS = {int(g): unhex(k) for g, k in META["meta_keys"].items()}


def scripted_nonce(monkeypatch, nonce: bytes) -> None:
    """Make meta.py seal with ``nonce`` (it takes no nonce argument)."""
    real = crypto.seal
    monkeypatch.setattr(meta_module, "seal", lambda key, data, aad, n=None: real(key, data, aad, nonce))


@pytest.mark.parametrize("v", META["vectors"], ids=lambda v: v["name"])
def test_meta_vector_is_reproduced_and_opens(v, monkeypatch):
    aad = v["object_key"].encode()
    assert MetaCipher(META_KEYS, 99).open(v["m"], aad, "vector") == v["fields"]
    assert json.dumps(v["fields"], separators=(",", ":"), sort_keys=True) == v["json"]
    scripted_nonce(monkeypatch, unhex(v["nonce"]))
    assert MetaCipher(META_KEYS, v["generation"]).seal(v["fields"], aad) == v["m"]


@pytest.mark.parametrize("v", META["vectors"], ids=lambda v: v["name"])
def test_meta_vector_opens_with_raw_primitives(v):
    blob = base64.b64decode(v["m"])
    gen = struct.unpack(">I", blob[:4])[0]
    assert gen == v["generation"]
    plain = AESGCM(META_KEYS[gen]).decrypt(blob[4:16], blob[16:], blob[:4] + v["object_key"].encode())
    assert plain.decode() == v["json"]


def test_overflow_vector_is_reproduced_and_opens(monkeypatch):
    o = META["overflow"]
    aad = b"sealfs overflow " + unhex(o["id"])
    data = json.dumps(o["fields"], separators=(",", ":"), sort_keys=True).encode()
    assert json.loads(MetaCipher(META_KEYS, 1).open_bytes(unhex(o["object"]), aad, "overflow")) == o["fields"]
    scripted_nonce(monkeypatch, unhex(o["nonce"]))
    assert MetaCipher(META_KEYS, o["generation"]).seal_bytes(data, aad).hex() == o["object"]
    with pytest.raises(IntegrityError):
        MetaCipher(META_KEYS, 1).open_bytes(unhex(o["object"]), b"sealfs overflow " + bytes(16), "overflow")


def test_times_record_vector_is_reproduced_and_opens(monkeypatch):
    t = META["times"]
    aad = b"sealfs times " + unhex(t["id"]) + unhex(t["tr"])
    assert t["object_key"] == f"t/{t['id']}.{t['tr']}"
    assert unhex(t["aad"]) == struct.pack(">I", t["generation"]) + aad
    data = json.dumps(t["fields"], separators=(",", ":"), sort_keys=True).encode()
    assert json.loads(MetaCipher(META_KEYS, 1).open_bytes(unhex(t["object"]), aad, "times")) == t["fields"]
    scripted_nonce(monkeypatch, unhex(t["nonce"]))
    assert MetaCipher(META_KEYS, t["generation"]).seal_bytes(data, aad).hex() == t["object"]
    for other in (unhex(t["tr"])[::-1], bytes(16)):  # another version's record, another name
        with pytest.raises(IntegrityError):
            MetaCipher(META_KEYS, 1).open_bytes(unhex(t["object"]), b"sealfs times " + unhex(t["id"]) + other, "times")


# -- the volume config -----------------------------------------------------------------------

CONFIG = load("config.json")
CONFIG_RAW = CONFIG["config"].encode()
EXPECTED = CONFIG["expect"]


def assert_expected_keyring(keyring: Keyring) -> None:
    assert keyring.volume_id.hex() == EXPECTED["volume_id"]
    assert keyring.master.hex() == EXPECTED["master_key"]
    assert keyring.name_secret.hex() == EXPECTED["name_secret"]
    assert {str(g): s.hex() for g, s in keyring.generations.items()} == EXPECTED["generations"]
    assert keyring.current == EXPECTED["current"]


def test_config_vector_parses_and_serializes_back_identically():
    config = VolumeConfig.parse(CONFIG_RAW)
    assert config.block_size == EXPECTED["block_size"]
    assert config.to_bytes() == CONFIG_RAW
    assert slots._canonical(config._body()).decode() == CONFIG["mac_input"]


def test_config_vector_unlocks_with_the_passphrase():
    keyring = VolumeConfig.parse(CONFIG_RAW).unlock([Passphrase(CONFIG["credentials"]["passphrase"].encode())])
    assert_expected_keyring(keyring)


def test_config_vector_unlocks_with_the_key_file():
    keyring = VolumeConfig.parse(CONFIG_RAW).unlock([KeyFile("volume.key", unhex(CONFIG["credentials"]["key_file"]))])
    assert_expected_keyring(keyring)


def test_config_vector_unlocks_with_the_kms_slot(monkeypatch):
    """KMS itself is replaced by a fake that knows the one data key."""
    config = VolumeConfig.parse(CONFIG_RAW)
    slot = next(s for s in config.slots if s["type"] == "kms")
    calls = []

    def fake_decrypt(blob, key_id, volume_id, region, endpoint):
        calls.append((key_id, region, endpoint))
        assert blob == base64.b64decode(slot["kms_blob"]) and volume_id.hex() == EXPECTED["volume_id"]
        return unhex(CONFIG["credentials"]["kms_data_key"])

    monkeypatch.setattr(slots.kms, "decrypt", fake_decrypt)
    assert_expected_keyring(config.unlock([KmsKey()]))
    assert calls == [(slot["key_id"], "eu-west-1", None)]


def test_config_vector_verifies_with_raw_primitives():
    """Every slot, the keyring and the MAC, from FORMAT.md and cryptography
    alone (no sealfs helper)."""
    doc = json.loads(CONFIG_RAW)
    volume_id = unhex(doc["volume_id"])
    creds = CONFIG["credentials"]

    def hkdf(ikm, salt, info, length=32):
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)

    def canonical(obj):
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    masters = []
    for slot, expected_aad in zip(doc["slots"], CONFIG["slot_aads"], strict=True):
        if slot["type"] == "passphrase":
            k = slot["kdf"]
            salt = base64.b64decode(k["salt"])
            raw = Argon2id(
                salt=salt, length=32, iterations=k["iterations"], lanes=k["lanes"], memory_cost=k["memory_kib"]
            ).derive(creds["passphrase"].encode())
            key = hkdf(raw, salt, b"sealfs v1 passphrase slot key")
        elif slot["type"] == "keyfile":
            key = hkdf(unhex(creds["key_file"]), base64.b64decode(slot["salt"]), b"sealfs v1 key file slot key")
        else:
            key = hkdf(unhex(creds["kms_data_key"]), volume_id, b"sealfs v1 kms slot key")
        aad = canonical({"slot": {k: v for k, v in slot.items() if k != "wrapped"}, "volume_id": doc["volume_id"]})
        assert aad.decode() == expected_aad
        wrapped = base64.b64decode(slot["wrapped"])
        assert len(wrapped) == 60
        masters.append(AESGCM(key).decrypt(wrapped[:12], wrapped[12:], aad))
    assert {m.hex() for m in masters} == {EXPECTED["master_key"]}
    master = masters[0]

    keyring = base64.b64decode(doc["keyring"])
    plain = AESGCM(hkdf(master, volume_id, b"sealfs v1 keyring key")).decrypt(keyring[:12], keyring[12:], volume_id)
    assert plain.decode() == CONFIG["keyring_plaintext"]
    body = json.loads(plain)
    assert body["current"] == EXPECTED["current"]
    assert base64.b64decode(body["name_secret"]).hex() == EXPECTED["name_secret"]

    mac_key = hkdf(master, volume_id, b"sealfs v1 config authentication key")
    unmaced = canonical({k: v for k, v in doc.items() if k != "mac"})
    assert unmaced.decode() == CONFIG["mac_input"]
    assert hmac.new(mac_key, unmaced, hashlib.sha256).digest() == base64.b64decode(doc["mac"])


# == tampering with file objects ===============================================================

BS = 4096
KEK1 = bytes(range(32))
KEYS = {1: KEK1}
FILE_ID_A, FILE_ID_B = b"A" * 16, b"B" * 16
DEK_A, DEK_B = b"a" * 32, b"b" * 32
DATA_A = os.urandom(2 * BS + 808)  # three blocks: full, full, short last
DATA_B = os.urandom(2 * BS + 808)
OBJ_A = write_object(KEK1, 1, FILE_ID_A, DEK_A, DATA_A)
OBJ_B = write_object(KEK1, 1, FILE_ID_B, DEK_B, DATA_B)
SEALED = BS + BLOCK_OVERHEAD


def blocks_of(obj: bytes) -> list[bytes]:
    body = obj[HEADER_SIZE:]
    return [body[i : i + SEALED] for i in range(0, len(body), SEALED)]


def test_untampered_objects_read_back():
    assert read_object(OBJ_A, KEYS) == DATA_A
    assert read_object(OBJ_B, KEYS) == DATA_B
    assert [len(b) for b in blocks_of(OBJ_A)] == [SEALED, SEALED, 808 + BLOCK_OVERHEAD]


def test_flipping_any_single_byte_is_detected():
    """Every byte, header and blocks; the bit flipped moves around the byte."""
    for pos in range(len(OBJ_A)):
        with pytest.raises(IntegrityError):
            read_object(flip(OBJ_A, pos, 1 << (pos % 8)), KEYS)


def test_swapping_two_blocks_is_detected():
    b0, b1, b2 = blocks_of(OBJ_A)
    with pytest.raises(IntegrityError):
        read_object(OBJ_A[:HEADER_SIZE] + b1 + b0 + b2, KEYS)


@pytest.mark.parametrize(
    "dek, file_id",
    [(DEK_B, FILE_ID_B), (DEK_A, FILE_ID_B), (DEK_B, FILE_ID_A)],
    ids=["other DEK, other id", "same DEK, other id", "other DEK, same id"],
)
@pytest.mark.parametrize("index", [0, 1])
def test_block_from_another_file_is_detected(dek, file_id, index):
    """'Same id, other DEK' is what a full rewrite of the same file makes."""
    other = write_object(KEK1, 1, file_id, dek, DATA_B)
    blocks = blocks_of(OBJ_A)
    blocks[index] = blocks_of(other)[index]
    with pytest.raises(IntegrityError):
        read_object(OBJ_A[:HEADER_SIZE] + b"".join(blocks), KEYS)


def test_known_limit_block_of_an_older_version_of_the_same_file_is_accepted():
    """FORMAT.md, 'Known limits': a partial rewrite keeps DEK and file id, so
    a block of an older version with the same length and last flag still
    authenticates (a full middle block; the last block when the size did not
    change).  If the format ever closes this, this test fails and the
    document must change."""
    newer = os.urandom(len(DATA_A))
    new_blocks = blocks_of(write_object(KEK1, 1, FILE_ID_A, DEK_A, newer))
    old_blocks = blocks_of(OBJ_A)
    spliced = OBJ_A[:HEADER_SIZE] + old_blocks[0] + new_blocks[1] + old_blocks[2]
    assert read_object(spliced, KEYS) == DATA_A[:BS] + newer[BS : 2 * BS] + DATA_A[2 * BS :]


@pytest.mark.parametrize("data", [DATA_A, DATA_A[: 3 * BS], b""], ids=["short last", "full last", "empty"])
def test_truncating_at_every_block_boundary_is_detected(data):
    obj = write_object(KEK1, 1, FILE_ID_A, DEK_A, data)
    n = Layout(BS).block_count(len(data))
    for kept in range(n):
        with pytest.raises(IntegrityError):
            read_object(obj[: HEADER_SIZE + kept * SEALED], KEYS)


@pytest.mark.parametrize("data", [DATA_A, DATA_A[: 3 * BS], b""], ids=["short last", "full last", "empty"])
def test_appending_a_block_is_detected(data):
    obj = write_object(KEK1, 1, FILE_ID_A, DEK_A, data)
    cipher = FileCipher(DEK_A, FILE_ID_A, Layout(BS))
    n = Layout(BS).block_count(len(data))
    copies = blocks_of(obj)
    # new blocks sealed by someone holding the DEK, claiming to be last or not
    sealed_anew = [
        cipher.seal_block(n, True, b"x" * BS),
        cipher.seal_block(n, True, b"x"),
        cipher.seal_block(n, True, b""),
        cipher.seal_block(n, False, b"x" * BS),
    ]
    appended = copies + sealed_anew
    for extra in appended:
        with pytest.raises(IntegrityError):
            read_object(obj + extra, KEYS)


def test_swapping_headers_between_two_files_is_detected():
    with pytest.raises(IntegrityError):
        read_object(OBJ_B[:HEADER_SIZE] + OBJ_A[HEADER_SIZE:], KEYS)
    with pytest.raises(IntegrityError):
        read_object(OBJ_A[:HEADER_SIZE] + OBJ_B[HEADER_SIZE:], KEYS)


def test_open_span_reads_a_middle_range_and_refuses_excess_bytes():
    header, dek = open_header(OBJ_A, kek_lookup(KEYS))
    layout = Layout(BS)
    cipher = FileCipher(dek, header.file_id, layout)
    start, end = layout.sealed_range(1, 3, len(DATA_A))
    assert b"".join(cipher.open_span(1, OBJ_A[start:end], len(DATA_A))) == DATA_A[BS:]
    with pytest.raises(IntegrityError):
        cipher.open_span(1, OBJ_A[start:end] + b"\0", len(DATA_A))
    with pytest.raises(IntegrityError):
        cipher.open_span(1, OBJ_A[start : end - 1], len(DATA_A))


# == sizes =================================================================================


@given(plain=st.integers(min_value=0, max_value=1 << 50), block_size=st.sampled_from(VALID_BLOCK_SIZES))
def test_plain_size_inverts_object_size(plain, block_size):
    layout = Layout(block_size)
    assert layout.plain_size_for(layout.object_size_for(plain)) == plain


def test_every_impossible_object_size_is_refused_exhaustively():
    """All object sizes up to four blocks, block size 4096: a size is
    accepted exactly when some plaintext size produces it."""
    layout = Layout(BS)
    valid = {layout.object_size_for(p): p for p in range(4 * BS + 1)}
    top = max(valid)
    refused = 0
    for size in range(-1, top + 1):
        if size in valid:
            assert layout.plain_size_for(size) == valid[size]
        else:
            refused += 1
            with pytest.raises(IntegrityError):
                layout.plain_size_for(size)
    # -1; 0..119 (shorter than a header and one block); 28 sizes after each of
    # the first three full blocks (the fourth ends the range)
    assert refused == 1 + 120 + 28 * 3


def test_worked_sizes_with_the_default_block_size():
    layout = Layout(64 * 1024)
    assert [layout.object_size_for(p) for p in (0, 1, 5000, 65536, 65537)] == [120, 121, 5120, 65656, 65685]
    for invalid in (119, 65657, 65684):
        with pytest.raises(IntegrityError):
            layout.plain_size_for(invalid)


# == names ==================================================================================

NAME_KEY = bytes(range(64))
NAMES_CIPHER = NameCipher(NAME_KEY)
DIR_1, DIR_2 = b"\x01" * 16, b"\x02" * 16
valid_names = st.lists(st.integers(1, 255).filter(lambda b: b != 0x2F), min_size=1, max_size=255).map(bytes)


@given(name=valid_names, dir_id=st.binary(min_size=16, max_size=16))
def test_name_round_trip(name, dir_id):
    component, long_ct = NAMES_CIPHER.encrypt(dir_id, name)
    assert NAMES_CIPHER.decrypt(dir_id, component, long_ct) == name
    if len(name) <= 109:
        assert long_ct is None and re.fullmatch("[a-z2-7]{28,200}", component)
    else:
        assert long_ct is not None and len(component) <= 60 and re.fullmatch(r"[a-z2-7]+\.ln", component)


def test_same_name_in_different_directories_encrypts_differently():
    for name in (b"a", b"hello.txt", b"x" * 255):
        c1, ct1 = NAMES_CIPHER.encrypt(DIR_1, name)
        c2, ct2 = NAMES_CIPHER.encrypt(DIR_2, name)
        assert c1 != c2
        with pytest.raises(IntegrityError):
            NAMES_CIPHER.decrypt(DIR_2, c1, ct1)


def test_every_single_character_change_of_a_component_is_refused():
    """Including changes to only the unused low bits of the last character,
    and upper case: a component has exactly one valid spelling."""
    component, _ = NAMES_CIPHER.encrypt(DIR_1, b"report.pdf")
    assert len(component) * 5 % 8 != 0  # the last character has unused bits
    for pos, char in enumerate(component):
        for other in B32_ALPHABET.replace(char, "") + (char.upper() if char.isalpha() else ""):
            changed = component[:pos] + other + component[pos + 1 :]
            with pytest.raises(IntegrityError):
                NAMES_CIPHER.decrypt(DIR_1, changed)
    for changed in (component[:-1], component + "a", component + "=", component.upper(), ""):
        with pytest.raises(IntegrityError):
            NAMES_CIPHER.decrypt(DIR_1, changed)


def test_tampered_long_name_is_refused():
    name = bytes(range(1, 47)).replace(b"/", b"_") * 5 + b"tail"
    component, long_ct = NAMES_CIPHER.encrypt(DIR_1, name)
    assert component.endswith(".ln") and long_ct is not None
    with pytest.raises(IntegrityError):
        NAMES_CIPHER.decrypt(DIR_1, component, None)
    for pos in range(len(long_ct)):
        with pytest.raises(IntegrityError):
            NAMES_CIPHER.decrypt(DIR_1, component, flip(long_ct, pos))
    # a consistent pair (component recomputed from the modified ciphertext) still fails AES-SIV
    forged = flip(long_ct, 20)
    forged_component = base64.b32encode(hashlib.sha256(forged).digest()).decode().rstrip("=").lower() + ".ln"
    with pytest.raises(IntegrityError):
        NAMES_CIPHER.decrypt(DIR_1, forged_component, forged)
    other_component, other_ct = NAMES_CIPHER.encrypt(DIR_1, name + b"2")
    with pytest.raises(IntegrityError):
        NAMES_CIPHER.decrypt(DIR_1, component, other_ct)


@pytest.mark.parametrize("bad", [b"", b"a/b", b"a\0b", b"x" * 256])
def test_invalid_names_are_not_encrypted(bad):
    with pytest.raises(ValueError):
        NAMES_CIPHER.encrypt(DIR_1, bad)


# == metadata ================================================================================

META_CIPHER = MetaCipher({1: b"\x11" * 32, 2: b"\x22" * 32}, 2)
FIELDS = {"k": "f", "id": "ab" * 16, "mode": 0o100644, "uid": 1, "gid": 2, "mt": 3, "ct": 4, "x": {"dXNlci5h": "Yg=="}}


def test_meta_round_trip():
    sealed = META_CIPHER.seal(FIELDS, b"d/00/abc")
    assert META_CIPHER.open(sealed, b"d/00/abc", "t") == FIELDS
    assert base64.b64decode(sealed)[:4] == b"\0\0\0\2"  # the current generation


def test_meta_from_an_older_generation_still_opens():
    old = MetaCipher({1: b"\x11" * 32}, 1).seal(FIELDS, b"root")
    assert META_CIPHER.open(old, b"root", "t") == FIELDS


def test_meta_with_another_objects_key_is_refused():
    sealed = META_CIPHER.seal(FIELDS, b"d/00/abc")
    for aad in (b"d/00/abd", b"d/00/abc ", b"root", b""):
        with pytest.raises(IntegrityError):
            META_CIPHER.open(sealed, aad, "t")


def test_meta_of_an_unknown_generation_is_refused():
    sealed = MetaCipher({7: b"\x77" * 32}, 7).seal(FIELDS, b"root")
    with pytest.raises(IntegrityError, match="generation 7"):
        META_CIPHER.open(sealed, b"root", "t")


def test_meta_generation_field_is_authenticated():
    """Relabelling a blob with another generation that has a key fails."""
    blob = bytearray(base64.b64decode(META_CIPHER.seal(FIELDS, b"root")))
    blob[3] = 1
    with pytest.raises(IntegrityError):
        META_CIPHER.open(base64.b64encode(bytes(blob)).decode(), b"root", "t")


@pytest.mark.parametrize("payload", [b"[1, 2]", b"not json", b"\xff\xfe", b'"text"'])
def test_meta_that_is_not_a_json_object_is_refused(payload):
    sealed = base64.b64encode(META_CIPHER.seal_bytes(payload, b"root")).decode()
    with pytest.raises(IntegrityError):
        META_CIPHER.open(sealed, b"root", "t")


# == headers ==================================================================================

HEADER = seal_header(KEK1, block_size=BS, generation=1, file_id=FILE_ID_A, dek=DEK_A)


def patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


def test_header_of_an_unknown_generation_is_refused():
    raw = seal_header(b"\x09" * 32, block_size=BS, generation=9, file_id=FILE_ID_A, dek=DEK_A)
    assert peek_header(raw).generation == 9
    with pytest.raises(IntegrityError):
        open_header(raw, kek_lookup(KEYS))


@pytest.mark.parametrize(
    "offset, value, message",
    [
        (0, b"SEALFS\x00G", "magic"),
        (0, b"\0" * 8, "magic"),
        (8, b"\x02", "version 2"),
        (8, b"\x00", "version 0"),
        (9, b"\x0b", "invalid"),  # 2 KiB blocks
        (9, b"\x15", "invalid"),  # 2 MiB blocks
        (10, b"\x00\x02", "invalid"),  # flags no reader knows
        (10, b"\x80\x00", "invalid"),
    ],
)
def test_header_with_bad_fixed_fields_is_refused_before_unwrapping(offset, value, message):
    bad = patched(HEADER, offset, value)
    with pytest.raises(IntegrityError, match=message):
        peek_header(bad)
    with pytest.raises(IntegrityError):
        open_header(bad, kek_lookup(KEYS))


def test_the_bound_flag_is_authenticated_both_ways():
    """Setting or clearing FLAG_BOUND on a sealed header (to downgrade a
    bound file to the unbound form, or the reverse) fails the unwrap."""
    bound = seal_header(KEK1, block_size=BS, generation=1, file_id=FILE_ID_A, dek=DEK_A, bound=True)
    assert peek_header(bound).bound and not peek_header(HEADER).bound
    assert open_header(bound, kek_lookup(KEYS))[1] == DEK_A
    for forged in (patched(bound, 10, b"\x00\x00"), patched(HEADER, 10, b"\x00\x01")):
        with pytest.raises(IntegrityError, match="authentication failed"):
            open_header(forged, kek_lookup(KEYS))


def test_truncated_header_is_refused():
    for size in (0, 31, 32, HEADER_SIZE - 1):
        with pytest.raises(IntegrityError):
            open_header(HEADER[:size], kek_lookup(KEYS))


@pytest.mark.parametrize("size", [0, 1, 2048, 4095, 4097, 3 * 4096, 2 << 20, -4096])
def test_invalid_block_sizes_are_refused(size):
    with pytest.raises(ValueError):
        check_block_size(size)


def test_seal_header_refuses_wrong_key_material_sizes():
    with pytest.raises(ValueError):
        seal_header(KEK1, block_size=BS, generation=1, file_id=b"short", dek=DEK_A)
    with pytest.raises(ValueError):
        seal_header(KEK1, block_size=BS, generation=1, file_id=FILE_ID_A, dek=DEK_A[:16])


# == the volume config and key slots ============================================================

PASS = Passphrase(b"open sesame")
KEY_BYTES = b"k" * 64


@pytest.fixture
def volume():
    """A fresh config with one passphrase slot, and its keyring."""
    config, keyring = slots.create(64 * 1024, PASS, argon2=FAST_ARGON2)
    return config, keyring


def reread(config: VolumeConfig) -> VolumeConfig:
    return VolumeConfig.parse(config.to_bytes())


def same_keys(a: Keyring, b: Keyring) -> bool:
    return (a.volume_id, a.master, a.name_secret, a.generations, a.current) == (
        b.volume_id,
        b.master,
        b.name_secret,
        b.generations,
        b.current,
    )


def test_created_config_unlocks_after_a_round_trip(volume):
    config, keyring = volume
    assert same_keys(reread(config).unlock([PASS]), keyring)
    assert keyring.current == 1 and list(keyring.generations) == [1]


def test_wrong_passphrase_is_a_bad_key(volume):
    config, _ = volume
    with pytest.raises(BadKeyError):
        reread(config).unlock([Passphrase(b"open sesame!")])


def test_credential_of_a_kind_without_slots_is_a_bad_key(volume):
    config, _ = volume
    with pytest.raises(BadKeyError, match="no key slot of that kind"):
        reread(config).unlock([KeyFile("k", KEY_BYTES)])


def test_key_file_slot_unlocks(volume):
    config, keyring = volume
    slot_id = config.add_slot(keyring, KeyFile("k", KEY_BYTES))
    assert slot_id == 2
    again = reread(config)
    assert same_keys(again.unlock([KeyFile("k", KEY_BYTES)]), keyring)
    assert same_keys(again.unlock([PASS]), keyring)
    with pytest.raises(BadKeyError):
        again.unlock([KeyFile("k", KEY_BYTES[:-1] + b"K")])


def test_removed_slot_no_longer_unlocks(volume):
    config, keyring = volume
    config.add_slot(keyring, KeyFile("k", KEY_BYTES))
    config.remove_slot(keyring, 1)
    again = reread(config)
    with pytest.raises(BadKeyError):
        again.unlock([PASS])
    assert same_keys(again.unlock([KeyFile("k", KEY_BYTES)]), keyring)


def test_refuses_to_remove_the_last_or_a_missing_slot(volume):
    config, keyring = volume
    with pytest.raises(UsageError, match="last key slot"):
        config.remove_slot(keyring, 1)
    with pytest.raises(UsageError, match="no key slot 5"):
        config.remove_slot(keyring, 5)
    assert same_keys(reread(config).unlock([PASS]), keyring)


def test_rotation_adds_a_generation_and_keeps_the_old_ones(volume):
    config, keyring = volume
    old_secret, old_kek = keyring.generations[1], keyring.kek(1)
    old_header = seal_header(old_kek, block_size=BS, generation=1, file_id=FILE_ID_A, dek=DEK_A)
    assert config.rotate(keyring) == 2
    assert config.rotate(keyring) == 3
    unlocked = reread(config).unlock([PASS])
    assert sorted(unlocked.generations) == [1, 2, 3] and unlocked.current == 3
    assert unlocked.generations[1] == old_secret and unlocked.master == keyring.master
    assert len({unlocked.kek(g) for g in (1, 2, 3)}) == 3
    assert open_header(old_header, unlocked.kek)[1] == DEK_A


def _leaf_paths(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaf_paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaf_paths(value, path + (i,))
    else:
        yield path


def _changed(path, value):
    """A different value of the same type, chosen to keep the config parseable."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise AssertionError(f"unexpected leaf {path}")
    if isinstance(value, int):
        return value * 2 if path == ("block_size",) else value + 1
    if path == ("volume_id",):
        return ("f" if value[0] != "f" else "e") + value[1:]
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return value + "x"
    return base64.b64encode(flip(raw, 0)).decode() if raw else value + "x"


def _set(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def tampered_configs():
    config, keyring = slots.create(64 * 1024, PASS, argon2=FAST_ARGON2)
    config.add_slot(keyring, KeyFile("k", KEY_BYTES))
    doc = json.loads(config.to_bytes())
    out = []
    for path in _leaf_paths(doc):
        bad = copy.deepcopy(doc)
        _set(bad, path, _changed(path, _get(doc, path)))
        out.append(pytest.param(bad, id="/".join(map(str, path))))
    structural = {
        "slots reordered": lambda d: d["slots"].reverse(),
        "slot removed": lambda d: d["slots"].pop(),
        "slot duplicated": lambda d: d["slots"].append(copy.deepcopy(d["slots"][1])),
        "slot field added": lambda d: d["slots"][0].update(extra=1),
        "slot field removed": lambda d: d["slots"][1].pop("salt"),
        "kdf field added": lambda d: d["slots"][0]["kdf"].update(secret="x"),
        "top-level field added": lambda d: d.update(comment="hi"),
        "top-level field removed": lambda d: d.pop("created"),
        "keyring from another volume": lambda d: d.update(
            keyring=json.loads(slots.create(64 * 1024, PASS, argon2=FAST_ARGON2)[0].to_bytes())["keyring"]
        ),
    }
    for name, change in structural.items():
        bad = copy.deepcopy(doc)
        change(bad)
        out.append(pytest.param(bad, id=name))
    return doc, out


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


GOOD_DOC, TAMPERED = tampered_configs()


def test_untampered_config_document_unlocks():
    VolumeConfig.parse(json.dumps(GOOD_DOC).encode()).unlock([PASS])


@pytest.mark.parametrize("doc", TAMPERED)
def test_any_change_to_the_config_is_detected(doc):
    raw = json.dumps(doc).encode()
    with pytest.raises((ConfigError, BadKeyError)):
        VolumeConfig.parse(raw).unlock([PASS])


@pytest.mark.parametrize(
    "field, value",
    [
        ("created", "yesterday"),
        ("created", None),
        ("block_size", float("inf")),
        ("mac", 12),
        ("mac", "é" * 44),
        ("slots", [{"type": 0}]),
    ],
    ids=["created text", "created null", "block_size Infinity", "mac number", "mac non-ASCII", "slot type number"],
)
def test_config_fields_of_the_wrong_type_are_config_errors(field, value):
    doc = copy.deepcopy(GOOD_DOC)
    doc[field] = value
    with pytest.raises((ConfigError, BadKeyError)):
        VolumeConfig.parse(json.dumps(doc).encode()).unlock([PASS])


# == fuzzing: random input raises the format's error, nothing else =================================

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_KEKS = kek_lookup({0: KEK1, 1: KEK1})


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.binary(max_size=100).map(lambda b: HEADER[:12] + b)))
def test_fuzz_header_parsers_raise_only_integrity_errors(raw):
    try:
        peek_header(raw)
    except IntegrityError:
        pass
    with pytest.raises(IntegrityError):
        open_header(raw, FUZZ_KEKS)


@FUZZ
@given(sealed=st.binary(min_size=1, max_size=3 * SEALED), first=st.integers(0, 4), plain_size=st.integers(0, 5 * BS))
def test_fuzz_open_span_never_returns_data_from_random_bytes(sealed, first, plain_size):
    cipher = FileCipher(DEK_A, FILE_ID_A, Layout(BS))
    with pytest.raises(IntegrityError):
        cipher.open_span(first, sealed, plain_size)


components = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=B32_ALPHABET, max_size=220),
    st.text(alphabet=B32_ALPHABET, min_size=52, max_size=52).map(lambda t: t + ".ln"),
)


@FUZZ
@given(dir_id=st.binary(max_size=20), component=components, long_ct=st.none() | st.binary(max_size=300))
def test_fuzz_name_decryption_raises_only_integrity_errors(dir_id, component, long_ct):
    with pytest.raises(IntegrityError):
        NAMES_CIPHER.decrypt(dir_id, component, long_ct)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=100),
        st.binary(max_size=120).map(lambda b: base64.b64encode(b).decode()),
        st.binary(max_size=80).map(lambda b: base64.b64encode(b"\0\0\0\2" + b).decode()),
    ),
    aad=st.binary(max_size=20),
)
def test_fuzz_meta_open_raises_only_integrity_errors(text, aad):
    with pytest.raises(IntegrityError):
        META_CIPHER.open(text, aad, "fuzz")
    with pytest.raises(IntegrityError):
        META_CIPHER.open_bytes(text.encode(), aad, "fuzz")


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.sampled_from([b"{}", b"[]", b"null", b'{"format": "sealfs-volume"}'])))
def test_fuzz_config_parse_of_random_bytes_raises_only_config_errors(raw):
    with pytest.raises(ConfigError):
        VolumeConfig.parse(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FUZZED_FIELDS = ["format", "version", "volume_id", "block_size", "created", "keyring", "slots", "mac"]


@FUZZ
@given(field=st.sampled_from(FUZZED_FIELDS), value=json_values)
def test_fuzz_config_fields_with_random_json_values(field, value):
    """A config with one member replaced by any JSON value either means the
    same config (and unlocks to the same keys) or is refused with
    ConfigError/BadKeyError; never another exception."""
    doc = dict(GOOD_DOC, **{field: value})
    raw = json.dumps(doc).encode()
    try:
        config = VolumeConfig.parse(raw)
        config.unlock([KeyFile("k", KEY_BYTES)])
    except (ConfigError, BadKeyError):
        return
    assert config.to_bytes() == VolumeConfig.parse(json.dumps(GOOD_DOC).encode()).to_bytes()


KEYFILE_SLOT_FIELDS = ["id", "type", "salt", "wrapped", "extra"]


@FUZZ
@given(
    field=st.sampled_from(KEYFILE_SLOT_FIELDS),
    value=json_values,
    remove=st.booleans(),
    slot_type=st.text(max_size=12) | st.sampled_from(["keyfile", "passphrase", "kms"]),
)
def test_fuzz_key_file_slot_fields_with_random_json_values(field, value, remove, slot_type):
    """The same for one field of a key file slot (changed, added or removed):
    unlocking with the key file either gives the same keys or is refused."""
    if field == "type" and not remove and isinstance(value, str):
        value = slot_type
    doc = copy.deepcopy(GOOD_DOC)
    slot = next(s for s in doc["slots"] if s["type"] == "keyfile")
    if remove:
        slot.pop(field, None)
    else:
        slot[field] = value
    try:
        keyring = VolumeConfig.parse(json.dumps(doc).encode()).unlock([KeyFile("k", KEY_BYTES)])
    except (ConfigError, BadKeyError):
        return
    assert slot == next(s for s in GOOD_DOC["slots"] if s["type"] == "keyfile")
    assert same_keys(keyring, VolumeConfig.parse(json.dumps(GOOD_DOC).encode()).unlock([KeyFile("k", KEY_BYTES)]))
