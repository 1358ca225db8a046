"""The checks of the host items (PDSNO-21, 25, 27, 29) fail on each way a
host can be wrong.

sshd -T and auditctl are stand-ins here (cat of their output, true/false):
the real ones run on the lab hosts of molecule/ssh_hardening,
molecule/host_hardening and molecule/fullstack.
"""

import importlib.util
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "roles/verify/library/pdsno_verify_host.py"
spec = importlib.util.spec_from_file_location("pdsno_verify_host", LIBRARY)
verify_host = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verify_host)

# sshd -T of a host converged by roles/ssh_hardening (OpenSSH 9.2), abridged.
HARDENED = """port 22
permitrootlogin no
passwordauthentication no
kbdinteractiveauthentication no
permitemptypasswords no
authenticationmethods publickey
x11forwarding no
allowtcpforwarding no
allowagentforwarding no
loglevel VERBOSE
maxauthtries 3
logingracetime 30
clientaliveinterval 300
kexalgorithms sntrup761x25519-sha512@openssh.com
ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr
macs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com
allowgroups ansible
banner /etc/issue.net
"""

SSHD_ARGS = {
    "settings": {
        "permitrootlogin": "no",
        "passwordauthentication": "no",
        "x11forwarding": "no",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "loglevel": "VERBOSE",
    },
    "max": {"maxauthtries": 3, "logingracetime": 60, "clientaliveinterval": 900},
    "min": {"clientaliveinterval": 1},
    "forbidden": {
        "kexalgorithms": "sha1|^diffie-hellman-group1-|^diffie-hellman-group14-",
        "ciphers": "cbc|3des|arcfour",
        "macs": "sha1|md5|umac-64|-96",
    },
    "only": {"macs": r".+-etm@openssh\.com"},
    "allow_groups": ["ansible"],
}


def sshd(tmp_path: Path, text: str, **overrides) -> tuple[str, str]:
    output = tmp_path / "sshd-T"
    output.write_text(text)
    return verify_host.check_sshd({**SSHD_ARGS, "argv": ["cat", str(output)], **overrides})


def test_sshd_hardened_passes(tmp_path):
    status, reason = sshd(tmp_path, HARDENED)
    assert status == "pass", reason
    assert "AllowGroups ansible" in reason


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "permitrootlogin no",
            "permitrootlogin prohibit-password",
            "permitrootlogin is prohibit-password",
        ),
        ("x11forwarding no", "x11forwarding yes", "x11forwarding is yes"),
        ("allowagentforwarding no", "allowagentforwarding yes", "allowagentforwarding is yes"),
        ("maxauthtries 3", "maxauthtries 6", "maxauthtries is 6, more than 3"),
        (
            "clientaliveinterval 300",
            "clientaliveinterval 0",
            "clientaliveinterval is 0, less than 1",
        ),
        (
            "sntrup761x25519-sha512@openssh.com",
            "diffie-hellman-group14-sha1",
            "kexalgorithms offers diffie-hellman-group14-sha1",
        ),
        ("aes128-ctr", "aes128-cbc", "ciphers offers aes128-cbc"),
        ("umac-128-etm@openssh.com", "hmac-sha1", "macs offers hmac-sha1"),
        ("umac-128-etm@openssh.com", "hmac-sha2-256", "macs offers hmac-sha2-256"),
        (
            "umac-128-etm@openssh.com",
            "umac-64-etm@openssh.com",
            "macs offers umac-64-etm@openssh.com",
        ),
        (
            "allowgroups ansible",
            "allowgroups ansible users",
            "AllowGroups is ansible users, not ansible",
        ),
        ("allowgroups ansible\n", "", "AllowGroups is unset"),
    ],
)
def test_sshd_weakness_fails(tmp_path, old, new, expected):
    assert old in HARDENED
    status, reason = sshd(tmp_path, HARDENED.replace(old, new))
    assert status == "fail"
    assert expected in reason, reason


def test_sshd_allow_groups_unchecked_when_not_asked(tmp_path):
    status, reason = sshd(tmp_path, HARDENED.replace("allowgroups ansible\n", ""), allow_groups=[])
    assert status == "pass", reason


def test_sshd_that_does_not_start_fails():
    with pytest.raises(verify_host.CheckError, match="exited 1"):
        verify_host.check_sshd({**SSHD_ARGS, "argv": ["false"]})


RULES = """-w /etc/pdsno -p wa -k pdsno-watch
-a always,exit -F arch=b64 -S adjtimex,settimeofday,clock_settime -k time-change
-a always,exit -F arch=b64 -S init_module,finit_module,delete_module -k modules
"""
KEYS = ["pdsno-watch", "time-change", "modules"]


def auditd(tmp_path: Path, rules: str | None, status: list[str]) -> tuple[str, str]:
    path = tmp_path / "90-pdsno.rules"
    if rules is not None:
        path.write_text(rules)
    return verify_host.check_auditd(
        {
            "rules_file": str(path),
            "keys": KEYS,
            "status_command": status,
            "missing_reason": "roles/host_hardening is not deployed",
        }
    )


def test_auditd_in_a_container_is_not_applicable_and_says_so(tmp_path):
    status, reason = auditd(
        tmp_path, RULES, ["sh", "-c", "echo 'Operation not permitted' >&2; exit 1"]
    )
    assert status == "not_applicable"
    assert "not applicable in a container" in reason
    assert "Operation not permitted" in reason


def test_auditd_rules_missing_fail_even_in_a_container(tmp_path):
    status, reason = auditd(tmp_path, None, ["false"])
    assert status == "fail"
    assert "roles/host_hardening is not deployed" in reason
    status, reason = auditd(tmp_path, RULES.replace("-k modules", "-k other"), ["false"])
    assert status == "fail"
    assert "key modules" in reason


def test_auditd_where_audit_is_allowed_must_run(tmp_path):
    """The detection's other branch: auditctl -s succeeds, so the daemon must
    be active (it is not on the machine running this test)."""
    if (
        verify_host.unit_properties("auditd.service", ["ActiveState"]).get("ActiveState")
        == "active"
    ):
        pytest.skip("auditd runs here")
    status, reason = auditd(tmp_path, RULES, ["true"])
    assert status == "fail"
    assert "auditd is" in reason


ACCOUNTS = """root:x:0:0:root:/root:/bin/bash
pdsno:x:990:990::/nonexistent:/usr/sbin/nologin
ansible:x:1000:1000::/home/ansible:/bin/bash
alice:x:1001:1001::/home/alice:/bin/bash
bob:x:1002:1002::/home/bob:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
HASH = "$y$j9T$abc$def"


def ageing(tmp_path: Path, shadow: str, **args) -> tuple[str, str]:
    (tmp_path / "passwd").write_text(ACCOUNTS)
    (tmp_path / "shadow").write_text(shadow)
    return verify_host.check_password_ageing(
        {
            "passwd": str(tmp_path / "passwd"),
            "shadow": str(tmp_path / "shadow"),
            "max_days": 365,
            "exempt": ["ansible"],
            **args,
        }
    )


def shadow(alice_max: str, *, bob: str = "!", ansible: str = HASH) -> str:
    return "\n".join(
        [
            f"root:{HASH}:20000:0:99999:7:::",
            f"pdsno:{HASH}:20000:0:99999:7:::",
            f"ansible:{ansible}:20000:0:99999:7:::",
            f"alice:{HASH}:20000:1:{alice_max}:14:::",
            f"bob:{bob}:20000:0:99999:7:::",
            "nobody:*:20000:0:99999:7:::",
        ]
    )


def test_ageing_of_human_accounts_with_a_password_passes(tmp_path):
    status, reason = ageing(tmp_path, shadow("365"))
    assert status == "pass", reason
    assert reason == "human accounts with a password aged: alice (365 days)"


@pytest.mark.parametrize("alice_max", ["99999", "", "400"])
def test_human_account_whose_password_does_not_age_fails(tmp_path, alice_max):
    status, reason = ageing(tmp_path, shadow(alice_max))
    assert status == "fail"
    assert reason.startswith("alice's password never expires within 365 days")


def test_key_only_system_and_exempt_accounts_are_left_alone(tmp_path):
    # bob: human, locked password; root and pdsno: system accounts with a hash;
    # ansible: exempt; nobody: outside the range.
    status, reason = ageing(tmp_path, shadow("365", bob="!*"))
    assert status == "pass", reason
    status, reason = ageing(tmp_path, shadow("365", bob=HASH))
    assert status == "fail"
    assert "bob's password" in reason
    status, reason = ageing(tmp_path, shadow("365"), exempt=[])
    assert status == "fail"
    assert "ansible's password" in reason
