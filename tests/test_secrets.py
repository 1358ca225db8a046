"""Secrets under the master key: AES-256-GCM, bound to their IDs, rotated all or nothing."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets as std_secrets
import subprocess
import threading
import time
from datetime import timedelta

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update

from pdsno import audit
from pdsno.clock import utcnow
from pdsno.errors import ConfigurationError, NotFoundError
from pdsno.nib.engine import create_nib_engine
from pdsno.nib.schema import events, master_keys
from pdsno.nib.schema import secrets as secrets_table
from pdsno.security import secrets as secrets_module
from pdsno.security.secrets import (
    SECRETS_KDF_INFO,
    SecretIntegrityError,
    SecretStore,
    derive_key,
    key_fingerprint,
    master_key_from_env,
    parse_master_key,
)

VALUES = {
    "db/password": b"correct horse battery staple",
    "snmp:community@r1": b"pr1vate-c0mmunity",
    "binary.key": bytes(range(256)),
    "empty": b"",
}


def new_key() -> bytes:
    return std_secrets.token_bytes(32)


def rows(engine) -> dict[str, object]:
    with engine.connect() as conn:
        return {r.secret_id: r for r in conn.execute(select(secrets_table))}


def event_rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(events).order_by(events.c.seq)).all()


def fill(store: SecretStore) -> None:
    for secret_id, value in VALUES.items():
        store.put(secret_id, value)


def test_secrets_round_trip_and_every_change_is_audited(nib_engine):
    store = SecretStore(nib_engine, new_key(), actor="tester")
    fill(store)
    for secret_id, value in VALUES.items():
        assert store.get(secret_id) == value
    assert store.list_ids() == sorted(VALUES)

    store.put("db/password", b"a new password")
    assert store.get("db/password") == b"a new password"
    store.delete("empty")
    with pytest.raises(NotFoundError):
        store.get("empty")
    with pytest.raises(NotFoundError):
        store.delete("empty")

    stored = rows(nib_engine)
    for secret_id, row in stored.items():
        assert row.key_version == 1
        assert len(bytes.fromhex(row.nonce)) == 12
        ciphertext = base64.b64decode(row.ciphertext)
        assert len(ciphertext) == len(store.get(secret_id)) + 16
        assert b"horse" not in ciphertext and b"c0mmunity" not in ciphertext
    assert len({row.nonce for row in stored.values()}) == len(stored)

    logged = [(e.event_type, e.subject, e.actor) for e in event_rows(nib_engine)]
    assert logged[0] == ("master_key.registered", "key-version-1", "tester")
    assert [e for e in logged if e[0] == "secret.stored"] == [
        *[("secret.stored", secret_id, "tester") for secret_id in VALUES],
        ("secret.stored", "db/password", "tester"),
    ]
    assert logged[-1] == ("secret.deleted", "empty", "tester")
    everything = repr([tuple(e) for e in event_rows(nib_engine)])
    for value in (b"horse", b"c0mmunity", b"a new password"):
        assert value.decode() not in everything
    assert audit.verify(nib_engine).intact


def test_the_nib_keeps_a_fingerprint_that_does_not_reveal_the_key(nib_engine):
    key = new_key()
    SecretStore(nib_engine, key).put("a", b"x")
    with nib_engine.connect() as conn:
        (row,) = conn.execute(select(master_keys)).all()
    assert row.key_version == 1 and row.retired_at is None
    assert row.fingerprint == key_fingerprint(key)
    assert key.hex() not in row.fingerprint
    assert row.fingerprint != hashlib.sha256(key).hexdigest()


def test_a_ciphertext_moved_to_another_id_does_not_decrypt(nib_engine):
    store = SecretStore(nib_engine, new_key())
    store.put("alpha", b"secret of alpha")
    store.put("beta", b"secret of beta")
    alpha, beta = rows(nib_engine)["alpha"], rows(nib_engine)["beta"]
    with nib_engine.begin() as conn:
        for target, source in ((alpha, beta), (beta, alpha)):
            conn.execute(
                update(secrets_table)
                .where(secrets_table.c.secret_id == target.secret_id)
                .values(nonce=source.nonce, ciphertext=source.ciphertext)
            )
    for secret_id in ("alpha", "beta"):
        with pytest.raises(SecretIntegrityError, match="belongs to another secret ID"):
            store.get(secret_id)


def test_an_altered_ciphertext_does_not_decrypt(nib_engine):
    store = SecretStore(nib_engine, new_key())
    store.put("alpha", b"secret of alpha")
    raw = bytearray(base64.b64decode(rows(nib_engine)["alpha"].ciphertext))
    raw[3] ^= 0x01
    with nib_engine.begin() as conn:
        conn.execute(update(secrets_table).values(ciphertext=base64.b64encode(bytes(raw)).decode()))
    with pytest.raises(SecretIntegrityError, match="altered"):
        store.get("alpha")


def test_a_wrong_key_is_refused_with_a_clear_message(nib_engine):
    right = SecretStore(nib_engine, new_key())
    right.put("alpha", b"secret of alpha")
    wrong = SecretStore(nib_engine, new_key())
    for attempt in (
        lambda: wrong.get("alpha"),
        lambda: wrong.put("beta", b"x"),
        lambda: wrong.delete("alpha"),
        wrong.check,
    ):
        with pytest.raises(ConfigurationError) as refused:
            attempt()
        message = str(refused.value)
        assert "PDSNO_MASTER_KEY is not this NIB's master key" in message
        assert "key version 1" in message and right.fingerprint[:16] in message
    assert set(rows(nib_engine)) == {"alpha"}
    assert right.get("alpha") == b"secret of alpha"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "PDSNO_MASTER_KEY is not set"),
        ("", "PDSNO_MASTER_KEY is not set"),
        ("abcd", "it holds 4 characters"),
        ("z" * 64, "not all of them hex"),
        ("00" * 31, "exactly 64 hex characters"),
    ],
)
def test_a_missing_or_malformed_master_key_says_what_to_set(value, expected):
    environ = {} if value is None else {"PDSNO_MASTER_KEY": value}
    with pytest.raises(ConfigurationError) as refused:
        master_key_from_env(environ=environ)
    message = str(refused.value)
    assert expected in message
    assert "python -c 'import secrets; print(secrets.token_hex(32))'" in message
    assert "openssl rand -hex 32" in message
    if value:
        assert value not in message, "a malformed key is never echoed"


def test_a_valid_master_key_is_read_from_the_environment():
    key = new_key()
    assert master_key_from_env(environ={"PDSNO_MASTER_KEY": key.hex().upper() + "\n"}) == key
    assert parse_master_key(key.hex(), "PDSNO_NEW_MASTER_KEY") == key
    with pytest.raises(ConfigurationError):
        SecretStore(None, b"short")  # type: ignore[arg-type]


def test_rotation_re_encrypts_every_secret_under_the_new_key_only(nib_engine):
    old_key, new = new_key(), new_key()
    old_store = SecretStore(nib_engine, old_key)
    fill(old_store)
    before = rows(nib_engine)

    result = old_store.rotate(new)
    assert (result.from_version, result.to_version, result.secrets) == (1, 2, len(VALUES))

    new_store = SecretStore(nib_engine, new)
    for secret_id, value in VALUES.items():
        assert new_store.get(secret_id) == value
    after = rows(nib_engine)
    old_data_key = derive_key(old_key, SECRETS_KDF_INFO)
    for secret_id, row in after.items():
        assert row.key_version == 2
        assert row.nonce != before[secret_id].nonce
        assert row.updated_at == before[secret_id].updated_at
        # The old key no longer opens any of them, even bypassing the store's checks.
        with pytest.raises(InvalidTag):
            AESGCM(old_data_key).decrypt(
                bytes.fromhex(row.nonce),
                base64.b64decode(row.ciphertext),
                b"pdsno-secret-v1\x00" + secret_id.encode(),
            )
    with pytest.raises(ConfigurationError) as refused:
        old_store.get("db/password")
    message = str(refused.value)
    assert "holds master key version 1, retired" in message
    assert "set PDSNO_MASTER_KEY to that key" in message and "PDSNO_NEW_MASTER_KEY" in message

    with nib_engine.connect() as conn:
        versions = conn.execute(select(master_keys).order_by(master_keys.c.key_version)).all()
    assert [(v.key_version, v.retired_at is not None) for v in versions] == [(1, True), (2, False)]
    rotated = [e for e in event_rows(nib_engine) if e.event_type == "master_key.rotated"]
    assert [e.payload for e in rotated] == [
        {
            "from_version": 1,
            "to_version": 2,
            "secrets": len(VALUES),
            "fingerprint": key_fingerprint(new)[:16],
        }
    ]
    assert audit.verify(nib_engine).intact

    # Run again once it committed: nothing changes, and it says so.
    again = old_store.rotate(new)
    assert again.already_done and again.to_version == 2
    # A third key rotates on from the new one; an old key is never reused.
    newest = new_key()
    assert new_store.rotate(newest).to_version == 3
    with pytest.raises(ConfigurationError, match="already used, as master key version 1"):
        SecretStore(nib_engine, newest).rotate(old_key)
    with pytest.raises(ConfigurationError, match="same key"):
        new_store.rotate(new)


def test_a_failure_mid_rotation_leaves_everything_under_the_old_key(nib_engine, monkeypatch):
    old_key, new = new_key(), new_key()
    store = SecretStore(nib_engine, old_key)
    fill(store)
    before = rows(nib_engine)
    events_before = len(event_rows(nib_engine))

    real_seal = secrets_module._seal
    calls = []

    def failing_seal(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real_seal(*args)

    monkeypatch.setattr(secrets_module, "_seal", failing_seal)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.rotate(new)
    monkeypatch.setattr(secrets_module, "_seal", real_seal)

    assert len(calls) == 3, "two secrets were re-encrypted before the failure"
    assert rows(nib_engine) == before
    for secret_id, value in VALUES.items():
        assert store.get(secret_id) == value
    with nib_engine.connect() as conn:
        versions = conn.execute(select(master_keys)).all()
    assert [(v.key_version, v.retired_at) for v in versions] == [(1, None)]
    with pytest.raises(ConfigurationError, match="not this NIB's master key"):
        SecretStore(nib_engine, new).get("db/password")
    assert len(event_rows(nib_engine)) == events_before
    # The same rotation, run again, goes through.
    assert store.rotate(new).to_version == 2


def test_a_write_during_a_rotation_waits_and_is_refused(nib_engine, monkeypatch):
    old_key, new = new_key(), new_key()
    store = SecretStore(nib_engine, old_key)
    fill(store)
    real_seal = secrets_module._seal
    rotating = threading.Event()

    def slow_seal(*args):
        rotating.set()
        time.sleep(0.05)
        return real_seal(*args)

    monkeypatch.setattr(secrets_module, "_seal", slow_seal)
    rotation = threading.Thread(target=store.rotate, args=(new,))
    rotation.start()
    assert rotating.wait(10)
    # The old key's holder writes while the rotation holds the key row: it waits,
    # and is refused once the key it holds is retired, never writes under it.
    with pytest.raises(ConfigurationError, match="retired"):
        SecretStore(nib_engine, old_key).put("late", b"written during the rotation")
    rotation.join(10)
    monkeypatch.setattr(secrets_module, "_seal", real_seal)
    assert "late" not in rows(nib_engine)
    assert {row.key_version for row in rows(nib_engine).values()} == {2}


def test_key_age_and_rotation_due(nib_engine):
    store = SecretStore(nib_engine, new_key())
    assert store.key_ages() == {}
    assert not store.rotation_due(90)
    store.put("a", b"x")
    assert store.key_ages()[1] < 60
    assert not store.rotation_due(90)

    def age_key(days: float) -> None:
        with nib_engine.begin() as conn:
            conn.execute(
                update(master_keys)
                .where(master_keys.c.key_version == 1)
                .values(created_at=utcnow() - timedelta(days=days))
            )

    age_key(89)
    assert not store.rotation_due(90)
    assert 89 * 86400 <= store.key_ages()[1] < 89 * 86400 + 60
    age_key(91)
    assert store.rotation_due(90)
    assert not store.rotation_due(120)

    new = new_key()
    store.rotate(new)
    ages = SecretStore(nib_engine, new).key_ages()
    assert set(ages) == {1, 2} and ages[1] >= 91 * 86400 and ages[2] < 60
    assert not SecretStore(nib_engine, new).rotation_due(90)


def test_secret_ids_are_checked(nib_engine):
    store = SecretStore(nib_engine, new_key())
    for bad in ("", "-leading-dash", "with space", "x" * 129, "new\nline"):
        with pytest.raises(Exception, match="is not a secret ID"):
            store.put(bad, b"x")


def run_cli(*args: str, env: dict[str, str], stdin: bytes | None = None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PDSNO_")}
    environment.update(env)
    return subprocess.run(
        ["pdsno", *args], input=stdin, capture_output=True, env=environment, check=False
    )


def test_cli_put_get_list_status_and_rotate(tmp_path):
    # The CLI is the same on both backends; the store's tests above run on both.
    nib_url = f"sqlite:///{tmp_path / 'nib.db'}"
    db = ["--db-url", nib_url]
    assert run_cli("db", "upgrade", *db, env={}).returncode == 0
    old_hex, new_hex = new_key().hex(), new_key().hex()
    old = {"PDSNO_MASTER_KEY": old_hex}

    no_key = run_cli("secrets", "put", "api/token", *db, env={}, stdin=b"v")
    assert no_key.returncode == 1
    assert (
        b"PDSNO_MASTER_KEY is not set" in no_key.stderr and b"openssl rand -hex 32" in no_key.stderr
    )

    value = b"s3cr3t value\nwith a newline\n"
    put = run_cli("secrets", "put", "api/token", *db, env=old, stdin=value)
    assert put.returncode == 0, put.stderr
    assert run_cli("secrets", "put", "other", *db, env=old, stdin=b"2").returncode == 0
    empty = run_cli("secrets", "put", "nothing", *db, env=old, stdin=b"")
    assert empty.returncode == 1 and b"No value on stdin" in empty.stderr

    get = run_cli("secrets", "get", "api/token", *db, env=old)
    assert get.returncode == 0 and get.stdout == value
    listed = run_cli("secrets", "list", *db, env={}).stdout.decode()
    assert '"secret_id": "api/token"' in listed and '"key_version": 1' in listed
    assert "s3cr3t" not in listed

    status = run_cli("secrets", "status", *db, env=old)
    assert status.returncode == 0
    assert b'"rotation_due": false' in status.stdout and b"warning" not in status.stderr

    engine = create_nib_engine(nib_url)
    with engine.begin() as conn:
        conn.execute(update(master_keys).values(created_at=utcnow() - timedelta(days=100)))
    engine.dispose()
    due = run_cli("secrets", "status", *db, env=old)
    assert due.returncode == 0, "a rotation that is due warns; it is not a failure"
    assert b'"rotation_due": true' in due.stdout and b'"age_days": 100.0' in due.stdout
    assert b"warning: master key version 1 is 100.0 days old" in due.stderr
    assert b"pdsno secrets rotate" in due.stderr
    unchecked = run_cli("secrets", "status", *db, env={})
    assert unchecked.returncode == 0 and b"not checked" in unchecked.stdout

    missing_new = run_cli("secrets", "rotate", *db, env=old)
    assert missing_new.returncode == 1 and b"PDSNO_NEW_MASTER_KEY is not set" in missing_new.stderr
    rotate = run_cli("secrets", "rotate", *db, env={**old, "PDSNO_NEW_MASTER_KEY": new_hex})
    assert rotate.returncode == 0, rotate.stderr
    assert b"rotated 2 secrets from master key version 1 to 2" in rotate.stdout

    stale = run_cli("secrets", "get", "api/token", *db, env=old)
    assert stale.returncode == 1 and b"set PDSNO_MASTER_KEY to that key" in stale.stderr
    fresh = run_cli("secrets", "get", "api/token", *db, env={"PDSNO_MASTER_KEY": new_hex})
    assert fresh.returncode == 0 and fresh.stdout == value
    status = run_cli("secrets", "status", *db, env=old)
    assert status.returncode == 1 and b'"rotation_due": false' in status.stdout
    assert b"retired" in status.stderr
