"""Tables of the NIB (SQLAlchemy Core). Migrations in nib/migrations create them.

Conventions: times are UTC; rows that are edited carry `version` for
optimistic concurrency; uniqueness that matters for safety (single-use
tokens, locks, nonces) is a constraint in the database, never a
check-then-insert in Python.
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UTC_TIME = DateTime(timezone=True)
# SQLite reuses INTEGER PRIMARY KEY values after a delete unless AUTOINCREMENT
# is set; controller IDs and audit sequence numbers must never be reused.
NEVER_REUSED = {"sqlite_autoincrement": True}

controllers = Table(
    "controllers",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("controller_id", String(64), nullable=False, unique=True),
    Column("controller_type", String(16), nullable=False),
    Column("region", String(64)),
    Column("name", String(128), nullable=False),
    Column("public_key", String(64), nullable=False, unique=True),
    Column("parent_id", String(64), ForeignKey("controllers.controller_id")),
    Column("url", String(255)),
    Column("status", String(16), nullable=False, default="active"),
    Column("credential", JSON),
    Column("created_at", UTC_TIME, nullable=False),
    Column("updated_at", UTC_TIME, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    **NEVER_REUSED,
)

bootstrap_tokens = Table(
    "bootstrap_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("region", String(64)),
    Column("controller_type", String(16), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTC_TIME, nullable=False),
    Column("expires_at", UTC_TIME, nullable=False),
    Column("used_at", UTC_TIME),
    Column("used_by", String(64)),
)

challenges = Table(
    "challenges",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("token_hash", String(64), ForeignKey("bootstrap_tokens.token_hash"), nullable=False),
    Column("controller_type", String(16), nullable=False),
    Column("region", String(64)),
    Column("name", String(128), nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("url", String(255)),
    Column("created_at", UTC_TIME, nullable=False),
    Column("expires_at", UTC_TIME, nullable=False),
    Column("consumed_at", UTC_TIME),
)

message_nonces = Table(
    "message_nonces",
    metadata,
    Column("sender_id", String(64), primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("received_at", UTC_TIME, nullable=False, index=True),
)

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("region", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("management_address", String(255)),
    Column("vendor", String(64)),
    Column("role", String(64)),
    Column("config_version", Integer, nullable=False, default=0),
    Column("current_config", JSON, nullable=False, default=list),
    Column("created_at", UTC_TIME, nullable=False),
    Column("updated_at", UTC_TIME, nullable=False),
    Column("version", Integer, nullable=False, default=1),
)

device_configs = Table(
    "device_configs",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("device_id", String(128), ForeignKey("devices.device_id"), nullable=False),
    Column("config_version", Integer, nullable=False),
    Column("config", JSON, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("rollback_config", JSON, nullable=False),
    Column("proposal_id", String(36), ForeignKey("config_proposals.proposal_id")),
    Column("applied_by", String(64), nullable=False),
    Column("created_at", UTC_TIME, nullable=False),
    UniqueConstraint("device_id", "config_version"),
)

config_proposals = Table(
    "config_proposals",
    metadata,
    Column("proposal_id", String(36), primary_key=True),
    Column("device_id", String(128), ForeignKey("devices.device_id"), nullable=False),
    Column("origin_id", String(64), ForeignKey("controllers.controller_id"), nullable=False),
    Column("region", String(64), nullable=False, index=True),
    Column("config_lines", JSON, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("sensitivity_local", String(8), nullable=False),
    Column("sensitivity_regional", String(8)),
    Column("sensitivity", String(8), nullable=False),
    Column("status", String(24), nullable=False, index=True),
    Column("decided_by", String(128)),
    Column("decision_reason", Text),
    # Who proposed it (a user's or an API key's name): never its approver.
    Column("submitted_by", String(128)),
    Column("created_at", UTC_TIME, nullable=False),
    Column("expires_at", UTC_TIME, nullable=False),
    Column("updated_at", UTC_TIME, nullable=False),
    Column("version", Integer, nullable=False, default=1),
)

approvals = Table(
    "approvals",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("proposal_id", String(36), ForeignKey("config_proposals.proposal_id"), nullable=False),
    Column("decision", String(8), nullable=False),
    Column("decided_by", String(128), nullable=False),
    Column("decider_kind", String(16), nullable=False),
    Column("controller_id", String(64), ForeignKey("controllers.controller_id")),
    Column("reason", Text),
    Column("created_at", UTC_TIME, nullable=False),
    UniqueConstraint("proposal_id"),
)

execution_tokens = Table(
    "execution_tokens",
    metadata,
    Column("token_id", String(36), primary_key=True),
    Column(
        "proposal_id",
        String(36),
        ForeignKey("config_proposals.proposal_id"),
        nullable=False,
        unique=True,
    ),
    Column("device_id", String(128), ForeignKey("devices.device_id"), nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("issuer_id", String(64), ForeignKey("controllers.controller_id"), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("issued_at", UTC_TIME, nullable=False),
    Column("expires_at", UTC_TIME, nullable=False),
    Column("used_at", UTC_TIME),
)

policies = Table(
    "policies",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("policy_id", String(128), nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("scope", String(16), nullable=False),
    Column("region", String(64)),
    Column("issuer_id", String(64), ForeignKey("controllers.controller_id"), nullable=False),
    Column("body", JSON, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("created_at", UTC_TIME, nullable=False),
    UniqueConstraint("policy_id", "policy_version"),
)

policy_acks = Table(
    "policy_acks",
    metadata,
    Column("policy_seq", ForeignKey("policies.seq"), primary_key=True),
    Column("controller_id", ForeignKey("controllers.controller_id"), primary_key=True),
    Column("acked_at", UTC_TIME, nullable=False),
)

# The audit trail: append-only, each row hashing its predecessor. Triggers
# created by the migration refuse UPDATE and DELETE.
events = Table(
    "events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("event_type", String(64), nullable=False, index=True),
    Column("actor", String(128), nullable=False),
    Column("subject", String(128)),
    Column("region", String(64)),
    Column("payload", JSON, nullable=False),
    Column("created_at", UTC_TIME, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    **NEVER_REUSED,
)

# One row: the head of the audit chain. Updating it serialises appends, so
# two writers can never chain onto the same predecessor.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(191), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("acquired_at", UTC_TIME, nullable=False),
    Column("expires_at", UTC_TIME, nullable=False),
)

# Events waiting for the MQTT broker's acknowledgement. Written in the same
# transaction as the change they announce; marked sent only on PUBACK.
outbox = Table(
    "outbox",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("event_id", String(36), nullable=False, unique=True),
    # Controllers share the NIB: each publishes only the events it wrote.
    Column("sender_id", String(64), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", UTC_TIME, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("sent_at", UTC_TIME),
    Index("ix_outbox_pending", "sender_id", "sent_at", "seq"),
    **NEVER_REUSED,
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("region", String(64)),
    # Permissions this key is limited to, within its role's; null: all of the role's.
    Column("scopes", JSON),
    Column("created_at", UTC_TIME, nullable=False),
    Column("revoked_at", UTC_TIME),
)

users = Table(
    "users",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("username", String(128), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(32), nullable=False),
    Column("region", String(64)),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", UTC_TIME),
    Column("disabled", Integer, nullable=False, default=0),
    Column("created_at", UTC_TIME, nullable=False),
    Column("updated_at", UTC_TIME, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    # The SHA-256 of the session token: a leaked table reveals no usable token.
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.user_id"), nullable=False, index=True),
    Column("created_at", UTC_TIME, nullable=False),
    Column("expires_at", UTC_TIME, nullable=False),
    Column("revoked_at", UTC_TIME),
)

# Secrets encrypted with AES-256-GCM under a master key; the row names the
# key version it is encrypted under, and its ID is the associated data.
secrets = Table(
    "secrets",
    metadata,
    Column("secret_id", String(128), primary_key=True),
    Column("key_version", Integer, nullable=False),
    Column("nonce", String(32), nullable=False),
    Column("ciphertext", Text, nullable=False),
    Column("created_at", UTC_TIME, nullable=False),
    Column("updated_at", UTC_TIME, nullable=False),
)

# Master key versions: only a fingerprint, never the key. Their age drives
# the 90-day rotation policy.
master_keys = Table(
    "master_keys",
    metadata,
    Column("key_version", Integer, primary_key=True, autoincrement=False),
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("created_at", UTC_TIME, nullable=False),
    Column("retired_at", UTC_TIME),
)
