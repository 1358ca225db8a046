"""TLS of a real controller process: versions, ciphers, mutual TLS, reload, MQTT.

A global controller runs on SQLite with certificates of a test CA
(tests/tlsutil.py); its events go to a Mosquitto whose only listener is TLS
and requires a client certificate.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from hierarchy import (
    ControllerProcess,
    controller_settings,
    issue_once,
    pdsno,
    pdsno_ok,
    peer_client,
    pki,
    wait_for,
)
from sqlalchemy import create_engine
from tlsutil import CertificateAuthority, TlsMosquitto, client_context, peer_serial

from pdsno.config import TlsSettings
from pdsno.events.outbox import enqueue
from pdsno.security.keys import SigningKey
from pdsno.security.tls import TLS12_CIPHERS, ControllerTls

HOST = "127.0.0.1"

# What a refused client sees. OpenSSL's alert when it arrives; but uvicorn's
# transport (asyncio) closes the connection on a failed handshake without
# flushing the alert, so usually the close itself: an EOF in the middle of the
# TLS protocol, a reset when the client had already sent its request, or (with
# Debian 12's Python 3.11.2, as on the managed hosts) a clean TLS close with no
# HTTP answer (get_health's ConnectionError). ConnectionError covers the last
# three.
REFUSED = (ssl.SSLError, ConnectionError)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def broker(workdir):
    broker = TlsMosquitto(pki(workdir)).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def gc(workdir, broker):
    db_url = f"sqlite:///{workdir / 'nib.db'}"
    pdsno_ok("db", "upgrade", "--db-url", db_url)
    process = ControllerProcess(
        "gc1",
        workdir,
        controller_settings(
            workdir,
            "gc1",
            "global",
            db_url,
            mqtt_port=broker.port,
            # The reload test opens hundreds of connections a second from one address.
            limits={"rate_per_second": 10_000, "burst": 10_000},
        ),
    )
    process.start()
    yield process
    process.stop()


def ports(gc) -> dict[str, int]:
    return {"api": gc.settings["listen_port"], "peer": gc.settings["peer_listen_port"]}


def connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A new TCP connection and its TLS handshake."""
    raw = socket.create_connection((HOST, port), timeout=5)
    try:
        # An EOF without close_notify is an error, not the end of a response.
        return context.wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False)
    except BaseException:
        raw.close()
        raise


def get_health(port: int, context: ssl.SSLContext) -> tuple[int, int]:
    """GET /health on a new connection: the HTTP status and the served certificate's serial."""
    with connect(port, context) as sock:
        serial = peer_serial(sock)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    if not response.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP response: {response[:80]!r}")
    return int(response.split(b" ", 2)[1]), serial


def refused_in_handshake(port: int, context: ssl.SSLContext) -> None:
    """The handshake itself fails (up to TLS 1.2 the client waits for the server's
    Finished, so the server's refusal shows here)."""
    with pytest.raises(REFUSED):
        connect(port, context).close()


def refused(port: int, context: ssl.SSLContext) -> None:
    """A request that gets no HTTP answer at all: the TLS connection is refused.

    With TLS 1.3 the client finishes its side of the handshake before the
    server has checked the client certificate; the server's refusal (of the
    handshake, not of a request) then arrives on the first read.
    """
    with pytest.raises(REFUSED):
        get_health(port, context)


def local_handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLSocket:
    """A handshake between two contexts of this process; returns the server's end
    once it is done (closed by the caller)."""
    result: dict[str, ssl.SSLSocket] = {}
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(5)

        def accept() -> None:
            conn, _ = listener.accept()
            result["server"] = server.wrap_socket(conn, server_side=True)

        thread = threading.Thread(target=accept)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname=HOST) as sock,
        ):
            sock.write(b"x")  # TLS 1.3: the server's handshake ends with the client's flight
            thread.join(5)
    return result["server"]


def ca_file(workdir: Path) -> Path:
    return workdir / "pki" / "ca.crt"


def only(version: ssl.TLSVersion, context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = context.maximum_version = version
    return context


def legacy(version: ssl.TLSVersion, context: ssl.SSLContext) -> ssl.SSLContext:
    """`context` limited to `version`, at security level 0 so that OpenSSL 3 lets it
    speak TLS 1.0 and 1.1 at all."""
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and TLSv1_1 are
        return only(version, context)


def legacy_client(version: ssl.TLSVersion, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(*cert)
    return legacy(version, context)


# ---- versions and ciphers -------------------------------------------------------


@pytest.mark.parametrize("listener", ["api", "peer"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(gc, workdir, listener, version):
    # This client does speak the old version: a server that allows it agrees.
    server = legacy(version, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    server.load_cert_chain(*issue_once(workdir, "legacy-server"))
    with local_handshake(server, legacy_client(version)) as accepted:
        assert accepted.version() == {"TLSv1": "TLSv1", "TLSv1_1": "TLSv1.1"}[version.name]
    # The controller refuses it, on both listeners (with a client certificate
    # of the CA, which the peer listener requires, so the version is all that is wrong).
    cert = issue_once(workdir, "tester", server=False)
    refused_in_handshake(ports(gc)[listener], legacy_client(version, cert))
    # The same client, allowed TLS 1.2, gets in.
    with connect(ports(gc)[listener], legacy_client(ssl.TLSVersion.TLSv1_2, cert)) as sock:
        assert sock.version() == "TLSv1.2"


def test_tls_1_3_and_1_2_are_served_with_intermediate_ciphers_only(gc, workdir):
    port = ports(gc)["api"]
    with connect(port, client_context(ca_file(workdir))) as sock:
        assert sock.version() == "TLSv1.3"
    with connect(port, only(ssl.TLSVersion.TLSv1_2, client_context(ca_file(workdir)))) as sock:
        assert sock.version() == "TLSv1.2"
        assert sock.cipher()[0] in TLS12_CIPHERS.split(":")
    # A TLS 1.2 client offering only CBC ciphers, outside Mozilla's intermediate list.
    cbc = legacy_client(ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    refused_in_handshake(port, cbc)


def test_plain_http_to_the_https_ports_fails(gc):
    for port in ports(gc).values():
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            try:
                answer = sock.recv(1024)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"HTTP/")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{HOST}:{port}/health", timeout=5)


def test_the_controller_certificate_is_verified_by_name(gc, workdir):
    status, _ = get_health(ports(gc)["api"], client_context(ca_file(workdir)))
    assert status == 200
    other_ca = CertificateAuthority.create("not the PDSNO CA")
    untrusting = client_context(other_ca.write_ca(workdir / "other-ca.crt"))
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(ports(gc)["api"], untrusting)
    wrong_name = client_context(ca_file(workdir))
    with (
        pytest.raises(ssl.SSLCertVerificationError, match="mismatch"),
        socket.create_connection((HOST, ports(gc)["api"]), timeout=5) as raw,
    ):
        wrong_name.wrap_socket(raw, server_hostname="controller.example")


# ---- mutual TLS -------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_peer_listener_requires_a_client_certificate_of_the_ca(gc, workdir, version):
    port = ports(gc)["peer"]
    without = only(version, client_context(ca_file(workdir)))
    if version is ssl.TLSVersion.TLSv1_2:
        refused_in_handshake(port, without)
    else:
        refused(port, without)

    rogue_ca = CertificateAuthority.create("rogue CA")
    rogue_cert, rogue_key = rogue_ca.issue("gc1").write(
        workdir / "rogue.crt", workdir / "rogue.key"
    )
    rogue = only(version, client_context(ca_file(workdir), rogue_cert, rogue_key))
    if version is ssl.TLSVersion.TLSv1_2:
        refused_in_handshake(port, rogue)
    else:
        refused(port, rogue)

    status, _ = get_health(port, only(version, peer_client(workdir)))
    assert status == 200


def test_the_operator_api_needs_no_client_certificate_by_default(gc, workdir):
    status, _ = get_health(ports(gc)["api"], client_context(ca_file(workdir)))
    assert status == 200


def test_the_operator_api_can_require_client_certificates(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'nib.db'}"
    pdsno_ok("db", "upgrade", "--db-url", db_url)
    settings = controller_settings(tmp_path, "gc-strict", "global", db_url)
    settings["tls"]["require_client_cert_api"] = True
    strict = ControllerProcess("gc-strict", tmp_path, settings)
    strict.start()  # polls /health with a client certificate of the CA
    try:
        port = settings["listen_port"]
        refused(port, client_context(ca_file(tmp_path)))
        assert get_health(port, peer_client(tmp_path, "operator"))[0] == 200
    finally:
        strict.stop()


def test_a_joiner_may_name_only_a_host_of_its_own_certificate(gc, workdir):
    """Issue 11, finding 6: the URL the parent will call back must be a name of
    the client certificate the joiner presented (uvicorn hands the app no
    certificate; pdsno's listener adds the ASGI tls extension)."""
    db_url = f"sqlite:///{workdir / 'nib.db'}"
    token = pdsno_ok(
        "token", "create", "--region", "region-a", "--type", "regional", "--db-url", db_url
    )
    joiner = peer_client(workdir, "joiner")  # names: 127.0.0.1, localhost
    body = {
        "token": token,
        "controller_type": "regional",
        "region": "region-a",
        "name": "rc-joiner",
        "public_key": SigningKey.generate().public_key_b64,
    }
    base = f"https://{HOST}:{ports(gc)['peer']}/api/v1/validation/challenge"
    with httpx.Client(verify=joiner, timeout=10) as http:
        elsewhere = http.post(base, json={**body, "url": "https://169.254.169.254:8002"})
        assert elsewhere.status_code == 403, elsewhere.text
        assert "not a name of the joining controller's certificate" in elsewhere.json()["detail"]
        assert "127.0.0.1, localhost" in elsewhere.json()["detail"]
        own = http.post(base, json={**body, "url": "https://localhost:8002"})
        assert own.status_code == 200, own.text


# ---- certificate reload -----------------------------------------------------------


def served_serials(gc, workdir) -> dict[str, int]:
    contexts = {"api": client_context(ca_file(workdir)), "peer": peer_client(workdir)}
    served = {}
    for name, port in ports(gc).items():
        status, served[name] = get_health(port, contexts[name])
        assert status == 200
    return served


def log_count(gc, text: str) -> int:
    return gc.log_path.read_text().count(text)


def test_a_new_certificate_is_served_after_sighup_without_a_failed_request(gc, workdir):
    tls = gc.settings["tls"]
    old = served_serials(gc, workdir)
    assert old["api"] == old["peer"]
    contexts = {"api": client_context(ca_file(workdir)), "peer": peer_client(workdir)}
    seen: dict[str, list[int]] = {"api": [], "peer": []}
    failures: list[str] = []

    def keep_requesting() -> None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            for name, port in ports(gc).items():
                try:
                    status, serial = get_health(port, contexts[name])  # a new connection each
                except Exception as error:
                    failures.append(f"{name}: {error!r}")
                    continue
                if status != 200:
                    failures.append(f"{name}: HTTP {status}")
                seen[name].append(serial)

    reloads = log_count(gc, "TLS certificate reloaded")
    client = threading.Thread(target=keep_requesting)
    client.start()
    time.sleep(1.5)
    renewed = pki(workdir).issue("gc1")
    renewed.write(Path(tls["cert_file"]), Path(tls["key_file"]))
    gc.process.send_signal(signal.SIGHUP)
    client.join(30)

    assert not client.is_alive()
    assert failures == []
    assert gc.process.poll() is None, "SIGHUP must not end the controller"
    assert log_count(gc, "TLS certificate reloaded") == reloads + 1
    for name in ("api", "peer"):
        assert len(seen[name]) > 20, f"too few requests on {name} to prove anything"
        assert seen[name][0] == old[name]
        assert seen[name][-1] == renewed.serial, f"{name} still serves the old certificate"
        assert set(seen[name]) == {old[name], renewed.serial}
    assert served_serials(gc, workdir) == {"api": renewed.serial, "peer": renewed.serial}


def _garbage(workdir: Path, cert_file: Path, key_file: Path) -> None:
    cert_file.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")


def _mismatched_key(workdir: Path, cert_file: Path, key_file: Path) -> None:
    pki(workdir).issue("gc1").write(cert_file, key_file)
    key_file.write_bytes(pki(workdir).issue("someone else").key_pem)


def _missing_key(workdir: Path, cert_file: Path, key_file: Path) -> None:
    pki(workdir).issue("gc1").write(cert_file, key_file)
    key_file.unlink()


def _expired(workdir: Path, cert_file: Path, key_file: Path) -> None:
    pki(workdir).issue("gc1", valid_for=timedelta(seconds=-1)).write(cert_file, key_file)


@pytest.mark.parametrize(
    "breakage",
    [_garbage, _mismatched_key, _missing_key, _expired],
    ids=["garbage-certificate", "key-mismatch", "missing-key", "expired"],
)
def test_a_broken_replacement_keeps_the_old_certificate(gc, workdir, breakage):
    tls = gc.settings["tls"]
    cert_file, key_file = Path(tls["cert_file"]), Path(tls["key_file"])
    good_cert, good_key = cert_file.read_bytes(), key_file.read_bytes()
    before = served_serials(gc, workdir)
    refusals = log_count(gc, "TLS reload refused")
    try:
        breakage(workdir, cert_file, key_file)
        gc.process.send_signal(signal.SIGHUP)
        wait_for(lambda: log_count(gc, "TLS reload refused") > refusals, what="the refused reload")
        assert gc.process.poll() is None
        assert served_serials(gc, workdir) == before
    finally:
        cert_file.write_bytes(good_cert)
        key_file.write_bytes(good_key)
    # And a later good reload still works.
    reloads = log_count(gc, "TLS certificate reloaded")
    gc.process.send_signal(signal.SIGHUP)
    wait_for(lambda: log_count(gc, "TLS certificate reloaded") > reloads, what="the reload")
    assert served_serials(gc, workdir) == before


def test_reload_reaches_the_http_and_mqtt_client_contexts(tmp_path):
    ca = CertificateAuthority.create()
    cert_file, key_file = ca.issue("ctl").write(tmp_path / "ctl.crt", tmp_path / "ctl.key")
    settings = TlsSettings(
        cert_file=cert_file, key_file=key_file, ca_file=ca.write_ca(tmp_path / "ca.crt")
    )
    tls = ControllerTls(settings)
    renewed = ca.issue("ctl")
    renewed.write(cert_file, key_file)
    assert tls.reload()
    for client in (tls.http, tls.mqtt):
        assert client_serial_seen_by(tls.peer, client) == renewed.serial
    cert_file.write_bytes(b"broken")
    assert not tls.reload()
    for client in (tls.http, tls.mqtt):
        assert client_serial_seen_by(tls.peer, client) == renewed.serial


def test_the_mqtt_client_can_present_its_own_certificate(tmp_path):
    ca = CertificateAuthority.create()
    cert_file, key_file = ca.issue("ctl").write(tmp_path / "ctl.crt", tmp_path / "ctl.key")
    mqtt_cert, mqtt_key = ca.issue("ctl-mqtt", server=False).write(
        tmp_path / "ctl-mqtt.crt", tmp_path / "ctl-mqtt.key"
    )
    tls = ControllerTls(
        TlsSettings(
            cert_file=cert_file,
            key_file=key_file,
            ca_file=ca.write_ca(tmp_path / "ca.crt"),
            mqtt_cert_file=mqtt_cert,
            mqtt_key_file=mqtt_key,
        )
    )
    serial = x509.load_pem_x509_certificate(mqtt_cert.read_bytes()).serial_number
    assert client_serial_seen_by(tls.peer, tls.mqtt) == serial
    renewed = ca.issue("ctl-mqtt", server=False)
    renewed.write(mqtt_cert, mqtt_key)
    assert tls.reload()
    assert client_serial_seen_by(tls.peer, tls.mqtt) == renewed.serial
    assert client_serial_seen_by(tls.peer, tls.http) != renewed.serial


def client_serial_seen_by(server: ssl.SSLContext, client: ssl.SSLContext) -> int:
    """One handshake between the two contexts; the serial the server was shown."""
    with local_handshake(server, client) as accepted:
        return peer_serial(accepted)


def test_a_ca_added_to_the_bundle_is_trusted_after_sighup(gc, workdir):
    """The first step of a CA rollover: the bundle gains the next CA, and peers
    with certificates of either are admitted without a restart."""
    bundle = Path(gc.settings["tls"]["ca_file"])
    original = bundle.read_bytes()
    next_ca = CertificateAuthority.create("PDSNO test CA 2")
    cert_file, key_file = next_ca.issue("rc-next", server=False).write(
        workdir / "rc-next.crt", workdir / "rc-next.key"
    )
    from_next_ca = client_context(ca_file(workdir), cert_file, key_file)
    port = ports(gc)["peer"]
    refused(port, from_next_ca)
    reloads = log_count(gc, "TLS certificate reloaded")
    try:
        bundle.write_bytes(original + next_ca.cert_pem)
        gc.process.send_signal(signal.SIGHUP)
        wait_for(lambda: log_count(gc, "TLS certificate reloaded") > reloads, what="the reload")
        assert get_health(port, from_next_ca)[0] == 200
        assert get_health(port, peer_client(workdir))[0] == 200
    finally:
        bundle.write_bytes(original)


# ---- MQTT over TLS ----------------------------------------------------------------


def test_the_publisher_delivers_events_over_tls_with_a_client_certificate(gc, broker, workdir):
    # The broker takes only clients with a certificate of the CA.
    without = only(ssl.TLSVersion.TLSv1_2, client_context(ca_file(workdir)))
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        connect(broker.port, without)

    received: list[dict] = []
    subscribed = threading.Event()
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-subscriber")
    cert_file, key_file = issue_once(workdir, "subscriber", server=False)
    subscriber.tls_set_context(client_context(ca_file(workdir), cert_file, key_file))
    subscriber.on_connect = lambda c, *_: c.subscribe("pdsno/v1/#", qos=1)
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.on_message = lambda _c, _u, msg: received.append(json.loads(msg.payload))
    subscriber.connect(broker.host, broker.port)
    subscriber.loop_start()
    try:
        assert subscribed.wait(10)
        engine = create_engine(gc.settings["db_url"])
        with engine.begin() as conn:
            event_id = enqueue(
                conn,
                "tls.check",
                {"over": "tls"},
                region=None,
                sender_id=gc.identity()["controller_id"],
                signer=SigningKey.generate(),
            )
        engine.dispose()
        wait_for(
            lambda: any(e["event_id"] == event_id for e in received),
            what="the event, published by the controller over TLS",
        )
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()


# ---- configuration ----------------------------------------------------------------


def test_a_missing_certificate_stops_the_controller_with_a_clear_message(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'nib.db'}"
    pdsno_ok("db", "upgrade", "--db-url", db_url)
    settings = controller_settings(tmp_path, "gc-nocert", "global", db_url)
    settings["tls"]["cert_file"] = str(tmp_path / "absent.crt")
    config = tmp_path / "gc-nocert.yaml"
    config.write_text(json.dumps(settings))
    result = pdsno("controller", "run", "--config", str(config))
    assert result.returncode == 1
    assert str(tmp_path / "absent.crt") in result.stderr
    assert "tls.cert_file" in result.stderr


# ---- signals and plain HTTP ---------------------------------------------------------


def test_sigterm_stops_the_controller_cleanly(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'nib.db'}"
    pdsno_ok("db", "upgrade", "--db-url", db_url)
    controller = ControllerProcess(
        "gc-term", tmp_path, controller_settings(tmp_path, "gc-term", "global", db_url)
    )
    controller.start()
    process = controller.process
    assert process is not None
    try:
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: log_count(controller, "TLS certificate reloaded") == 1, what="reload")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, "the controller must exit by itself, not die of SIGTERM"
        assert log_count(controller, "Finished server process") == 2  # both listeners
    finally:
        controller.stop()


def test_plain_http_only_with_the_explicit_opt_in_and_a_loud_warning(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'nib.db'}"
    pdsno_ok("db", "upgrade", "--db-url", db_url)
    settings = controller_settings(tmp_path, "gc-plain", "global", db_url)
    settings["tls"] = {"enabled": False}
    config = tmp_path / "refused.yaml"
    config.write_text(json.dumps(settings))
    result = pdsno("controller", "run", "--config", str(config))
    assert result.returncode == 1 and "allow_insecure_http" in result.stderr

    settings["tls"] = {"enabled": False, "allow_insecure_http": True}
    plain = ControllerProcess("gc-plain", tmp_path, settings)
    plain.start()
    try:
        assert plain.url.startswith("http://")
        assert httpx.get(f"{plain.url}/health", timeout=5).status_code == 200
        assert log_count(plain, "TLS IS OFF") == 1
        assert plain.process is not None
        plain.process.send_signal(signal.SIGHUP)
        wait_for(lambda: log_count(plain, "no certificate to reload"), what="the SIGHUP")
        assert plain.process.poll() is None
    finally:
        plain.stop()
