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
