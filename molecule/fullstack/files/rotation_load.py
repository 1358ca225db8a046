"""Load that must see nothing of a certificate rotation (molecule/fullstack).

Runs on a controller host with the controller's own virtualenv (paho-mqtt)
until the stop file appears or --max-seconds pass, then prints one JSON line:

- API: an operator session, then GET /api/v1/auth/me over a new TLS
  connection each time (a new handshake each, so requests made during the
  rotation meet the reloaded certificate), verified against the PDSNO CA.
- MQTT: QoS 1 publishes over TLS with the controller's client certificate
  to a topic its ACL allows, and a subscriber with a persistent session on
  the same topic. Every message carries a sequence number; at the end the
  subscriber must have received each acknowledged one (lost) exactly once
  (duplicates beyond QoS 1's redelivery are counted, not failed).

The session password arrives on standard input, never as an argument.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt


def api_loop(args: argparse.Namespace, password: str, stop: threading.Event, report: dict) -> None:
    context = ssl.create_default_context(cafile=args.ca)

    def call(method: str, path: str, body: dict | None, token: str | None) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            args.api_host, args.api_port, context=context, timeout=10
        )
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.request(method, path, json.dumps(body) if body else None, headers)
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()

    status, body = call(
        "POST", "/api/v1/auth/login", {"username": args.username, "password": password}, None
    )
    if status != 200:
        report["api_errors"].append(f"login answered {status}: {body[:200]!r}")
        return
    token = json.loads(body)["token"]
    while not stop.is_set():
        try:
            status, body = call("GET", "/api/v1/auth/me", None, token)
            if status == 200:
                report["api_ok"] += 1
            else:
                report["api_failed"] += 1
                report["api_errors"].append(f"{status}: {body[:200]!r}")
        except (OSError, ssl.SSLError) as error:
            report["api_failed"] += 1
            report["api_errors"].append(repr(error))
        time.sleep(args.interval)
    call("POST", "/api/v1/auth/logout", None, token)


def mqtt_client(args: argparse.Namespace, client_id: str) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.tls_set(
        ca_certs=args.ca, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLS_CLIENT
    )
    client.max_inflight_messages_set(100)
    return client


def mqtt_loop(args: argparse.Namespace, stop: threading.Event, report: dict) -> None:
    received: dict[int, int] = {}
    sent: list[tuple[int, mqtt.MQTTMessageInfo]] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    subscriber = mqtt_client(args, f"rotation-sub-{args.run}")
    subscriber.on_connect = lambda c, u, f, rc, p: c.subscribe(args.topic, qos=1)
    subscriber.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()

    def on_message(client, userdata, message) -> None:
        sequence = int(message.payload)
        with lock:
            received[sequence] = received.get(sequence, 0) + 1

    subscriber.on_message = on_message
    subscriber.connect(args.mqtt_host, args.mqtt_port, keepalive=30)
    subscriber.loop_start()
    if not subscribed.wait(20):
        report["mqtt_errors"].append("the subscriber did not subscribe within 20 s")

    publisher = mqtt_client(args, f"rotation-pub-{args.run}")
    publisher.connect(args.mqtt_host, args.mqtt_port, keepalive=30)
    publisher.loop_start()
    sequence = 0
    while not stop.is_set():
        sequence += 1
        # A QoS 1 message is queued while the connection is down (NO_CONN)
        # and sent on reconnection; any other code is a refusal.
        info = publisher.publish(args.topic, str(sequence), qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            report["mqtt_errors"].append(f"publish {sequence}: rc {info.rc}")
        sent.append((sequence, info))
        time.sleep(args.interval)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        acked = {s for s, info in sent if info.is_published()}
        with lock:
            if len(acked) == sequence and all(s in received for s in acked):
                break
        time.sleep(0.2)
    acked = {s for s, info in sent if info.is_published()}
    publisher.loop_stop()
    publisher.disconnect()
    subscriber.loop_stop()
    subscriber.disconnect()
    with lock:
        report["mqtt_published"] = sequence
        report["mqtt_acked"] = len(acked)
        report["mqtt_received"] = len(received)
        report["mqtt_lost"] = len([s for s in acked if s not in received])
        report["mqtt_unacked"] = sequence - len(acked)
        report["mqtt_duplicates"] = sum(count - 1 for count in received.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-host", required=True)
    parser.add_argument("--api-port", type=int, default=8001)
    parser.add_argument("--username", required=True)
    parser.add_argument("--mqtt-host", required=True)
    parser.add_argument("--mqtt-port", type=int, default=8883)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--status-file", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--run", default=str(int(time.time())))
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")

    report: dict = {"api_ok": 0, "api_failed": 0, "api_errors": [], "mqtt_errors": []}
    stop = threading.Event()
    workers = [
        threading.Thread(target=api_loop, args=(args, password, stop, report)),
        threading.Thread(target=mqtt_loop, args=(args, stop, report)),
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    while time.monotonic() - started < args.max_seconds and not args.stop_file.exists():
        args.status_file.write_text(
            json.dumps({"api_ok": report["api_ok"], "seconds": time.monotonic() - started})
        )
        time.sleep(1)
    stop.set()
    for worker in workers:
        worker.join(60)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["api_errors"] = report["api_errors"][:20]
    report["mqtt_errors"] = report["mqtt_errors"][:20]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
