"""PDSNO-22 reads pgBackRest's own account of the repository (`pgbackrest info
--output=json`, format of pgBackRest 2.45) and fails on each way it can be wrong.

The command is a stand-in printing that format: the real pgBackRest runs in
molecule/backup and molecule/fullstack.
"""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "roles/verify/library/pdsno_verify_host.py"
spec = importlib.util.spec_from_file_location("pdsno_verify_host", LIBRARY)
verify_host = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verify_host)

HOUR = 3600


def stanza(*, stop_hours_ago: float = 2, cipher: str = "aes-256-cbc", code: int = 0) -> dict:
    stop = int(time.time() - stop_hours_ago * HOUR)
    return {
        "name": "pdsno",
        "cipher": cipher,
        "repo": [{"key": 1, "cipher": cipher, "status": {"code": 0, "message": "ok"}}],
        "status": {"code": code, "message": "ok" if code == 0 else "missing stanza path"},
        "backup": [
            {
                "label": "20261201-010000F",
                "type": "full",
                "timestamp": {"start": stop - 2 * HOUR - 60, "stop": stop - 2 * HOUR},
            },
            {
                "label": "20261201-010000F_20261202-010000D",
                "type": "diff",
                "timestamp": {"start": stop - 60, "stop": stop},
            },
        ],
    }


def check(info: object, *, rc: int = 0, **args: object) -> tuple[str, str]:
    printer = f"import sys; print({json.dumps(json.dumps(info))}); sys.exit({rc})"
    return verify_host.check_backup(
        {
            "argv": [sys.executable, "-c", printer],
            "stanza": "pdsno",
            "cipher": "aes-256-cbc",
            "max_age_hours": 26,
            **args,
        }
    )


def test_a_recent_backup_in_a_healthy_encrypted_repository_passes():
    status, detail = check([stanza()])
    assert status == verify_host.PASS, detail
    assert "newest 20261201-010000F_20261202-010000D (diff)" in detail


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ([stanza(stop_hours_ago=30)], "is 30 h old"),
        ([stanza(cipher="none")], "repository cipher none, not aes-256-cbc"),
        ([stanza(code=2)], "missing stanza path"),
        ([{**stanza(), "backup": []}], "no backup in the repository"),
        ([{**stanza(), "name": "other"}], "no stanza pdsno in the repository (stanzas: other)"),
        ({"not": "a list"}, "printed no stanza list"),
    ],
)
def test_each_fault_fails_and_says_which(info, expected):
    status, detail = check(info)
    assert status == verify_host.FAIL
    assert expected in detail


def test_a_failed_command_fails_with_the_reason():
    status, detail = check([], rc=1, missing_reason="the pgBackRest backup role is not deployed")
    assert status == verify_host.FAIL
    assert "exited 1" in detail and "not deployed" in detail
