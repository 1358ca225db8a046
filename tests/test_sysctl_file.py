"""pdsno.platform.sysctl_file, run by Ansible on this machine.

The file half is tested in a temporary directory; the running half only
with values the kernel already has, so the tests never change this host.
"""

import json
from pathlib import Path

import pytest


def read_sysctl(name: str) -> str:
    return " ".join(Path("/proc/sys", *name.split(".")).read_text().split())


@pytest.fixture
def sysctl_file(run_ansible):
    def run(path: Path, settings: dict, *extra: str, apply: bool = False) -> dict:
        args = json.dumps({"path": str(path), "settings": settings, "apply": apply})
        result = run_ansible(
            "ansible", "localhost", "-m", "pdsno.platform.sysctl_file", "-a", args, "-o", *extra
        )
        # -o prints "localhost | STATUS => {json}"
        status, _, payload = result.stdout.partition(" => ")
        return {"rc": result.returncode, "status": status, **json.loads(payload or "{}")}

    return run


def test_writes_sorted_file_once_then_reports_no_change(sysctl_file, tmp_path):
    target = tmp_path / "90-test.conf"
    settings = {"net.ipv4.tcp_syncookies": 1, "net.ipv4.conf.all.rp_filter": 1}

    first = sysctl_file(target, settings)
    assert first["rc"] == 0 and first["changed"] is True and first["file_changed"] is True
    lines = target.read_text().splitlines()
    assert lines[1:] == ["net.ipv4.conf.all.rp_filter = 1", "net.ipv4.tcp_syncookies = 1"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"

    second = sysctl_file(target, settings)
    assert second["rc"] == 0 and second["changed"] is False


def test_check_mode_reports_and_writes_nothing(sysctl_file, tmp_path):
    target = tmp_path / "90-test.conf"
    result = sysctl_file(target, {"net.ipv4.tcp_syncookies": 1}, "--check")
    assert result["changed"] is True
    assert not target.exists()


def test_repairs_a_drifted_file(sysctl_file, tmp_path):
    target = tmp_path / "90-test.conf"
    target.write_text("net.ipv4.tcp_syncookies = 0\n")
    result = sysctl_file(target, {"net.ipv4.tcp_syncookies": 1})
    assert result["changed"] is True
    assert "net.ipv4.tcp_syncookies = 1" in target.read_text()


def test_live_value_already_right_is_not_changed(sysctl_file, tmp_path):
    name = "net.ipv4.tcp_syncookies"
    current = read_sysctl(name)
    result = sysctl_file(tmp_path / "90-test.conf", {name: current}, apply=True)
    assert result["rc"] == 0
    assert result["applied"] == {}


def test_unknown_parameter_fails_naming_it(sysctl_file, tmp_path):
    target = tmp_path / "90-test.conf"
    result = sysctl_file(target, {"net.ipv4.no_such_knob": 1})
    assert result["rc"] != 0
    assert "net.ipv4.no_such_knob" in result["msg"]
    assert not target.exists(), "nothing may be written when a name is wrong"
