"""Reruns of the project's playbooks against the converged hosts (issue 9).

- defect 4: a fact cache that still holds an old address must not reach a
  certificate's SANs or pg_hba.conf;
- defect 6: a certificate rotation checks PostgreSQL's reload as the
  postgresql role does (over TLS, not by reading the log);
- item 10: a concern that fails on every host of its play does not end the
  run: the later concerns still run on the other hosts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import testinfra
import yaml

sys.path.insert(0, str(Path(__file__).parents[2] / "_shared"))
from playbook_runs import PROJECT, recap, run_playbook, tail

STALE_ADDRESS = "192.0.2.77"  # TEST-NET-1: never a lab address


@pytest.fixture(scope="module")
def hosts(request):
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory, sudo=True)
        for name in ("db", "ctl")
    }


def address_of(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


def changed(result) -> dict[str, int]:
    return {host: c["changed"] for host, c in recap(result).items() if c["changed"]}


def stale_cache(cache: Path, name: str) -> None:
    """Make the cached default IPv4 address of host NAME a stale one.

    ansible-core 2.19 keeps a host's facts in s1_<host>, as a JSON document
    in __payload__; older versions in <host>, as they are.
    """
    path = next(p for p in (cache / f"s1_{name}", cache / name) if p.exists())
    stored = json.loads(path.read_text())
    facts = json.loads(stored["__payload__"]) if "__payload__" in stored else stored
    facts["ansible_default_ipv4"]["address"] = STALE_ADDRESS
    if "__payload__" in stored:
        stored["__payload__"] = json.dumps(facts)
    else:
        stored = facts
    path.write_text(json.dumps(stored))


def test_stale_cached_addresses_reach_neither_sans_nor_pg_hba(hosts, tmp_path, monkeypatch):
    db, ctl = hosts["db"], hosts["ctl"]
    ctl_address = address_of(ctl)
    # ctl named by its host name, as inventories often do: its address is a
    # fact then (ssh still reaches it by its IP address).
    named = tmp_path / "named.yml"
    named.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        "ctl": {
                            "ansible_host": "ctl",
                            "ansible_ssh_extra_args": f"-o HostName={ctl_address}",
                        }
                    }
                }
            }
        )
    )
    cache = tmp_path / "facts"
    monkeypatch.setenv("ANSIBLE_CACHE_PLUGIN", "jsonfile")
    monkeypatch.setenv("ANSIBLE_CACHE_PLUGIN_CONNECTION", str(cache))
    monkeypatch.setenv("ANSIBLE_CACHE_PLUGIN_TIMEOUT", "3600")
    monkeypatch.setenv("ANSIBLE_GATHERING", "smart")
    inventories = ("--inventory", str(named))
    limit = ("--limit", "db,ctl")
    filled = run_playbook("playbooks/base.yml", *inventories, *limit, "--tags", "never")
    assert filled.returncode == 0, tail(filled)
    # The hosts' addresses changed since the facts were cached (or rather:
    # the cache says they did).
    for name in ("db", "ctl"):
        stale_cache(cache, name)
    for playbook in ("playbooks/ca.yml", "playbooks/postgresql.yml"):
        result = run_playbook(playbook, *inventories, *limit)
        assert result.returncode == 0, tail(result)
        assert changed(result) == {}, tail(result)
    sans = db.run("openssl x509 -in /etc/pdsno/certs/postgresql.crt -noout -ext subjectAltName")
    assert STALE_ADDRESS not in sans.stdout, sans.stdout
    assert f"IP Address:{address_of(db)}" in sans.stdout, sans.stdout
    hba = db.file("/etc/postgresql/15/main/pg_hba.conf").content_string
    assert STALE_ADDRESS not in hba
    assert f"{ctl_address}/32" in hba


def test_rotation_checks_the_reload_over_tls_even_after_log_rotation(hosts):
    db = hosts["db"]
    # What logrotate does to Debian's PostgreSQL log (copytruncate). Without
    # --no-create, truncate opens with O_CREAT, which fs.protected_regular
    # refuses even to root in this sticky, group-writable directory.
    log = "/var/log/postgresql/postgresql-15-main.log"
    rotated = db.run(f"cp {log} {log}.1 && truncate --no-create --size=0 {log}")
    assert rotated.rc == 0, rotated.stderr
    before = db.run("openssl x509 -in /etc/pdsno/certs/postgresql.crt -noout -serial").stdout
    result = run_playbook(
        "playbooks/rotate_certs.yml",
        "--limit",
        "db",
        "--extra-vars",
        json.dumps({"pdsno_ca_force_renew_services": ["postgresql"]}),
    )
    assert result.returncode == 0, tail(result)
    after = db.run("openssl x509 -in /etc/pdsno/certs/postgresql.crt -noout -serial").stdout
    assert after != before
    # The postgresql role's own reload check ran in the rotation.
    assert "TASK [postgresql : Check that PostgreSQL serves" in result.stdout, tail(result, 120)
    served = db.run(
        "openssl s_client -starttls postgres -connect 127.0.0.1:5432 </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial"
    )
    assert served.stdout == after


def test_a_failed_concern_does_not_end_the_run(tmp_path):
    playbook = tmp_path / "two-concerns.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "A concern that fails on every host of its play",
                    "ansible.builtin.import_playbook": str(PROJECT / "playbooks/postgresql.yml"),
                },
                {
                    "name": "A later concern",
                    "ansible.builtin.import_playbook": str(PROJECT / "playbooks/base.yml"),
                },
            ]
        )
    )
    # An inventory group that does not exist: the postgresql role refuses it
    # on db, its only host.
    broken = json.dumps({"postgresql_client_groups": ["no_such_group"]})
    result = run_playbook(str(playbook), "--extra-vars", broken)
    counts = recap(result)
    assert result.returncode != 0, tail(result)
    assert counts["db"]["failed"] >= 1, tail(result)
    # The baseline still ran on the other hosts, and they did not fail.
    for other in ("ctl", "outsider"):
        assert counts[other]["ok"] > 0 and counts[other]["failed"] == 0, tail(result)
    assert "no_such_group" in result.stdout + result.stderr, tail(result)
