"""What host_hardening must leave on a Debian 12 container."""

import pytest

MODULES = ["dccp", "sctp", "rds", "tipc", "usb-storage", "firewire-core"]


@pytest.mark.parametrize("module", MODULES)
def test_module_is_refused(host, module):
    conf = host.file("/etc/modprobe.d/90-pdsno-hardening.conf")
    assert conf.contains(f"^install {module} /bin/false$")
    assert conf.contains(f"^blacklist {module}$")
    # modprobe reads the file; it names modules with underscores.
    shown = host.run("modprobe --showconfig")
    assert f"install {module.replace('-', '_')} /bin/false" in shown.stdout


def test_login_defs(host):
    settings = [
        line.split()
        for line in host.file("/etc/login.defs").content_string.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["UMASK", "027"] in settings
    assert ["ENCRYPT_METHOD", "YESCRYPT"] in settings
    assert [setting for setting in settings if setting[0] == "UMASK"] == [["UMASK", "027"]]


def test_pam_tmpdir(host):
    assert host.package("libpam-tmpdir").is_installed
    assert host.file("/etc/pam.d/common-session").contains("pam_tmpdir.so")


def test_audit_rules_installed_daemon_not_started_in_container(host):
    rules = host.file("/etc/audit/rules.d/90-pdsno.rules")
    assert rules.contains("^-w /etc/pdsno -p wa -k pdsno-watch$")
    assert rules.contains("^-w /etc/pdsno/certs -p wa -k pdsno-watch$")
    assert rules.contains("-k time-change$")
    assert rules.contains("-k modules$")
    assert host.run("auditctl -s").rc != 0, "this container may control audit: test assumption"
    assert not host.service("auditd").is_running


def test_unattended_upgrades_selects_the_security_origin(host):
    dry_run = host.run("unattended-upgrade --dry-run --debug")
    assert dry_run.rc == 0, dry_run.stderr
    output = dry_run.stdout + dry_run.stderr
    allowed = [line for line in output.splitlines() if line.startswith("Allowed origins are:")]
    assert allowed == [
        "Allowed origins are: origin=Debian,codename=bookworm-security,label=Debian-Security"
    ], output[-2000:]
    periodic = host.file("/etc/apt/apt.conf.d/20auto-upgrades")
    assert periodic.contains('Unattended-Upgrade "1"')
    assert host.file("/etc/apt/apt.conf.d/52pdsno-unattended-upgrades").contains(
        'Automatic-Reboot "false"'
    )


def test_audit_records_go_to_the_journal(host):
    assert host.package("audispd-plugins").is_installed
    assert host.file("/etc/audit/plugins.d/syslog.conf").contains("^active = yes$")


def shadow(host, name):
    return host.check_output(f"getent shadow {name}").split(":")


@pytest.mark.parametrize(
    ("key", "value"), [("PASS_MAX_DAYS", "365"), ("PASS_MIN_DAYS", "1"), ("PASS_WARN_AGE", "14")]
)
def test_login_defs_ages_new_human_accounts(host, key, value):
    settings = [
        line.split()
        for line in host.file("/etc/login.defs").content_string.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [setting for setting in settings if setting[0] == key] == [[key, value]]


def test_human_account_with_a_password_is_aged(host):
    entry = shadow(host, "alice")
    assert entry[3:6] == ["1", "365", "14"], entry


@pytest.mark.parametrize("name", ["bob", "svc", "ansible"])
def test_other_accounts_are_not_aged(host, name):
    """bob: human, key-only; svc: system account; ansible: the login of Ansible."""
    entry = shadow(host, name)
    assert entry[4] in ("", "99999"), entry


def test_aide_is_configured_and_timed(host):
    conf = host.file("/etc/aide/pdsno-aide.conf")
    for path in ("/etc/pdsno", "/etc/pdsno/certs", "/etc/systemd/system", "/etc/ssh/sshd_config"):
        assert conf.contains(f"^{path} PDSNO$"), path
    assert host.file("/var/lib/aide/pdsno.db").mode == 0o600
    timer = host.service("pdsno-aide-check.timer")
    assert timer.is_enabled
    assert timer.is_running
    # aide-common (its Recommends) is not installed: no mail server came with it.
    assert not host.package("exim4-base").is_installed


def aide_check(host):
    """Run the daily check's unit now; return its exit and its journal."""
    cursor = host.check_output("journalctl -n 0 --show-cursor --no-pager | tail -1").split()[-1]
    run = host.run("systemctl start pdsno-aide-check.service")
    log = host.check_output(
        f"journalctl --no-pager -o cat -u pdsno-aide-check.service --after-cursor '{cursor}'"
    )
    return run.rc, log


def test_aide_does_not_report_the_roles_own_changes(host):
    """side_effect reran the role twice, changing its audit rules and
    login.defs: the check finds nothing."""
    rc, log = aide_check(host)
    assert rc == 0, log
    assert "AIDE found NO differences" in log, log


def test_aide_reports_a_change_by_hand(host):
    host.run_expect([0], "echo 'log_level: debug' >> /etc/pdsno/controller.yaml")
    host.run_expect([0], "touch /etc/pdsno/certs/planted.key")
    rc, log = aide_check(host)
    assert rc != 0, "the check unit succeeded after a change by hand"
    assert "AIDE found differences" in log, log
    assert "/etc/pdsno/controller.yaml" in log, log
    assert "/etc/pdsno/certs/planted.key" in log, log
    assert host.service("pdsno-aide-check.service").is_running is False
