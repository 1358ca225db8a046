"""Publishing the outbox to the MQTT broker: in order, at least once.

A row is marked sent only when the broker has acknowledged it (PUBACK, QoS 1).
Until then it stays in the outbox, so neither a broker outage nor a restart of
this process loses an event. The price is that a subscriber may see an event
twice (around a reconnect): subscribers deduplicate by event_id.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import Connection, Engine, event, select, update

from pdsno.clock import utcnow
from pdsno.config import MqttSettings
from pdsno.events.outbox import WRITTEN_MARK
from pdsno.nib.schema import outbox

log = logging.getLogger("pdsno.events")

JOIN_TIMEOUT_SECONDS = 10.0


class OutboxPublisher:
    """Sends unsent outbox rows to the broker from a daemon thread.

    A connection of this engine that wrote an outbox row wakes it when it
    returns to the pool (after its commit: the row is visible by then), so a
    lone event goes out at once; notify() does the same by hand. Rows written
    by other processes are found by polling. Publishing is pipelined (see
    "the publishing loop" below): the next batch goes to paho while the
    previous one's PUBACKs are on their way.
    """

    def __init__(
        self,
        engine: Engine,
        settings: MqttSettings,
        client_id: str,
        ssl_context: ssl.SSLContext | None = None,
        *,
        sender_id: str | None = None,
        batch_size: int = 100,
        poll_interval: float = 0.5,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._client_id = client_id
        # The controller whose outbox rows this publisher sends (default: client_id).
        self._sender_id = sender_id or client_id
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._lifecycle = threading.Lock()
        self._started = False
        self._thread: threading.Thread | None = None
        # Rows handed to paho whose PUBACK is not recorded yet (seq: deadline of
        # the PUBACK), in seq order. paho keeps resending them across reconnects,
        # so they are awaited, not republished.
        self._in_flight: dict[int, float] = {}
        self._seq_by_mid: dict[int, int] = {}
        self._last_handed = 0
        self._last_rescan = 0.0
        # Rows handed to paho at most: paho's in-flight window and a batch more,
        # so the next batch is read while PUBACKs of the previous are on the way.
        self._window = max(2 * batch_size, settings.max_inflight_messages)
        self._ack_batch = max(1, batch_size)
        # Filled by paho's thread (on_publish), emptied by the publisher's.
        self._ack_lock = threading.Lock()
        self._acked_mids: list[int] = []
        self._handed = 0  # handed to paho and not yet recorded as acknowledged
        self._unrecorded = 0  # PUBACKs in and not yet marked sent
        self._acked: list[int] = []  # acknowledged, not yet marked sent
        self._connection: Connection | None = None
        # Set by a commit, notify(), a connect or the poll; cleared by a read
        # that found fewer rows than it asked for: no empty read per PUBACK.
        self._rows_waiting = True
        self._published = 0
        self._failed_attempts = 0
        self._client = self._make_client(ssl_context)

    # --- public API ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def published(self) -> int:
        """Events the broker acknowledged and that are marked sent."""
        return self._published

    @property
    def failed_attempts(self) -> int:
        """Publishes that failed or were not acknowledged in time."""
        return self._failed_attempts

    def notify(self) -> None:
        """Wake the publisher: an outbox row was just committed."""
        self._rows_waiting = True
        self._wake.set()

    def start(self) -> None:
        with self._lifecycle:
            if self._started:
                raise RuntimeError("OutboxPublisher can be started once; create a new one")
            self._started = True
        # connect_async + loop_start keep retrying even if the broker is down now.
        self._client.connect_async(
            self._settings.host, self._settings.port, self._settings.keepalive_seconds
        )
        self._client.loop_start()
        self._thread = threading.Thread(
            target=self._run, name=f"outbox-publisher-{self._client_id}", daemon=True
        )
        event.listen(self._engine, "checkin", self._on_checkin)
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing; unacknowledged rows stay in the outbox for the next start."""
        with self._lifecycle:
            if self._stopping.is_set():
                return
            self._stopping.set()
        self._wake.set()
        if event.contains(self._engine, "checkin", self._on_checkin):
            event.remove(self._engine, "checkin", self._on_checkin)
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_SECONDS)
            if self._thread.is_alive():
                log.warning(
                    "The outbox publisher thread did not stop within %ss", JOIN_TIMEOUT_SECONDS
                )
        self._client.disconnect()
        # Returns within about a second: paho's loop checks for termination while it waits.
        self._client.loop_stop()
        log.info("Outbox publisher %s stopped", self._client_id)

    def _on_checkin(self, _dbapi_connection: Any, record: Any) -> None:
        # The transaction ended (committed or rolled back: a spurious wake
        # costs one empty read). Also called for a connection that failed, without info.
        info = getattr(record, "info", None)
        if info is not None and info.pop(WRITTEN_MARK, False):
            self._rows_waiting = True
            self._wake.set()

    # --- paho ---------------------------------------------------------------

    def _make_client(self, ssl_context: ssl.SSLContext | None) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.reconnect_delay_set(
            min_delay=self._settings.reconnect_min_seconds,  # type: ignore[arg-type]
            max_delay=self._settings.reconnect_max_seconds,  # type: ignore[arg-type]
        )
        if ssl_context is not None:
            client.tls_set_context(ssl_context)
        client.max_inflight_messages_set(self._settings.max_inflight_messages)
        client.max_queued_messages_set(0)  # unlimited: paho never drops a handed row
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _on_connect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("The MQTT broker refused the connection: %s", reason)
            return
        log.info("Connected to the MQTT broker at %s:%s", self._settings.host, self._settings.port)
        self._connected.set()
        self._rows_waiting = True
        self._wake.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning(
                "Lost the MQTT broker (%s); reconnecting, events wait in the outbox", reason
            )

    # --- the publishing loop ------------------------------------------------
    #
    # Pipelined: the thread hands paho up to `window` rows (paho keeps
    # max_inflight_messages of them on the wire and queues the rest), reads and
    # hands the next batch while the PUBACKs of the previous one are on their
    # way, and marks rows sent in batches as their PUBACKs arrive (on_publish).
    # A row handed to paho stays in self._in_flight until its PUBACK: paho
    # holds it (clean_session=False, an unlimited queue; a message published
    # while disconnected waits in paho too) and resends it after a reconnect,
    # so it is never handed again by this publisher.

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                # Cleared before the pass, so a wake during the pass is not lost.
                self._wake.clear()
                try:
                    busy = self._step()
                except Exception:
                    # The database may be restarting: keep the thread alive and retry.
                    log.exception("Publishing the outbox failed; retrying")
                    self._drop_connection()
                    busy = False
                if not busy and not self._wake.wait(self._wait_seconds()):
                    self._rows_waiting = True  # the poll: rows of other processes
        finally:
            self._record_last_acks()
            self._drop_connection()

    def _record_last_acks(self) -> None:
        """On the way out: mark sent what the broker acknowledged (else it goes out again)."""
        try:
            self._record(self._collect_acks(), [])
        except Exception:
            log.warning("Could not mark the last acknowledged outbox rows sent", exc_info=True)

    def _step(self) -> bool:
        """One pass; True when it made progress and should run again at once."""
        acked = self._collect_acks()
        handed = self._refill(len(self._in_flight) - len(acked))
        # Marked sent a batch at a time, or all at once when nothing else is in flight.
        if len(acked) < min(self._ack_batch, len(self._in_flight)):
            acked = []
        self._record(acked, self._expired())
        return bool(handed or acked)

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        # paho's network thread, once per PUBACK. Wakes the publisher when a
        # batch worth of PUBACKs is in, or when everything handed is acknowledged.
        with self._ack_lock:
            self._acked_mids.append(mid)
            self._unrecorded += 1
            if self._unrecorded >= min(self._ack_batch, self._handed):
                self._wake.set()

    def _collect_acks(self) -> list[int]:
        with self._ack_lock:
            mids, self._acked_mids = self._acked_mids, []
        for mid in mids:
            seq = self._seq_by_mid.pop(mid, None)
            if seq is not None:
                self._acked.append(seq)
        return list(self._acked)

    def _refill(self, outstanding: int) -> int:
        """Hand paho the next rows if the window has room for a batch; how many."""
        room = self._window - outstanding
        if not self._rows_waiting or not self._connected.is_set():
            return 0
        if room < min(self._batch_size, self._window):
            return 0
        limit = min(room, self._batch_size)
        # Cleared before the read: a commit during it sets it again.
        self._rows_waiting = False
        rows = self._pending_rows(limit)
        if len(rows) == limit:
            self._rows_waiting = True  # probably more
        return self._publish(rows)

    def _pending_rows(self, limit: int) -> Sequence[Any]:
        """The next unsent rows: after the last one handed to paho, or, with
        nothing in flight or once a poll interval, from the oldest unsent row
        (a transaction that committed late may have a lower seq)."""
        now = time.monotonic()
        rescan = not self._in_flight or now - self._last_rescan >= self._poll_interval
        query = (
            select(outbox.c.seq, outbox.c.topic, outbox.c.payload)
            .where(outbox.c.sender_id == self._sender_id)
            .where(outbox.c.sent_at.is_(None))
            .order_by(outbox.c.seq)
        )
        if rescan:
            self._last_rescan = now
            query = query.limit(limit + len(self._in_flight))
        else:
            query = query.where(outbox.c.seq > self._last_handed).limit(limit)
        rows = self._execute(query).all()
        return [row for row in rows if row.seq not in self._in_flight][:limit]

    def _publish(self, rows: Sequence[Any]) -> int:
        """Hand rows to paho in order; stop after the first one it could not send."""
        deadline = time.monotonic() + self._settings.publish_timeout_seconds
        for count, row in enumerate(rows, start=1):
            payload = json.dumps(row.payload, separators=(",", ":"), ensure_ascii=False)
            with self._ack_lock:
                self._handed += 1
            info = self._client.publish(row.topic, payload, qos=1)
            # paho keeps the message even when it could not send it now
            # (MQTT_ERR_NO_CONN: it goes out after the reconnect), so the row is
            # in flight either way and waits for its PUBACK, not for a republish.
            self._in_flight[row.seq] = deadline
            self._seq_by_mid[info.mid] = row.seq
            self._last_handed = max(self._last_handed, row.seq)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug(
                    "Outbox row %s waits in paho for the reconnect: %s",
                    row.seq,
                    mqtt.error_string(info.rc),
                )
                return count
        return len(rows)

    def _expired(self) -> list[int]:
        """Rows in flight past their PUBACK deadline (counted as failed attempts,
        given another period, never republished)."""
        now = time.monotonic()
        if self._stopping.is_set():
            return []  # interrupted, not failed
        late = [seq for seq, deadline in self._in_flight.items() if deadline <= now]
        renewed = now + self._settings.publish_timeout_seconds
        for seq in late:
            self._in_flight[seq] = renewed
        return late

    def _wait_seconds(self) -> float:
        if not self._in_flight:
            return self._poll_interval
        earliest = min(self._in_flight.values())
        return max(0.0, min(self._poll_interval, earliest - time.monotonic()))

    # --- the NIB: one connection of the publisher's own -----------------------

    def _execute(self, statement: Any) -> Any:
        if self._connection is None:
            connection = self._engine.connect()
            if self._engine.dialect.name == "postgresql":
                # One round trip a statement: no BEGIN, COMMIT or pool ping around it.
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            self._connection = connection
        result = self._connection.execute(statement)
        if self._connection.in_transaction():
            self._connection.commit()
        return result

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except Exception:
                log.debug("Closing the publisher's NIB connection failed", exc_info=True)

    def _record(self, acked: list[int], unacked: list[int]) -> None:
        if acked:
            self._execute(
                update(outbox)
                .where(outbox.c.seq.in_(acked), outbox.c.sent_at.is_(None))
                .values(sent_at=utcnow())
            )
            # Marked sent: only now may a rescan no longer see them as in flight.
            for seq in acked:
                self._in_flight.pop(seq, None)
            with self._ack_lock:
                self._handed -= len(acked)
                self._unrecorded -= len(acked)
            self._acked = []
            self._published += len(acked)
        if unacked:
            self._execute(
                update(outbox)
                .where(outbox.c.seq.in_(unacked))
                .values(attempts=outbox.c.attempts + 1)
            )
            self._failed_attempts += len(unacked)
            log.warning(
                "%d event(s) not acknowledged by the MQTT broker (no connection, or no PUBACK "
                "within %ss); they stay in the outbox, paho resends them",
                len(unacked),
                self._settings.publish_timeout_seconds,
            )
