"""What the pgbackrest role and restore_nib.yml must leave on live hosts.

side_effect.yml wrote rows A, took a full backup, wrote rows B, noted the
time T, wrote rows C; cut the database host off the backup host's port while
writing rows D, then let it back; restored to T onto the fresh host with
playbooks/restore_nib.yml; ran the verification service and searched the
repository for a value of rows A. It recorded what it saw in
/var/tmp/backup-molecule/.
"""

from __future__ import annotations

import json

import pytest
import testinfra

RECORDS = "/var/tmp/backup-molecule"  # noqa: S108 (on the test hosts, written by the scenario)
CONF = "/etc/pgbackrest/pgbackrest.conf"
REPO = "/var/lib/pgbackrest"
METRICS = "/var/lib/prometheus/node-exporter"
TIMERS = ("pdsno-pgbackrest-full", "pdsno-pgbackrest-diff", "pdsno-pgbackrest-verify")


@pytest.fixture(scope="module")
def hosts(request):
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory, sudo=True)
        for name in ("db", "backup", "fresh")
    }


@pytest.fixture(scope="module")
def db(hosts):
    return hosts["db"]


@pytest.fixture(scope="module")
def backup(hosts):
    return hosts["backup"]


@pytest.fixture(scope="module")
def fresh(hosts):
    return hosts["fresh"]


def record(host, name: str) -> dict:
    return json.loads(host.file(f"{RECORDS}/{name}.json").content_string)


def sql(host, query: str) -> str:
    result = host.run("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d pdsno -c %s", query)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def info(backup) -> dict:
    result = backup.run(
        "runuser -u postgres -- pgbackrest --config=%s --stanza=pdsno --output=json info", CONF
    )
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)[0]


def test_restore_to_t_on_the_fresh_host_holds_exactly_rows_a_and_b(fresh):
    assert record(fresh, "restored")["rows"] == ["A:3", "B:3"]
    assert sql(fresh, "SELECT pg_is_in_recovery()") == "f"


def test_the_database_host_kept_every_row(db):
    rows = sql(
        db, "SELECT batch || ':' || count(*) FROM backup_probe GROUP BY batch ORDER BY batch"
    )
    assert rows.split() == ["A:3", "B:3", "C:3", "D:4"]


def test_the_repository_holds_no_plaintext_of_the_rows(db, backup):
    assert record(backup, "plaintext")["files"] == []
    # The same search finds the value in the database's own files: the
    # search would have found it in an unencrypted repository.
    sql(db, "CHECKPOINT")
    found = db.run("grep -rlaF pdsno-backup-canary- /var/lib/postgresql/15/main/base")
    assert found.rc == 0 and found.stdout.strip()


def test_the_repository_is_encrypted_and_backed_up(backup):
    stanza = info(backup)
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert stanza["cipher"] == "aes-256-cbc"
    assert any(entry["type"] == "full" for entry in stanza["backup"])


def test_the_passphrase_stays_on_the_backup_host(db, backup):
    passphrase = backup.ansible.get_variables()["pgbackrest_cipher_pass"]
    conf = backup.file(CONF)
    assert (conf.user, conf.group, conf.mode) == ("root", "postgres", 0o640)
    assert f"repo1-cipher-pass={passphrase}" in conf.content_string
    assert passphrase not in db.file(CONF).content_string
    assert "repo1-host-type=tls" in db.file(CONF).content_string


def test_wal_of_the_outage_reached_the_repository(db, backup):
    outage = record(db, "outage")
    assert outage["failed_during"] > outage["failed_before"]
    assert outage["rows_d_written"] == 4  # the database served throughout
    assert set(outage["segments"]) <= set(outage["waiting_in_pg_wal"].split(","))
    for segment in outage["segments"]:
        found = backup.run("find %s/archive/pdsno -name %s", REPO, f"{segment}-*")
        assert found.stdout.strip(), f"{segment} is not in the repository"
        # Not "no .ready file at all": archive_timeout may switch a new
        # segment at any moment, and it waits a second or two to be shipped.
        ready = f"/var/lib/postgresql/15/main/pg_wal/archive_status/{segment}.ready"
        assert not db.file(ready).exists, f"{segment} still waits in pg_wal"


def test_archiving_goes_through_pgbackrest(db):
    assert sql(db, "SHOW archive_mode") == "on"
    assert "archive-push %p" in sql(db, "SHOW archive_command")


def test_timers_are_enabled_and_waiting(backup):
    for name in TIMERS:
        timer = backup.service(f"{name}.timer")
        assert timer.is_enabled and timer.is_running, name


def test_the_verification_passed_and_the_metrics_say_so(backup):
    result = backup.run("systemctl show pdsno-pgbackrest-verify.service -p Result --value")
    assert result.stdout.strip() == "success"
    verify = backup.file(f"{METRICS}/pdsno_backup_verify.prom").content_string
    assert 'pdsno_backup_verify_success{stanza="pdsno"} 1' in verify
    backups = backup.file(f"{METRICS}/pdsno_backup.prom").content_string
    assert 'pdsno_backup_last_success_timestamp_seconds{stanza="pdsno",type="full"}' in backups


def test_the_tls_servers_listen_on_8432_and_want_a_client_certificate(db, backup):
    for host in (db, backup):
        # tls-server-address=* listens on IPv4 only, which "tcp://8432" does not count.
        assert any(s.endswith(":8432") for s in host.socket.get_listening_sockets())
    # Without a client certificate of the CA the repository's server ends the
    # handshake. With TLS 1.3 its alert comes after the client's side of the
    # handshake is done: s_client must stay (its input open for 5 s) to read
    # it, or on a loaded machine it closes first and exits 0 (CI saw that).
    address = backup.ansible.get_variables()["ansible_host"]
    probe = db.run(
        "sleep 5 | openssl s_client -connect %s:8432 -CAfile /etc/pdsno/certs/ca.crt -brief",
        address,
    )
    # The server's alert may come with bytes that are not text.
    said = (probe.stdout_bytes + probe.stderr_bytes).decode(errors="replace").lower()
    assert "certificate required" in said or probe.rc != 0
