"""The volume config: key slots, the keyring, and their authentication.

The config is one JSON object (``sealfs.json`` at the store's root)::

    {"format": "sealfs-volume", "version": 1, "volume_id": hex16,
     "block_size": 65536, "created": unix_seconds,
     "keyring": b64(sealed keyring),
     "slots": [slot, ...],
     "mac": b64(HMAC-SHA256)}

* A random 32-byte **master key** is wrapped by every slot (like LUKS key
  slots): ``wrapped = AES-GCM(slot key, master, aad = canonical JSON of the
  volume id and the slot's other fields)``.
* The **keyring** (the name secret and every volume-secret generation, and
  which generation is current) is sealed once under a key derived from the
  master key.  ``key rotate`` adds a generation without touching any slot.
* The **MAC** (HMAC-SHA256 under a key derived from the master key) covers
  the canonical JSON of everything else, so after unlocking, any change to
  the config (block size, a slot, the keyring) is detected.

Slot kinds: ``passphrase`` (Argon2id), ``keyfile`` (HKDF of the file's
bytes), ``kms`` (an AWS KMS data key, stored encrypted by KMS).
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from dataclasses import dataclass
from hashlib import sha256

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..codec import crypto
from ..codec.header import check_block_size
from ..errors import BadKeyError, ConfigError, IntegrityError, UsageError
from . import kms

CONFIG_KEY = "sealfs.json"
FORMAT = "sealfs-volume"
VERSION = 1
DEFAULT_BLOCK_SIZE = 64 * 1024
#: Argon2id cost of new passphrase slots (RFC 9106's second recommendation).
ARGON2_DEFAULTS = {"iterations": 3, "memory_kib": 64 * 1024, "lanes": 4}
_TOP_FIELDS = {"format", "version", "volume_id", "block_size", "created", "keyring", "slots", "mac"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ConfigError(f"volume config: {what} is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigError(f"volume config: {what} is not base64") from None


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# -- credentials --------------------------------------------------------------


@dataclass(frozen=True)
class Passphrase:
    secret: bytes = b""

    def __repr__(self) -> str:  # never print the secret
        return "Passphrase(<hidden>)"


@dataclass(frozen=True)
class KeyFile:
    path: str
    data: bytes = b""

    def __repr__(self) -> str:
        return f"KeyFile({self.path!r})"


@dataclass(frozen=True)
class KmsKey:
    key_id: str = ""
    region: str | None = None
    endpoint: str | None = None


Credential = Passphrase | KeyFile | KmsKey
_SLOT_TYPE = {Passphrase: "passphrase", KeyFile: "keyfile", KmsKey: "kms"}


# -- the keyring ------------------------------------------------------------------


@dataclass
class Keyring:
    """The secrets a slot unlocks.  Holds key material: never log it."""

    volume_id: bytes
    master: bytes
    name_secret: bytes
    generations: dict[int, bytes]
    current: int

    def __repr__(self) -> str:
        return f"Keyring(volume={self.volume_id.hex()}, generations={sorted(self.generations)}, current={self.current})"

    def kek(self, generation: int) -> bytes:
        secret = self.generations.get(generation)
        if secret is None:
            raise IntegrityError(f"object uses key generation {generation}, which this volume does not have")
        return crypto.hkdf(secret, salt=self.volume_id, info=crypto.LABEL_KEK)

    def meta_keys(self) -> dict[int, bytes]:
        return {g: crypto.hkdf(s, salt=self.volume_id, info=crypto.LABEL_META) for g, s in self.generations.items()}

    def name_key(self) -> bytes:
        return crypto.hkdf(self.name_secret, salt=self.volume_id, info=crypto.LABEL_NAME, length=64)

    def _keyring_key(self) -> bytes:
        return crypto.hkdf(self.master, salt=self.volume_id, info=crypto.LABEL_KEYRING)

    def _mac_key(self) -> bytes:
        return crypto.hkdf(self.master, salt=self.volume_id, info=crypto.LABEL_CONFIG_MAC)

    def seal(self) -> str:
        body = {
            "name_secret": _b64(self.name_secret),
            "generations": {str(g): _b64(s) for g, s in sorted(self.generations.items())},
            "current": self.current,
        }
        return _b64(crypto.seal(self._keyring_key(), _canonical(body), self.volume_id))


# -- slot key derivation ------------------------------------------------------------


#: Bounds on Argon2id parameters read from a config: they are used before
#: the config's MAC can be checked, so a tampered config must not be able to
#: make unlocking exhaust memory or time.
ARGON2_LIMITS = {"iterations": 64, "memory_kib": 4 * 1024 * 1024, "lanes": 64}


def _argon2(secret: bytes, kdf: dict) -> bytes:
    for name, limit in ARGON2_LIMITS.items():
        value = kdf.get(name) if isinstance(kdf, dict) else None
        if type(value) is not int or not 1 <= value <= limit:
            raise ConfigError(f"volume config: passphrase slot parameter {name} must be an integer from 1 to {limit}")
    try:
        salt = _unb64(kdf["salt"], "passphrase salt")
        raw = Argon2id(
            salt=salt,
            length=32,
            iterations=int(kdf["iterations"]),
            lanes=int(kdf["lanes"]),
            memory_cost=int(kdf["memory_kib"]),
        ).derive(secret)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"volume config: bad passphrase slot parameters ({exc})") from None
    return crypto.hkdf(raw, salt=salt, info=crypto.LABEL_PASSPHRASE_SLOT)


def _slot_key(slot: dict, cred: Credential, volume_id: bytes) -> bytes:
    if isinstance(cred, Passphrase):
        return _argon2(cred.secret, slot["kdf"])
    if isinstance(cred, KeyFile):
        return crypto.hkdf(cred.data, salt=_unb64(slot["salt"], "key file salt"), info=crypto.LABEL_KEYFILE_SLOT)
    blob = _unb64(slot["kms_blob"], "kms blob")
    endpoint = cred.endpoint or slot.get("endpoint")
    region = cred.region or slot.get("region")
    data = kms.decrypt(blob, slot["key_id"], volume_id, region, endpoint)
    return crypto.hkdf(data, salt=volume_id, info=crypto.LABEL_KMS_SLOT)


def _slot_aad(volume_id: bytes, slot: dict) -> bytes:
    return _canonical({"volume_id": volume_id.hex(), "slot": {k: v for k, v in slot.items() if k != "wrapped"}})


def _new_slot(slot_id: int, cred: Credential, volume_id: bytes, master: bytes, argon2: dict | None) -> dict:
    slot: dict = {"id": slot_id, "type": _SLOT_TYPE[type(cred)]}
    if isinstance(cred, Passphrase):
        if not cred.secret:
            raise UsageError("empty passphrase")
        slot["kdf"] = {"name": "argon2id", "salt": _b64(crypto.random_bytes(16)), **(argon2 or ARGON2_DEFAULTS)}
        key = _argon2(cred.secret, slot["kdf"])
    elif isinstance(cred, KeyFile):
        slot["salt"] = _b64(crypto.random_bytes(16))
        key = crypto.hkdf(cred.data, salt=_unb64(slot["salt"], "salt"), info=crypto.LABEL_KEYFILE_SLOT)
    else:
        if not cred.key_id:
            raise UsageError("a KMS slot needs a key id (--kms-key)")
        data, blob, arn = kms.generate(cred.key_id, volume_id, cred.region, cred.endpoint)
        slot.update(key_id=arn, kms_blob=_b64(blob))
        if cred.region:
            slot["region"] = cred.region
        if cred.endpoint:
            slot["endpoint"] = cred.endpoint
        key = crypto.hkdf(data, salt=volume_id, info=crypto.LABEL_KMS_SLOT)
    slot["wrapped"] = _b64(crypto.seal(key, master, _slot_aad(volume_id, slot)))
    return slot


# -- the config ------------------------------------------------------------------


@dataclass
class VolumeConfig:
    volume_id: bytes
    block_size: int
    created: int
    keyring_blob: str
    slots: list[dict]
    mac: str = ""

    def _body(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "volume_id": self.volume_id.hex(),
            "block_size": self.block_size,
            "created": self.created,
            "keyring": self.keyring_blob,
            "slots": self.slots,
        }

    def to_bytes(self) -> bytes:
        return json.dumps({**self._body(), "mac": self.mac}, indent=1, sort_keys=True).encode() + b"\n"

    def _compute_mac(self, keyring: Keyring) -> str:
        return _b64(hmac.new(keyring._mac_key(), _canonical(self._body()), sha256).digest())

    def _reseal(self, keyring: Keyring) -> None:
        self.keyring_blob = keyring.seal()
        self.mac = self._compute_mac(keyring)

    @classmethod
    def parse(cls, raw: bytes) -> VolumeConfig:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ConfigError("volume config is not valid JSON (damaged, or not a sealfs store)") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError("not a sealfs volume config")
        version = doc.get("version")
        if type(version) is not int or version != VERSION:
            raise ConfigError(f"volume config version {version!r} is not supported by this sealfs")
        if set(doc) != _TOP_FIELDS:
            odd = sorted(set(doc) ^ _TOP_FIELDS)
            raise ConfigError(f"volume config has unexpected or missing fields: {odd}")
        # Exact types only: the MAC is checked later, over these very values,
        # so nothing may be normalised (or crash) before it.
        volume_hex, block_size, created = doc["volume_id"], doc["block_size"], doc["created"]
        if not (
            isinstance(volume_hex, str) and len(volume_hex) == 32 and all(c in "0123456789abcdef" for c in volume_hex)
        ):
            raise ConfigError("volume config: volume_id must be 32 lowercase hex digits")
        if type(block_size) is not int or type(created) is not int:
            raise ConfigError("volume config: block_size and created must be integers")
        try:
            check_block_size(block_size)
        except ValueError as exc:
            raise ConfigError(f"volume config: {exc}") from None
        slots, mac, keyring = doc["slots"], doc["mac"], doc["keyring"]
        if not isinstance(slots, list) or not all(
            isinstance(s, dict) and type(s.get("id")) is int and isinstance(s.get("type"), str) for s in slots
        ):
            raise ConfigError("volume config: malformed key slots")
        if not (isinstance(mac, str) and mac.isascii() and isinstance(keyring, str)):
            raise ConfigError("volume config: malformed mac or keyring")
        return cls(bytes.fromhex(volume_hex), block_size, created, keyring, slots, mac)

    # -- unlocking ---------------------------------------------------------

    def unlock(self, credentials: list[Credential]) -> Keyring:
        """Try every credential against every slot of its kind."""
        if not credentials:
            raise UsageError("no key given: a passphrase, key file or KMS key is needed")
        tried = []
        for cred in credentials:
            kind = _SLOT_TYPE[type(cred)]
            for slot in self.slots:
                if slot.get("type") != kind:
                    continue
                tried.append(kind)
                try:
                    key = _slot_key(slot, cred, self.volume_id)
                    master = crypto.unseal(
                        key, _unb64(slot.get("wrapped"), "wrapped key"), _slot_aad(self.volume_id, slot), "slot"
                    )
                except (IntegrityError, KeyError):
                    continue
                except BadKeyError:
                    if len(credentials) == 1:
                        raise
                    continue
                return self._open_keyring(master)
        if not tried:
            kinds = ", ".join(sorted({s.get("type", "?") for s in self.slots}))
            raise BadKeyError(f"the volume has no key slot of that kind (it has: {kinds})")
        raise BadKeyError("wrong passphrase or key: no key slot opens with it")

    def _open_keyring(self, master: bytes) -> Keyring:
        probe = Keyring(self.volume_id, master, b"", {}, 0)
        if not hmac.compare_digest(self.mac, self._compute_mac(probe)):
            raise ConfigError("volume config failed authentication: it was modified outside sealfs")
        body = json.loads(
            crypto.unseal(probe._keyring_key(), _unb64(self.keyring_blob, "keyring"), self.volume_id, "keyring")
        )
        return Keyring(
            self.volume_id,
            master,
            base64.b64decode(body["name_secret"]),
            {int(g): base64.b64decode(s) for g, s in body["generations"].items()},
            int(body["current"]),
        )

    # -- changing ----------------------------------------------------------

    def add_slot(self, keyring: Keyring, cred: Credential, argon2: dict | None = None) -> int:
        slot_id = max((int(s["id"]) for s in self.slots), default=0) + 1
        self.slots.append(_new_slot(slot_id, cred, self.volume_id, keyring.master, argon2))
        self.mac = self._compute_mac(keyring)
        return slot_id

    def remove_slot(self, keyring: Keyring, slot_id: int) -> None:
        keep = [s for s in self.slots if s.get("id") != slot_id]
        if len(keep) == len(self.slots):
            raise UsageError(f"there is no key slot {slot_id}")
        if not keep:
            raise UsageError("refusing to remove the last key slot: the volume would be unreadable forever")
        self.slots = keep
        self.mac = self._compute_mac(keyring)

    def rotate(self, keyring: Keyring) -> int:
        """Start a new volume-secret generation; new files use it."""
        new = max(keyring.generations) + 1
        keyring.generations[new] = crypto.random_bytes(32)
        keyring.current = new
        self._reseal(keyring)
        return new

    def describe_slots(self) -> list[str]:
        out = []
        for s in self.slots:
            extra = ""
            if s.get("type") == "passphrase":
                k = s.get("kdf", {})
                extra = f"argon2id t={k.get('iterations')} m={k.get('memory_kib')}KiB p={k.get('lanes')}"
            elif s.get("type") == "kms":
                extra = f"key {s.get('key_id')}"
            out.append(f"{s.get('id')}\t{s.get('type')}\t{extra}".rstrip())
        return out


def create(block_size: int, cred: Credential, argon2: dict | None = None) -> tuple[VolumeConfig, Keyring]:
    """A new volume config with one key slot."""
    check_block_size(block_size)
    volume_id = crypto.random_bytes(16)
    keyring = Keyring(volume_id, crypto.random_bytes(32), crypto.random_bytes(32), {1: crypto.random_bytes(32)}, 1)
    slot = _new_slot(1, cred, volume_id, keyring.master, argon2)
    config = VolumeConfig(volume_id, block_size, int(time.time()), "", [slot])
    config._reseal(keyring)
    return config, keyring
