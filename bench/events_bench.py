"""Events: the outbox end to end against a raw paho QoS 1 loop, and one event's latency.

A Mosquitto whose only listener is TLS with client certificates (the tests'
TlsMosquitto, with set_tcp_nodelay on as roles/mosquitto deploys it;
--tcp-nodelay off for Mosquitto's default, both for a broker of each, their
rows interleaved), the NIB on PostgreSQL unless --nib sqlite. Rows,
interleaved, the median of --rounds:

  raw paho   N QoS 1 publishes over TLS, timed until the last PUBACK
  outbox     N events enqueued with pdsno.events.outbox.enqueue, one
             transaction each, by --producers threads (a controller's
             concurrent requests), while an OutboxPublisher delivers them;
             timed until the last is marked sent (on its PUBACK); and
             the producers' own rate meanwhile
  producers  the same producers on an engine no publisher reads: the
             most the outbox row can reach
  drain      N events committed in one transaction, timed from the commit
             until the last is marked sent: the publisher alone

A QoS 1 subscriber in a process of its own (in this one it would compete for
the interpreter lock with the publisher it measures) counts every event of
the outbox and drain runs: lost (never received) and duplicated (received
more than once, before its dedup). Then the enqueue-to-PUBACK latency of
single events on an idle publisher (p50, p99). A benchmark, not a test: it
asserts nothing.

    python bench/events_bench.py [--events 20000] [--rounds 3] [--latency-samples 200]
                                 [--producers 8] [--tcp-nodelay on|off|both]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import Connection as NibConnection
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
ROWS = ("raw", "outbox", "producers", "drain")


def paho_client(name: str, context: ssl.SSLContext) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}"
    )
    client.tls_set_context(context)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


def connect(client: mqtt.Client, host: str, port: int) -> None:
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect(host, port, 30)
    client.loop_start()
    if not connected.wait(30):
        raise SystemExit("the bench client did not connect to the broker")


class Subscriber:
    """Counts each outbox event it receives, by event_id, in a process of its own
    (as a real subscriber is: in the bench's process it would take the
    interpreter lock from the publisher it measures)."""

    def __init__(self, broker: TlsMosquitto, tls_files: tuple[Path, Path, Path]) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child_pipe = context.Pipe()
        self._process = context.Process(
            target=_subscriber_process,
            args=(broker.host, broker.port, tls_files, child_pipe),
            name="bench-subscriber",
            daemon=True,
        )
        self._process.start()
        if not self._pipe.poll(60) or self._pipe.recv() != "subscribed":
            raise SystemExit("the bench subscriber was not subscribed")

    def reset(self) -> None:
        self._pipe.send(("reset",))
        self._pipe.recv()

    def count(self, produced: list[str], quiet_seconds: float = 5.0) -> tuple[int, int]:
        """Lost (never received) and duplicated (received more than once) events:
        after every produced event arrived, or none arrived for quiet_seconds."""
        self._pipe.send(("count", produced, quiet_seconds))
        lost, duplicated = self._pipe.recv()
        return lost, duplicated

    def stop(self) -> None:
        self._pipe.send(("stop",))
        self._process.join(30)


def _subscriber_process(
    host: str, port: int, tls_files: tuple[Path, Path, Path], pipe: Connection
) -> None:
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        event_id = json.loads(message.payload)["event_id"]
        with lock:
            counts[event_id] += 1

    client = paho_client("bench-subscriber", client_context(*tls_files))
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    connect(client, host, port)
    client.subscribe(OUTBOX_TOPICS, qos=1)
    if not subscribed.wait(30):
        return
    pipe.send("subscribed")
    while True:
        command = pipe.recv()
        if command[0] == "stop":
            break
        if command[0] == "reset":
            with lock:
                counts.clear()
            pipe.send("reset")
            continue
        _, produced, quiet_seconds = command
        # Deliveries to the subscriber trail the PUBACKs (the broker queues them).
        last_seen, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < quiet_seconds:
            with lock:
                seen = sum(1 for event_id in produced if counts[event_id])
            if seen == len(produced):
                break
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            time.sleep(0.1)
        with lock:
            lost = sum(1 for event_id in produced if counts[event_id] == 0)
            duplicated = sum(max(0, n - 1) for n in counts.values())
        pipe.send((lost, duplicated))
    client.disconnect()
    client.loop_stop()


def raw_paho(broker: TlsMosquitto, context: ssl.SSLContext, count: int) -> float:
    """Messages a second of a QoS 1 publish loop, until the last PUBACK."""
    client = paho_client("bench-raw", context)
    connect(client, broker.host, broker.port)
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


def bench_event(conn: NibConnection, device_id: str, sender: str, signer: SigningKey) -> str:
    """One `device.updated` event in the outbox, in `conn`'s transaction; its ID."""
    return enqueue(
        conn, "device.updated", {"device_id": device_id},
        region=REGION, sender_id=sender, signer=signer,
    )  # fmt: skip


def produce(
    engine: Engine, signer: SigningKey, count: int, sender: str, producers: int
) -> list[str]:
    """`producers` threads enqueue count/producers events each, one transaction
    an event, as a controller's concurrent requests do; the events' IDs."""
    produced: list[list[str]] = [[] for _ in range(producers)]

    def work(worker: int) -> None:
        for index in range(worker, count, producers):
            with engine.begin() as conn:
                produced[worker].append(bench_event(conn, f"switch-{index}", sender, signer))

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [event_id for ids in produced for event_id in ids]


def outbox_run(
    engine: Engine,
    publisher: OutboxPublisher,
    signer: SigningKey,
    count: int,
    sender: str,
    producers: int,
) -> tuple[float, float, list[str]]:
    """Events a second, enqueue of the first to PUBACK of the last; enqueues a
    second while the publisher runs; and their IDs."""
    before = publisher.published
    started = time.perf_counter()
    produced = produce(engine, signer, count, sender, producers)
    enqueued = time.perf_counter()
    wait_until(lambda: publisher.published - before >= count, 600, "every event is sent")
    return count / (time.perf_counter() - started), count / (enqueued - started), produced


def producers_alone_run(
    engine: Engine, signer: SigningKey, count: int, sender: str, producers: int
) -> float:
    """Enqueues a second of the same producers on an engine no publisher reads:
    the most the outbox row could reach."""
    started = time.perf_counter()
    produce(engine, signer, count, sender, producers)
    return count / (time.perf_counter() - started)


def drain_run(
    engine: Engine, publisher: OutboxPublisher, signer: SigningKey, count: int, sender: str
) -> tuple[float, list[str]]:
    """Events a second of the publisher alone: N events committed at once, to the last PUBACK."""
    before = publisher.published
    produced = []
    with engine.begin() as conn:
        for index in range(count):
            produced.append(bench_event(conn, f"drain-{index}", sender, signer))
        # The clock starts at the commit: from then on the rows are visible.
    started = time.perf_counter()
    wait_until(lambda: publisher.published - before >= count, 600, "every event is sent")
    return count / (time.perf_counter() - started), produced


def single_event_latency(
    engine: Engine, publisher: OutboxPublisher, signer: SigningKey, index: int, sender: str
) -> float:
    """Milliseconds from enqueue (before its transaction) to its PUBACK, on an idle publisher."""
    time.sleep(0.02)  # idle before the event, as a quiet controller is
    before = publisher.published
    started = time.perf_counter()
    with engine.begin() as conn:
        bench_event(conn, f"lone-{index}", sender, signer)
    wait_until(lambda: publisher.published > before, 30, "the event is sent")
    return 1000 * (time.perf_counter() - started)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Setup:
    """One broker (set_tcp_nodelay on or off) with its publisher, subscriber and engine."""

    def __init__(self, tcp_nodelay: bool, ca: CertificateAuthority,
                 tls_files: tuple[Path, Path, Path], db_url: str,
                 producers: int) -> None:  # fmt: skip
        self.name = "nodelay on" if tcp_nodelay else "nodelay off"
        self.producers = producers
        context = self.context = client_context(*tls_files)
        self.broker = TlsMosquitto(ca, tcp_nodelay=tcp_nodelay).start()
        # An engine each: a publisher wakes on its own engine's commits only.
        self.engine = create_nib_engine(db_url)
        self.sender = f"{SENDER}-{'on' if tcp_nodelay else 'off'}"
        settings = MqttSettings(enabled=True, host=self.broker.host, port=self.broker.port)
        self.publisher = OutboxPublisher(
            self.engine, settings, client_id=self.sender, ssl_context=context,
            sender_id=self.sender,
        )  # fmt: skip
        self.subscriber = Subscriber(self.broker, tls_files)
        self.publisher.start()
        # No publisher listens to this one: the producers alone.
        self.unpublished_engine = create_nib_engine(db_url)
        self.rates: dict[str, list[float]] = {row: [] for row in (*ROWS, "enqueue")}
        self.latencies: list[float] = []
        self.lost = 0
        self.duplicated = 0

    def stop(self) -> None:
        self.publisher.stop()
        self.subscriber.stop()
        self.engine.dispose()
        self.unpublished_engine.dispose()
        self.broker.stop()

    def run(self, row: str, signer: SigningKey, count: int) -> None:
        if row == "raw":
            self.rates[row].append(raw_paho(self.broker, self.context, count))
            return
        if row == "producers":
            engine = self.unpublished_engine
            sender = f"{self.sender}-unpublished"
            self.rates[row].append(
                producers_alone_run(engine, signer, count, sender, self.producers)
            )
        else:
            self.subscriber.reset()
            if row == "outbox":
                rate, enqueue_rate, produced = outbox_run(
                    self.engine, self.publisher, signer, count, self.sender, self.producers
                )
                self.rates["enqueue"].append(enqueue_rate)
            else:
                rate, produced = drain_run(self.engine, self.publisher, signer, count, self.sender)
            self.rates[row].append(rate)
            lost, duplicated = self.subscriber.count(produced)
            self.lost += lost
            self.duplicated += duplicated
        with self.engine.begin() as conn:  # the next run starts from an empty outbox
            conn.execute(delete(outbox))

    def results(self) -> dict[str, Any]:
        return {
            "setup": self.name,
            "producer_threads": self.producers,
            **{f"{row}_rates": rates for row, rates in self.rates.items()},
            **{row: statistics.median(rates) for row, rates in self.rates.items()},
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
    upgrade_engine = create_nib_engine(db_url)
    upgrade(upgrade_engine)
    upgrade_engine.dispose()
    signer = SigningKey.generate()
    nodelay = {"off": [False], "on": [True], "both": [False, True]}[args.tcp_nodelay]
    setups: list[Setup] = []
    try:
        for value in nodelay:
            setups.append(Setup(value, ca, (ca_file, cert_file, key_file), db_url, args.producers))
        for setup in setups:
            wait_until(lambda setup=setup: setup.publisher.connected, 30, "a publisher connects")
        rows = [(setup, row) for setup in setups for row in ROWS]
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
        f"N = {args.events}, median of {args.rounds} interleaved runs, "
        f"{args.producers} producer thread(s), one transaction an event"
    )
    for results in all_results:
        print(f"\n[{results['setup']}: set_tcp_nodelay in the broker]")
        lines = (
            ("raw paho", "raw", "msg/s", ""),
            ("outbox", "outbox", "events/s", ""),
            ("  enqueue", "enqueue", "events/s", " (its producers, the publisher running)"),
            ("producers", "producers", "events/s", " (the same, no publisher: the ceiling)"),
            ("drain", "drain", "events/s", " (the publisher alone)"),
        )  # fmt: skip
        for label, key, unit, note in lines:
            rates = ", ".join(f"{rate:.0f}" for rate in results[f"{key}_rates"])
            print(f"{label:<11} {results[key]:>8.0f} {unit:<9} runs {rates}{note}")
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
        print(f"\n{'target':<46} {'bound':>7} {'value':>7}  met")
        print(f"{'outbox vs raw paho events/s':<46} {'>=0.5':>7} {ratio:>7.2f}  "
              f"{_met(ratio >= 0.5)}")  # fmt: skip
        for label, value in (
            ("(producers alone vs raw paho: the ceiling)", results["producers"] / results["raw"]),
            ("(outbox vs producers alone)", results["outbox"] / results["producers"]),
            ("(drain vs raw paho)", results["drain"] / results["raw"]),
        ):
            print(f"{label:<46} {'':>7} {value:>7.2f}")
        print(f"{'lost + duplicated':<46} {'==0':>7} {results['lost'] + results['duplicated']:>7}  "
              f"{_met(exact)}")  # fmt: skip
        print(f"{'single event p99 ms':<46} {'<=20':>7} {p99:>7.1f}  {_met(p99 <= 20)}")
    print(json.dumps(all_results))


def _met(condition: bool) -> str:
    return "yes" if condition else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument(
        "--producers",
        type=int,
        default=8,
        help="threads enqueueing the outbox row's events, one transaction each",
    )
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
