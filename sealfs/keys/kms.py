"""AWS KMS key slots: KMS generates a data key; the slot stores only its
KMS-encrypted form, bound to the volume by an encryption context."""

from __future__ import annotations

from ..errors import BadKeyError, StoreUnavailable


def _client(region: str | None, endpoint: str | None):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "kms",
        region_name=region,
        endpoint_url=endpoint or None,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20),
    )


def _context(volume_id: bytes) -> dict[str, str]:
    return {"sealfs-volume": volume_id.hex()}


def _fail(exc: Exception, key_id: str) -> Exception:
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    if isinstance(exc, EndpointConnectionError):
        return StoreUnavailable(f"cannot reach the KMS endpoint for key {key_id}")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "error")
        return BadKeyError(f"KMS refused key {key_id}: {code}")
    if isinstance(exc, BotoCoreError):
        return BadKeyError(f"KMS call for key {key_id} failed: {type(exc).__name__}")
    return exc


def generate(key_id: str, volume_id: bytes, region: str | None, endpoint: str | None) -> tuple[bytes, bytes, str]:
    """A new 32-byte data key: (plaintext, encrypted blob, resolved key ARN)."""
    try:
        out = _client(region, endpoint).generate_data_key(
            KeyId=key_id, KeySpec="AES_256", EncryptionContext=_context(volume_id)
        )
    except Exception as exc:
        raise _fail(exc, key_id) from None
    return out["Plaintext"], out["CiphertextBlob"], out.get("KeyId", key_id)


def decrypt(blob: bytes, key_id: str, volume_id: bytes, region: str | None, endpoint: str | None) -> bytes:
    try:
        out = _client(region, endpoint).decrypt(
            CiphertextBlob=blob, KeyId=key_id, EncryptionContext=_context(volume_id)
        )
    except Exception as exc:
        raise _fail(exc, key_id) from None
    return out["Plaintext"]
