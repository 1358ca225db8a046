"""What the firewall role must leave on live hosts, seen from the protected
host, from an allowed client, from an outsider and from the control node.

prepare.yml started listeners on fw's service ports, created a sentinel
table of "another tool" on fw and opened an SSH master connection to fw
before the converge; side_effect.yml ran the role with bad input and
recorded the outcome in /var/tmp/firewall-molecule/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testinfra

SERVICE_PORTS = {"api": 8001, "peer": 8002, "mqtt": 8883, "postgresql": 5432, "metrics": 9090}
RULESET = "/etc/nftables.d/pdsno.nft"
UNIT = "pdsno-firewall.service"
RECORDS = "/var/tmp/firewall-molecule"  # noqa: S108 (on the test host, written by the scenario)
RATE, BURST = 5, 10  # molecule.yml: firewall_new_connection_rate/_burst


@pytest.fixture(scope="module")
def hosts(request):
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory, sudo=True)
        for name in ("fw", "client", "outsider")
    }


@pytest.fixture(scope="module")
def fw(hosts):
    return hosts["fw"]


@pytest.fixture(scope="module")
def fw_address(fw):
    return fw.ansible.get_variables()["ansible_host"]


def probe(host, *args) -> dict:
    result = host.run("/usr/local/bin/fw-probe " + " ".join(str(a) for a in args))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def sentinel(fw) -> str:
    result = fw.run("nft --stateless list table ip sentinel")
    assert result.rc == 0, f"the sentinel table is gone: {result.stderr}"
    return result.stdout


def test_only_the_role_table_is_managed(fw):
    ruleset = fw.file(RULESET).content_string
    assert not re.search(r"^\s*flush", ruleset, re.M)
    assert re.findall(r"^table (\S+ \S+)", ruleset, re.M) == ["inet pdsno", "inet pdsno"]
    tables = fw.check_output("nft list tables").splitlines()
    assert "table inet pdsno" in tables and "table ip sentinel" in tables


def test_input_policy_is_drop_and_drops_are_logged(fw):
    chain = fw.check_output("nft list chain inet pdsno input")
    assert "policy drop" in chain
    logged = fw.check_output("nft list chain inet pdsno drop_logged")
    assert 'log prefix "pdsno-fw drop: "' in logged and "limit rate 10/minute" in logged


def test_allowed_client_reaches_every_service_port(hosts, fw_address):
    result = probe(
        hosts["client"], "ports", fw_address, ",".join(map(str, SERVICE_PORTS.values())), 3
    )
    assert result["open"] == sorted(SERVICE_PORTS.values()), result


def test_outsider_reaches_no_service_port_and_no_ssh(hosts, fw_address):
    ports = [*SERVICE_PORTS.values(), 22]
    result = probe(hosts["outsider"], "ports", fw_address, ",".join(map(str, ports)), 3)
    assert result["open"] == [], result


def test_ssh_from_the_admin_source(hosts, fw_address):
    banner = hosts["client"].check_output(
        "python3 -c %s",
        f"import socket; print(socket.create_connection(('{fw_address}', 22), 3).recv(64))",
    )
    assert "SSH-2.0-OpenSSH" in banner


def test_ssh_master_opened_before_converge_is_still_alive():
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    socket_path = ephemeral / "fw-master.sock"
    recorded_pid = (ephemeral / "fw-master.pid").read_text().strip()
    check = subprocess.run(
        ["ssh", "-S", str(socket_path), "-O", "check", "fw"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert f"pid={recorded_pid}" in check.stderr, (check.stderr, recorded_pid)
    # A command over the master: its TCP connection predates every rule.
    used = subprocess.run(
        ["ssh", "-S", str(socket_path), "-o", "ControlMaster=no", "fw", "hostname"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert used.returncode == 0 and used.stdout.strip() == "fw", used.stderr


def test_sentinel_table_survives_a_unit_restart(fw):
    before = sentinel(fw)
    assert 'comment "not the firewall role\'s"' in before
    fw.check_output("systemctl restart %s", UNIT)
    assert fw.service(UNIT).is_enabled
    assert sentinel(fw) == before
    assert fw.run("nft list table inet pdsno").rc == 0


def test_the_unit_loads_the_rules_after_they_are_deleted(fw):
    fw.check_output("nft delete table inet pdsno")
    fw.check_output("systemctl restart %s", UNIT)
    assert "policy drop" in fw.check_output("nft list chain inet pdsno input")
    sentinel(fw)


def test_per_source_rate_limit(hosts, fw_address):
    client = hosts["client"]
    time.sleep(BURST / RATE + 1)  # a full bucket
    burst = probe(client, "burst", fw_address, SERVICE_PORTS["api"], 40, 0.8)
    time.sleep(BURST / RATE + 1)
    paced = probe(client, "paced", fw_address, SERVICE_PORTS["api"], 8, 0.4)
    print(f"burst of 40 at once: {burst}; 8 at 2.5/s (limit {RATE}/s): {paced}")
    assert BURST - 2 <= burst["connected"] <= BURST + RATE + 2, burst
    assert burst["dropped"] >= 40 - BURST - RATE - 2, burst
    assert paced["connected"] == paced["attempted"], paced


@pytest.mark.parametrize(
    ("record", "where"),
    [("invalid_port", "Check the service entries"), ("invalid_address", "nft -c")],
)
def test_bad_input_fails_and_leaves_the_running_ruleset(fw, record, where):
    outcome = json.loads(fw.file(f"{RECORDS}/{record}.json").content_string)
    assert outcome["failed"], outcome
    assert where in outcome["task"] or where in outcome["msg"], outcome
    assert outcome["ruleset_unchanged"], outcome
    assert "bad_" not in fw.file(RULESET).content_string


def test_a_rule_added_by_hand_is_gone_after_the_next_run(fw):
    # The side effect opened 31337 in the running table, then ran the role.
    assert json.loads(fw.file(f"{RECORDS}/hand_made_rule.json").content_string) == {
        "rule_left": False
    }
    assert "31337" not in fw.run("nft list table inet pdsno").stdout
