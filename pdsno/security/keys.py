"""Each controller's Ed25519 key pair, and signatures over canonical JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pdsno.errors import ConfigurationError, PdsnoError


class NotCanonicalError(PdsnoError, ValueError):
    """A value with no canonical JSON form: NaN or Infinity, a lone surrogate."""

    status_code = 422


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that is signed and hashed: strict
    JSON (no NaN or Infinity) in UTF-8 (no lone surrogate)."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise NotCanonicalError("cannot sign text with a lone surrogate: not Unicode") from None
    except ValueError as error:
        raise NotCanonicalError(f"cannot sign a value that is not strict JSON: {error}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_hash(config_lines: list[str]) -> str:
    """Hash of an exact configuration: what an execution token binds."""
    return sha256_hex(canonical_json(config_lines))


class SigningKey:
    """A controller's private key; only its public half ever leaves the process."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key_b64 = base64.b64encode(raw).decode()

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigurationError(
                f"No controller key at {path}: create one with "
                f"`pdsno key generate --out {path}`, or set key_file (PDSNO_KEY_FILE)."
            ) from None
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key as PEM, readable by its owner only; never overwrite one."""
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)

    def sign(self, value: Any) -> str:
        return base64.b64encode(self._private_key.sign(canonical_json(value))).decode()


def verify_signature(public_key_b64: str, value: Any, signature_b64: str) -> bool:
    """True when `signature_b64` is the key's signature of `value`'s canonical form."""
    try:
        public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        public_key.verify(base64.b64decode(signature_b64), canonical_json(value))
    except (InvalidSignature, ValueError):
        return False
    return True
