# Copyright: PDSNO Platform engineers
# Apache License 2.0
"""The addresses the hosts of inventory groups connect from.

One computation for every role that admits hosts by address (the firewall's
sets, PostgreSQL's pg_hba), so that they can never disagree.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: group_addresses
short_description: The source addresses of the hosts of inventory groups
version_added: 0.2.0
description:
  - For each host of the given groups (groups missing from the inventory
    are skipped), the addresses it connects from, in this order of
    precedence
  - 1. the host's C(pdsno_source_addresses) (a list, or one address), for a
    host that reaches the services over another interface than the one
    Ansible uses;
  - 2. C(ansible_host) when it is an IP address;
  - 3. the default IPv4 address of its gathered facts.
  - A host with none of these is listed with an empty address, so that the
    caller can name it in its error message.
options:
  _input:
    description: Names of inventory groups.
    type: list
    elements: str
    required: true
  groups:
    description: The C(groups) magic variable.
    type: dict
    required: true
  hostvars:
    description: The C(hostvars) magic variable.
    type: dict
    required: true
  override_var:
    description: The per-host variable that overrides the address.
    type: str
    default: pdsno_source_addresses
"""

EXAMPLES = r"""
- name: Addresses of the controllers and the backup hosts
  ansible.builtin.debug:
    msg: >-
      {{ ['pdsno_controllers', 'pdsno_backup_hosts']
         | pdsno.platform.group_addresses(groups, hostvars) }}
"""

RETURN = r"""
_value:
  description:
    - One entry per host and address, sorted by host then address; C(address)
      is empty when the host has none, C(family) is 4 or 6 (0 when empty).
  type: list
  elements: dict
"""

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # the unit tests run without Ansible's plugin loader

    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when Ansible is absent."""


DEFAULT_OVERRIDE_VAR = "pdsno_source_addresses"


def _as_ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None


def _host_addresses(host: str, variables: Mapping[str, Any], override_var: str) -> list[str]:
    override = variables.get(override_var)
    if override not in (None, "", []):
        values = [override] if isinstance(override, str) else list(override)
        addresses = []
        for value in values:
            address = _as_ip(value)
            if address is None:
                raise AnsibleFilterError(
                    f"{override_var} of host {host} contains {value!r}, which is not an IP "
                    f"address: give the addresses it connects from, such as 192.0.2.10"
                )
            addresses.append(str(address))
        return addresses
    inventory_address = _as_ip(variables.get("ansible_host", ""))
    if inventory_address is not None:
        return [str(inventory_address)]
    facts = variables.get("ansible_facts") or {}
    fact_address = _as_ip((facts.get("default_ipv4") or {}).get("address", ""))
    return [str(fact_address)] if fact_address is not None else []


def group_addresses(
    group_names: Iterable[str],
    groups: Mapping[str, Iterable[str]],
    hostvars: Mapping[str, Mapping[str, Any]],
    override_var: str = DEFAULT_OVERRIDE_VAR,
) -> list[dict[str, Any]]:
    """Entries {host, address, family} of every host of the groups."""
    if isinstance(group_names, str):
        group_names = [group_names]
    hosts = sorted({host for name in group_names for host in groups.get(name, None) or []})
    entries = []
    for host in hosts:
        addresses = _host_addresses(host, hostvars[host], override_var)
        if not addresses:
            entries.append({"host": host, "address": "", "family": 0})
        for address in sorted(set(addresses)):
            family = ipaddress.ip_address(address).version
            entries.append({"host": host, "address": address, "family": family})
    return entries


class FilterModule:
    """pdsno.platform filters."""

    def filters(self) -> dict[str, Any]:
        return {"group_addresses": group_addresses}
