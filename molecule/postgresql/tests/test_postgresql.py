"""What the postgresql role must leave on live hosts, seen from the database
host itself, from the controller it serves, and from an outsider.

side_effect.yml made rows in pdsno (as the NIB owner, over TLS, from ctl),
and renewed the server certificate with playbooks/rotate_certs.yml; it
recorded in /var/tmp/postgresql-molecule/ the served certificate and server
PID before and after the renewal.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import testinfra

CONF_DIR = "/etc/postgresql/15/main"
CONF_FILE = f"{CONF_DIR}/conf.d/90-pdsno.conf"
LOG = "/var/log/postgresql/postgresql-15-main.log"
UNIT = "postgresql@15-main"
CERT_DIR = "/etc/pdsno/certs"
RECORDS = "/var/tmp/postgresql-molecule"  # noqa: S108 (on the test host, written by the scenario)
SSL_NOT_RELOADED = "SSL configuration was not reloaded"


@pytest.fixture(scope="module")
def hosts(request):
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory, sudo=True)
        for name in ("db", "ctl", "outsider")
    }


@pytest.fixture(scope="module")
def db(hosts):
    return hosts["db"]


@pytest.fixture(scope="module")
def ctl(hosts):
    return hosts["ctl"]


@pytest.fixture(scope="module")
def outsider(hosts):
    return hosts["outsider"]


@pytest.fixture(scope="module")
def settings(db):
    return db.ansible.get_variables()


@pytest.fixture(scope="module")
def db_address(settings):
    return settings["ansible_host"]


def address_of(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


def sql(db, query: str, database: str = "pdsno") -> str:
    """A query as postgres over the local socket (peer)."""
    result = db.run(
        "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", database, query
    )
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def connect(client, conninfo: str, password: str, query: str = "SELECT 1"):
    """psql on a client host with a connection string and a password."""
    return client.run("PGPASSWORD=%s psql -XAtq -c %s %s", password, query, conninfo)


def tls_conninfo(
    db_address: str, host_name: str = "db", sslmode: str = "verify-full", client_cert: bool = True
) -> str:
    """A connection string; with the controller's database client certificate
    (controller-db, CN pdsno) unless client_cert is false."""
    certificate = (
        f" sslcert={CERT_DIR}/controller-db.crt sslkey={CERT_DIR}/controller-db.key"
        if client_cert
        else ""
    )
    return (
        f"host={host_name} hostaddr={db_address} dbname=pdsno user=pdsno "
        f"sslmode={sslmode} sslrootcert={CERT_DIR}/ca.crt connect_timeout=10{certificate}"
    )


def log_size(db) -> int:
    return int(db.run("stat -c %%s %s", LOG).stdout.strip())


def log_since(db, offset: int) -> str:
    return db.run("tail --bytes=+%s %s", str(offset + 1), LOG).stdout


# --- the server --------------------------------------------------------------


def test_postgresql_15_from_debian_runs(db):
    assert db.package("postgresql-15").is_installed
    assert db.service(UNIT).is_running
    assert db.service("postgresql").is_enabled


def test_settings_in_force_come_from_the_role(db):
    rows = sql(
        db,
        "SELECT name, setting, sourcefile FROM pg_settings WHERE name IN ("
        "'ssl', 'ssl_min_protocol_version', 'password_encryption', 'log_connections',"
        " 'log_disconnections', 'log_statement', 'log_line_prefix', 'ssl_cert_file',"
        " 'ssl_key_file') ORDER BY name",
    )
    settings = {}
    for line in rows.splitlines():
        name, value, source = line.split("|")
        settings[name] = value
        assert source == CONF_FILE, f"{name} comes from {source}"
    assert settings["ssl"] == "on"
    assert settings["ssl_min_protocol_version"] == "TLSv1.2"
    assert settings["password_encryption"] == "scram-sha-256"  # noqa: S105 (a method)
    assert settings["log_connections"] == "on"
    assert settings["log_disconnections"] == "on"
    assert settings["log_statement"] == "ddl"
    assert all(escape in settings["log_line_prefix"] for escape in ("%u", "%d", "%h"))
    assert settings["ssl_cert_file"] == f"{CERT_DIR}/postgresql.crt"
    assert settings["ssl_key_file"] == f"{CERT_DIR}/postgresql.key"
    assert sql(db, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_listens_on_localhost_and_its_own_address_only(db, db_address):
    assert sql(db, "SHOW listen_addresses") == f"localhost,{db_address}"
    # No wildcard listener: 0.0.0.0:5432 (hex 1538), state LISTEN (0A).
    listeners = db.file("/proc/net/tcp").content_string
    assert not re.search(r"^\s*\d+: 00000000:1538 00000000:0000 0A", listeners, re.M)


def test_config_files_belong_to_postgres_and_are_not_world_readable(db):
    paths = db.run("find %s -mindepth 1", CONF_DIR).stdout.split()
    assert CONF_FILE in paths
    assert f"{CONF_DIR}/pg_hba.conf" in paths
    for path in paths:
        entry = db.file(path)
        assert entry.user == "postgres", path
        assert entry.mode & 0o007 == 0, f"{path} is {oct(entry.mode)}"


def test_pg_hba_allows_the_controller_over_tls_and_rejects_the_rest(db, ctl):
    rules = sql(
        db,
        "SELECT type, database, user_name, coalesce(address, ''), coalesce(netmask, ''),"
        " auth_method FROM pg_hba_file_rules ORDER BY line_number",
    ).splitlines()
    assert rules == [
        "local|{all}|{postgres}|||peer",
        f"hostssl|{{pdsno}}|{{pdsno}}|{address_of(ctl)}|255.255.255.255|scram-sha-256",
        "local|{all}|{all}|||reject",
        "hostnossl|{all}|{all}|all||reject",
        "hostssl|{all}|{all}|all||reject",
        "host|{all}|{all}|all||reject",
    ]
    assert sql(db, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"


def test_tls_key_is_readable_by_the_server_only_through_its_groups(db):
    key = db.file(f"{CERT_DIR}/postgresql.key")
    assert (key.user, key.group, key.mode) == ("root", "pdsno-certs-postgresql", 0o640)
    assert {"pdsno-certs", "pdsno-certs-postgresql"} <= set(db.user("postgres").groups)
    # The running server has those groups (it was restarted once for them).
    pid = db.file("/var/lib/postgresql/15/main/postmaster.pid").content_string.split()[0]
    gids = re.search(r"^Groups:\s*(.*)$", db.file(f"/proc/{pid}/status").content_string, re.M)
    assert db.group("pdsno-certs-postgresql").gid in {int(g) for g in gids.group(1).split()}


def test_server_presents_the_ca_issued_certificate(db):
    served = db.run(
        "openssl s_client -starttls postgres -connect 127.0.0.1:5432 </dev/null 2>/dev/null"
        " | openssl x509 -noout -fingerprint -sha256"
    )
    on_disk = db.run(
        "openssl x509 -in %s -noout -fingerprint -sha256", f"{CERT_DIR}/postgresql.crt"
    )
    assert served.rc == 0 and served.stdout.strip() == on_disk.stdout.strip()


# --- connections -------------------------------------------------------------


def test_connection_without_tls_is_refused(ctl, settings, db_address):
    result = connect(
        ctl, tls_conninfo(db_address, sslmode="disable"), settings["postgresql_password"]
    )
    assert result.rc != 0
    assert "pg_hba.conf rejects connection" in result.stderr
    assert "no encryption" in result.stderr


def test_the_right_password_without_a_client_certificate_is_refused(ctl, settings, db_address):
    """clientcert=verify-full by default: a password alone does not log in."""
    result = connect(
        ctl, tls_conninfo(db_address, client_cert=False), settings["postgresql_password"]
    )
    assert result.rc != 0
    assert "connection requires a valid client certificate" in result.stderr


def test_tls_with_the_right_password_works_and_checks_the_host_name(ctl, settings, db_address):
    password = settings["postgresql_password"]
    query = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    for conninfo in (
        tls_conninfo(db_address),  # the inventory name, a DNS SAN
        tls_conninfo(db_address, host_name=db_address),  # the address, an IP SAN
    ):
        result = connect(ctl, conninfo, password, query)
        assert result.rc == 0, result.stderr
        ssl, version = result.stdout.strip().split("|")
        assert ssl == "t"
        assert version in ("TLSv1.2", "TLSv1.3")


def test_verify_full_refuses_a_name_the_certificate_does_not_carry(ctl, settings, db_address):
    result = connect(
        ctl,
        tls_conninfo(db_address, host_name="not-the-db.example"),
        settings["postgresql_password"],
    )
    assert result.rc != 0
    assert "does not match host name" in result.stderr


def test_wrong_password_fails(ctl, db_address):
    result = connect(ctl, tls_conninfo(db_address), "not-the-password-of-pdsno")
    assert result.rc != 0
    assert 'password authentication failed for user "pdsno"' in result.stderr


def test_outsider_is_refused_even_with_the_right_password(outsider, settings, db_address):
    result = connect(
        outsider, tls_conninfo(db_address, sslmode="require"), settings["postgresql_password"]
    )
    assert result.rc != 0
    assert f'pg_hba.conf rejects connection for host "{address_of(outsider)}"' in result.stderr


def test_tls_older_than_1_2_is_refused(ctl, db_address):
    result = ctl.run(
        "openssl s_client -starttls postgres -connect %s:5432 -tls1_1 -cipher DEFAULT:@SECLEVEL=0"
        " </dev/null 2>&1",
        db_address,
    )
    assert "alert protocol version" in result.stdout


def test_audit_log_records_connections_and_failures(db, ctl, outsider, settings, db_address):
    password = settings["postgresql_password"]
    offset = log_size(db)
    assert connect(ctl, tls_conninfo(db_address), password).rc == 0
    assert connect(ctl, tls_conninfo(db_address), "not-the-password-of-pdsno").rc != 0
    assert connect(outsider, tls_conninfo(db_address, sslmode="require"), password).rc != 0
    time.sleep(1)
    logged = log_since(db, offset)
    ctl_address, outsider_address = address_of(ctl), address_of(outsider)
    assert re.search(
        rf"user=pdsno db=pdsno client={re.escape(ctl_address)} .*connection authorized: "
        r"user=pdsno database=pdsno .*SSL enabled",
        logged,
    )
    assert re.search(r"LOG:  disconnection: session time: .* user=pdsno database=pdsno", logged)
    failed = r"FATAL:  password authentication failed for user \"pdsno\""
    assert re.search(rf"client={re.escape(ctl_address)} .*{failed}", logged)
    assert f'pg_hba.conf rejects connection for host "{outsider_address}"' in logged


def test_ddl_is_logged(db):
    offset = log_size(db)
    sql(db, "CREATE TABLE molecule_ddl_probe (id int); DROP TABLE molecule_ddl_probe;")
    time.sleep(1)
    logged = log_since(db, offset)
    assert "statement: CREATE TABLE molecule_ddl_probe" in logged
    assert "DROP TABLE molecule_ddl_probe" in logged


def test_the_password_never_reaches_a_log(db, settings):
    # The password itself must not be on the command line: sudo logs the
    # commands it runs, and the search would find itself.
    encoded = base64.b64encode(settings["postgresql_password"].encode()).decode()
    pattern = f'"$(echo {encoded} | base64 -d)"'
    files = db.run(f"grep -rlsF -- {pattern} /var/log /var/lib/postgresql/15/main/log")
    assert files.stdout == "", files.stdout
    journal = db.run(f"journalctl --no-pager -o cat | grep -cF -- {pattern}")
    assert journal.stdout.strip() == "0"


def test_reload_takes_the_tls_configuration(db):
    assert SSL_NOT_RELOADED not in db.file(LOG).content_string
    before = sql(db, "SELECT extract(epoch FROM pg_conf_load_time())")
    offset = log_size(db)
    assert db.run("systemctl reload %s", UNIT).rc == 0
    for _ in range(30):
        if sql(db, "SELECT extract(epoch FROM pg_conf_load_time())") != before:
            break
        time.sleep(1)
    else:
        pytest.fail("the server did not reload")
    logged = log_since(db, offset)
    assert "received SIGHUP, reloading configuration files" in logged
    assert SSL_NOT_RELOADED not in logged
    test_server_presents_the_ca_issued_certificate(db)


def record(db, name: str) -> dict:
    return json.loads(db.file(f"{RECORDS}/{name}.json").content_string)


def test_certificate_renewal_reloads_the_server_without_a_restart(db):
    before, after = record(db, "before_renewal"), record(db, "after_renewal")
    assert before["served"] == before["file"]
    assert after["file"] != before["file"], "the certificate was not renewed"
    assert after["served"] == after["file"], "the server still presents the old certificate"
    assert after["pid"] == before["pid"], "the server was restarted, not reloaded"


# --- the NIB owner -----------------------------------------------------------


def test_nib_owner_has_no_rights_beyond_its_database(db):
    row = sql(
        db,
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin,"
        " rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'pdsno'",
    )
    assert row == "f|f|f|f|f|t|t"
    assert (
        sql(db, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'pdsno'")
        == "pdsno"
    )
    # PUBLIC may not connect; only the owner (and superusers) may.
    assert sql(db, "SELECT has_database_privilege('public', 'pdsno', 'CONNECT')") == "f"
