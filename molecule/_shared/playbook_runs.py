"""Run the project's playbooks against a molecule scenario's hosts.

Used by the scenarios' verify steps (testinfra runs them on the control
node, with molecule's environment: its inventory and ansible.cfg).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[2]))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def role_tags(role: str) -> list[str]:
    """The per-concern tags of a role: those of its tasks/main.yml named <role>_*."""
    tasks = yaml.safe_load((PROJECT / "roles" / role / "tasks" / "main.yml").read_text())
    tags = {tag for task in tasks for tag in task.get("tags", []) if tag.startswith(f"{role}_")}
    return sorted(tags)


def run_playbook(playbook: str, *args: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook PLAYBOOK (relative to the project) on the scenario's inventory."""
    command = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        str(PROJECT / playbook),
        "--inventory",
        os.environ["MOLECULE_INVENTORY_FILE"],
        *args,
    ]
    # Molecule forces colours; the recap is parsed, so none here.
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "false", "ANSIBLE_NOCOLOR": "true"}
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=PROJECT, timeout=900, env=env
    )
    result.stdout = ANSI.sub("", result.stdout)
    result.stderr = ANSI.sub("", result.stderr)
    return result


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts per host."""
    return {
        match["host"]: {key: int(match[key]) for key in ("ok", "changed", "unreachable", "failed")}
        for match in RECAP.finditer(result.stdout)
    }


def tail(result: subprocess.CompletedProcess[str], lines: int = 60) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def assert_ran_and_changed_nothing(result: subprocess.CompletedProcess[str]) -> None:
    """The run succeeded, reached at least one host, and changed nothing on any."""
    assert result.returncode == 0, tail(result)
    counts = recap(result)
    assert counts, tail(result)
    assert {host: c["changed"] for host, c in counts.items() if c["changed"]} == {}, tail(result)
