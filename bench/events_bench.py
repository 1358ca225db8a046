"""Events: the outbox end to end against a raw paho QoS 1 loop, and one event's latency.

A Mosquitto whose only listener is TLS with client certificates (the tests'
TlsMosquitto, with set_tcp_nodelay on as roles/mosquitto deploys it;
--tcp-nodelay off for Mosquitto's default, both for a broker of each, their
rows interleaved), the NIB on PostgreSQL unless --nib sqlite. Rows,
interleaved, the median of --rounds:

  raw paho   N QoS 1 publishes over TLS, timed until the last PUBACK
  outbox     N events enqueued with pdsno.events.outbox.enqueue, one
             transaction each, while an OutboxPublisher delivers them;
             timed until the last is marked sent (on its PUBACK); and
             the enqueue loop's own rate (the producer, one commit each)
  drain      N events committed in one transaction, timed from the commit
             until the last is marked sent: the publisher alone

A QoS 1 subscriber counts every event of the outbox and drain runs: lost (never
received) and duplicated (received more than once, before its dedup).
Then the enqueue-to-PUBACK latency of single events on an idle publisher
(p50, p99). A benchmark, not a test: it asserts nothing.

    python bench/events_bench.py [--events 20000] [--rounds 3] [--latency-samples 200]
                                 [--tcp-nodelay on|off|both]
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import Engine, delete

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from services import PostgresServer, ServiceUser, private_directory  # noqa: E402
from tlsutil import CertificateAuthority, TlsMosquitto, client_context  # noqa: E402

from pdsno.config import MqttSettings  # noqa: E402
from pdsno.events.outbox import enqueue  # noqa: E402
from pdsno.events.publisher import OutboxPublisher  # noqa: E402
from pdsno.nib.engine import create_nib_engine, upgrade  # noqa: E402
from pdsno.nib.schema import outbox  # noqa: E402
from pdsno.security.keys import SigningKey  # noqa: E402

SENDER = "bench-controller"
REGION = "bench"
RAW_TOPIC = "bench/raw"
OUTBOX_TOPICS = "pdsno/v1/#"


def paho_client(name: str, context: ssl.SSLContext) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}"
    )
    client.tls_set_context(context)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


def connect(client: mqtt.Client, broker: TlsMosquitto) -> None:
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect(broker.host, broker.port, 30)
    client.loop_start()
    if not connected.wait(30):
        raise SystemExit("the bench client did not connect to the broker")


class Subscriber:
    """Counts each outbox event it receives, by event_id."""

    def __init__(self, broker: TlsMosquitto, context: ssl.SSLContext) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._client = paho_client("bench-subscriber", context)
        subscribed = threading.Event()
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_args: subscribed.set()
        connect(self._client, broker)
        self._client.subscribe(OUTBOX_TOPICS, qos=1)
        if not subscribed.wait(30):
            raise SystemExit("the bench subscriber was not subscribed")

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        event_id = json.loads(message.payload)["event_id"]
        with self._lock:
            self.counts[event_id] += 1

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def wait_for(self, produced: list[str], quiet_seconds: float = 5.0) -> None:
        """Deliveries to the subscriber trail the PUBACKs (the broker queues
        them for it): wait until every produced event arrived, or until none
        arrived for quiet_seconds (the rest are lost)."""
        last_seen, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < quiet_seconds:
            with self._lock:
                seen = sum(1 for event_id in produced if self.counts[event_id])
            if seen == len(produced):
                return
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            time.sleep(0.1)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def raw_paho(broker: TlsMosquitto, context: ssl.SSLContext, count: int) -> float:
    """Messages a second of a QoS 1 publish loop, until the last PUBACK."""
    client = paho_client("bench-raw", context)
    connect(client, broker)
    payload = json.dumps({"event_id": "raw", "body": {"device_id": "switch"}}).encode()
    try:
        started = time.perf_counter()
        infos = [client.publish(RAW_TOPIC, payload, qos=1) for _ in range(count)]
        for info in infos:
            info.wait_for_publish(60)
        return count / (time.perf_counter() - started)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting until {what}")
        time.sleep(0.001)


def outbox_run(
    engine: Engine, publisher: OutboxPublisher, signer: SigningKey, count: int, sender: str
) -> tuple[float, float, list[str]]:
    """Events a second, enqueue of the first to PUBACK of the last; enqueues a second
    (the producer alone: its commits); and their IDs."""
    before = publisher.published
    produced = []
    started = time.perf_counter()
    for index in range(count):
        with engine.begin() as conn:
            produced.append(
                enqueue(
                    conn,
                    "device.updated",
                    {"device_id": f"switch-{index}"},
                    region=REGION,
                    sender_id=sender,
                    signer=signer,
                )
            )
    enqueued = time.perf_counter()
    wait_until(lambda: publisher.published - before >= count, 600, "every event is sent")
    return count / (time.perf_counter() - started), count / (enqueued - started), produced


def drain_run(
    engine: Engine, publisher: OutboxPublisher, signer: SigningKey, count: int, sender: str
) -> tuple[float, float, list[str]]:
    """Events a second of the publisher alone: N events committed at once, to the last PUBACK."""
    before = publisher.published
    produced = []
    with engine.begin() as conn:
        for index in range(count):
            produced.append(
                enqueue(
                    conn,
                    "device.updated",
                    {"device_id": f"drain-{index}"},
                    region=REGION,
                    sender_id=sender,
                    signer=signer,
                )
            )
        # The clock starts at the commit: from then on the rows are visible.
    started = time.perf_counter()
    wait_until(lambda: publisher.published - before >= count, 600, "every event is sent")
    return count / (time.perf_counter() - started), 0.0, produced


def single_event_latency(
    engine: Engine, publisher: OutboxPublisher, signer: SigningKey, index: int, sender: str
) -> float:
    """Milliseconds from enqueue (before its transaction) to its PUBACK, on an idle publisher."""
    time.sleep(0.02)  # idle before the event, as a quiet controller is
    before = publisher.published
    started = time.perf_counter()
    with engine.begin() as conn:
        enqueue(
            conn,
            "device.updated",
            {"device_id": f"lone-{index}"},
            region=REGION,
            sender_id=sender,
            signer=signer,
        )
    wait_until(lambda: publisher.published > before, 30, "the event is sent")
    return 1000 * (time.perf_counter() - started)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Setup:
    """One broker (set_tcp_nodelay on or off) with its publisher, subscriber and engine."""

    def __init__(self, tcp_nodelay: bool, ca: CertificateAuthority, context: ssl.SSLContext,
                 db_url: str) -> None:  # fmt: skip
        self.name = "nodelay on" if tcp_nodelay else "nodelay off"
        self.context = context
        self.broker = TlsMosquitto(ca, tcp_nodelay=tcp_nodelay).start()
        # An engine each: a publisher wakes on its own engine's commits only.
        self.engine = create_nib_engine(db_url)
        self.sender = f"{SENDER}-{'on' if tcp_nodelay else 'off'}"
        settings = MqttSettings(enabled=True, host=self.broker.host, port=self.broker.port)
        self.publisher = OutboxPublisher(
            self.engine, settings, client_id=self.sender, ssl_context=context,
            sender_id=self.sender,
        )  # fmt: skip
        self.subscriber = Subscriber(self.broker, context)
        self.publisher.start()
        self.raw_rates: list[float] = []
        self.outbox_rates: list[float] = []
        self.drain_rates: list[float] = []
        self.enqueue_rates: list[float] = []
        self.latencies: list[float] = []
        self.lost = 0
        self.duplicated = 0

    def stop(self) -> None:
        self.publisher.stop()
        self.subscriber.stop()
        self.engine.dispose()
        self.broker.stop()

    def run(self, row: str, signer: SigningKey, count: int) -> None:
        if row == "raw":
            self.raw_rates.append(raw_paho(self.broker, self.context, count))
            return
        self.subscriber.reset()
        run = outbox_run if row == "outbox" else drain_run
        rate, enqueue_rate, produced = run(self.engine, self.publisher, signer, count, self.sender)
        if row == "outbox":
            self.outbox_rates.append(rate)
            self.enqueue_rates.append(enqueue_rate)
        else:
            self.drain_rates.append(rate)
        self.subscriber.wait_for(produced)
        counts = self.subscriber.counts
        self.lost += sum(1 for event_id in produced if counts[event_id] == 0)
        self.duplicated += sum(max(0, n - 1) for n in counts.values())
        with self.engine.begin() as conn:  # the next run starts from an empty outbox
            conn.execute(delete(outbox))

    def results(self) -> dict[str, Any]:
        return {
            "setup": self.name,
            "raw_rates": self.raw_rates,
            "outbox_rates": self.outbox_rates,
            "raw": statistics.median(self.raw_rates),
            "outbox": statistics.median(self.outbox_rates),
            "enqueue_rates": self.enqueue_rates,
            "enqueue": statistics.median(self.enqueue_rates),
            "drain_rates": self.drain_rates,
            "drain": statistics.median(self.drain_rates),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "latency_p50_ms": percentile(self.latencies, 0.50),
            "latency_p99_ms": percentile(self.latencies, 0.99),
        }


def measure(args: argparse.Namespace, db_url: str, work: Path) -> list[dict[str, Any]]:
    ca = CertificateAuthority.create()
    ca_file = ca.write_ca(work / "ca.crt")
    cert_file, key_file = ca.issue("bench-controller").write(
        work / "client.crt", work / "client.key"
    )
    context = client_context(ca_file, cert_file, key_file)
    upgrade_engine = create_nib_engine(db_url)
    upgrade(upgrade_engine)
    upgrade_engine.dispose()
    signer = SigningKey.generate()
    nodelay = {"off": [False], "on": [True], "both": [False, True]}[args.tcp_nodelay]
    setups: list[Setup] = []
    try:
        for value in nodelay:
            setups.append(Setup(value, ca, context, db_url))
        for setup in setups:
            wait_until(lambda setup=setup: setup.publisher.connected, 30, "a publisher connects")
        rows = [(setup, row) for setup in setups for row in ("raw", "outbox", "drain")]
        for round_number in range(args.rounds):
            # Interleaved, the order reversed every other round.
            for setup, row in rows if round_number % 2 == 0 else reversed(rows):
                setup.run(row, signer, args.events)
        for index in range(args.latency_samples):
            for setup in setups if index % 2 == 0 else reversed(setups):
                setup.latencies.append(
                    single_event_latency(setup.engine, setup.publisher, signer, index, setup.sender)
                )
        return [setup.results() for setup in setups]
    finally:
        for setup in setups:
            setup.stop()


def report(args: argparse.Namespace, all_results: list[dict[str, Any]]) -> None:
    print(
        f"\nEvents over MQTT QoS 1, TLS with client certificates, NIB on {args.nib}, "
        f"N = {args.events}, median of {args.rounds} interleaved runs"
    )
    for results in all_results:
        print(f"\n[{results['setup']}: set_tcp_nodelay in the broker]")
        rates = ", ".join(f"{rate:.0f}" for rate in results["raw_rates"])
        print(f"raw paho    {results['raw']:>8.0f} msg/s     runs {rates}")
        rates = ", ".join(f"{rate:.0f}" for rate in results["outbox_rates"])
        print(f"outbox      {results['outbox']:>8.0f} events/s  runs {rates}")
        rates = ", ".join(f"{rate:.0f}" for rate in results["enqueue_rates"])
        print(f"  enqueue   {results['enqueue']:>8.0f} events/s  runs {rates} (its producer alone)")
        rates = ", ".join(f"{rate:.0f}" for rate in results["drain_rates"])
        print(f"drain       {results['drain']:>8.0f} events/s  runs {rates}")
        print(
            f"lost {results['lost']}, duplicated {results['duplicated']} "
            "(every outbox and drain run)"
        )
        print(
            f"single event, enqueue to PUBACK: p50 {results['latency_p50_ms']:.1f} ms, "
            f"p99 {results['latency_p99_ms']:.1f} ms ({args.latency_samples} events)"
        )
        ratio = results["outbox"] / results["raw"]
        exact = results["lost"] == 0 and results["duplicated"] == 0
        p99 = results["latency_p99_ms"]
        print(f"\n{'target':<42} {'bound':>7} {'value':>7}  met")
        print(f"{'outbox vs raw paho events/s':<42} {'>=0.5':>7} {ratio:>7.2f}  "
              f"{_met(ratio >= 0.5)}")  # fmt: skip
        drain = results["drain"] / results["raw"]
        print(f"{'(drain vs raw paho, not a target)':<42} {'':>7} {drain:>7.2f}")
        print(f"{'lost + duplicated':<42} {'==0':>7} {results['lost'] + results['duplicated']:>7}  "
              f"{_met(exact)}")  # fmt: skip
        print(f"{'single event p99 ms':<42} {'<=20':>7} {p99:>7.1f}  {_met(p99 <= 20)}")
    print(json.dumps(all_results))


def _met(condition: bool) -> str:
    return "yes" if condition else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--nib", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument(
        "--tcp-nodelay",
        choices=["on", "off", "both"],
        default="on",
        help="set_tcp_nodelay of the broker (on: as roles/mosquitto deploys it); "
        "both: a broker of each, their runs interleaved",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pdsno-events-bench-"))
    postgres = None
    if args.nib == "postgresql":
        owner = ServiceUser.for_service("postgres")
        postgres = PostgresServer(private_directory("pdsno-bench-pg-", owner), owner)
        postgres.init()
        postgres.start()
        db_url = postgres.create_database()
    else:
        db_url = f"sqlite:///{work / 'nib.db'}"
    try:
        report(args, measure(args, db_url, work))
    finally:
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
