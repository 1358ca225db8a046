"""Encrypted NIB backups: an identical NIB after a restore, and nothing readable or alterable."""

from __future__ import annotations

import json
import os
import secrets as std_secrets
import struct
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import JSON, delete, insert, null, select
from sqlalchemy.exc import DBAPIError

from pdsno import audit
from pdsno.backup import (
    MAGIC,
    BackupError,
    create_backup,
    restore_backup,
    verify_backup,
)
from pdsno.clock import as_utc, utcnow
from pdsno.errors import ConfigurationError, ConflictError
from pdsno.nib.engine import create_nib_engine, upgrade
from pdsno.nib.schema import (
    api_keys,
    approvals,
    bootstrap_tokens,
    challenges,
    config_proposals,
    controllers,
    device_configs,
    devices,
    events,
    execution_tokens,
    locks,
    message_nonces,
    metadata,
    outbox,
    policies,
    policy_acks,
    sessions,
    users,
)
from pdsno.security.keys import SigningKey
from pdsno.security.secrets import SecretStore

DEVICE_NAME = "core-router-zrh-7731"
SECRET_VALUE = b"enable-password-Qx81"
UNICODE_NOTE = "Zürich — «квартал» 🛰"


def new_key() -> bytes:
    return std_secrets.token_bytes(32)


def other_backend_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty NIB URL on `backend`."""
    if backend == "postgresql":
        return request.getfixturevalue("postgres_server").create_database()
    return f"sqlite:///{tmp_path / f'nib-{os.urandom(4).hex()}.db'}"


def backend_of(engine) -> str:
    return engine.dialect.name


def fresh_engine(backend: str, tmp_path: Path, request: pytest.FixtureRequest):
    engine = create_nib_engine(other_backend_url(backend, tmp_path, request))
    upgrade(engine)
    return engine


def populate(engine, master_key: bytes) -> dict[str, str]:
    """A row (or more) in every table of the NIB; returns strings to look for."""
    now = utcnow()
    gc_key, rc_key, lc_key = (SigningKey.generate() for _ in range(3))
    t = [now - timedelta(hours=h, microseconds=123457 * h) for h in range(10)]
    with engine.begin() as conn:
        conn.execute(
            insert(controllers),
            [
                dict(
                    seq=10,
                    controller_id="gc-1",
                    controller_type="global",
                    region=None,
                    name="global one",
                    public_key=gc_key.public_key_b64,
                    parent_id=None,
                    url=None,
                    status="active",
                    credential=null(),
                    created_at=t[9],
                    updated_at=t[8],
                    version=1,
                ),
                dict(
                    seq=20,
                    controller_id="rc-eu",
                    controller_type="regional",
                    region="eu-west",
                    name="regional eu",
                    public_key=rc_key.public_key_b64,
                    parent_id="gc-1",
                    url="https://rc-eu:8002",
                    status="active",
                    credential={"issuer": "gc-1", "claims": {"n": 1.5, "ok": True, "l": [1, None]}},
                    created_at=t[8],
                    updated_at=t[7],
                    version=3,
                ),
                dict(
                    # A child numbered before its parent: a restore still inserts the
                    # parent first.
                    seq=5,
                    controller_id="lc-zrh",
                    controller_type="local",
                    region="eu-west",
                    name="local zrh",
                    public_key=lc_key.public_key_b64,
                    parent_id="rc-eu",
                    url=None,
                    status="active",
                    credential=JSON.NULL,
                    created_at=t[7],
                    updated_at=t[7],
                    version=1,
                ),
            ],
        )
        conn.execute(
            insert(bootstrap_tokens).values(
                token_hash="a" * 64,
                region="eu-west",
                controller_type="local",
                created_by="cli",
                created_at=t[6],
                expires_at=now + timedelta(days=1),
                used_at=t[5],
                used_by="lc-zrh",
            )
        )
        conn.execute(
            insert(challenges).values(
                nonce="n" * 64,
                token_hash="a" * 64,
                controller_type="local",
                region="eu-west",
                name="local zrh",
                public_key=lc_key.public_key_b64,
                url=None,
                created_at=t[6],
                expires_at=t[5],
                consumed_at=t[5],
            )
        )
        conn.execute(
            insert(message_nonces).values(sender_id="rc-eu", nonce="m" * 32, received_at=t[4])
        )
        conn.execute(
            insert(devices).values(
                device_id="dev-1",
                name=DEVICE_NAME,
                region="eu-west",
                status="active",
                management_address="192.0.2.10",
                vendor="acme",
                role="core",
                config_version=1,
                current_config=["hostname " + DEVICE_NAME, UNICODE_NOTE],
                created_at=t[6],
                updated_at=t[3],
                version=2,
            )
        )
        conn.execute(
            insert(config_proposals).values(
                proposal_id="p-1",
                device_id="dev-1",
                origin_id="lc-zrh",
                region="eu-west",
                config_lines=["ntp server 192.0.2.1"],
                config_hash="c" * 64,
                sensitivity_local="LOW",
                sensitivity_regional="MEDIUM",
                sensitivity="MEDIUM",
                status="executed",
                decided_by="alice",
                decision_reason=UNICODE_NOTE,
                created_at=t[5],
                expires_at=now + timedelta(hours=1),
                updated_at=t[2],
                version=4,
            )
        )
        conn.execute(
            insert(approvals).values(
                proposal_id="p-1",
                decision="approve",
                decided_by="alice",
                decider_kind="operator",
                controller_id="rc-eu",
                reason="ok",
                created_at=t[4],
            )
        )
        conn.execute(
            insert(execution_tokens).values(
                token_id="tok-1",  # noqa: S106
                proposal_id="p-1",
                device_id="dev-1",
                config_hash="c" * 64,
                issuer_id="rc-eu",
                signature="s" * 88,
                issued_at=t[4],
                expires_at=t[1],
                used_at=t[3],
            )
        )
        conn.execute(
            insert(device_configs).values(
                device_id="dev-1",
                config_version=1,
                config=["ntp server 192.0.2.1"],
                config_hash="c" * 64,
                rollback_config=[],
                proposal_id="p-1",
                applied_by="lc-zrh",
                created_at=t[3],
            )
        )
        conn.execute(
            insert(policies).values(
                policy_id="pol-1",
                policy_version=1,
                scope="region",
                region="eu-west",
                issuer_id="gc-1",
                body={"rules": [{"match": "ntp*", "level": "LOW"}], "weight": 0.1},
                signature="g" * 88,
                created_at=t[3],
            )
        )
        policy_seq = conn.execute(select(policies.c.seq)).scalar_one()
        conn.execute(
            insert(policy_acks).values(policy_seq=policy_seq, controller_id="rc-eu", acked_at=t[2])
        )
        conn.execute(
            insert(locks).values(
                name="device:dev-1", holder="lc-zrh", acquired_at=t[1], expires_at=now
            )
        )
        conn.execute(
            insert(outbox),
            [
                dict(
                    event_id=f"00000000-0000-0000-0000-00000000000{i}",
                    sender_id="rc-eu",
                    topic="pdsno/v1/eu-west/proposal/executed",
                    payload={"proposal": "p-1", "i": i},
                    created_at=t[2],
                    attempts=i,
                    sent_at=t[1] if i % 2 else None,
                )
                for i in range(1, 5)
            ],
        )
        conn.execute(
            insert(api_keys),
            [
                dict(
                    key_id="k1",
                    key_hash="h" * 64,
                    name="ops",
                    role="operator",
                    region=None,
                    scopes=["devices:read"],
                    created_at=t[2],
                    revoked_at=None,
                ),
                dict(
                    key_id="k2",
                    key_hash="i" * 64,
                    name="auditor",
                    role="auditor",
                    region="eu-west",
                    scopes=null(),
                    created_at=t[2],
                    revoked_at=t[1],
                ),
            ],
        )
        conn.execute(
            insert(users).values(
                user_id="u-1",
                username="alice",
                password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",  # noqa: S106
                role="approver",
                region="eu-west",
                failed_logins=2,
                locked_until=None,
                disabled=0,
                created_at=t[6],
                updated_at=t[1],
            )
        )
        conn.execute(
            insert(sessions).values(
                token_hash="t" * 64, user_id="u-1", created_at=t[1], expires_at=now
            )
        )
        for i in range(3):
            audit.append(
                conn,
                "proposal.executed",
                actor="lc-zrh",
                subject="p-1",
                region="eu-west",
                payload={"device": DEVICE_NAME, "step": i, "note": UNICODE_NOTE},
            )
        # Deleted rows' IDs are never given out again, after a restore too.
        conn.execute(delete(outbox).where(outbox.c.attempts == 4))
    store = SecretStore(engine, master_key, actor="test")
    store.put("device/dev-1/enable", SECRET_VALUE)
    store.put("mqtt/password", b"mqtt-pass")
    return {
        "device": DEVICE_NAME,
        "public_key": rc_key.public_key_b64,
        "secret": SECRET_VALUE.decode(),
        "unicode": UNICODE_NOTE,
    }


def snapshot(engine) -> dict[str, list[tuple]]:
    """Every table's rows, by primary key: times in UTC, JSON SQL NULL told from JSON null."""
    tables = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            json_columns = [c for c in table.columns if isinstance(c.type, JSON)]
            query = select(*table.columns, *[c.is_(None) for c in json_columns]).order_by(
                *table.primary_key.columns
            )
            tables[table.name] = [
                tuple(as_utc(v) if hasattr(v, "tzinfo") else v for v in row)
                for row in conn.execute(query)
            ]
    return tables


@pytest.fixture
def populated(nib_engine, tmp_path):
    key = new_key()
    known = populate(nib_engine, key)
    before = snapshot(nib_engine)
    empty = [name for name, rows in before.items() if not rows]
    assert not empty, f"populate() must give every table rows; add some to: {empty}"
    path = tmp_path / "nib.backup"
    summary = create_backup(nib_engine, path, key, chunk_size=512)
    return nib_engine, key, known, before, path, summary


def test_a_backup_restores_to_an_identical_nib(populated, tmp_path, request):
    source, key, _known, before, path, summary = populated
    assert summary.rows == {name: len(rows) for name, rows in before.items()}
    assert summary.key_version == 1 and summary.schema_revision == "0003"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # The backup itself is in the source's audit trail, after the snapshot.
    last = snapshot(source)["events"][-1]
    assert last[1] == "backup.created" and last[3] == "nib.backup"

    target = fresh_engine(backend_of(source), tmp_path, request)
    restored = restore_backup(target, path, key)
    assert restored.rows == summary.rows
    assert snapshot(target) == before
    assert audit.verify(target).intact

    # Secrets read back under the same key.
    assert SecretStore(target, key).get("device/dev-1/enable") == SECRET_VALUE
    # New rows get new, higher IDs: sequences moved past the restored (and deleted) ones.
    with target.begin() as conn:
        result = conn.execute(
            insert(controllers).values(
                controller_id="lc-new",
                controller_type="local",
                region="eu-west",
                name="after restore",
                public_key=SigningKey.generate().public_key_b64,
                parent_id="rc-eu",
                status="active",
                created_at=utcnow(),
                updated_at=utcnow(),
                version=1,
            )
        )
        (seq,) = result.inserted_primary_key
        assert seq > max(row[0] for row in before["controllers"])
        conn.execute(
            insert(outbox).values(
                event_id="11111111-1111-1111-1111-111111111111",
                sender_id="rc-eu",
                topic="t",
                payload={},
                created_at=utcnow(),
                attempts=0,
            )
        )
        outbox_seq = conn.execute(select(outbox.c.seq).where(outbox.c.topic == "t")).scalar()
        assert outbox_seq == 5, "outbox seq 4 was deleted before the backup: never reused"
        appended = audit.append(conn, "after.restore", actor="test")
        assert appended.seq == len(before["events"]) + 1
    assert audit.verify(target).intact
    # The restored audit trail is still append-only.
    with pytest.raises(DBAPIError), target.begin() as conn:
        conn.execute(delete(events))
    target.dispose()


def test_a_backup_restores_across_backends(populated, tmp_path, request):
    source, key, _known, before, path, _summary = populated
    other = "sqlite" if backend_of(source) == "postgresql" else "postgresql"
    target = fresh_engine(other, tmp_path, request)
    restore_backup(target, path, key)
    assert snapshot(target) == before
    assert audit.verify(target).intact
    assert SecretStore(target, key).get("mqtt/password") == b"mqtt-pass"
    target.dispose()


def test_the_backup_holds_no_plaintext(populated):
    _source, key, known, _before, path, _summary = populated
    content = path.read_bytes()
    assert content.startswith(MAGIC)
    for text in (*known.values(), "controllers", "eu-west", "proposal.executed"):
        assert text.encode() not in content, text
        assert text.encode("utf-16-le") not in content
    assert key.hex().encode() not in content and key not in content
    header = json.loads(content[12 : 12 + struct.unpack(">I", content[8:12])[0]])
    assert header["key"]["fingerprint"] and header["key"]["key_version"] == 1
    assert header["cipher"] == "AES-256-GCM" and header["schema_revision"] == "0003"


def test_a_backup_never_overwrites_a_file(nib_engine, tmp_path):
    key = new_key()
    path = tmp_path / "exists.backup"
    path.write_bytes(b"precious")
    with pytest.raises(BackupError, match="never overwrites"):
        create_backup(nib_engine, path, key)
    assert path.read_bytes() == b"precious"


def frames(content: bytes) -> tuple[bytes, list[bytes]]:
    """(magic + header, [each chunk with its frame]) of a backup file."""
    header_end = 12 + struct.unpack(">I", content[8:12])[0]
    chunks, offset = [], header_end
    while offset < len(content):
        length = struct.unpack(">I", content[offset : offset + 4])[0]
        chunks.append(content[offset : offset + 5 + length])
        offset += 5 + length
    return content[:header_end], chunks


def tampered_versions(content: bytes) -> dict[str, bytes]:
    head, chunks = frames(content)
    assert len(chunks) >= 4, "the test needs a backup of several chunks"

    def flip(data: bytes, at: int) -> bytes:
        return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]

    last = chunks[-1]
    not_final = last[:4] + b"\x00" + last[5:]
    return {
        "a flipped bit in the header": flip(content, 20),
        "a flipped bit in a chunk": flip(content, len(head) + 40),
        "a flipped tag byte": flip(content, len(content) - 1),
        "two chunks swapped": head + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "a chunk dropped": head + chunks[0] + b"".join(chunks[2:]),
        "a chunk repeated": head + chunks[0] + b"".join(chunks),
        "the final chunk dropped": head + b"".join(chunks[:-1]),
        "the final flag cleared": head + b"".join(chunks[:-1]) + not_final,
        "truncated in a chunk": content[: len(content) - 7],
        "truncated in a frame": content[: len(content) - len(last) + 3],
        "truncated in the header": content[:30],
        "data after the final chunk": content + b"\x00",
        "the first chunk again as the last": head + b"".join(chunks[:-1]) + chunks[0],
        "not a backup": b"SQLite format 3\x00" + content[16:],
        "empty": b"",
    }


def test_a_tampered_or_truncated_backup_is_refused(populated, tmp_path, request):
    source, key, _known, before, path, _summary = populated
    target = fresh_engine(backend_of(source), tmp_path, request)
    for what, content in tampered_versions(path.read_bytes()).items():
        bad = tmp_path / f"bad-{abs(hash(what))}.backup"
        bad.write_bytes(content)
        with pytest.raises(BackupError) as refused:
            restore_backup(target, bad, key)
        assert str(bad) in str(refused.value), what
        with pytest.raises(BackupError):
            verify_backup(bad, key)
        # Nothing of it was committed: the target is still empty.
        assert all(not rows for name, rows in snapshot(target).items() if name != "audit_head")
    restore_backup(target, path, key)
    assert snapshot(target) == before
    target.dispose()


def test_a_splice_from_another_backup_is_refused(populated, tmp_path):
    source, key, _known, _before, path, _summary = populated
    second = tmp_path / "second.backup"
    create_backup(source, second, key, chunk_size=512)
    head, chunks = frames(path.read_bytes())
    _other_head, other_chunks = frames(second.read_bytes())
    spliced = tmp_path / "spliced.backup"
    spliced.write_bytes(head + chunks[0] + b"".join(other_chunks[1:]))
    with pytest.raises(BackupError, match="chunk 1 does not authenticate"):
        verify_backup(spliced, key)


def test_restore_names_the_key_it_needs(populated):
    _source, _key, _known, _before, path, summary = populated
    with pytest.raises(ConfigurationError) as refused:
        verify_backup(path, new_key())
    message = str(refused.value)
    assert summary.key_fingerprint[:16] in message and "key version 1" in message
    assert "Set PDSNO_MASTER_KEY to the key the backup was made under" in message


def test_restore_into_a_non_empty_nib_is_refused(populated, tmp_path, request):
    source, key, _known, _before, path, _summary = populated
    with pytest.raises(ConflictError) as refused:
        restore_backup(source, path, key)
    assert "The target NIB is not empty" in str(refused.value)
    assert "pdsno db upgrade" in str(refused.value)

    target = fresh_engine(backend_of(source), tmp_path, request)
    with target.begin() as conn:
        audit.append(conn, "something", actor="test")
    with pytest.raises(
        ConflictError, match=r"not empty: audit_head \(not the row .* seeds\), events \(1 rows\)"
    ):
        restore_backup(target, path, key)
    target.dispose()


def test_restore_needs_an_upgraded_target(populated, tmp_path, request):
    source, key, _known, _before, path, _summary = populated
    engine = create_nib_engine(other_backend_url(backend_of(source), tmp_path, request))
    with pytest.raises(ConfigurationError, match="run `pdsno db upgrade` on the target first"):
        restore_backup(engine, path, key)
    engine.dispose()


def test_a_backup_after_rotation_needs_the_new_key(nib_engine, tmp_path, request):
    old, new = new_key(), new_key()
    SecretStore(nib_engine, old).put("a", b"1")
    SecretStore(nib_engine, old).rotate(new)
    with pytest.raises(ConfigurationError, match="retired"):
        create_backup(nib_engine, tmp_path / "old.backup", old)
    assert not (tmp_path / "old.backup").exists()
    summary = create_backup(nib_engine, tmp_path / "new.backup", new)
    assert summary.key_version == 2
    target = fresh_engine(backend_of(nib_engine), tmp_path, request)
    restore_backup(target, tmp_path / "new.backup", new)
    assert SecretStore(target, new).get("a") == b"1"
    target.dispose()


def test_an_empty_nib_backs_up_and_restores(nib_engine, tmp_path, request):
    key = new_key()
    create_backup(nib_engine, tmp_path / "empty.backup", key)
    target = fresh_engine(backend_of(nib_engine), tmp_path, request)
    summary = restore_backup(target, tmp_path / "empty.backup", key)
    assert summary.rows["controllers"] == 0 and summary.key_version is None
    assert audit.verify(target).intact
    target.dispose()


def pdsno(*args: str, key: bytes | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDSNO_")}
    if key is not None:
        env["PDSNO_MASTER_KEY"] = key.hex()
    return subprocess.run(["pdsno", *args], capture_output=True, text=True, env=env, check=False)


def test_cli_backup_create_restore_and_audit_verify(nib_url, tmp_path, request):
    source = create_nib_engine(nib_url)
    upgrade(source)
    key = new_key()
    populate(source, key)
    source.dispose()
    out = tmp_path / "cli.backup"

    missing = pdsno("backup", "create", "--out", str(out), "--db-url", nib_url, key=None)
    assert missing.returncode == 1 and "PDSNO_MASTER_KEY is not set" in missing.stderr
    assert not out.exists()
    created = pdsno("backup", "create", "--out", str(out), "--db-url", nib_url, key=key)
    assert created.returncode == 0, created.stderr
    assert "master key version 1" in created.stdout
    again = pdsno("backup", "create", "--out", str(out), "--db-url", nib_url, key=key)
    assert again.returncode == 1 and "never overwrites" in again.stderr

    verified = pdsno("backup", "verify", "--in", str(out), key=key)
    assert verified.returncode == 0 and '"devices": 1' in verified.stdout

    backend = "postgresql" if nib_url.startswith("postgresql") else "sqlite"
    target_url = other_backend_url(backend, tmp_path, request)
    not_upgraded = pdsno("backup", "restore", "--in", str(out), "--db-url", target_url, key=key)
    assert not_upgraded.returncode == 1 and "pdsno db upgrade" in not_upgraded.stderr
    assert pdsno("db", "upgrade", "--db-url", target_url, key=None).returncode == 0
    restored = pdsno("backup", "restore", "--in", str(out), "--db-url", target_url, key=key)
    assert restored.returncode == 0, restored.stderr
    verify = pdsno("audit", "verify", "--db-url", target_url, key=None)
    assert verify.returncode == 0 and verify.stdout.startswith("audit chain intact: 6 events")
    twice = pdsno("backup", "restore", "--in", str(out), "--db-url", target_url, key=key)
    assert twice.returncode == 1 and "not empty" in twice.stderr
    listed = pdsno("controllers", "list", "--db-url", target_url, key=None)
    # By seq, as they were: the child was numbered before its parent.
    assert [json.loads(line)["controller_id"] for line in listed.stdout.splitlines()] == [
        "lc-zrh",
        "gc-1",
        "rc-eu",
    ]
