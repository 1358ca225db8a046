"""Encrypted logical backups of the whole NIB, and restoring them into an empty NIB.

File format (version 1), all integers big-endian:

    magic         8 bytes   b"PDSNOBK\\x01"
    header_len    4 bytes   length of the header
    header        JSON      format, schema revision, cipher, KDF salt, key fingerprint...
    chunks        repeated: ciphertext_len (4 bytes), final flag (1 byte: 0 or 1),
                            ciphertext (AES-256-GCM, with its 16-byte tag)

The key of a file is HKDF-SHA256(PDSNO_MASTER_KEY, salt=the header's random salt,
info="pdsno-backup"): one fresh key per file, so chunk i uses the nonce i (96
bits). Each chunk's associated data is SHA-256(magic, header_len, header), the
chunk index (8 bytes) and the final flag: chunks cannot be reordered, dropped,
spliced from another file, or the header changed, and a file that ends before
its final chunk, or goes on after it, is refused. The header names the master
key's fingerprint and version, so restore says which key it needs.

The plaintext, zlib-compressed, is JSON lines: `{"kind": "nib", ...}`, then
per table (in dependency order) `{"kind": "table", "name", "columns"}` and one
JSON array per row, then `{"kind": "sequences"}` (the highest ID ever given by
each table's sequence) and `{"kind": "end", "rows": {table: count}}`. Times are
ISO 8601 in UTC; a JSON column holds `[value]`, or null for SQL NULL.

A restore goes into an EMPTY NIB at the same schema revision, in one
transaction; events are inserted (the audit triggers refuse only UPDATE and
DELETE), the audit head seeded by the migration is updated, and sequences are
moved past every restored ID.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from alembic.runtime.migration import MigrationContext
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Table,
    func,
    null,
    select,
    text,
    update,
)

from pdsno import __version__, audit
from pdsno.clock import utcnow
from pdsno.errors import ConfigurationError, ConflictError, PdsnoError
from pdsno.nib.engine import head_revision
from pdsno.nib.schema import audit_head, metadata
from pdsno.security.secrets import (
    MASTER_KEY_ENV,
    check_master_key,
    derive_key,
    key_fingerprint,
    require_key_bytes,
)

MAGIC = b"PDSNOBK\x01"
FORMAT = "pdsno-nib-backup"
FORMAT_VERSION = 1
BACKUP_KDF_INFO = b"pdsno-backup"
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
TAG_BYTES = 16
SALT_BYTES = 32
BATCH_ROWS = 500
GENESIS_HASH = "0" * 64
_LENGTH = struct.Struct(">I")
_FRAME = struct.Struct(">IB")


class BackupError(PdsnoError):
    """A backup file that is not one, is damaged, altered or incomplete."""


@dataclass(frozen=True)
class BackupHeader:
    raw: bytes
    fields: dict[str, Any]

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(MAGIC + _LENGTH.pack(len(self.raw)) + self.raw).digest()

    @property
    def schema_revision(self) -> str:
        return self.fields["schema_revision"]

    @property
    def fingerprint(self) -> str:
        return self.fields["key"]["fingerprint"]

    @property
    def key_version(self) -> int | None:
        return self.fields["key"]["key_version"]

    @property
    def salt(self) -> bytes:
        return bytes.fromhex(self.fields["key"]["salt"])

    @property
    def chunk_size(self) -> int:
        return self.fields["chunk_size"]


@dataclass
class BackupSummary:
    path: Path
    schema_revision: str
    key_fingerprint: str
    key_version: int | None
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


# --- encrypted chunks ----------------------------------------------------------


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _chunk_aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class _ChunkWriter:
    """Compresses what it is given and writes it as authenticated chunks."""

    def __init__(self, handle: BinaryIO, key: bytes, header: BackupHeader, chunk_size: int):
        self._handle = handle
        self._aead = AESGCM(key)
        self._digest = header.digest
        self._chunk_size = chunk_size
        self._compressor = zlib.compressobj(6)
        self._pending = bytearray()
        self._index = 0

    def write(self, data: bytes) -> None:
        self._pending += self._compressor.compress(data)
        self._drain()

    def _drain(self) -> None:
        # Hold back at least one byte: the last chunk must carry the final flag.
        while len(self._pending) > self._chunk_size:
            self._emit(bytes(self._pending[: self._chunk_size]), final=False)
            del self._pending[: self._chunk_size]

    def close(self) -> None:
        self._pending += self._compressor.flush()
        self._drain()
        self._emit(bytes(self._pending), final=True)
        self._pending.clear()

    def _emit(self, data: bytes, *, final: bool) -> None:
        ciphertext = self._aead.encrypt(
            _nonce(self._index), data, _chunk_aad(self._digest, self._index, final)
        )
        self._handle.write(_FRAME.pack(len(ciphertext), 1 if final else 0) + ciphertext)
        self._index += 1


def _read_exact(handle: BinaryIO, size: int, path: Path, what: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise BackupError(f"{path} is truncated: it ends inside {what}")
    return data


def read_header(handle: BinaryIO, path: Path) -> BackupHeader:
    if handle.read(len(MAGIC)) != MAGIC:
        raise BackupError(f"{path} is not a pdsno backup (format {FORMAT_VERSION})")
    (length,) = _LENGTH.unpack(_read_exact(handle, _LENGTH.size, path, "the header"))
    if length > MAX_HEADER_BYTES:
        raise BackupError(f"{path} is damaged: its header claims {length} bytes")
    raw = _read_exact(handle, length, path, "the header")
    try:
        fields = json.loads(raw)
        key = fields["key"]
        valid = (
            fields["format"] == FORMAT
            and fields["format_version"] == FORMAT_VERSION
            and fields["cipher"] == "AES-256-GCM"
            and fields["compression"] == "zlib"
            and key["kdf"] == "HKDF-SHA256"
            and key["info"] == BACKUP_KDF_INFO.decode()
            and len(bytes.fromhex(key["salt"])) == SALT_BYTES
            and isinstance(key["fingerprint"], str)
            and isinstance(fields["schema_revision"], str)
            and isinstance(fields["chunk_size"], int)
            and 0 < fields["chunk_size"] <= MAX_CHUNK_SIZE
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise BackupError(f"{path} is damaged or not a pdsno backup: its header is not valid")
    return BackupHeader(raw, fields)


def _chunks(handle: BinaryIO, key: bytes, header: BackupHeader, path: Path) -> Iterator[bytes]:
    """Each chunk's plaintext, in order; refuses a damaged, altered or incomplete file."""
    aead = AESGCM(key)
    digest = header.digest
    index = 0
    while True:
        frame = handle.read(_FRAME.size)
        if len(frame) < _FRAME.size:
            raise BackupError(
                f"{path} is truncated: it ends after {index} chunks, before its final chunk"
            )
        length, final = _FRAME.unpack(frame)
        if final not in (0, 1) or not TAG_BYTES <= length <= header.chunk_size + TAG_BYTES:
            raise BackupError(f"{path} is damaged: chunk {index} has an invalid frame")
        ciphertext = _read_exact(handle, length, path, f"chunk {index}")
        try:
            data = aead.decrypt(_nonce(index), ciphertext, _chunk_aad(digest, index, final == 1))
        except InvalidTag:
            raise BackupError(
                f"{path} is damaged or was altered: chunk {index} does not authenticate"
            ) from None
        yield data
        if final:
            if handle.read(1):
                raise BackupError(f"{path} was altered: there is data after its final chunk")
            return
        index += 1


def _records(chunks: Iterator[bytes], path: Path) -> Iterator[Any]:
    decompressor = zlib.decompressobj()
    buffer = b""
    try:
        for data in chunks:
            buffer += decompressor.decompress(data)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield json.loads(line)
        buffer += decompressor.flush()
    except (zlib.error, ValueError):
        raise BackupError(f"{path} is damaged: its content does not decode") from None
    if buffer or not decompressor.eof or decompressor.unused_data:
        raise BackupError(f"{path} is damaged: its content is incomplete")


# --- values ----------------------------------------------------------------------


def _encoder(column: Any):  # type: ignore[no-untyped-def]
    if isinstance(column.type, DateTime):
        return lambda v: None if v is None else _utc(v).isoformat()
    if isinstance(column.type, JSON):
        return None  # handled with the SQL NULL flag
    return lambda v: v


def _decoder(column: Any):  # type: ignore[no-untyped-def]
    if isinstance(column.type, DateTime):
        return lambda v: None if v is None else _utc(datetime.fromisoformat(v))
    if isinstance(column.type, JSON):
        # SQL NULL stays SQL NULL; a JSON null stays a JSON null.
        return lambda v: null() if v is None else (JSON.NULL if v[0] is None else v[0])
    return lambda v: v


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# --- dumping ---------------------------------------------------------------------


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One transaction that sees every table at the same moment."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _self_references(table: Table) -> list[tuple[str, str]]:
    return [
        (fk.parent.name, fk.column.name) for fk in table.foreign_keys if fk.column.table is table
    ]


def _table_rows(conn: Connection, table: Table) -> Iterator[list[Any]]:
    """The table's rows, encoded, by primary key; parents before children."""
    columns = list(table.columns)
    json_null_flags = [
        c.is_(None).label(f"_pdsno_null_{c.name}") for c in columns if isinstance(c.type, JSON)
    ]
    query = select(*columns, *json_null_flags).order_by(*table.primary_key.columns)
    encoders = [_encoder(c) for c in columns]
    flag_at = {c.name: len(columns) + i for i, c in enumerate(c for c in columns if _is_json(c))}

    def encode(row: Any) -> list[Any]:
        values = []
        for column, encoder, value in zip(columns, encoders, row, strict=False):
            if encoder is None:
                values.append(None if row[flag_at[column.name]] else [value])
            else:
                values.append(encoder(value))
        return values

    references = _self_references(table)
    if not references:
        for row in conn.execute(query.execution_options(yield_per=1000)):
            yield encode(row)
        return
    # A row that names another of the same table (a controller's parent) goes after it.
    rows = conn.execute(query).all()
    emitted: set[tuple[str, Any]] = set()
    pending = rows
    while pending:
        waiting = []
        for row in pending:
            mapping = row._mapping
            if all(
                mapping[child] is None
                or (parent, mapping[child]) in emitted
                or mapping[child] == mapping[parent]
                for child, parent in references
            ):
                for _child, parent in references:
                    emitted.add((parent, mapping[parent]))
                yield encode(row)
            else:
                waiting.append(row)
        if len(waiting) == len(pending):
            raise PdsnoError(f"table {table.name} has rows that reference missing rows")
        pending = waiting


def _is_json(column: Any) -> bool:
    return isinstance(column.type, JSON)


def _sequence_column(table: Table) -> str | None:
    column = table.autoincrement_column
    return None if column is None else column.name


def _sequence_high_water(conn: Connection) -> dict[str, int]:
    """The highest ID each table's sequence has given out: IDs are never reused."""
    marks: dict[str, int] = {}
    if conn.dialect.name == "postgresql":
        for table in metadata.sorted_tables:
            column = _sequence_column(table)
            if column is None:
                continue
            value = conn.execute(
                text(
                    "SELECT pg_sequence_last_value("
                    "CAST(pg_get_serial_sequence(:t, :c) AS regclass)) "
                    "WHERE pg_get_serial_sequence(:t, :c) IS NOT NULL"
                ),
                {"t": table.name, "c": column},
            ).scalar()
            if value:
                marks[table.name] = int(value)
    elif conn.dialect.name == "sqlite":
        exists = conn.execute(
            text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'")
        ).first()
        if exists:
            for name, value in conn.execute(text("SELECT name, seq FROM sqlite_sequence")):
                if name in metadata.tables and value:
                    marks[name] = int(value)
    return marks


def create_backup(
    engine: Engine,
    path: Path | str,
    master_key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    actor: str = "pdsno",
) -> BackupSummary:
    """Write an encrypted backup of the whole NIB to `path` (mode 0600, never overwritten).

    `master_key` must be the NIB's current master key (any key while it has none).
    The backup is recorded in the audit trail after it was written.
    """
    path = Path(path)
    require_key_bytes(master_key, "The master key")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
    fingerprint = key_fingerprint(master_key)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(
            f"{path} exists; a backup never overwrites a file: choose another --out"
        ) from None
    except OSError as error:
        raise BackupError(f"Cannot create {path}: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle, _snapshot(engine) as conn:
            version = check_master_key(conn, master_key)
            revision = _revision(conn)
            if revision != head_revision():
                raise ConfigurationError(
                    f"The NIB schema is at revision {revision or 'none'}, this pdsno needs "
                    f"{head_revision()}: run `pdsno db upgrade` first."
                )
            salt = os.urandom(SALT_BYTES)
            raw = json.dumps(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "created_at": utcnow().isoformat(),
                    "pdsno_version": __version__,
                    "source_dialect": conn.dialect.name,
                    "schema_revision": revision,
                    "cipher": "AES-256-GCM",
                    "compression": "zlib",
                    "chunk_size": chunk_size,
                    "key": {
                        "source": MASTER_KEY_ENV,
                        "kdf": "HKDF-SHA256",
                        "info": BACKUP_KDF_INFO.decode(),
                        "salt": salt.hex(),
                        "fingerprint": fingerprint,
                        "key_version": version.version if version else None,
                    },
                },
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
            header = BackupHeader(raw, json.loads(raw))
            handle.write(MAGIC + _LENGTH.pack(len(raw)) + raw)
            writer = _ChunkWriter(
                handle, derive_key(master_key, BACKUP_KDF_INFO, salt), header, chunk_size
            )
            tables = metadata.sorted_tables
            writer.write(
                _line(
                    {
                        "kind": "nib",
                        "schema_revision": revision,
                        "tables": [t.name for t in tables],
                    }
                )
            )
            counts: dict[str, int] = {}
            for table in tables:
                writer.write(
                    _line(
                        {"kind": "table", "name": table.name, "columns": list(table.columns.keys())}
                    )
                )
                counts[table.name] = 0
                for values in _table_rows(conn, table):
                    writer.write(_line(values))
                    counts[table.name] += 1
            writer.write(_line({"kind": "sequences", "values": _sequence_high_water(conn)}))
            writer.write(_line({"kind": "end", "rows": counts}))
            writer.close()
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    summary = BackupSummary(path, revision, fingerprint, header.key_version, counts)
    with engine.begin() as conn:
        audit.append(
            conn,
            "backup.created",
            actor=actor,
            subject=path.name[-128:],
            payload={
                "schema_revision": revision,
                "key_version": summary.key_version,
                "rows": summary.total_rows,
            },
        )
    return summary


# --- restoring ---------------------------------------------------------------------


def _check_key(header: BackupHeader, master_key: bytes, path: Path) -> None:
    mine = key_fingerprint(master_key)
    if mine != header.fingerprint:
        version = header.key_version
        raise ConfigurationError(
            f"{path} is encrypted under the master key with fingerprint "
            f"{header.fingerprint[:16]}"
            + (f" (key version {version} of the NIB it came from)" if version else "")
            + f"; {MASTER_KEY_ENV} has fingerprint {mine[:16]}. Set {MASTER_KEY_ENV} to the "
            "key the backup was made under (a retired key if the NIB rotated since)."
        )


def _open_backup(path: Path, master_key: bytes) -> tuple[BinaryIO, BackupHeader, Iterator[Any]]:
    require_key_bytes(master_key, "The master key")
    try:
        handle = path.open("rb")
    except OSError as error:
        raise BackupError(f"Cannot read {path}: {error.strerror}") from None
    try:
        header = read_header(handle, path)
        _check_key(header, master_key, path)
    except BaseException:
        handle.close()
        raise
    key = derive_key(master_key, BACKUP_KDF_INFO, header.salt)
    return handle, header, _records(_chunks(handle, key, header, path), path)


class _Loader:
    """Checks the record stream's structure; hands each table's rows to `sink`."""

    def __init__(self, header: BackupHeader, path: Path) -> None:
        self.header = header
        self.path = path
        self.counts: dict[str, int] = {}
        self.sequences: dict[str, int] = {}

    def damaged(self, why: str) -> BackupError:
        return BackupError(f"{self.path} is damaged: {why}")

    def run(self, records: Iterator[Any], sink: Any) -> dict[str, int]:
        first = next(records, None)
        if not isinstance(first, dict) or first.get("kind") != "nib":
            raise self.damaged("it does not start with the NIB record")
        if first.get("schema_revision") != self.header.schema_revision:
            raise self.damaged("its content and header name different schema revisions")
        table: Table | None = None
        decoders: list[Any] = []
        batch: list[dict[str, Any]] = []
        ended = False

        def flush() -> None:
            if table is not None and batch:
                sink(table, batch)
            batch.clear()

        for record in records:
            if ended:
                raise self.damaged("records follow its end record")
            if isinstance(record, list):
                if table is None or len(record) != len(decoders):
                    raise self.damaged("a row does not fit its table")
                batch.append(
                    {
                        column.name: decode(value)
                        for column, decode, value in zip(
                            table.columns, decoders, record, strict=True
                        )
                    }
                )
                self.counts[table.name] += 1
                if len(batch) >= BATCH_ROWS:
                    flush()
                continue
            kind = record.get("kind") if isinstance(record, dict) else None
            if kind == "table":
                flush()
                name = record.get("name")
                if name not in metadata.tables or name in self.counts:
                    raise self.damaged(f"unexpected table {name!r}")
                table = metadata.tables[name]
                if record.get("columns") != list(table.columns.keys()):
                    raise self.damaged(f"the columns of {name} do not match this schema")
                decoders = [_decoder(c) for c in table.columns]
                self.counts[name] = 0
            elif kind == "sequences":
                flush()
                table = None
                self.sequences = {
                    k: int(v) for k, v in record.get("values", {}).items() if k in metadata.tables
                }
            elif kind == "end":
                flush()
                table = None
                if record.get("rows") != self.counts:
                    raise self.damaged("its row counts do not match its rows")
                ended = True
            else:
                raise self.damaged("it holds an unknown record")
        if not ended:
            raise self.damaged("it has no end record")
        missing = set(metadata.tables) - set(self.counts)
        if missing:
            raise self.damaged(f"tables missing: {', '.join(sorted(missing))}")
        return self.counts


def verify_backup(path: Path | str, master_key: bytes) -> BackupSummary:
    """Decrypt and check a backup completely, without restoring it."""
    path = Path(path)
    handle, header, records = _open_backup(path, master_key)
    with handle:
        counts = _Loader(header, path).run(records, lambda _table, _rows: None)
    return BackupSummary(
        path, header.schema_revision, header.fingerprint, header.key_version, counts
    )


def _nonempty_tables(conn: Connection) -> list[str]:
    """What keeps the target from being an empty NIB, as `table (N rows)`."""
    found = []
    for table in metadata.sorted_tables:
        if table is audit_head:
            rows = conn.execute(select(audit_head)).all()
            if [(r.id, r.last_seq, r.last_hash) for r in rows] != [(1, 0, GENESIS_HASH)]:
                found.append("audit_head (not the row `pdsno db upgrade` seeds)")
            continue
        count = conn.execute(select(func.count()).select_from(table)).scalar_one()
        if count:
            found.append(f"{table.name} ({count} rows)")
    return found


def _insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    if table is audit_head:
        # The migration seeds the head row: it is updated, not inserted.
        for row in rows:
            values = {k: v for k, v in row.items() if k != "id"}
            updated = conn.execute(
                update(audit_head).where(audit_head.c.id == row["id"]).values(**values)
            ).rowcount
            if not updated:
                conn.execute(audit_head.insert().values(**row))
        return
    conn.execute(table.insert(), rows)


def _reset_sequences(conn: Connection, saved: dict[str, int]) -> None:
    """Move every sequence past the highest ID restored or ever given out."""
    for table in metadata.sorted_tables:
        column_name = _sequence_column(table)
        if column_name is None:
            continue
        column = table.c[column_name]
        highest = max(
            conn.execute(select(func.max(column))).scalar() or 0, saved.get(table.name, 0)
        )
        if conn.dialect.name == "postgresql":
            conn.execute(
                text(
                    "SELECT setval(CAST(pg_get_serial_sequence(:t, :c) AS regclass), :v, :called)"
                    " WHERE pg_get_serial_sequence(:t, :c) IS NOT NULL"
                ),
                {"t": table.name, "c": column_name, "v": max(highest, 1), "called": highest > 0},
            )
        elif (
            conn.dialect.name == "sqlite"
            and table.dialect_options["sqlite"]["autoincrement"]
            and highest
        ):
            updated = conn.execute(
                text("UPDATE sqlite_sequence SET seq = :v WHERE name = :t"),
                {"t": table.name, "v": highest},
            ).rowcount
            if not updated:
                conn.execute(
                    text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :v)"),
                    {"t": table.name, "v": highest},
                )


def restore_backup(engine: Engine, path: Path | str, master_key: bytes) -> BackupSummary:
    """Restore `path` into the EMPTY NIB of `engine`, in one transaction.

    The target must be at the backup's schema revision (`pdsno db upgrade`).
    Nothing is committed unless the whole file authenticates.
    """
    path = Path(path)
    handle, header, records = _open_backup(path, master_key)
    with handle:
        if header.schema_revision != head_revision():
            raise ConfigurationError(
                f"{path} is at schema revision {header.schema_revision}, this pdsno's schema "
                f"is {head_revision()}: restore it with the pdsno release of that revision, "
                "then upgrade."
            )
        loader = _Loader(header, path)
        with engine.begin() as conn:
            revision = _revision(conn)
            if revision != header.schema_revision:
                raise ConfigurationError(
                    f"The target NIB is at schema revision {revision or 'none'}, the backup at "
                    f"{header.schema_revision}: run `pdsno db upgrade` on the target first."
                )
            found = _nonempty_tables(conn)
            if found:
                raise ConflictError(
                    f"The target NIB is not empty: {', '.join(found)}. A backup is restored "
                    "only into an empty NIB: create a new database, run `pdsno db upgrade` on "
                    "it, and restore there."
                )
            counts = loader.run(records, lambda table, rows: _insert(conn, table, rows))
            _reset_sequences(conn, loader.sequences)
    return BackupSummary(
        path, header.schema_revision, header.fingerprint, header.key_version, counts
    )
