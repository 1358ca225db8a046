#!/usr/bin/env python3
"""Deployment benchmark (not a test): how long site.yml and verify take.

On the hosts of the molecule scenario `fullstack` (never the shared lab):

    cold converge      site.yml on freshly created hosts
    idempotent rerun   site.yml again (must change nothing)
    verify             playbooks/verify.yml
    tasks              task steps and host-tasks of the rerun
    floor              the per-task time of a no-op task (ansible.builtin.ping)
                       over the same SSH connections: (t(N pings) - t(1 ping)) / (N - 1)
    ratio              rerun / (task steps x floor): how far the rerun is from
                       the cost of doing nothing in as many steps

    python bench/deploy_bench.py            # create, measure, destroy
    python bench/deploy_bench.py --keep     # leave the hosts up afterwards
    python bench/deploy_bench.py --reuse    # skip create and the cold converge

Do not run it while `molecule test -s fullstack` runs from the same checkout:
both use the scenario's containers.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from molecule.text import checksum

PROJECT = Path(__file__).resolve().parent.parent
SCENARIO = "fullstack"
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)"
    r"\s+unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)",
    re.MULTILINE,
)


def ephemeral_directory() -> Path:
    """Where molecule keeps the scenario's inventory (as molecule computes it)."""
    if "MOLECULE_EPHEMERAL_DIRECTORY" in os.environ:
        return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    name = f"molecule.{checksum(PROJECT.name, 4)}.{SCENARIO}"
    return Path.home() / ".ansible" / "tmp" / name


def molecule(action: str) -> None:
    print(f"molecule {action} -s {SCENARIO} ...", flush=True)
    subprocess.run(
        ["molecule", action, "-s", SCENARIO], cwd=PROJECT, check=True, capture_output=True
    )


def playbook_env(ephemeral: Path) -> dict[str, str]:
    scenario_dir = PROJECT / "molecule" / SCENARIO
    return {
        **os.environ,
        # molecule's own ansible.cfg: no fact cache, so every run gathers as a cold one would.
        "ANSIBLE_CONFIG": str(ephemeral / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(PROJECT / "collections"),
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
        "ANSIBLE_NOCOLOR": "1",
        "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral),
        "MOLECULE_SCENARIO_DIRECTORY": str(scenario_dir),
        "MOLECULE_PROJECT_DIRECTORY": str(PROJECT),
        "MOLECULE_SCENARIO_NAME": SCENARIO,
        "MOLECULE_FILE": str(ephemeral / "molecule.yml"),
        "MOLECULE_INSTANCE_CONFIG": str(ephemeral / "instance_config.yml"),
    }


def run_playbook(
    playbook: Path, env: dict[str, str], *extra: str, ok_codes: tuple[int, ...] = (0,)
) -> tuple[float, str]:
    inventory = Path(env["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
    started = time.monotonic()
    result = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(playbook), *extra],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    if result.returncode not in ok_codes:
        sys.exit(f"{playbook.name} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    return elapsed, result.stdout


def recap(output: str) -> dict[str, dict[str, int]]:
    return {
        m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
        for m in RECAP.finditer(output)
    }


def floor_per_task(env: dict[str, str], steps: int = 20) -> float:
    """Seconds per no-op task step on every host, over the same SSH connections."""
    with tempfile.TemporaryDirectory() as tmp:
        timings = []
        for count in (1, steps):
            play = Path(tmp) / f"noop{count}.yml"
            tasks = "".join(
                f"    - name: No-op {n}\n      ansible.builtin.ping:\n" for n in range(count)
            )
            play.write_text(
                f"---\n- name: No-op tasks\n  hosts: all\n  gather_facts: false\n  tasks:\n{tasks}"
            )
            run_playbook(play, env)  # warm the SSH connections
            timings.append(run_playbook(play, env)[0])
    return (timings[1] - timings[0]) / (steps - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the hosts up")
    parser.add_argument("--reuse", action="store_true", help="hosts exist and are converged")
    args = parser.parse_args()

    ephemeral = ephemeral_directory()
    env = playbook_env(ephemeral)
    site, verify = PROJECT / "site.yml", PROJECT / "playbooks" / "verify.yml"
    cold = None
    if not args.reuse:
        molecule("destroy")
        molecule("create")
        cold, _ = run_playbook(site, env)
    rerun, output = run_playbook(site, env)
    hosts = recap(output)
    changed = sum(h["changed"] for h in hosts.values())
    steps = len(re.findall(r"^TASK \[", output, re.MULTILINE))
    host_tasks = sum(h["ok"] + h["changed"] + h["skipped"] + h["failed"] for h in hosts.values())
    # The report is the point here, not the threshold: never stop on it.
    verify_time, _ = run_playbook(
        verify,
        env,
        "-e",
        "verify_severity_threshold=none",
        "-e",
        f"verify_report_dir={PROJECT}/reports/bench-verify",
    )
    floor = floor_per_task(env)
    if not args.keep:
        molecule("destroy")

    print()
    print(f"hosts                          {len(hosts)} ({', '.join(sorted(hosts))})")
    print(
        f"cold converge (site.yml)       {'skipped (--reuse)' if cold is None else f'{cold:.1f} s'}"
    )
    print(f"idempotent rerun (site.yml)    {rerun:.1f} s, changed={changed}")
    print(f"verify (playbooks/verify.yml)  {verify_time:.1f} s")
    print(f"tasks in the rerun             {steps} task steps, {host_tasks} host-tasks")
    print(f"no-op floor per task step      {floor * 1000:.0f} ms (ansible.builtin.ping, all hosts)")
    print(f"rerun / (steps x floor)        {rerun / (steps * floor):.2f}")


if __name__ == "__main__":
    main()
