"""What ssh_hardening must leave: a server that a modern client reaches and
that refuses SHA-1, forwarding and weak algorithms, probed from the control
node over the scenario's network."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ALGORITHM_SECTIONS = ("kex", "key", "enc", "mac")


@pytest.fixture(scope="module")
def target(host):
    variables = host.ansible.get_variables()
    key = variables.get("ansible_private_key_file") or variables["ansible_ssh_private_key_file"]
    return {
        "name": variables["inventory_hostname"],
        "address": variables["ansible_host"],
        "user": variables["ansible_user"],
        "key": key,
    }


def ssh(target, *options, command="true", timeout=60):
    argv = [
        "ssh",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=20",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-i", target["key"],
        *options,
        f"{target['user']}@{target['address']}",
        command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_modern_client_logs_in(target):
    # The control for every refusal below: the same client, key and address.
    result = ssh(target, command="id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == target["user"]


def test_ssh_audit_flags_no_algorithm(target):
    result = subprocess.run(
        ["ssh-audit", "--json", "--skip-rate-test", target["address"]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(result.stdout)
    flagged = [
        (section, algorithm["algorithm"], level, algorithm["notes"][level])
        for section in ALGORITHM_SECTIONS
        for algorithm in report[section]
        for level in ("fail", "warn")
        if algorithm.get("notes", {}).get(level)
    ]
    assert report["kex"], "ssh-audit saw no key exchange: did it reach sshd?"
    assert flagged == []


# With an AEAD cipher (chacha20-poly1305, AES-GCM) no MAC is negotiated at
# all, so the MAC probes pin a CTR cipher: only the MAC can fail them.
CTR = ("-o", "Ciphers=aes256-ctr")


def test_a_ctr_cipher_with_an_etm_mac_logs_in(target):
    result = ssh(target, *CTR, "-o", "MACs=hmac-sha2-256-etm@openssh.com")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "options",
    [
        (*CTR, "-o", "MACs=hmac-sha1"),
        (*CTR, "-o", "MACs=umac-64-etm@openssh.com"),
        (*CTR, "-o", "MACs=hmac-sha2-256"),
        ("-o", "KexAlgorithms=diffie-hellman-group14-sha1"),
        ("-o", "KexAlgorithms=diffie-hellman-group-exchange-sha1"),
        ("-o", "Ciphers=aes128-cbc"),
        ("-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256"),
    ],
    ids=lambda options: options[-1],
)
def test_weak_algorithm_is_refused(target, options):
    result = ssh(target, *options)
    assert result.returncode == 255
    assert "no matching" in result.stderr, result.stderr


def test_remote_forwarding_is_refused(target):
    result = ssh(
        target, "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22", command="sleep 5"
    )
    assert result.returncode == 255
    assert "forwarding failed" in result.stderr, result.stderr


def test_local_forwarding_is_refused(target):
    result = ssh(target, "-W", "127.0.0.1:22", command="")
    assert result.returncode == 255
    assert "administratively prohibited" in result.stderr, result.stderr


def test_forwarding_and_logins_are_off_in_the_running_config(host, target):
    effective = host.run("sshd -T -C user=%s,host=probe,addr=127.0.0.1", target["user"])
    assert effective.rc == 0, effective.stderr
    settings = set(effective.stdout.splitlines())
    for expected in (
        "allowtcpforwarding no",
        "allowagentforwarding no",
        "x11forwarding no",
        "allowstreamlocalforwarding no",
        "permitrootlogin no",
        "passwordauthentication no",
        "maxauthtries 3",
        "logingracetime 30",
        "clientaliveinterval 300",
        "clientalivecountmax 2",
        "loglevel VERBOSE",
        "allowgroups ansible",
        "allowgroups sudo",
        "banner /etc/issue.net",
        "hostkey /etc/ssh/ssh_host_ed25519_key",
    ):
        assert expected in settings
    assert not any(line.startswith("hostkey /etc/ssh/ssh_host_rsa") for line in settings)


def test_moduli_below_3072_bits_are_gone(host):
    moduli = host.file("/etc/ssh/moduli").content_string.splitlines()
    sizes = {int(line.split()[4]) + 1 for line in moduli if line and not line.startswith("#")}
    assert sizes, "the moduli file is empty"
    assert min(sizes) >= 3072


def test_banner_is_everywhere(host, target):
    for path in ("/etc/issue", "/etc/issue.net"):
        assert host.file(path).contains("^Authorised access only")
    # sshd sends it before authentication.
    assert "Authorised access only" in ssh(target).stderr


def test_connection_opened_before_converge_still_works(host, target):
    master = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / f"{target['name']}.master"
    check = subprocess.run(
        ["ssh", "-S", str(master), "-O", "check", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    through_master = subprocess.run(
        ["ssh", "-S", str(master), "x", "sudo sshd -T | grep -c '^kexalgorithms sntrup761'"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert through_master.returncode == 0, through_master.stderr
    assert through_master.stdout.strip() == "1"
    # The same sshd main process served it before and after: reloaded, not restarted.
    before = host.file("/root/ssh-hardening-molecule-sshd-pid").content_string.strip()
    now = host.run("systemctl show --property MainPID --value ssh").stdout.strip()
    assert before == now != "0"
