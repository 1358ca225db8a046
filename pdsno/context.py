"""Everything a running controller's request handlers need, built once at start."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from pdsno.approval.workflow import ApprovalWorkflow
from pdsno.clock import utcnow
from pdsno.config import Settings
from pdsno.events.publisher import OutboxPublisher
from pdsno.identity.state import Identity
from pdsno.messaging.dispatcher import Dispatcher
from pdsno.nib.cache import TTLCache
from pdsno.observability.metrics import Metrics
from pdsno.security.keys import SigningKey


@dataclass
class ControllerContext:
    settings: Settings
    engine: Engine
    identity: Identity
    signer: SigningKey
    workflow: ApprovalWorkflow
    dispatcher: Dispatcher
    publisher: OutboxPublisher | None = None
    # A device by its ID, as the JSON the API answers with (DeviceOut).
    device_cache: TTLCache[bytes] = field(default_factory=TTLCache)
    metrics: Metrics | None = None
    # Principals by the SHA-256 of the credential that proved them.
    auth_cache: TTLCache[Any] | None = None
    # Regions of resources named by a path ("device_id=<id>"), as long as auth_cache.
    region_cache: TTLCache[str | None] | None = None
    started_at: datetime = field(default_factory=utcnow)
