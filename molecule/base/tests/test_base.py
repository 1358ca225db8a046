"""What the base role must leave on a live Debian 12 host."""

import pytest

NETWORK_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": 1,
    "net.ipv4.tcp_syncookies": 1,
    "net.ipv4.conf.all.accept_redirects": 0,
    "net.ipv4.conf.default.accept_redirects": 0,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.all.accept_source_route": 0,
    "net.ipv6.conf.all.accept_redirects": 0,
    "net.ipv4.conf.all.log_martians": 1,
}


def test_service_account_cannot_log_in(host):
    user = host.user("pdsno")
    assert user.exists
    assert user.group == "pdsno"
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == "/nonexistent"
    assert not host.file("/nonexistent").exists
    assert user.uid < 1000, "pdsno must be a system account"


@pytest.mark.parametrize(("name", "value"), NETWORK_SYSCTLS.items())
def test_network_sysctl_is_live_and_persisted(host, name, value):
    assert host.sysctl(name) == value
    persisted = host.file("/etc/sysctl.d/90-pdsno-base.conf")
    assert persisted.contains(f"^{name} *= *{value}$")


def test_ip_forwarding_is_left_alone(host):
    assert not host.file("/etc/sysctl.d/90-pdsno-base.conf").contains("forward")


def test_sysctl_file_survives_a_reload(host):
    # systemd-sysctl applies the file at boot; it must parse cleanly.
    result = host.run("sysctl -p /etc/sysctl.d/90-pdsno-base.conf")
    assert result.rc == 0, result.stderr


def test_journal_is_persistent_and_capped(host):
    conf = host.file("/etc/systemd/journald.conf.d/90-pdsno.conf")
    assert conf.contains("^Storage=persistent$")
    assert conf.contains("^SystemMaxUse=500M$")
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert host.file(f"/var/log/journal/{machine_id}").is_directory
    effective = host.run(
        "journalctl --header --file /var/log/journal/%s/system.journal", machine_id
    )
    assert effective.rc == 0, effective.stderr


def test_core_dumps_are_off(host):
    assert host.file("/etc/systemd/system.conf.d/90-pdsno-coredump.conf").contains(
        "^DefaultLimitCORE=0$"
    )
    # systemd was re-executed: the manager's own default is in force.
    assert host.run("systemctl show --property DefaultLimitCORE").stdout.strip() == (
        "DefaultLimitCORE=0"
    )
    assert host.file("/etc/security/limits.d/90-pdsno-coredump.conf").contains(r"^\* hard core 0$")


def test_timesyncd_is_configured_and_enabled(host):
    assert host.package("systemd-timesyncd").is_installed
    assert host.file("/etc/systemd/timesyncd.conf.d/90-pdsno.conf").contains(
        "^NTP=0.debian.pool.ntp.org 1.debian.pool.ntp.org 2.debian.pool.ntp.org$"
    )
    assert host.service("systemd-timesyncd").is_enabled
