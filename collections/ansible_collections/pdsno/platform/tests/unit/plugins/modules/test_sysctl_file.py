"""Unit tests of pdsno.platform.sysctl_file.

/proc/sys is replaced by a directory of the test's own, so the running-value
half (reading, comparing and setting kernel parameters) is exercised without
touching this machine's kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.pdsno.platform.plugins.modules import sysctl_file


@pytest.fixture
def proc_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proc-sys"
    for name, value in {
        "net.ipv4.tcp_syncookies": "0\n",
        "net.ipv4.conf.all.rp_filter": "2\n",
        "net.ipv4.ip_local_port_range": "32768\t60999\n",
    }.items():
        path = root.joinpath(*name.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    monkeypatch.setattr(sysctl_file, "PROC_SYS", root)
    return root


def run_module(capsys: pytest.CaptureFixture[str], **args: object) -> dict:
    with patch_module_args(args), pytest.raises(SystemExit):
        sysctl_file.main()
    return json.loads(capsys.readouterr().out)


def test_render_sorts_and_normalises() -> None:
    text = sysctl_file.render({"b.x": 1, "a.y": "1\t2  3"})
    assert text.splitlines()[1:] == ["a.y = 1 2 3", "b.x = 1"]
    assert text.startswith("# Managed by Ansible")


@pytest.mark.parametrize("name", ["net.ipv4.tcp_syncookies", "net.ipv4.conf.eth0-1.rp_filter"])
def test_sysctl_names_accepted(name: str) -> None:
    assert sysctl_file.NAME_PATTERN.match(name)


@pytest.mark.parametrize("name", ["kernel", "net/ipv4/tcp_syncookies", "../etc.passwd", ""])
def test_names_that_could_leave_proc_sys_refused(name: str) -> None:
    assert not sysctl_file.NAME_PATTERN.match(name)


def test_sets_running_values_and_file_then_changes_nothing(
    proc_sys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "90-test.conf"
    settings = {"net.ipv4.tcp_syncookies": 1, "net.ipv4.conf.all.rp_filter": 1}

    first = run_module(capsys, path=str(target), settings=settings)
    assert first["changed"] is True and first["file_changed"] is True
    assert first["applied"] == {
        "net.ipv4.conf.all.rp_filter": {"before": "2", "after": "1"},
        "net.ipv4.tcp_syncookies": {"before": "0", "after": "1"},
    }
    assert (proc_sys / "net/ipv4/tcp_syncookies").read_text() == "1"
    assert "net.ipv4.tcp_syncookies = 1" in target.read_text()

    second = run_module(capsys, path=str(target), settings=settings)
    assert second["changed"] is False and second["applied"] == {}


def test_multi_field_value_compares_on_fields(
    proc_sys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(
        capsys,
        path=str(tmp_path / "90-test.conf"),
        settings={"net.ipv4.ip_local_port_range": "32768 60999"},
    )
    assert result["applied"] == {}  # the kernel's tab is not a difference


def test_check_mode_reports_drift_and_changes_nothing(
    proc_sys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "90-test.conf"
    result = run_module(
        capsys,
        path=str(target),
        settings={"net.ipv4.tcp_syncookies": 1},
        _ansible_check_mode=True,
    )
    assert result["changed"] is True
    assert result["applied"] == {"net.ipv4.tcp_syncookies": {"before": "0", "after": "1"}}
    assert (proc_sys / "net/ipv4/tcp_syncookies").read_text() == "0\n"
    assert not target.exists()


def test_apply_false_writes_only_the_file(
    proc_sys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(
        capsys,
        path=str(tmp_path / "90-test.conf"),
        settings={"net.ipv4.tcp_syncookies": 1},
        apply=False,
    )
    assert result["file_changed"] is True and result["applied"] == {}
    assert (proc_sys / "net/ipv4/tcp_syncookies").read_text() == "0\n"


def test_unknown_parameter_fails_naming_it_before_any_change(
    proc_sys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "90-test.conf"
    result = run_module(
        capsys,
        path=str(target),
        settings={"net.ipv4.tcp_syncookies": 1, "net.ipv4.tcp_synccookies": 1},
    )
    assert result["failed"] is True
    assert "net.ipv4.tcp_synccookies" in result["msg"]
    assert not target.exists()
    assert (proc_sys / "net/ipv4/tcp_syncookies").read_text() == "0\n"


def test_bad_name_fails(proc_sys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(capsys, path=str(tmp_path / "x.conf"), settings={"../../etc.x": 1})
    assert result["failed"] is True and "Not a sysctl name" in result["msg"]
