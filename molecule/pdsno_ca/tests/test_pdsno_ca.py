"""What the pdsno_ca role must leave on live hosts, and what its stages showed.

prepare.yml and side_effect.yml record, on each host, the certificates'
serials and the files' checksums at these points, in
/var/tmp/pdsno-ca-molecule/<point>.json:

  prepared          after issuing with a 20-day mosquitto certificate
  after_check       after check mode with the normal settings
  before_rotation   after converge and idempotence
  after_rotation    after playbooks/rotate_certs.yml
  rollover_1..3     after each step of docs/ca-rollover.md (ca1 to ca2)

The hosts end signed by ca2, the CA the rollover introduced.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

CERT_DIR = "/etc/pdsno/certs"
RECORDS = "/var/tmp/pdsno-ca-molecule"  # noqa: S108 (on the test host, written by the scenario)
OLD_CA = "PDSNO internal CA ca1"
CA_NAME = "PDSNO internal CA ca2"  # after the rollover

# service: file name, key group, purposes `openssl verify` must accept and refuse
SERVICES = {
    "controller": ("controller", "pdsno-certs-controller", ["sslserver", "sslclient"], []),
    "controller_mqtt": ("controller-mqtt", "pdsno-certs-controller", ["sslclient"], ["sslserver"]),
    "mosquitto": ("mosquitto", "pdsno-certs-mosquitto", ["sslserver"], ["sslclient"]),
    "postgresql": ("postgresql", "pdsno-certs-postgresql", ["sslserver"], ["sslclient"]),
}
HOST_SERVICES = {
    "ca-controller": ["controller", "controller_mqtt"],
    "ca-broker": ["mosquitto", "postgresql"],
}
EXTRA_SANS = {"mosquitto": ["DNS:mqtt.pdsno.test"]}
HOST_EXTRA_SANS = {"ca-broker": ["DNS:localhost", "IP Address:127.0.0.1"]}


def ca_dir() -> Path:
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pdsno-ca"


def name_of(host) -> str:
    return host.backend.get_hostname()


def services_of(host) -> list[str]:
    return HOST_SERVICES[name_of(host)]


def record(host, point: str) -> dict:
    return json.loads(host.file(f"{RECORDS}/{point}.json").content_string)


def openssl(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command}: {result.stderr}"
    return result.stdout


def each_service(test):
    """Run a test once per service; hosts without that service skip it."""
    return pytest.mark.parametrize("service", list(SERVICES))(test)


def need(host, service: str) -> None:
    if service not in services_of(host):
        pytest.skip(f"{name_of(host)} has no {service} certificate")


def test_certificate_directory(host):
    directory = host.file(CERT_DIR)
    assert directory.is_directory
    assert (directory.user, directory.group, directory.mode) == ("root", "pdsno-certs", 0o750)


def test_trust_bundle_holds_the_current_ca(host):
    bundle = host.file(f"{CERT_DIR}/ca.crt")
    assert (bundle.user, bundle.group, bundle.mode) == ("root", "root", 0o644)
    assert bundle.content_string.count("BEGIN CERTIFICATE") == 1
    text = openssl(
        host, f"openssl x509 -in {CERT_DIR}/ca.crt -noout -subject -ext basicConstraints"
    )
    assert CA_NAME in text
    assert "CA:TRUE" in text


def test_only_the_hosts_services_have_certificates(host):
    present = {s for s, spec in SERVICES.items() if host.file(f"{CERT_DIR}/{spec[0]}.crt").exists}
    assert present == set(services_of(host))


@each_service
def test_certificate_verifies_for_its_purposes_only(host, service):
    need(host, service)
    name, _, purposes, refused = SERVICES[service]
    for purpose in purposes:
        out = openssl(
            host,
            f"openssl verify -CAfile {CERT_DIR}/ca.crt -purpose {purpose} {CERT_DIR}/{name}.crt",
        )
        assert out.strip().endswith(": OK"), out
    for purpose in refused:
        result = host.run(
            f"openssl verify -CAfile {CERT_DIR}/ca.crt -purpose {purpose} {CERT_DIR}/{name}.crt"
        )
        assert result.rc != 0, f"{service} must not be valid for {purpose}"


@each_service
def test_subject_alternative_names(host, service):
    need(host, service)
    name = SERVICES[service][0]
    text = openssl(host, f"openssl x509 -in {CERT_DIR}/{name}.crt -noout -ext subjectAltName")
    sans = {entry.strip() for entry in text.splitlines()[1].split(",")}
    address = host.run("hostname -I").stdout.split()[0]
    wanted = {f"DNS:{name_of(host)}", f"IP Address:{address}"}
    wanted |= set(EXTRA_SANS.get(service, []) + HOST_EXTRA_SANS.get(name_of(host), []))
    assert wanted <= sans, sans
    others = {s for other, extra in EXTRA_SANS.items() if other != service for s in extra}
    assert not others & sans


@each_service
def test_key_usage_and_constraints(host, service):
    need(host, service)
    name = SERVICES[service][0]
    text = openssl(
        host,
        f"openssl x509 -in {CERT_DIR}/{name}.crt -noout -subject -issuer "
        "-ext keyUsage,basicConstraints,extendedKeyUsage",
    )
    assert "X509v3 Key Usage: critical\n    Digital Signature\n" in text
    assert "X509v3 Basic Constraints: critical\n    CA:FALSE\n" in text
    assert f"CN = {CA_NAME}" in text
    # The MQTT identity is not the TLS certificate's (issue 9, defect 3).
    prefix = "mqtt:" if service == "controller_mqtt" else ""
    assert re.search(rf"subject=.*CN = {re.escape(prefix + name_of(host))}(,|$)", text, re.M), text


@each_service
def test_key_is_p256_readable_by_its_group_only_and_matches(host, service):
    need(host, service)
    name, group, _, _ = SERVICES[service]
    key = host.file(f"{CERT_DIR}/{name}.key")
    assert (key.user, key.group, key.mode) == ("root", group, 0o640)
    cert = host.file(f"{CERT_DIR}/{name}.crt")
    assert (cert.user, cert.group, cert.mode) == ("root", "root", 0o644)
    assert "NIST CURVE: P-256" in openssl(host, f"openssl pkey -in {key.path} -noout -text")
    assert openssl(host, f"openssl pkey -in {key.path} -pubout") == openssl(
        host, f"openssl x509 -in {cert.path} -noout -pubkey"
    )


@each_service
def test_lifetime_is_the_default_year(host, service):
    need(host, service)
    name = SERVICES[service][0]
    dates = dict(
        line.split("=", 1)
        for line in openssl(
            host, f"openssl x509 -in {CERT_DIR}/{name}.crt -noout -startdate -enddate"
        ).splitlines()
    )
    parse = lambda text: datetime.strptime(text, "%b %d %H:%M:%S %Y %Z")  # noqa: E731
    lifetime = parse(dates["notAfter"]) - parse(dates["notBefore"])
    # 365 days from now, backdated 5 minutes against clock skew.
    assert timedelta(days=365) <= lifetime <= timedelta(days=365, minutes=10)


def test_broker_users_read_their_own_keys_only(host):
    if name_of(host) != "ca-broker":
        pytest.skip("Mosquitto runs on ca-broker")
    assert {"pdsno-certs", "pdsno-certs-mosquitto"} <= set(host.user("mosquitto").groups)
    readable = "runuser -u mosquitto -- test -r {}/{}.key"
    assert host.run(readable.format(CERT_DIR, "mosquitto")).rc == 0
    assert host.run(readable.format(CERT_DIR, "postgresql")).rc != 0


@pytest.mark.parametrize("ca", ["ca1", "ca2"])
def test_ca_keys_are_encrypted_and_private_on_the_control_node(ca):
    key = ca_dir() / ca / "ca.key"
    assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert key.stat().st_mode & 0o777 == 0o600
    assert (ca_dir() / ca).stat().st_mode & 0o777 == 0o700


def test_keys_stay_where_they_were_made(host):
    central = ca_dir() / "leaf-keys" / name_of(host)
    if name_of(host) == "ca-broker":
        # pdsno_ca_leaf_keys_on_host (default): made on the host, never copied.
        assert not central.exists()
        return
    # pdsno_ca_leaf_keys_on_host: false: kept on the CA side, copied as is.
    for service in services_of(host):
        name = SERVICES[service][0]
        kept = central / f"{name}.key"
        assert kept.stat().st_mode & 0o777 == 0o600
        assert host.file(f"{CERT_DIR}/{name}.key").content_string == kept.read_text()


def test_converge_renewed_only_the_certificate_inside_the_window(host):
    prepared, converged = record(host, "prepared"), record(host, "before_rotation")
    now = datetime.now(UTC).replace(tzinfo=None)
    for service in services_of(host):
        crt = SERVICES[service][0] + ".crt"
        expiry = datetime.strptime(prepared["not_after"][crt], "%Y%m%d%H%M%SZ")
        if service == "mosquitto":
            assert expiry - now < timedelta(days=20), "prepare issues it for 20 days"
            assert converged["serials"][crt] != prepared["serials"][crt], "not renewed"
            renewed = datetime.strptime(converged["not_after"][crt], "%Y%m%d%H%M%SZ")
            assert renewed - now > timedelta(days=364)
        else:
            assert expiry - now > timedelta(days=364)
            assert converged["serials"][crt] == prepared["serials"][crt], "renewed for nothing"


def test_check_mode_reported_the_renewal_and_wrote_nothing(host):
    prepared, checked = record(host, "prepared"), record(host, "after_check")
    assert checked["checksums"] == prepared["checksums"]
    assert checked["ca_checksums"] == prepared["ca_checksums"]
    for service in services_of(host):
        issued = checked["issued"][service]
        assert issued["renewed"] is False
        if service == "mosquitto":
            assert issued["would_renew"] is True
            assert any("pdsno_ca_renew_before_days" in reason for reason in issued["reasons"])
        else:
            assert issued["would_renew"] is False
            assert issued["reasons"] == []


def test_rotation_reissued_every_certificate_and_kept_the_keys(host):
    before, after = record(host, "before_rotation"), record(host, "after_rotation")
    for service in services_of(host):
        name = SERVICES[service][0]
        assert after["serials"][f"{name}.crt"] != before["serials"][f"{name}.crt"]
        key = f"{CERT_DIR}/{name}.key"
        assert after["checksums"][key] == before["checksums"][key]
        issued = after["issued"][service]
        assert issued["renewed"] is True
        assert issued["serial"] == after["serials"][f"{name}.crt"]
        assert "rotation forced (pdsno_ca_force_renew)" in issued["reasons"]
    assert after["checksums"][f"{CERT_DIR}/ca.crt"] == before["checksums"][f"{CERT_DIR}/ca.crt"]


def test_rollover_step_1_trusts_both_cas_and_reissues_nothing(host):
    rotated, step = record(host, "after_rotation"), record(host, "rollover_1")
    assert step["bundle_cas"] == 2
    assert step["serials"] == rotated["serials"] | {"ca.crt": step["serials"]["ca.crt"]}
    assert set(step["issuers"].values()) == {OLD_CA}


def test_rollover_step_2_reissues_everything_with_the_new_ca_and_the_same_keys(host):
    before, step = record(host, "rollover_1"), record(host, "rollover_2")
    assert step["bundle_cas"] == 2
    for service in services_of(host):
        name = SERVICES[service][0]
        assert step["issuers"][f"{name}.crt"] == CA_NAME
        assert step["serials"][f"{name}.crt"] != before["serials"][f"{name}.crt"]
        key = f"{CERT_DIR}/{name}.key"
        assert step["checksums"][key] == before["checksums"][key]
        assert "not issued by the current CA ca2" in step["issued"][service]["reasons"]


def test_rollover_step_3_drops_the_old_ca_only(host):
    before, step = record(host, "rollover_2"), record(host, "rollover_3")
    assert step["bundle_cas"] == 1
    leaves = {k: v for k, v in step["serials"].items() if k != "ca.crt"}
    assert leaves == {k: v for k, v in before["serials"].items() if k != "ca.crt"}


def test_mosquitto_reloads_for_certificates_restarts_for_the_bundle_and_serves_the_current(host):
    if name_of(host) != "ca-broker":
        pytest.skip("Mosquitto runs on ca-broker")
    points = ["before_rotation", "after_rotation", "rollover_1", "rollover_2", "rollover_3"]
    states = {point: record(host, point)["mosquitto"] for point in points}
    main_pid = host.run("systemctl show --property=MainPID --value mosquitto").stdout.strip()
    assert {state["active"] for state in states.values()} == {"active"}
    # A renewal keeps the trust bundle: a reload, the same main PID.
    assert states["after_rotation"]["main_pid"] == states["before_rotation"]["main_pid"] != "0"
    # Each rollover step changes the one trust bundle, which Mosquitto reads
    # only at start: the pdsno_ca role restarted it (issue 9, defect 5).
    for previous, step in pairwise(points[1:]):
        assert states[step]["main_pid"] != states[previous]["main_pid"], step
    assert states["rollover_3"]["main_pid"] == main_pid
    served = openssl(
        host,
        f"openssl s_client -connect 127.0.0.1:8883 -CAfile {CERT_DIR}/ca.crt "
        "-verify_hostname localhost -verify_return_error </dev/null 2>/dev/null "
        "| openssl x509 -noout -serial",
    )
    current = record(host, "rollover_3")["serials"]["mosquitto.crt"]
    assert int(served.strip().split("=", 1)[1], 16) == current
