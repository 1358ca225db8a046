"""Secrets in the NIB, encrypted with AES-256-GCM under the operator's master key.

The master key comes from the environment (`PDSNO_MASTER_KEY`, 64 hex
characters); there is no default. The NIB never holds it, only a fingerprint
per key version (an HMAC of a fixed label under the key) in `master_keys`, so
that a wrong or stale key is refused with a message instead of failing to
decrypt. Every secret row holds a random 96-bit nonce, the ciphertext with its
tag, and the key version it is encrypted under; its ID is the associated data,
so a ciphertext copied to another ID does not decrypt.

Keys are separated by purpose: secrets are sealed under HKDF(master key,
"pdsno-secrets-v1"), backups under HKDF(master key, salt, "pdsno-backup")
(pdsno/backup.py), and the fingerprint is HMAC-SHA256(master key, label).

`SecretStore.rotate` re-encrypts every secret under a new master key in one
transaction: it commits completely or not at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pdsno import audit
from pdsno.clock import as_utc, utcnow
from pdsno.errors import ConfigurationError, ConflictError, NotFoundError, PdsnoError
from pdsno.nib.schema import master_keys, secrets

MASTER_KEY_ENV = "PDSNO_MASTER_KEY"
NEW_MASTER_KEY_ENV = "PDSNO_NEW_MASTER_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
MAKE_A_KEY = (
    "make one with `python -c 'import secrets; print(secrets.token_hex(32))'` "
    "or `openssl rand -hex 32`"
)
FINGERPRINT_LABEL = b"pdsno master key fingerprint v1"
SECRETS_KDF_INFO = b"pdsno-secrets-v1"
AAD_PREFIX = b"pdsno-secret-v1\x00"
SECRET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class SecretIntegrityError(PdsnoError):
    """A stored secret does not decrypt: altered, or moved from another ID."""

    status_code = 500


# --- the master key --------------------------------------------------------


def parse_master_key(text: str | None, variable: str = MASTER_KEY_ENV) -> bytes:
    """The 32-byte key in `text` (64 hex characters), or a message saying what to set."""
    if text is None or not text.strip():
        raise ConfigurationError(
            f"{variable} is not set: set it to the master key, 64 hex characters "
            f"(32 bytes); {MAKE_A_KEY}. There is no default key."
        )
    value = text.strip()
    if not _HEX_KEY.fullmatch(value):
        # Never echo the value: it may be a real key with a typo.
        raise ConfigurationError(
            f"{variable} must be exactly 64 hex characters (a 32-byte key); it holds "
            f"{len(value)} characters{'' if _is_hex(value) else ', not all of them hex'}: "
            f"{MAKE_A_KEY}."
        )
    return bytes.fromhex(value)


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in value)


def master_key_from_env(
    variable: str = MASTER_KEY_ENV, environ: Mapping[str, str] | None = None
) -> bytes:
    return parse_master_key((os.environ if environ is None else environ).get(variable), variable)


def require_key_bytes(key: bytes, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigurationError(f"{what} must be {KEY_BYTES} bytes; {MAKE_A_KEY}.")


def key_fingerprint(master_key: bytes) -> str:
    """Names a master key without revealing it: HMAC-SHA256 of a fixed label under the key."""
    return hmac.new(master_key, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def derive_key(master_key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    """A 256-bit key for one purpose (`info`), derived from the master key with HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(
        master_key
    )


@dataclass(frozen=True)
class KeyVersion:
    version: int
    fingerprint: str
    created_at: datetime
    retired_at: datetime | None

    @property
    def current(self) -> bool:
        return self.retired_at is None


def key_versions(conn: Connection) -> list[KeyVersion]:
    rows = conn.execute(select(master_keys).order_by(master_keys.c.key_version)).all()
    return [
        KeyVersion(
            row.key_version,
            row.fingerprint,
            as_utc(row.created_at),
            as_utc(row.retired_at) if row.retired_at else None,
        )
        for row in rows
    ]


def current_key_version(conn: Connection) -> KeyVersion | None:
    current = [v for v in key_versions(conn) if v.current]
    return current[-1] if current else None


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def check_master_key(
    conn: Connection, master_key: bytes, *, variable: str = MASTER_KEY_ENV
) -> KeyVersion | None:
    """The current key version when `master_key` is it; None when the NIB has none yet.

    Any other key is refused with a message naming the variable to set.
    """
    fingerprint = key_fingerprint(master_key)
    versions = key_versions(conn)
    if not versions:
        return None
    current = next((v for v in reversed(versions) if v.current), None)
    if current is None:
        raise ConfigurationError(
            "Every master key version in the NIB is retired: the NIB was changed by hand. "
            "Restore the master_keys table from a backup."
        )
    if fingerprint == current.fingerprint:
        return current
    match = next((v for v in versions if v.fingerprint == fingerprint), None)
    if match is not None:
        retired = _day(match.retired_at) if match.retired_at else "?"
        raise ConfigurationError(
            f"{variable} holds master key version {match.version}, retired on {retired} "
            f"when the secrets were rotated; they are now under version {current.version} "
            f"(fingerprint {current.fingerprint[:16]}): set {variable} to that key, the "
            f"{NEW_MASTER_KEY_ENV} given to `pdsno secrets rotate`."
        )
    raise ConfigurationError(
        f"{variable} is not this NIB's master key: the secrets are under key version "
        f"{current.version} (fingerprint {current.fingerprint[:16]}, created "
        f"{_day(current.created_at)}), the key in {variable} has fingerprint "
        f"{fingerprint[:16]}. Set {variable} to the master key this NIB was set up with."
    )


# --- sealing one secret ----------------------------------------------------


def _aad(secret_id: str) -> bytes:
    return AAD_PREFIX + secret_id.encode()


def _seal(data_key: bytes, secret_id: str, plaintext: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext with tag) of `plaintext` bound to `secret_id`."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(data_key).encrypt(nonce, plaintext, _aad(secret_id))


def _open(data_key: bytes, secret_id: str, nonce: bytes, ciphertext: bytes) -> bytes:
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, _aad(secret_id))
    except InvalidTag:
        raise SecretIntegrityError(
            f"Secret {secret_id!r} does not decrypt: its ciphertext was altered, or it "
            "belongs to another secret ID (each is bound to its ID). Store it again with "
            "`pdsno secrets put`, or restore the NIB from a backup."
        ) from None


def _decode_row(row) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    try:
        return bytes.fromhex(row.nonce), base64.b64decode(row.ciphertext, validate=True)
    except ValueError:
        raise SecretIntegrityError(
            f"Secret {row.secret_id!r} is not a valid record (nonce or ciphertext damaged)"
        ) from None


def _check_id(secret_id: str) -> None:
    if not isinstance(secret_id, str) or not SECRET_ID.fullmatch(secret_id):
        raise PdsnoError(
            f"{secret_id!r} is not a secret ID: 1 to 128 characters, letters, digits and "
            "._:/@+- (starting with a letter or digit)"
        )


def _upsert(conn: Connection):  # type: ignore[no-untyped-def]
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert


@dataclass(frozen=True)
class RotationResult:
    from_version: int
    to_version: int
    secrets: int
    already_done: bool = False


class SecretStore:
    """Secrets of the NIB under one master key; refuses a key that is not the current one."""

    def __init__(self, engine: Engine, master_key: bytes, *, actor: str = "pdsno") -> None:
        require_key_bytes(master_key, "The master key")
        self._engine = engine
        self._data_key = derive_key(master_key, SECRETS_KDF_INFO)
        self._master_key = master_key
        self.fingerprint = key_fingerprint(master_key)
        self.actor = actor

    @classmethod
    def from_env(
        cls, engine: Engine, *, actor: str = "pdsno", environ: Mapping[str, str] | None = None
    ) -> SecretStore:
        return cls(engine, master_key_from_env(environ=environ), actor=actor)

    def __repr__(self) -> str:
        return f"SecretStore(key fingerprint {self.fingerprint[:16]})"

    def _current(
        self, conn: Connection, *, lock: bool = False, register: bool = False
    ) -> int | None:
        """This key's version, row-locked against a concurrent rotation when `lock`.

        With `register`, the first key ever used becomes version 1.
        """
        if lock:
            # Writers share the lock, a rotation takes it exclusively: a secret
            # is never written under a key that a rotation is retiring.
            row = conn.execute(
                select(master_keys)
                .where(master_keys.c.fingerprint == self.fingerprint)
                .with_for_update(read=True)
            ).one_or_none()
            if row is not None and row.retired_at is None:
                return row.key_version
        version = check_master_key(conn, self._master_key)
        if version is not None:
            return version.version
        if not register:
            return None
        inserted = conn.execute(
            _upsert(conn)(master_keys)
            .values(key_version=1, fingerprint=self.fingerprint, created_at=utcnow())
            .on_conflict_do_nothing()
        ).rowcount
        # A concurrent first writer may have registered another key: check again.
        version = check_master_key(conn, self._master_key)
        assert version is not None
        if inserted:
            audit.append(
                conn,
                "master_key.registered",
                actor=self.actor,
                subject="key-version-1",
                payload={"key_version": 1, "fingerprint": self.fingerprint[:16]},
            )
        return version.version

    def put(self, secret_id: str, plaintext: bytes) -> int:
        """Store (or replace) a secret; returns the key version it is encrypted under."""
        _check_id(secret_id)
        if not isinstance(plaintext, bytes):
            raise TypeError("a secret is bytes")
        with self._engine.begin() as conn:
            version = self._current(conn, lock=True, register=True)
            nonce, ciphertext = _seal(self._data_key, secret_id, plaintext)
            now = utcnow()
            insert = _upsert(conn)(secrets).values(
                secret_id=secret_id,
                key_version=version,
                nonce=nonce.hex(),
                ciphertext=base64.b64encode(ciphertext).decode(),
                created_at=now,
                updated_at=now,
            )
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[secrets.c.secret_id],
                    set_={
                        "key_version": insert.excluded.key_version,
                        "nonce": insert.excluded.nonce,
                        "ciphertext": insert.excluded.ciphertext,
                        "updated_at": insert.excluded.updated_at,
                    },
                )
            )
            audit.append(
                conn,
                "secret.stored",
                actor=self.actor,
                subject=secret_id,
                payload={"key_version": version},
            )
        return version

    def get(self, secret_id: str) -> bytes:
        _check_id(secret_id)
        with self._engine.connect() as conn:
            version = self._current(conn)
            row = conn.execute(select(secrets).where(secrets.c.secret_id == secret_id)).first()
        if row is None:
            raise NotFoundError(f"No secret {secret_id!r}: store it with `pdsno secrets put`")
        if row.key_version != version:
            raise SecretIntegrityError(
                f"Secret {secret_id!r} is under key version {row.key_version}, not the "
                f"current {version}: the NIB was changed outside pdsno; store it again."
            )
        nonce, ciphertext = _decode_row(row)
        return _open(self._data_key, secret_id, nonce, ciphertext)

    def delete(self, secret_id: str) -> None:
        _check_id(secret_id)
        with self._engine.begin() as conn:
            self._current(conn, lock=True)  # only the key's holder deletes
            result = conn.execute(delete(secrets).where(secrets.c.secret_id == secret_id))
            if result.rowcount == 0:
                raise NotFoundError(f"No secret {secret_id!r}")
            audit.append(conn, "secret.deleted", actor=self.actor, subject=secret_id)

    def list_ids(self) -> list[str]:
        with self._engine.connect() as conn:
            return list(conn.scalars(select(secrets.c.secret_id).order_by(secrets.c.secret_id)))

    def check(self) -> KeyVersion | None:
        """The current key version if this store's key is it (None: no key yet); else refuses."""
        with self._engine.connect() as conn:
            return check_master_key(conn, self._master_key)

    def key_ages(self) -> dict[int, float]:
        """Seconds since each key version was created, retired ones included."""
        with self._engine.connect() as conn:
            return key_ages(conn)

    def rotation_due(self, rotation_days: int) -> bool:
        with self._engine.connect() as conn:
            return rotation_due(conn, rotation_days)

    def rotate(self, new_master_key: bytes) -> RotationResult:
        """Re-encrypt every secret under `new_master_key` in one transaction.

        This store's key must be the current one; afterwards it is retired and
        only the new key reads the secrets. Run again after it committed, it
        changes nothing and says so (`already_done`).
        """
        require_key_bytes(new_master_key, f"The new master key ({NEW_MASTER_KEY_ENV})")
        new_fingerprint = key_fingerprint(new_master_key)
        if new_fingerprint == self.fingerprint:
            raise ConfigurationError(
                f"{NEW_MASTER_KEY_ENV} is the same key as {MASTER_KEY_ENV}: set "
                f"{NEW_MASTER_KEY_ENV} to a new key; {MAKE_A_KEY}."
            )
        new_data_key = derive_key(new_master_key, SECRETS_KDF_INFO)
        with self._engine.begin() as conn:
            by_fingerprint = {v.fingerprint: v for v in key_versions(conn)}
            old, new = by_fingerprint.get(self.fingerprint), by_fingerprint.get(new_fingerprint)
            if new is not None and new.current and old is not None and not old.current:
                return RotationResult(old.version, new.version, 0, already_done=True)
            if new is not None:
                raise ConfigurationError(
                    f"{NEW_MASTER_KEY_ENV} was already used, as master key version "
                    f"{new.version}: a master key is never reused; {MAKE_A_KEY}."
                )
            locked = conn.execute(
                select(master_keys)
                .where(master_keys.c.fingerprint == self.fingerprint)
                .with_for_update()
            ).one_or_none()
            current = check_master_key(conn, self._master_key)
            if current is None:
                raise ConflictError(
                    "No master key is registered yet, so there is nothing to rotate: the "
                    f"first `pdsno secrets put` registers {MASTER_KEY_ENV} as version 1."
                )
            assert locked is not None and locked.key_version == current.version
            rows = conn.execute(
                select(secrets).order_by(secrets.c.secret_id).with_for_update()
            ).all()
            new_version = max(v.version for v in key_versions(conn)) + 1
            now = utcnow()
            conn.execute(
                master_keys.insert().values(
                    key_version=new_version, fingerprint=new_fingerprint, created_at=now
                )
            )
            for row in rows:
                if row.key_version != current.version:
                    raise SecretIntegrityError(
                        f"Secret {row.secret_id!r} is under key version {row.key_version}, "
                        f"not the current {current.version}: nothing was rotated."
                    )
                plaintext = _open(self._data_key, row.secret_id, *_decode_row(row))
                nonce, ciphertext = _seal(new_data_key, row.secret_id, plaintext)
                # updated_at stays: it is when the value was stored, not re-wrapped.
                conn.execute(
                    update(secrets)
                    .where(secrets.c.secret_id == row.secret_id)
                    .values(
                        key_version=new_version,
                        nonce=nonce.hex(),
                        ciphertext=base64.b64encode(ciphertext).decode(),
                    )
                )
            conn.execute(
                update(master_keys)
                .where(master_keys.c.key_version == current.version)
                .values(retired_at=now)
            )
            audit.append(
                conn,
                "master_key.rotated",
                actor=self.actor,
                subject=f"key-version-{new_version}",
                payload={
                    "from_version": current.version,
                    "to_version": new_version,
                    "secrets": len(rows),
                    "fingerprint": new_fingerprint[:16],
                },
            )
        return RotationResult(current.version, new_version, len(rows))


def key_ages(conn: Connection) -> dict[int, float]:
    now = utcnow()
    return {v.version: (now - v.created_at).total_seconds() for v in key_versions(conn)}


def rotation_due(conn: Connection, rotation_days: int) -> bool:
    """True when the current key is `rotation_days` old or older (False: no key yet)."""
    current = current_key_version(conn)
    if current is None:
        return False
    return (utcnow() - current.created_at).total_seconds() >= rotation_days * 86400
