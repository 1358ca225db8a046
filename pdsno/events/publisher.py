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
from sqlalchemy import Engine, event, select, update

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
    by other processes are found by polling.
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
        # Rows handed to paho whose PUBACK is not recorded yet. paho keeps
        # resending them across reconnects, so they are awaited, not republished.
        self._in_flight: dict[int, mqtt.MQTTMessageInfo] = {}
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
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("The MQTT broker refused the connection: %s", reason)
            return
        log.info("Connected to the MQTT broker at %s:%s", self._settings.host, self._settings.port)
        self._connected.set()
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

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before reading the outbox, so a notify() during the pass is not lost.
            self._wake.clear()
            try:
                busy = self._publish_next_batch()
            except Exception:
                # The database may be restarting: keep the thread alive and retry.
                log.exception("Publishing the outbox failed; retrying")
                busy = False
            if not busy:
                self._wake.wait(self._poll_interval)

    def _publish_next_batch(self) -> bool:
        """One pass; True when it made progress and should run again at once."""
        if not self._connected.is_set():
            return False
        rows = self._pending_rows()
        pending = {row.seq for row in rows}
        self._in_flight = {s: i for s, i in self._in_flight.items() if s in pending}
        if not rows:
            return False
        # Messages paho still holds from before a reconnect go first: publishing
        # newer rows now could put them on the wire ahead of older ones.
        seqs = [row.seq for row in rows if row.seq in self._in_flight] or self._publish(rows)
        acked, unacked = self._await_pubacks(seqs)
        if self._stopping.is_set():
            unacked = []  # interrupted, not failed
        self._record(acked, unacked)
        return bool(acked)

    def _pending_rows(self) -> Sequence[Any]:
        query = (
            select(outbox.c.seq, outbox.c.topic, outbox.c.payload)
            .where(outbox.c.sender_id == self._sender_id)
            .where(outbox.c.sent_at.is_(None))
            .order_by(outbox.c.seq)
            .limit(self._batch_size)
        )
        with self._engine.connect() as connection:
            return connection.execute(query).all()

    def _publish(self, rows: Sequence[Any]) -> list[int]:
        """Hand rows to paho in order; stop at the first one it cannot take."""
        seqs: list[int] = []
        for row in rows:
            payload = json.dumps(row.payload, separators=(",", ":"), ensure_ascii=False)
            info = self._client.publish(row.topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # Usually MQTT_ERR_NO_CONN: the connection dropped since the check.
                # This row and the later ones wait for the reconnect.
                log.debug(
                    "Publishing outbox row %s failed: %s", row.seq, mqtt.error_string(info.rc)
                )
                self._record([], [row.seq])
                break
            self._in_flight[row.seq] = info
            seqs.append(row.seq)
        return seqs

    def _await_pubacks(self, seqs: list[int]) -> tuple[list[int], list[int]]:
        deadline = time.monotonic() + self._settings.publish_timeout_seconds
        acked: list[int] = []
        unacked: list[int] = []
        for seq in seqs:
            (acked if self._wait_for_puback(seq, deadline) else unacked).append(seq)
        return acked, unacked

    def _wait_for_puback(self, seq: int, deadline: float) -> bool:
        info = self._in_flight[seq]
        try:
            while not info.is_published():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return False
                info.wait_for_publish(min(remaining, 0.1))
        except (RuntimeError, ValueError) as error:
            # paho gave this message up: publish the row afresh next time.
            log.warning("The broker did not take outbox row %s: %s", seq, error)
            del self._in_flight[seq]
            return False
        return True

    def _record(self, acked: list[int], unacked: list[int]) -> None:
        if not acked and not unacked:
            return
        with self._engine.begin() as connection:
            if acked:
                connection.execute(
                    update(outbox)
                    .where(outbox.c.seq.in_(acked), outbox.c.sent_at.is_(None))
                    .values(sent_at=utcnow())
                )
            if unacked:
                connection.execute(
                    update(outbox)
                    .where(outbox.c.seq.in_(unacked))
                    .values(attempts=outbox.c.attempts + 1)
                )
        for seq in acked:
            self._in_flight.pop(seq, None)
        self._published += len(acked)
        self._failed_attempts += len(unacked)
        if unacked:
            log.warning(
                "%d event(s) not acknowledged by the MQTT broker (no connection, or no PUBACK "
                "within %ss); they stay in the outbox",
                len(unacked),
                self._settings.publish_timeout_seconds,
            )
