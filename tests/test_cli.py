import subprocess

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
