"""The PDSNO broker, tried with real MQTT clients and the certificates pdsno_ca issued.

mqtt-broker runs Mosquitto and is also the global controller; mqtt-rc-a and
mqtt-rc-b are controllers of region-a and region-b. Clients run on the hosts
with the controller-mqtt certificate of the host they run on (its common
name, mqtt:<inventory hostname>, is the identity the ACL knows; the
controller's TLS certificate has another). side_effect.yml records the
broker around a certificate rotation, a rerun of the role, a trust bundle
change and a foreign conf.d file in /var/tmp/mosquitto-molecule/<step>.json.
"""

from __future__ import annotations

import json
import shlex
import uuid

import pytest
import testinfra

BROKER, RC_A, RC_B = "mqtt-broker", "mqtt-rc-a", "mqtt-rc-b"
CERTS = "/etc/pdsno/certs"
RECORDS = "/var/tmp/mosquitto-molecule"  # noqa: S108 (on the test host, written by side_effect)
MONITOR = ("monitor", "molecule-only-monitor-password")  # molecule.yml, test-only
ACL = "/etc/mosquitto/pdsno.acl"
PASSWORD_FILE = "/etc/mosquitto/pdsno.passwd"  # noqa: S105 (a path)


def mqtt_identity(host: str) -> str:
    """The common name of a controller's controller-mqtt certificate."""
    return f"mqtt:{host}"


@pytest.fixture(scope="module")
def hosts(request):
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}", sudo=True)
        for name in (BROKER, RC_A, RC_B)
    }


@pytest.fixture(scope="module")
def broker(hosts):
    return hosts[BROKER]


@pytest.fixture(scope="module")
def address(broker):
    """The broker's address on the scenario network (a SAN of its certificate)."""
    return broker.ansible.get_variables()["ansible_host"]


def tls(address: str, identity: str | None = "controller-mqtt") -> str:
    """mosquitto_pub/sub options for the TLS listener, with this host's certificate."""
    options = f"-h {address} -p 8883 --cafile {CERTS}/ca.crt"
    if identity:
        options += f" --cert {CERTS}/{identity}.crt --key {CERTS}/{identity}.key"
    return options


def local(user: tuple[str, str] | None = MONITOR) -> str:
    """Options for the plain listener of 127.0.0.1, with a password user."""
    options = "-h 127.0.0.1 -p 1883"
    if user:
        options += f" -u {user[0]} -P {shlex.quote(user[1])}"
    return options


def token() -> str:
    return uuid.uuid4().hex[:12]


def subscribe_then(host, sub: str, topics: list[str], publish: str, seconds: int = 4):
    """Subscribe on HOST, run PUBLISH (shell, any host via its own call) once subscribed.

    Returns what the subscriber printed (`topic payload` lines) in SECONDS.
    The subscriber runs in the background; PUBLISH starts after a second.
    """
    filters = " ".join(f"-t {shlex.quote(t)}" for t in topics)
    script = (
        f"mosquitto_sub {sub} {filters} -q 1 -v -W {seconds} > /tmp/sub.$$ 2>&1 & sub=$!; "
        f"sleep 1; {publish}; wait $sub; cat /tmp/sub.$$; rm -f /tmp/sub.$$"
    )
    return host.run(script)


def collect(subscriber, sub: str, topics: list[str], publisher, publish: str, seconds: int = 5):
    """Subscribe on SUBSCRIBER and publish from PUBLISHER meanwhile; the lines received."""
    filters = " ".join(f"-t {shlex.quote(t)}" for t in topics)
    out = f"/tmp/mqtt-{token()}.out"  # noqa: S108 (on the test host)
    subscriber.run(
        f"nohup timeout {seconds + 2} mosquitto_sub {sub} {filters} -q 1 -v -W {seconds} "
        f"> {out} 2>&1 &"
    )
    subscriber.run("sleep 1")
    published = publisher.run(publish)
    subscriber.run(f"sleep {seconds}")
    received = subscriber.run(f"cat {out}; rm -f {out}").stdout
    return published, received


def pub(options: str, topic: str, message: str) -> str:
    return f"mosquitto_pub {options} -q 1 -t {shlex.quote(topic)} -m {shlex.quote(message)}"


def record(broker, step: str) -> dict:
    return json.loads(broker.file(f"{RECORDS}/{step}.json").content_string)


# --- what is deployed -------------------------------------------------------


def test_listens_on_tls_everywhere_and_plain_on_loopback_only(broker):
    listening = broker.run("ss -Hltn").stdout
    sockets = {line.split()[3] for line in listening.splitlines()}
    assert {"0.0.0.0:8883", "[::]:8883"} <= sockets
    assert "127.0.0.1:1883" in sockets
    assert not any(s.endswith(":1883") and s != "127.0.0.1:1883" for s in sockets), sockets


def test_packaged_configuration_is_untouched(broker):
    conffiles = broker.run("dpkg-query -W -f '${Conffiles}' mosquitto").stdout
    md5 = next(
        line.split()[1]
        for line in conffiles.splitlines()
        if line.split()[0] == "/etc/mosquitto/mosquitto.conf"
    )
    assert broker.run("md5sum /etc/mosquitto/mosquitto.conf").stdout.split()[0] == md5


def test_puback_is_not_held_by_nagle(broker):
    """set_tcp_nodelay is on: the last value Mosquitto reads (its conf.d in order) wins."""
    dropins = broker.run("ls -1 /etc/mosquitto/conf.d/*.conf").stdout.split()
    files = ["/etc/mosquitto/mosquitto.conf", *sorted(dropins)]
    values = [
        line.split()[1]
        for path in files
        for line in broker.file(path).content_string.splitlines()
        if line.split()[:1] == ["set_tcp_nodelay"]
    ]
    assert values and values[-1] == "true", values


def test_broker_logs_to_the_journal_not_to_its_file(broker):
    since = broker.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    assert broker.run(pub(tls("127.0.0.1"), "pdsno/v1/global/log", "x")).rc == 0
    journal = broker.run(
        f"journalctl -u mosquitto --since {shlex.quote(since)} -o json --no-pager"
    ).stdout
    entries = [json.loads(line) for line in journal.splitlines()]
    connected = [e for e in entries if "New client connected" in e.get("MESSAGE", "")]
    assert connected, journal
    # Through syslog: each message keeps its priority (notice is 5).
    assert connected[0]["SYSLOG_IDENTIFIER"] == "mosquitto"
    assert connected[0]["PRIORITY"] == "5"
    assert f"u'{mqtt_identity(BROKER)}'" in connected[0]["MESSAGE"]
    pid = broker.run("systemctl show --property=MainPID --value mosquitto").stdout.strip()
    assert "/var/log/mosquitto" not in broker.run(f"ls -l /proc/{pid}/fd").stdout


def test_unit_is_sandboxed_and_runs_unprivileged(broker):
    unit = broker.run(
        "systemctl show mosquitto --property=User,NoNewPrivileges,ProtectSystem,"
        "CapabilityBoundingSet,PrivateTmp,ProtectHome,LimitNOFILE"
    ).stdout.splitlines()
    props = dict(line.split("=", 1) for line in unit)
    assert props["User"] == "mosquitto"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["CapabilityBoundingSet"] == ""
    assert props["PrivateTmp"] == "yes"
    assert props["ProtectHome"] == "yes"
    assert props["LimitNOFILE"] == "4096"
    pid = broker.run("systemctl show --property=MainPID --value mosquitto").stdout.strip()
    status = broker.file(f"/proc/{pid}/status").content_string
    assert "CapEff:\t0000000000000000" in status
    # The mount sandbox is in force, not skipped: / is read-only for the
    # broker, /var/lib/mosquitto writable, /home hidden.
    mounts = {
        fields[4]: fields[5].split(",")
        for fields in (
            line.split()
            for line in broker.file(f"/proc/{pid}/mountinfo").content_string.splitlines()
        )
    }
    assert "ro" in mounts["/"]
    assert "rw" in mounts["/var/lib/mosquitto"]
    assert "/home" in mounts
    exposure = broker.run("systemd-analyze security mosquitto --no-pager").stdout
    level = float(exposure.split("Overall exposure level for mosquitto.service:")[1].split()[0])
    assert level < 3.0, exposure


def test_password_file_holds_hashes_only(broker):
    passwd = broker.file(PASSWORD_FILE)
    assert (passwd.user, passwd.group, passwd.mode) == ("root", "mosquitto", 0o640)
    content = passwd.content_string
    assert content.startswith("monitor:$7$")
    assert MONITOR[1] not in content


def test_acl_follows_the_inventory(broker):
    acl = broker.file(ACL).content_string
    global_rules = "topic readwrite pdsno/v1/global/#\ntopic read pdsno/v1/#\n"
    assert f"user {mqtt_identity(BROKER)}\n{global_rules}" in acl
    assert f"user {mqtt_identity(RC_A)}\ntopic readwrite pdsno/v1/region-a/#\n" in acl
    assert f"user {mqtt_identity(RC_B)}\ntopic readwrite pdsno/v1/region-b/#\n" in acl
    # Only MQTT identities: a controller's TLS certificate (CN = its
    # inventory hostname) is nobody here.
    users = [line.split(" ", 1)[1] for line in acl.splitlines() if line.startswith("user ")]
    assert set(users) == {mqtt_identity(h) for h in (BROKER, RC_A, RC_B)} | {"monitor"}
    assert "user monitor\ntopic read $SYS/#\ntopic read pdsno/v1/#\n" in acl


# --- who gets in ------------------------------------------------------------


def test_certified_client_publishes_and_receives(hosts, address):
    rc_a, message = hosts[RC_A], token()
    topic = f"pdsno/v1/region-a/test/{message}"
    result = subscribe_then(rc_a, tls(address), [topic], pub(tls(address), topic, message))
    assert f"{topic} {message}" in result.stdout, result.stdout + result.stderr


def test_client_without_certificate_is_refused(hosts, address):
    rc_a = hosts[RC_A]
    # Not even a valid password helps on the mutual TLS listener.
    for options in (tls(address, None), f"{tls(address, None)} -u {MONITOR[0]} -P {MONITOR[1]}"):
        result = rc_a.run(pub(options, "pdsno/v1/region-a/x", "no certificate"))
        assert result.rc != 0, result.stdout


def test_client_with_a_foreign_certificate_is_refused(hosts, address):
    rc_a = hosts[RC_A]
    rc_a.run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
        "-subj /CN=mqtt-rc-a -keyout /tmp/foreign.key -out /tmp/foreign.crt"
    )
    options = f"{tls(address, None)} --cert /tmp/foreign.crt --key /tmp/foreign.key"
    result = rc_a.run(pub(options, "pdsno/v1/region-a/x", "foreign"))
    rc_a.run("rm -f /tmp/foreign.key /tmp/foreign.crt")
    assert result.rc != 0, result.stdout


def test_anonymous_client_is_refused(broker):
    result = broker.run(pub(local(None), "pdsno/v1/region-a/x", "anonymous"))
    assert result.rc != 0
    assert "not authorised" in (result.stdout + result.stderr).lower()


def test_wrong_password_is_refused(broker):
    result = broker.run(pub(local((MONITOR[0], "not-the-password")), "pdsno/v1/x", "x"))
    assert result.rc != 0


def test_plain_tcp_from_the_network_is_refused(hosts, address):
    options = f"-h {address} -p 1883 -u {MONITOR[0]} -P {MONITOR[1]}"
    result = hosts[RC_A].run(pub(options, "pdsno/v1/x", "plain"))
    assert result.rc != 0
    assert "refused" in (result.stdout + result.stderr).lower()


def test_password_user_reads_on_the_local_listener(broker):
    message = token()
    topic = f"pdsno/v1/global/test/{message}"
    result = subscribe_then(broker, local(), [topic], pub(tls("127.0.0.1"), topic, message))
    assert f"{topic} {message}" in result.stdout, result.stdout + result.stderr


# --- what each may do -------------------------------------------------------


def test_region_a_cannot_publish_to_region_b(hosts, broker, address):
    denied, allowed = token(), token()
    publish = " && ".join(
        [
            pub(tls(address), f"pdsno/v1/region-b/spoofed/{denied}", denied),
            pub(tls(address), f"pdsno/v1/region-a/marker/{allowed}", allowed),
        ]
    )
    # The global controller reads every region.
    published, received = collect(broker, tls("127.0.0.1"), ["pdsno/v1/#"], hosts[RC_A], publish)
    assert published.rc == 0, published.stderr
    assert allowed in received, received
    assert denied not in received, received


def test_region_a_cannot_read_region_b(hosts, address):
    message = token()
    topic = f"pdsno/v1/region-b/secret/{message}"
    _, received = collect(
        hosts[RC_A],
        tls(address),
        ["pdsno/v1/region-b/#"],
        hosts[RC_B],
        pub(tls(address), topic, message),
    )
    assert message not in received, received


def test_only_the_global_controller_publishes_global_policy(hosts, broker, address):
    from_global, from_region = token(), token()
    _, received = collect(
        broker,
        local(),
        ["pdsno/v1/global/#"],
        hosts[RC_A],
        pub(tls(address), f"pdsno/v1/global/policy/{from_region}", from_region),
    )
    assert from_region not in received, received
    result = subscribe_then(
        broker,
        local(),
        ["pdsno/v1/global/#"],
        pub(tls("127.0.0.1"), f"pdsno/v1/global/policy/{from_global}", from_global),
    )
    assert from_global in result.stdout, result.stdout


def test_regional_controller_does_not_read_global_policy(hosts, broker, address):
    message = token()
    _, received = collect(
        hosts[RC_A],
        tls(address),
        ["pdsno/v1/global/#"],
        broker,
        pub(tls("127.0.0.1"), f"pdsno/v1/global/policy/{message}", message),
    )
    assert message not in received, received


def test_nobody_writes_sys(broker):
    written, marker = token(), token()
    publish = " && ".join(
        [
            pub(tls("127.0.0.1"), f"$SYS/pdsno/{written}", written),
            pub(tls("127.0.0.1"), f"pdsno/v1/global/marker/{marker}", marker),
        ]
    )
    topics = ["$SYS/broker/version", "$SYS/pdsno/#", "pdsno/v1/global/marker/#"]
    result = subscribe_then(broker, local(), topics, publish)
    # The monitor reads $SYS (the broker's own, retained version topic) ...
    assert "$SYS/broker/version mosquitto version" in result.stdout, result.stdout
    assert marker in result.stdout, result.stdout
    # ... but what the global controller wrote there never arrived.
    assert written not in result.stdout, result.stdout


# --- persistence -------------------------------------------------------------


@pytest.mark.parametrize("stop", ["restart", "kill"])
def test_queued_qos1_messages_survive_a_broker_restart(hosts, broker, address, stop):
    rc_b, client, messages = hosts[RC_B], f"persist-{token()}", [token() for _ in range(5)]
    topic = f"pdsno/v1/region-b/persist/{client}"
    session = f"{tls(address)} -c -i {client} -q 1 -t {topic}"
    # A persistent session, then the subscriber goes away.
    assert rc_b.run(f"mosquitto_sub {session} -W 1").rc in (0, 27)
    for message in messages:
        assert rc_b.run(pub(tls(address), topic, message)).rc == 0
    if stop == "restart":
        assert broker.run("systemctl restart mosquitto").rc == 0
    else:
        # A hard kill loses what the last autosave (every 5 s) missed: wait for one.
        broker.run("sleep 6")
        assert broker.run("systemctl kill --signal=KILL mosquitto").rc == 0
        broker.run("sleep 2")
    up = broker.run(
        "for i in $(seq 100); do systemctl is-active -q mosquitto"
        " && ss -Hltn | grep -q ':8883 ' && exit 0; sleep 0.2; done; exit 1"
    )
    assert up.rc == 0, "Mosquitto did not come back"
    received = rc_b.run(f"mosquitto_sub {session} -v -C {len(messages)} -W 10")
    assert received.stdout.split() == [w for m in messages for w in (topic, m)], received.stdout


# --- reload, rerun, restart ------------------------------------------------------


def test_renewed_certificate_is_served_after_a_reload_with_the_same_pid(broker):
    before, after = record(broker, "before_rotation"), record(broker, "after_rotation")
    assert before["active"] == after["active"] == "active"
    assert after["cert_serial"] != before["cert_serial"]
    assert before["served_serial"] == before["cert_serial"]
    assert after["served_serial"] == after["cert_serial"]
    assert after["main_pid"] == before["main_pid"] != 0


def test_rerunning_the_role_leaves_the_broker_running(broker):
    after, rerun = record(broker, "after_rotation"), record(broker, "after_rerun")
    assert rerun["main_pid"] == after["main_pid"]
    assert rerun["served_serial"] == after["served_serial"]


def test_the_ca_role_alone_makes_the_broker_trust_a_new_ca(hosts, broker, address):
    """playbooks/ca.yml alone, no mosquitto.yml: the broker trusts the new CA (defect 5)."""
    rerun, trusted = record(broker, "after_rerun"), record(broker, "after_trust")
    assert trusted["active"] == "active"
    # Mosquitto reads its CA file only at start: the pdsno_ca role restarted it.
    assert trusted["main_pid"] != rerun["main_pid"]
    bundle = broker.file(f"{CERTS}/ca.crt").content_string
    assert bundle.count("BEGIN CERTIFICATE") == 2
    listeners = broker.file("/etc/mosquitto/conf.d/20-pdsno-listeners.conf").content_string
    assert f"cafile {CERTS}/ca.crt\n" in listeners
    assert not broker.file("/etc/mosquitto/ca_certificates/pdsno-ca.crt").exists
    # mqtt-rc-a's certificate now comes from the second CA, which only the
    # one bundle, as the CA role wrote it, tells the broker to trust.
    rc_a, message = hosts[RC_A], token()
    issuer = rc_a.run(f"openssl x509 -in {CERTS}/controller-mqtt.crt -noout -issuer").stdout
    assert "ca2" in issuer, issuer
    published, received = collect(
        broker,
        tls("127.0.0.1"),
        ["pdsno/v1/region-a/#"],
        rc_a,
        pub(tls(address), f"pdsno/v1/region-a/ca2/{message}", message),
    )
    assert published.rc == 0, published.stdout + published.stderr
    assert message in received, received


def test_the_controller_tls_certificate_is_not_an_mqtt_identity(hosts, broker, address):
    """controller.crt (clientAuth, for the peers) gets nothing from the broker (defect 3)."""
    rc_a = hosts[RC_A]
    subjects = {
        name: rc_a.run(f"openssl x509 -in {CERTS}/{name}.crt -noout -subject").stdout.strip()
        for name in ("controller", "controller-mqtt")
    }
    assert subjects["controller"] != subjects["controller-mqtt"], subjects
    assert f"CN = {mqtt_identity(RC_A)}" in subjects["controller-mqtt"], subjects
    written, read = token(), token()
    # It cannot publish to its host's region ...
    _, received = collect(
        broker,
        tls("127.0.0.1"),
        ["pdsno/v1/#"],
        rc_a,
        pub(tls(address, "controller"), f"pdsno/v1/region-a/tls-cert/{written}", written),
    )
    assert written not in received, received
    # ... nor read it.
    _, received = collect(
        rc_a,
        tls(address, "controller"),
        ["pdsno/v1/region-a/#"],
        rc_a,
        pub(tls(address), f"pdsno/v1/region-a/tls-cert/{read}", read),
    )
    assert read not in received, received


def test_a_foreign_conf_file_cannot_open_a_listener_or_keep_the_broker_down(broker):
    """Drift: conf.d/05-local.conf with a plain anonymous listener (issue 9, item 11)."""
    rerun = record(broker, "foreign_conf_rerun")
    assert not rerun["failed"], rerun["message"]
    assert broker.run("systemctl is-active mosquitto").stdout.strip() == "active"
    sockets = {line.split()[3] for line in broker.run("ss -Hltn").stdout.splitlines()}
    assert not any(s.endswith(":1883") and s != "127.0.0.1:1883" for s in sockets), sockets
    conf_d = broker.run("ls /etc/mosquitto/conf.d").stdout.split()
    assert "05-local.conf" not in conf_d, conf_d
    # Set aside, not deleted: nothing of it is lost.
    kept = [name for name in conf_d if name.startswith("05-local.conf.")]
    assert kept, conf_d
    assert "allow_anonymous true" in broker.file(f"/etc/mosquitto/conf.d/{kept[0]}").content_string
    result = broker.run(pub(local(None), "pdsno/v1/region-a/x", "anonymous"))
    assert result.rc != 0


# --- a bad configuration never replaces a good one ------------------------------


@pytest.mark.parametrize(
    ("target", "edit", "complaint"),
    [
        (
            "10-pdsno-broker.conf",
            "s/^autosave_on_changes .*/autosave_on_changes maybe/",
            "autosave",
        ),
        # The broker's user may not read another service's key.
        (
            "20-pdsno-listeners.conf",
            "s#^keyfile .*#keyfile /etc/pdsno/certs/controller.key#",
            "key",
        ),
    ],
)
def test_the_check_refuses_a_bad_configuration_and_accepts_the_real_one(
    broker, target, edit, complaint
):
    target = f"/etc/mosquitto/conf.d/{target}"
    pid = broker.run("systemctl show --property=MainPID --value mosquitto").stdout.strip()
    broker.run(f"sed {shlex.quote(edit)} {target} > /tmp/candidate.conf")
    bad = broker.run(f"pdsno-mosquitto check-conf {target} /tmp/candidate.conf")
    good = broker.run(f"pdsno-mosquitto check-conf {target} {target}")
    broker.run("rm -f /tmp/candidate.conf")
    assert bad.rc != 0, bad.stdout
    assert complaint in bad.stderr.lower(), bad.stderr
    assert good.rc == 0, good.stderr
    assert broker.run("systemctl show --property=MainPID --value mosquitto").stdout.strip() == pid


def test_the_check_works_from_a_login_with_a_private_tmpdir(broker):
    # libpam-tmpdir (roles/host_hardening) gives each login a TMPDIR that only
    # its owner can enter; the check's broker runs as mosquitto all the same.
    target = "/etc/mosquitto/conf.d/20-pdsno-listeners.conf"
    private = broker.run("mktemp -d").stdout.strip()  # mode 0700, root's
    result = broker.run(f"TMPDIR={private} pdsno-mosquitto check-conf {target} {target}")
    broker.run(f"rm -rf {private}")
    assert result.rc == 0, result.stderr
