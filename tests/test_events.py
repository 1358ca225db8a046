"""The outbox publisher against a real Mosquitto, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from pydantic import ValidationError
from services import MosquittoBroker, free_port
from sqlalchemy import Engine, select

from pdsno.config import MqttSettings
from pdsno.events.outbox import enqueue
from pdsno.events.publisher import OutboxPublisher
from pdsno.nib.schema import outbox
from pdsno.security.keys import SigningKey, verify_signature

TIMEOUT = 60.0
SENDER = "controller-a"
REGION = "region-a"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.05)


class Subscriber:
    """A paho subscriber to pdsno/v1/# at QoS 1 that keeps the first copy of each event."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._broker = broker
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.events: dict[str, tuple[str, dict[str, Any]]] = {}  # event_id: (topic, payload)
        self.order: list[str] = []
        self.deliveries = 0  # duplicates included
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-subscriber-{uuid.uuid4().hex[:8]}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> None:
        self._client.connect(self._broker.host, self._broker.port, keepalive=10)
        self._client.loop_start()
        assert self._subscribed.wait(TIMEOUT), "the test subscriber never got its SUBACK"

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def received(self) -> set[str]:
        with self._lock:
            return set(self.events)

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        # Resubscribe on every connection: the broker may have lost the session.
        client.subscribe("pdsno/v1/#", qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = json.loads(message.payload)
        with self._lock:
            self.deliveries += 1
            if payload["event_id"] not in self.events:
                self.events[payload["event_id"]] = (message.topic, payload)
                self.order.append(payload["event_id"])


class SilentBroker:
    """Speaks just enough MQTT to accept a connection and PUBLISHes, and never PUBACKs."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = int(self._server.getsockname()[1])
        self.publishes = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        self._server.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            with connection:
                self._handle(connection)

    def _handle(self, connection: socket.socket) -> None:
        connection.settimeout(0.1)
        buffer = b""
        while not self._stopping.is_set():
            try:
                data = connection.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buffer = self._answer(connection, buffer + data)

    def _answer(self, connection: socket.socket, buffer: bytes) -> bytes:
        while (packet := first_packet(buffer)) is not None:
            kind, size = packet
            buffer = buffer[size:]
            if kind == 0x10:  # CONNECT
                connection.sendall(b"\x20\x02\x00\x00")  # CONNACK: accepted
            elif kind == 0xC0:  # PINGREQ
                connection.sendall(b"\xd0\x00")  # PINGRESP
            elif kind == 0x30:  # PUBLISH, left unacknowledged
                self.publishes += 1
        return buffer


def first_packet(buffer: bytes) -> tuple[int, int] | None:
    """(type, total size) of the first complete MQTT packet in buffer, if there is one."""
    length, multiplier = 0, 1
    for index in range(1, min(len(buffer), 5)):
        length += (buffer[index] & 0x7F) * multiplier
        if not buffer[index] & 0x80:
            size = index + 1 + length
            return (buffer[0] & 0xF0, size) if len(buffer) >= size else None
        multiplier *= 128
    return None


@pytest.fixture
def broker(mosquitto_broker: MosquittoBroker) -> Iterator[MosquittoBroker]:
    """The session's broker, running again after the test whatever the test did to it."""
    mosquitto_broker.start()
    yield mosquitto_broker
    mosquitto_broker.start()


@pytest.fixture
def subscriber(broker: MosquittoBroker) -> Iterator[Subscriber]:
    subscriber = Subscriber(broker)
    subscriber.start()
    yield subscriber
    subscriber.stop()


@pytest.fixture
def signer() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def make_publisher(
    mosquitto_broker: MosquittoBroker,
) -> Iterator[Callable[..., OutboxPublisher]]:
    """OutboxPublisher factory with short timeouts; every publisher is stopped afterwards."""
    publishers: list[OutboxPublisher] = []

    def make(
        engine: Engine, *, port: int | None = None, publish_timeout: float = 2.0, **options: Any
    ) -> OutboxPublisher:
        settings = MqttSettings(
            enabled=True,
            host=mosquitto_broker.host,
            port=port or mosquitto_broker.port,
            keepalive_seconds=5,
            reconnect_min_seconds=0.1,
            reconnect_max_seconds=1.0,
            publish_timeout_seconds=publish_timeout,
        )
        publisher = OutboxPublisher(
            engine,
            settings,
            client_id=f"test-publisher-{uuid.uuid4().hex[:8]}",
            sender_id=SENDER,
            **options,
        )
        publishers.append(publisher)
        return publisher

    yield make
    for publisher in publishers:
        publisher.stop()


def produce(engine: Engine, signer: SigningKey, count: int = 1) -> list[str]:
    with engine.begin() as connection:
        return [
            enqueue(
                connection,
                "device.updated",
                {"device_id": f"switch-{index}"},
                region=REGION,
                sender_id=SENDER,
                signer=signer,
            )
            for index in range(count)
        ]


def outbox_rows(engine: Engine) -> list[Any]:
    query = select(outbox.c.event_id, outbox.c.sent_at, outbox.c.attempts).order_by(outbox.c.seq)
    with engine.connect() as connection:
        return connection.execute(query).all()


def all_sent(engine: Engine) -> bool:
    return all(row.sent_at is not None for row in outbox_rows(engine))


def test_events_reach_subscribers_signed_and_on_their_topic(
    nib_engine: Engine,
    subscriber: Subscriber,
    signer: SigningKey,
    make_publisher: Callable[..., OutboxPublisher],
) -> None:
    publisher = make_publisher(nib_engine)
    publisher.start()
    produced = produce(nib_engine, signer, count=3)
    publisher.notify()

    wait_until(lambda: subscriber.received() == set(produced), "the subscriber has the events")
    for event_id in produced:
        topic, payload = subscriber.events[event_id]
        assert topic == f"pdsno/v1/{REGION}/device/updated"
        unsigned = {key: value for key, value in payload.items() if key != "signature"}
        assert verify_signature(signer.public_key_b64, unsigned, payload["signature"])
    wait_until(lambda: all_sent(nib_engine), "every outbox row is marked sent")
    assert publisher.published == 3
    assert publisher.connected


def test_notify_publishes_at_once_without_waiting_for_the_poll(
    nib_engine: Engine,
    subscriber: Subscriber,
    signer: SigningKey,
    make_publisher: Callable[..., OutboxPublisher],
) -> None:
    publisher = make_publisher(nib_engine, poll_interval=3600)
    publisher.start()
    wait_until(lambda: publisher.connected, "the publisher is connected")
    produced = produce(nib_engine, signer)
    publisher.notify()
    wait_until(lambda: subscriber.received() == set(produced), "the event arrives", timeout=10)


def test_no_event_is_lost_or_reordered_across_a_broker_outage(
    nib_engine: Engine,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    signer: SigningKey,
    make_publisher: Callable[..., OutboxPublisher],
) -> None:
    publisher = make_publisher(nib_engine)
    publisher.start()
    wait_until(lambda: publisher.connected, "the publisher is connected")

    produced: list[str] = []
    for index in range(200):
        if index == 60:
            broker.stop()
        if index == 140:
            broker.start()
        produced += produce(nib_engine, signer)
        publisher.notify()
        time.sleep(0.01)

    wait_until(lambda: subscriber.received() == set(produced), "the subscriber has every event")
    wait_until(lambda: all_sent(nib_engine), "every outbox row is marked sent")
    assert subscriber.order == produced, "events arrived out of order"
    assert publisher.published == len(produced)


def test_events_wait_in_the_outbox_while_the_broker_is_down(
    nib_engine: Engine,
    broker: MosquittoBroker,
    signer: SigningKey,
    make_publisher: Callable[..., OutboxPublisher],
) -> None:
    broker.stop()
    publisher = make_publisher(nib_engine)
    publisher.start()
    produce(nib_engine, signer, count=5)
    publisher.notify()
    time.sleep(1.5)
    assert not publisher.connected
    assert all(row.sent_at is None for row in outbox_rows(nib_engine))
    assert publisher.published == 0

    broker.start()
    wait_until(lambda: all_sent(nib_engine), "the rows are sent once the broker is back")
    assert publisher.published == 5


def test_a_late_puback_marks_rows_sent_without_republishing(
    nib_engine: Engine,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    signer: SigningKey,
    make_publisher: Callable[..., OutboxPublisher],
) -> None:
    publisher = make_publisher(nib_engine, publish_timeout=0.3)
    publisher.start()
    wait_until(lambda: publisher.connected, "the publisher is connected")
    broker.pause()
    try:
        produced = produce(nib_engine, signer, count=5)
        publisher.notify()
        wait_until(
            lambda: all(row.attempts >= 1 for row in outbox_rows(nib_engine)),
            "every row has timed out waiting for its PUBACK",
        )
        assert all(row.sent_at is None for row in outbox_rows(nib_engine))
    finally:
        broker.resume()

    wait_until(lambda: all_sent(nib_engine), "the late PUBACKs mark the rows sent")
    wait_until(lambda: subscriber.received() == set(produced), "the subscriber has the events")
    time.sleep(0.5)  # room for a duplicate to show up, if there were one
    assert subscriber.deliveries == len(produced)
    assert subscriber.order == produced


def test_rows_are_marked_sent_only_on_puback(
    nib_engine: Engine, signer: SigningKey, make_publisher: Callable[..., OutboxPublisher]
) -> None:
    silent = SilentBroker()
    try:
        publisher = make_publisher(nib_engine, port=silent.port, publish_timeout=0.3)
        publisher.start()
        produce(nib_engine, signer, count=3)
        publisher.notify()
        wait_until(
            lambda: all(row.attempts >= 2 for row in outbox_rows(nib_engine)),
            "every row has failed twice for want of a PUBACK",
        )
        assert silent.publishes == 3, "paho holds unacknowledged messages: no republish"
        assert all(row.sent_at is None for row in outbox_rows(nib_engine))
        assert publisher.published == 0
        assert publisher.failed_attempts >= 6
    finally:
        silent.stop()


def test_stop_is_prompt_and_idempotent_with_no_broker(
    nib_engine: Engine, make_publisher: Callable[..., OutboxPublisher]
) -> None:
    publisher = make_publisher(nib_engine, port=free_port())
    publisher.start()
    time.sleep(0.5)
    started = time.monotonic()
    publisher.stop()
    publisher.stop()
    assert time.monotonic() - started < 5
    assert not publisher.connected


def test_a_committed_event_wakes_the_publisher_without_notify(
    nib_engine: Engine,
    subscriber: Subscriber,
    signer: SigningKey,
    make_publisher: Callable[..., OutboxPublisher],
) -> None:
    """Nothing in pdsno called notify(): a lone event waited for the poll.
    The connection that wrote it wakes the publisher once its transaction ended."""
    publisher = make_publisher(nib_engine, poll_interval=3600)
    publisher.start()
    wait_until(lambda: publisher.connected, "the publisher is connected")
    produced = produce(nib_engine, signer)
    wait_until(lambda: subscriber.received() == set(produced), "the event arrives", timeout=10)


class HandCounter:
    """Counts each outbox row a publisher hands to paho, by event_id (a republish shows)."""

    def __init__(self, publisher: OutboxPublisher) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        client = publisher._client
        original = client.publish

        def publish(topic: str, payload: str, *args: Any, **kwargs: Any) -> Any:
            event_id = json.loads(payload)["event_id"]
            with self._lock:
                self.counts[event_id] = self.counts.get(event_id, 0) + 1
            return original(topic, payload, *args, **kwargs)

        client.publish = publish  # type: ignore[method-assign]

    def handed(self) -> int:
        with self._lock:
            return sum(self.counts.values())


def test_the_next_batch_is_handed_to_paho_before_the_pubacks_of_the_previous(
    nib_engine: Engine,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    signer: SigningKey,
    make_publisher: Callable[..., OutboxPublisher],
) -> None:
    """Stop and wait handed one batch (10 rows) and waited for its 10 PUBACKs before
    reading the next: with the broker frozen, nothing past the first batch left."""
    publisher = make_publisher(nib_engine, batch_size=10, publish_timeout=30.0)
    hands = HandCounter(publisher)
    publisher.start()
    wait_until(lambda: publisher.connected, "the publisher is connected")
    broker.pause()
    try:
        produced = produce(nib_engine, signer, count=50)
        publisher.notify()
        # Rows are read and handed while no PUBACK can arrive: more than one batch.
        wait_until(lambda: hands.handed() == 50, "every row is handed to paho", timeout=10)
        assert publisher.published == 0
        assert all(row.sent_at is None for row in outbox_rows(nib_engine))
    finally:
        broker.resume()
    wait_until(lambda: all_sent(nib_engine), "every row is marked sent")
    wait_until(lambda: subscriber.received() == set(produced), "the subscriber has the events")
    assert subscriber.order == produced
    assert publisher.published == 50
    assert set(hands.counts.values()) == {1}, "a row was handed to paho twice"


def test_nothing_is_lost_or_republished_across_a_broker_restart_with_batches_in_flight(
    nib_engine: Engine,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    signer: SigningKey,
    make_publisher: Callable[..., OutboxPublisher],
) -> None:
    publisher = make_publisher(nib_engine, batch_size=20)
    hands = HandCounter(publisher)
    publisher.start()
    wait_until(lambda: publisher.connected, "the publisher is connected")

    produced: list[str] = []
    for index in range(40):
        if index == 15:
            broker.stop()  # with rows of several batches handed and not acknowledged
        if index == 25:
            broker.start()
        produced += produce(nib_engine, signer, count=25)
        time.sleep(0.02)

    wait_until(lambda: all_sent(nib_engine), "every outbox row is marked sent")
    wait_until(lambda: subscriber.received() == set(produced), "the subscriber has every event")
    assert publisher.published == len(produced) == 1000
    # paho resends what it held across the reconnect; the publisher never hands a row again.
    assert len(hands.counts) == len(produced)
    assert set(hands.counts.values()) == {1}, "a row was handed to paho twice"


def test_max_inflight_messages_is_validated() -> None:
    assert MqttSettings().max_inflight_messages == 100
    assert MqttSettings(max_inflight_messages=500).max_inflight_messages == 500
    for bad in (0, -1, 70000, "many"):
        with pytest.raises(ValidationError) as raised:
            MqttSettings(max_inflight_messages=bad)
        assert raised.value.errors()[0]["loc"] == ("max_inflight_messages",)
        assert "max_inflight_messages" in str(raised.value)


def test_paho_gets_the_configured_in_flight_window(
    nib_engine: Engine, make_publisher: Callable[..., OutboxPublisher]
) -> None:
    assert make_publisher(nib_engine)._client._max_inflight_messages == 100
    settings = MqttSettings(enabled=True, max_inflight_messages=250)
    publisher = OutboxPublisher(nib_engine, settings, client_id="window-test")
    assert publisher._client._max_inflight_messages == 250
