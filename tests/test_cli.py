"""The offline command line, as a shell user runs it, on both stores."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SEALFS = [sys.executable, "-m", "sealfs.cli.main"]
PASS = "correct horse battery staple"
FAST_KDF = ["--argon2-memory", "8192", "--argon2-iterations", "1"]


def run(*args, passphrase: str | None = PASS, input: bytes | None = None, extra_env: dict | None = None):
    env = dict(os.environ)
    env.pop("SEALFS_PASSPHRASE", None)
    if passphrase is not None:
        env["SEALFS_PASSPHRASE"] = passphrase
    env.update(extra_env or {})
    return subprocess.run([*SEALFS, *args], input=input, capture_output=True, env=env, timeout=600)


def ok(*args, **kw) -> subprocess.CompletedProcess:
    proc = run(*args, **kw)
    assert proc.returncode == 0, f"sealfs {args[0]} exited {proc.returncode}: {proc.stderr.decode()}"
    return proc


def opts(spec) -> list[str]:
    return ["-o", ",".join(f"{k}={v}" for k, v in spec.options.items())] if spec.options else []


@pytest.fixture
def volume(store_spec):
    """A fresh passphrase volume; returns (url, store options args)."""
    ok("init", store_spec.url, *FAST_KDF, *opts(store_spec))
    return store_spec


def raw_objects(spec, moto_s3=None) -> list[tuple[str, bytes, bytes]]:
    """Every object of the store as (key, body, metadata bytes), read behind
    sealfs's back.  For the local store, the key is the file's path in the
    store directory and the metadata its fixed-size prefix."""
    if spec.kind == "local":
        from sealfs.store.local import HEADER_SIZE as PREFIX

        root = Path(spec.url.removeprefix("file://"))
        out = []
        for p in root.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                has_prefix = data.startswith(b"sealfs-local-object")
                out.append(
                    (
                        str(p.relative_to(root)),
                        data[PREFIX:] if has_prefix else data,
                        data[:PREFIX] if has_prefix else b"",
                    )
                )
        return out
    bucket = spec.url.removeprefix("s3://").split("/")[0]
    out = []
    for page in moto_s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            got = moto_s3.get_object(Bucket=bucket, Key=o["Key"])
            out.append((o["Key"], got["Body"].read(), json.dumps(got["Metadata"]).encode()))
    return out


def test_put_cat_round_trip_and_no_plaintext_in_store(volume, moto_s3, tmp_path):
    secret_name = "quarterly-payroll-ZEBRA"
    secret_dir = "confidential-MANGO"
    secret_text = b"the launch code is PAPAYA-7781 " * 500
    src = tmp_path / "src.txt"
    src.write_bytes(secret_text)
    ok("mkdir", volume.url, f"/{secret_dir}", *opts(volume))
    ok("put", volume.url, str(src), f"/{secret_dir}/{secret_name}", *opts(volume))
    got = ok("cat", volume.url, f"/{secret_dir}/{secret_name}", *opts(volume)).stdout
    assert got == secret_text
    listing = ok("ls", "-l", volume.url, f"/{secret_dir}", *opts(volume)).stdout.decode()
    assert secret_name in listing and str(len(secret_text)) in listing

    needles = [secret_name.encode(), secret_dir.encode(), b"PAPAYA", b"launch code"]
    objects = raw_objects(volume, moto_s3)
    assert len(objects) >= 3
    for key, body, md in objects:
        blob = key.encode() + body + md
        for needle in needles:
            assert needle not in blob, f"{needle!r} found in object {key}"
            assert needle.lower() not in blob.lower()


def test_100mib_round_trip_survives_rotate_and_rekey(tmp_path):
    url = (tmp_path / "s").as_uri()
    ok("init", url, *FAST_KDF)
    src = tmp_path / "big"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    ok("put", url, str(src), "/big")
    assert hashlib.sha256(ok("cat", url, "/big").stdout).hexdigest() == want

    ok("key", "add", url, *FAST_KDF[:2], extra_env={"SEALFS_NEW_PASSPHRASE": "second passphrase"})
    ok("key", "rotate", url)
    out = ok("rekey", url).stdout.decode()
    assert "re-wrapped 1 files" in out
    assert hashlib.sha256(ok("cat", url, "/big").stdout).hexdigest() == want
    # both passphrase slots still open it (the first one is the original)
    assert hashlib.sha256(ok("cat", url, "/big", passphrase="second passphrase").stdout).hexdigest() == want
    assert ok("rekey", url).stdout.decode().startswith("re-wrapped 0 files")


def test_rekey_rewrites_only_the_header(volume, moto_s3, tmp_path):
    """Re-wrapping keeps every block's ciphertext (same nonces): only the
    header changes, so on S3 the rest is a server-side copy."""
    src = tmp_path / "f"
    src.write_bytes(os.urandom(20 * 1024 * 1024 + 123))  # above the single-PUT size: multipart
    ok("put", volume.url, str(src), "/f", *opts(volume))
    before = {k: b for k, b, _ in raw_objects(volume, moto_s3) if len(b) > 1 << 20}
    ok("key", "rotate", volume.url, *opts(volume))
    ok("rekey", volume.url, *opts(volume))
    after = {k: b for k, b, _ in raw_objects(volume, moto_s3) if len(b) > 1 << 20}
    assert before.keys() == after.keys() and len(before) == 1
    (key,) = before
    from sealfs.codec.header import HEADER_SIZE

    assert before[key][:HEADER_SIZE] != after[key][:HEADER_SIZE]
    assert before[key][HEADER_SIZE:] == after[key][HEADER_SIZE:]
    assert ok("cat", volume.url, "/f", *opts(volume)).stdout == src.read_bytes()


def test_wrong_passphrase_is_one_line_and_exit_3(volume):
    proc = run("ls", volume.url, *opts(volume), passphrase="not it")
    assert proc.returncode == 3
    assert proc.stdout == b""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "wrong passphrase" in lines[0]


def test_missing_passphrase_without_terminal_is_a_usage_error(volume):
    proc = run("ls", volume.url, *opts(volume), passphrase=None, input=b"")
    assert proc.returncode == 2
    assert "no passphrase given" in proc.stderr.decode()


def test_passfile_and_extpass(volume, tmp_path):
    pf = tmp_path / "pass"
    pf.write_text(PASS + "\n")
    ok("ls", volume.url, "--passfile", str(pf), *opts(volume), passphrase=None)
    ok("ls", volume.url, "--extpass", f"cat {pf}", *opts(volume), passphrase=None)
    bad = run("ls", volume.url, "--extpass", "false", *opts(volume), passphrase=None)
    assert bad.returncode == 2 and "extpass" in bad.stderr.decode()


def _edit_config(spec, change) -> None:
    """Rewrite the volume config object behind sealfs's back."""
    store = spec.open()
    raw, _ = store.get_object("sealfs.json")
    store.put("sealfs.json", change(raw))
    store.close()


def _all_objects(spec) -> dict[str, bytes]:
    store = spec.open()
    out = {o.key: store.get(o.key) for o in store.list_all("")}
    store.close()
    return out


def test_not_a_volume_and_damaged_config(volume, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run("ls", empty.as_uri())
    assert proc.returncode == 6 and "is not a sealfs store directory" in proc.stderr.decode()

    _edit_config(volume, lambda raw: raw.replace(b'"block_size": 65536', b'"block_size": 4096'))
    before = _all_objects(volume)
    proc = run("ls", volume.url, *opts(volume))
    assert proc.returncode == 5, proc.stderr
    assert "modified outside sealfs" in proc.stderr.decode()
    assert _all_objects(volume) == before, "a failed open must write nothing"

    _edit_config(volume, lambda raw: b"\0garbage")
    proc = run("ls", volume.url, *opts(volume))
    assert proc.returncode == 5 and "not valid JSON" in proc.stderr.decode()


def test_init_refuses_an_existing_volume(volume):
    proc = run("init", volume.url, *FAST_KDF, *opts(volume))
    assert proc.returncode == 2 and "already holds a sealfs volume" in proc.stderr.decode()


def test_tampered_object_gives_exit_4_naming_the_file_and_no_plaintext(volume, moto_s3, tmp_path):
    text = b"PLAINTEXT-MARKER " * 10000
    src = tmp_path / "t"
    src.write_bytes(text)
    ok("put", volume.url, str(src), "/victim.txt", *opts(volume))
    key, body, _ = max(raw_objects(volume, moto_s3), key=lambda o: len(o[1]))
    flipped = bytearray(body)
    flipped[len(body) // 2] ^= 0x01
    if volume.kind == "local":
        root = Path(volume.url.removeprefix("file://"))
        path = root / key
        data = path.read_bytes()
        # flip the same byte in the raw file: the body is at the end of it
        pos = len(data) - len(body) + len(body) // 2
        path.write_bytes(data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :])
    else:
        bucket = volume.url.removeprefix("s3://").split("/")[0]
        head = moto_s3.head_object(Bucket=bucket, Key=key)
        moto_s3.put_object(Bucket=bucket, Key=key, Body=bytes(flipped), Metadata=head["Metadata"])
    proc = run("cat", volume.url, "/victim.txt", *opts(volume))
    assert proc.returncode == 4, proc.stderr
    assert b"PLAINTEXT-MARKER" not in proc.stdout
    assert "victim.txt" in proc.stderr.decode()


def test_missing_path_exit_7(volume):
    proc = run("cat", volume.url, "/nope", *opts(volume))
    assert proc.returncode == 7
    assert "nope" in proc.stderr.decode()


def test_keyfile_slots_and_last_slot_protection(store_spec, tmp_path):
    kf = tmp_path / "key"
    ok("init", store_spec.url, "--keyfile", str(kf), *opts(store_spec), passphrase=None)
    assert kf.stat().st_mode & 0o777 == 0o600
    ok("mkdir", store_spec.url, "/d", "--keyfile", str(kf), *opts(store_spec), passphrase=None)
    # add a passphrase slot, then remove the key-file slot
    ok(
        "key",
        "add",
        store_spec.url,
        "--keyfile",
        str(kf),
        "--argon2-memory",
        "8192",
        *opts(store_spec),
        passphrase=None,
        extra_env={"SEALFS_NEW_PASSPHRASE": PASS},
    )
    slots = ok("key", "list", store_spec.url, *opts(store_spec), passphrase=None).stdout.decode()
    assert "keyfile" in slots and "passphrase" in slots
    ok("key", "remove", store_spec.url, "1", *opts(store_spec))
    assert run("ls", store_spec.url, "--keyfile", str(kf), *opts(store_spec), passphrase=None).returncode == 3
    ok("ls", store_spec.url, *opts(store_spec))
    last = run("key", "remove", store_spec.url, "2", *opts(store_spec))
    assert last.returncode == 2 and "last key slot" in last.stderr.decode()


def test_kms_slot(store_spec, moto_server):
    import boto3

    kms = boto3.client("kms", endpoint_url=moto_server, region_name="us-east-1")
    key_id = kms.create_key(Description="sealfs test")["KeyMetadata"]["KeyId"]
    ok(
        "init",
        store_spec.url,
        "--kms-key",
        key_id,
        *opts(store_spec),
        "-o",
        f"kms_endpoint={moto_server},kms_region=us-east-1",
        passphrase=None,
    )
    ok("mkdir", store_spec.url, "/k", "--kms", *opts(store_spec), passphrase=None)
    assert b"k" in ok("ls", store_spec.url, "--kms", *opts(store_spec), passphrase=None).stdout

    # KMS itself refuses a damaged data-key blob, and so do we
    def damage(raw: bytes) -> bytes:
        config = json.loads(raw)
        blob = bytearray(base64.b64decode(config["slots"][0]["kms_blob"]))
        blob[-1] ^= 1
        config["slots"][0]["kms_blob"] = base64.b64encode(bytes(blob)).decode()
        return json.dumps(config).encode()

    _edit_config(store_spec, damage)
    proc = run("ls", store_spec.url, "--kms", *opts(store_spec), passphrase=None)
    assert proc.returncode == 3, proc.stderr
    assert "KMS refused" in proc.stderr.decode()
