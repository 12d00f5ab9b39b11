"""Canonical JSON and Ed25519 signatures, shared by commands (in) and receipts (out). Pure.

**Canonical JSON** is an object without its ``signature`` field, serialised as
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()`` (UTF-8,
keys sorted by code point, no whitespace). A signature is Ed25519 over those bytes, base64 in
the ``signature`` field; the verifier recomputes the bytes from the JSON it received, so the
sender may format its JSON freely. Signed documents hold no floats: `loads_strict` refuses a
float anywhere, NaN/Infinity and repeated keys.

Key files are PEM (private keys PKCS#8, public keys SubjectPublicKeyInfo).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_FIELD: Final = "signature"
_SIGNATURE_LEN: Final = 64


class _NotStrictJsonError(ValueError):
    pass


def _no_float(text: str) -> NoReturn:
    raise _NotStrictJsonError(f"float {text} (use integer minor units or a decimal string)")


def _no_constant(text: str) -> NoReturn:
    raise _NotStrictJsonError(f"{text} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _NotStrictJsonError(f"key {key!r} repeated")
        result[key] = value
    return result


def loads_strict(raw: bytes) -> Any:
    """Parse JSON that has no floats, no NaN/Infinity and no repeated keys.

    Raises:
        ValueError: not UTF-8 JSON, or one of the above.
    """
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_float=_no_float,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _check_no_float(value: object, path: str = "$") -> None:
    if isinstance(value, float):
        raise ValueError(f"{path} is a float (use integer minor units or a decimal string)")  # noqa: TRY004 - a bad value, reported like every other
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_no_float(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_no_float(item, f"{path}[{index}]")


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: ``obj`` minus ``signature``, sorted keys, no whitespace, UTF-8.

    Raises:
        ValueError: ``obj`` holds a float.
    """
    body = {k: v for k, v in obj.items() if k != SIGNATURE_FIELD}
    _check_no_float(body)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_document(obj: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    signature = base64.b64encode(key.sign(canonical_json(obj))).decode("ascii")
    return {**{k: v for k, v in obj.items() if k != SIGNATURE_FIELD}, SIGNATURE_FIELD: signature}


def signature_problem(obj: Mapping[str, Any], key: Ed25519PublicKey) -> str:
    """Empty string when ``obj``'s signature is valid, else why not."""
    encoded = obj.get(SIGNATURE_FIELD)
    if not isinstance(encoded, str):
        return "no signature"
    try:
        signature = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return "signature is not base64"
    if len(signature) != _SIGNATURE_LEN:
        return "signature is not 64 bytes"
    try:
        key.verify(signature, canonical_json(obj))
    except InvalidSignature:
        return "signature does not match the content"
    return ""


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_private_key() -> Ed25519PrivateKey:
    """A new Ed25519 key (for the gateway's receipts, or a test backend)."""
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: protect the file with its mode (0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_to_pem(key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM.

    Raises:
        ValueError: not PEM, or not an Ed25519 key.
    """
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")  # noqa: TRY004 - bad input, not a bug
    return key


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, or from base64 of its 32 raw bytes (handy in YAML).

    Raises:
        ValueError: neither form, or not an Ed25519 key.
    """
    blob = data.encode() if isinstance(data, str) else data
    if blob.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(blob)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(blob.strip(), validate=True)
    except binascii.Error as exc:
        raise ValueError("neither PEM nor base64") from exc
    if len(raw) != 32:
        raise ValueError("a raw Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
