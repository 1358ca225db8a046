"""playbooks/lab.yml and lab_down.yml on real podman: hosts come up over SSH,
and lab_down removes exactly the lab's containers and network.

Needs the lab image (`make lab-image`); uses a lab of its own (its own
network and names) so that it never touches a lab someone is using.
"""

import json
import os
import subprocess

import pytest
import yaml

LAB_NAME = "pdsno-labtest"


def podman(repo_root, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(repo_root / ".lab/containers.conf")}
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )


@pytest.fixture
def test_lab(tmp_path, repo_root):
    if not (repo_root / ".lab/containers.conf").is_file():
        pytest.fail("the lab image is missing: run `make lab-image` (make test does)")
    inventory = {
        "all": {
            "children": {
                "lab": {
                    "hosts": {
                        "labtest-a": {"ansible_host": "10.213.79.11"},
                        "labtest-b": {"ansible_host": "10.213.79.12"},
                    },
                    "vars": {
                        "lab_name": LAB_NAME,
                        "lab_network_name": LAB_NAME,
                        "lab_network_subnet": "10.213.79.0/24",
                        "lab_image": "localhost/pdsno-lab-debian12:latest",
                        "lab_containers_conf": str(repo_root / ".lab/containers.conf"),
                        "ansible_user": "ansible",
                        "ansible_ssh_private_key_file": str(tmp_path / "ssh/id_ed25519"),
                        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                        "-o UserKnownHostsFile=/dev/null",
                    },
                }
            }
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    sentinel = f"{LAB_NAME}-sentinel-not-in-lab"
    podman(
        repo_root,
        "run",
        "-d",
        "--name",
        sentinel,
        "localhost/pdsno-lab-debian12:latest",
        "sleep",
        "300",
    )
    yield str(path), sentinel
    podman(repo_root, "rm", "-f", "-t", "0", sentinel)
    for name in podman(
        repo_root, "ps", "-aq", "--filter", f"label=pdsno.lab={LAB_NAME}"
    ).stdout.split():
        podman(repo_root, "rm", "-f", "-t", "0", name)
    podman(repo_root, "network", "rm", "-f", LAB_NAME)


def test_lab_up_over_ssh_then_down_leaves_nothing_else_touched(run_ansible, repo_root, test_lab):
    inventory, sentinel = test_lab
    volumes_before = podman(repo_root, "volume", "ls", "-q").stdout.split()

    up = run_ansible("ansible-playbook", "-i", inventory, "playbooks/lab.yml")
    assert up.returncode == 0, up.stdout[-3000:]

    # Ansible reaches the hosts over SSH, as the ansible user, with sudo.
    whoami = run_ansible(
        "ansible",
        "lab",
        "-i",
        inventory,
        "-m",
        "ansible.builtin.command",
        "-a",
        "id -un",
        "--become",
        "-o",
    )
    assert whoami.returncode == 0, whoami.stdout + whoami.stderr
    assert whoami.stdout.count("(stdout) root") == 2
    over_ssh = run_ansible(
        "ansible",
        "lab",
        "-i",
        inventory,
        "-m",
        "ansible.builtin.command",
        "-a",
        "printenv SSH_CONNECTION",
        "-o",
    )
    assert over_ssh.returncode == 0 and over_ssh.stdout.count(" 22") == 2, over_ssh.stdout

    systemd = podman(repo_root, "exec", f"{LAB_NAME}-labtest-a", "systemctl", "is-system-running")
    assert systemd.stdout.strip() in {"running", "degraded"}, systemd.stdout

    down = run_ansible("ansible-playbook", "-i", inventory, "playbooks/lab_down.yml")
    assert down.returncode == 0, down.stdout[-3000:]

    left = podman(
        repo_root, "ps", "-a", "--filter", f"label=pdsno.lab={LAB_NAME}", "--format", "json"
    )
    assert json.loads(left.stdout or "[]") == []
    assert podman(repo_root, "network", "exists", LAB_NAME).returncode == 1
    assert podman(repo_root, "container", "exists", sentinel).returncode == 0
    assert podman(repo_root, "volume", "ls", "-q").stdout.split() == volumes_before
