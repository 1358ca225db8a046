"""What the logging role must leave on live hosts: rotation that keeps the
service writing, and the controller's journal on the log host, over mutual
TLS with the PDSNO CA only, without losses across an outage of the log host.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import testinfra

PG_LOG = "/var/log/postgresql/postgresql-15-main.log"
RULE = "/etc/logrotate.d/pdsno-postgresql"
REMOTE_DIR = "/var/log/journal/remote"
ROGUE = "/var/tmp/rogue-receiver"  # noqa: S108 (on the test host, made by prepare.yml)
ROGUE_PORT = 19533


@pytest.fixture(scope="module")
def hosts(request):
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory, sudo=True)
        for name in ("ctl", "log1")
    }


@pytest.fixture(scope="module")
def ctl(hosts):
    return hosts["ctl"]


@pytest.fixture(scope="module")
def log1(hosts):
    return hosts["log1"]


def write_event(host, marker: str) -> None:
    """A failed-login-like line: authpriv.warning, with the controller's fields."""
    entry = (
        f"MESSAGE=authentication failed for operator ({marker})\n"
        "PRIORITY=4\nSYSLOG_FACILITY=10\nSYSLOG_IDENTIFIER=pdsno-controller\n"
        f"PDSNO_EVENT=auth_failed\nPDSNO_MARKER={marker}\n"
    )
    host.check_output("printf %s | logger --journald", entry)


def received(log1, marker: str) -> list[dict]:
    result = log1.run(
        "journalctl --directory=%s PDSNO_MARKER=%s -o json --no-pager", REMOTE_DIR, marker
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def wait_received(log1, markers: list[str], within: float) -> tuple[float, set[str]]:
    start = time.monotonic()
    missing = set(markers)
    while missing and time.monotonic() - start < within:
        missing = {m for m in missing if not received(log1, m)}
        if missing:
            time.sleep(0.5)
    return time.monotonic() - start, missing


def wait_for(condition, within: float) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_forced_rotation_keeps_postgresql_writing_to_the_live_file(ctl):
    assert ctl.file("/etc/logrotate.d/postgresql-common").exists is False
    assert ctl.file("/etc/logrotate.d/postgresql-common.disabled").exists
    assert "copytruncate" in ctl.file(RULE).content_string
    ctl.check_output("logrotate -d /etc/logrotate.conf")
    ctl.check_output("logrotate --force %s", RULE)
    assert ctl.file(f"{PG_LOG}.1").exists, "no rotated file"
    marker = f"pdsno-rotation-{uuid.uuid4().hex[:8]}"
    ctl.check_output(
        "runuser -u postgres -- psql -XAtq -c %s",
        f"DO $$ BEGIN RAISE LOG '{marker}'; END $$",
    )
    deadline = time.monotonic() + 10
    while marker not in ctl.file(PG_LOG).content_string and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marker in ctl.file(PG_LOG).content_string, "PostgreSQL no longer writes its log"
    assert marker not in ctl.file(f"{PG_LOG}.1").content_string


def test_upload_uses_the_pdsno_ca_both_ways(ctl, log1):
    upload = ctl.file("/etc/systemd/journal-upload.conf.d/pdsno.conf").content_string
    assert "TrustedCertificateFile=/etc/pdsno/certs/ca.crt" in upload
    assert "ServerCertificateFile=/etc/pdsno/certs/journal-upload.crt" in upload
    remote = log1.file("/etc/systemd/journal-remote.conf.d/pdsno.conf").content_string
    assert "TrustedCertificateFile=/etc/pdsno/certs/ca.crt" in remote
    assert ctl.service("systemd-journal-upload").is_running
    assert (
        log1.socket("tcp://0.0.0.0:19532").is_listening
        or log1.socket("tcp://:::19532").is_listening
    )


def test_an_auth_event_reaches_the_log_host_within_10_seconds(ctl, log1):
    marker = f"pdsno-ship-{uuid.uuid4().hex[:8]}"
    write_event(ctl, marker)
    elapsed, missing = wait_received(log1, [marker], within=10)
    print(f"shipped in {elapsed:.1f} s")
    assert not missing, f"not on the log host after {elapsed:.1f} s"
    entry = received(log1, marker)[0]
    assert entry["PRIORITY"] == "4" and entry["SYSLOG_FACILITY"] == "10"
    assert entry["PDSNO_EVENT"] == "auth_failed"
    assert entry["SYSLOG_IDENTIFIER"] == "pdsno-controller"


def test_nothing_lost_while_the_log_host_is_away_for_30_seconds(ctl, log1):
    log1.check_output("systemctl stop systemd-journal-remote.socket systemd-journal-remote.service")
    markers = []
    try:
        for _ in range(6):  # one line every 5 s, for 30 s
            marker = f"pdsno-outage-{uuid.uuid4().hex[:8]}"
            write_event(ctl, marker)
            markers.append(marker)
            time.sleep(5)
        assert all(not received(log1, m) for m in markers), "the receiver was not away"
    finally:
        log1.check_output("systemctl start systemd-journal-remote.socket")
    elapsed, missing = wait_received(log1, markers, within=60)
    print(
        f"{len(markers) - len(missing)} of {len(markers)} lines arrived,"
        f" {elapsed:.1f} s after the log host returned"
    )
    assert not missing


def test_upload_refuses_a_receiver_not_certified_by_the_pdsno_ca(ctl, log1):
    """A TLS server on the log host with a certificate of another CA (openssl
    s_server: a fake receiver that reads no receiver configuration, so the
    real one's settings cannot make it start or fail)."""
    address = log1.ansible.get_variables()["ansible_host"]
    heard = f"{ROGUE}/heard.log"
    log1.run("systemctl stop rogue-receiver.service")
    log1.check_output("rm -f %s", heard)
    log1.check_output(
        "systemd-run --unit=rogue-receiver --collect"
        f" --property=StandardOutput=file:{heard} --property=StandardError=file:{heard}"
        f" /usr/bin/openssl s_server -accept {ROGUE_PORT}"
        f" -cert {ROGUE}/server.crt -key {ROGUE}/server.key"
    )
    listening = wait_for(lambda: log1.socket(f"tcp://0.0.0.0:{ROGUE_PORT}").is_listening, 10)
    assert listening, log1.run("systemctl status rogue-receiver.service").stdout
    # The one-shot upload would read the service's URL= too.
    conf = "/etc/systemd/journal-upload.conf.d/pdsno.conf"
    ctl.check_output("mv %s %s.off", conf, conf)
    try:
        result = ctl.run(
            "timeout 20 /lib/systemd/systemd-journal-upload --url=https://%s:%s"
            " --key=/etc/pdsno/certs/journal-upload.key"
            " --cert=/etc/pdsno/certs/journal-upload.crt"
            " --trust=/etc/pdsno/certs/ca.crt",
            address,
            str(ROGUE_PORT),
        )
    finally:
        ctl.run("mv %s.off %s", conf, conf)
        log1.run("systemctl stop rogue-receiver.service")
    print(result.stderr[-400:])
    assert result.rc not in (0, 124), result
    assert "certificate" in result.stderr.lower() or "ssl" in result.stderr.lower(), result.stderr
    # The fake receiver saw a connection, and no request came through it.
    log = log1.file(heard).content_string
    assert "ACCEPT" in log, log
    assert "POST" not in log, log


def test_receiver_retention_cap(log1):
    assert log1.service("pdsno-journal-remote-vacuum.timer").is_enabled
    unit = log1.file("/etc/systemd/system/pdsno-journal-remote-vacuum.service").content_string
    assert "--vacuum-size=4G" in unit and "--directory=/var/log/journal/remote" in unit
    log1.check_output("systemctl start pdsno-journal-remote-vacuum.service")
