import subprocess

import pytest

import pdsno
from pdsno.cli import main


def test_version_is_the_installed_distribution_version():
    result = subprocess.run(["pdsno", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"pdsno {pdsno.__version__}"
    assert pdsno.__version__ != "0.0.0+source", "the package must be installed (pip install -e .)"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: pdsno" in capsys.readouterr().out


def test_operator_commands_against_a_fresh_nib(tmp_path):
    db = ["--db-url", f"sqlite:///{tmp_path / 'nib.db'}"]

    def pdsno(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["pdsno", *args], capture_output=True, text=True, check=False)

    before = pdsno("token", "list", *db)
    assert before.returncode == 1 and "pdsno db upgrade" in before.stderr
    assert pdsno("db", "upgrade", *db).returncode == 0
    assert pdsno("db", "upgrade", *db).returncode == 0, "upgrade is idempotent"

    token = pdsno("token", "create", "--region", "r1", "--type", "local", "--ttl", "2h", *db)
    assert token.returncode == 0 and token.stdout.startswith("pdsno-bt-")
    listed = pdsno("token", "list", *db).stdout
    assert '"region": "r1"' in listed and token.stdout.strip() not in listed

    bad_ttl = pdsno("token", "create", "--region", "r1", "--type", "local", "--ttl", "soon", *db)
    assert bad_ttl.returncode == 2 and "not a duration" in bad_ttl.stderr

    key = pdsno("apikey", "create", "--name", "ops", "--role", "operator", *db).stdout.strip()
    key_id = key.split("_")[1]
    assert pdsno("apikey", "revoke", key_id, *db).returncode == 0
    assert '"revoked": true' in pdsno("apikey", "list", *db).stdout
    assert pdsno("audit", "verify", *db).stdout.startswith("audit chain intact: 3 events")


def test_key_generate_never_overwrites(tmp_path):
    out = tmp_path / "controller.key"
    first = subprocess.run(
        ["pdsno", "key", "generate", "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0 and oct(out.stat().st_mode & 0o777) == "0o600"
    again = subprocess.run(
        ["pdsno", "key", "generate", "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and "never overwritten" in again.stderr


def test_controller_without_key_says_what_to_set(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'nib.db'}"
    subprocess.run(["pdsno", "db", "upgrade", "--db-url", db_url], check=True, capture_output=True)
    result = subprocess.run(
        ["pdsno", "controller", "run", "--type", "global", "--db-url", db_url],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={
            **__import__("os").environ,
            "PDSNO_KEY_FILE": str(tmp_path / "missing.key"),
            "PDSNO_STATE_DIR": str(tmp_path / "state"),
            "PDSNO_TLS__ENABLED": "false",
            "PDSNO_TLS__ALLOW_INSECURE_HTTP": "true",
        },
    )
    assert result.returncode == 1
    assert "pdsno key generate" in result.stderr and "PDSNO_KEY_FILE" in result.stderr


def test_a_retired_controller_is_refused_as_a_message_sender(tmp_path):
    from datetime import timedelta

    from pdsno.clock import utcnow
    from pdsno.errors import ValidationRefusedError
    from pdsno.messaging.envelope import open_sealed, seal
    from pdsno.nib.engine import create_nib_engine
    from pdsno.nib.schema import controllers
    from pdsno.security.keys import SigningKey

    db_url = f"sqlite:///{tmp_path / 'nib.db'}"
    subprocess.run(["pdsno", "db", "upgrade", "--db-url", db_url], check=True, capture_output=True)
    engine = create_nib_engine(db_url)
    key = SigningKey.generate()
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            controllers.insert().values(
                controller_id="lc-r-9",
                controller_type="local",
                region="r",
                name="lc",
                public_key=key.public_key_b64,
                status="active",
                created_at=now,
                updated_at=now,
                version=1,
            )
        )
    retire = subprocess.run(
        ["pdsno", "controllers", "retire", "lc-r-9", "--reason", "key lost", "--db-url", db_url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert retire.returncode == 0, retire.stderr
    envelope = seal("proposal.review", {}, sender_id="lc-r-9", recipient_id="rc", signer=key)
    with pytest.raises(ValidationRefusedError, match="inactive sender"), engine.begin() as conn:
        open_sealed(conn, envelope, recipient_id="rc", window=timedelta(seconds=60))
    engine.dispose()


def test_controller_check_names_a_bad_setting_and_accepts_a_good_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("type: global\nname: gc1\nlimits:\n  backlog: 128\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: global\nname: gc1\nlimits:\n  backlog: 1\n")
    checked = [
        subprocess.run(
            ["pdsno", "controller", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        for path in (good, bad)
    ]
    assert checked[0].returncode == 0, checked[0].stderr
    assert "valid settings of the global controller" in checked[0].stdout
    assert checked[1].returncode == 1
    assert "limits.backlog" in checked[1].stderr
