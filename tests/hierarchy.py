"""Running real controller processes on loopback, for the hierarchy tests.

Controllers run over real TLS: each working directory has a test CA
(<workdir>/pki, see tlsutil.py) that issues every controller its certificate.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from tlsutil import CertificateAuthority, client_context


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pdsno(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the pdsno CLI as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "pdsno.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def pdsno_ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = pdsno(*args, env=env)
    assert result.returncode == 0, f"pdsno {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@dataclass
class ControllerProcess:
    name: str
    workdir: Path
    settings: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def tls(self) -> bool:
        return bool(self.settings.get("tls", {}).get("enabled", True))

    @property
    def url(self) -> str:
        """The operator API."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.settings['listen_port']}"

    @property
    def peer_url(self) -> str:
        """The listener other controllers call."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.settings['peer_listen_port']}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What a test client verifies this controller's API with: the test CA."""
        if not self.tls:
            return True
        if self.settings["tls"].get("require_client_cert_api"):
            return peer_client(self.workdir, "operator")
        return client_context(Path(self.settings["tls"]["ca_file"]))

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30.0) -> None:
        config = self.workdir / f"{self.name}.yaml"
        config.write_text(yaml.safe_dump(self.settings))
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pdsno.cli", "controller", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=1, verify=self.verify)
                if health.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"{self.name} did not become healthy:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def identity(self) -> dict[str, Any]:
        import json

        return json.loads((Path(self.settings["state_dir"]) / "identity.json").read_text())


def pki(workdir: Path) -> CertificateAuthority:
    """The test CA of a working directory."""
    return CertificateAuthority.at(workdir / "pki")


def issue_once(workdir: Path, name: str, **options: Any) -> tuple[Path, Path]:
    """<workdir>/pki/<name>.crt and .key, issued by the test CA on first use."""
    cert_file, key_file = workdir / "pki" / f"{name}.crt", workdir / "pki" / f"{name}.key"
    if not cert_file.exists():
        pki(workdir).issue(name, **options).write(cert_file, key_file)
    return cert_file, key_file


def tls_settings(workdir: Path, name: str) -> dict[str, Any]:
    cert_file, key_file = issue_once(workdir, name)
    return {
        "enabled": True,
        "cert_file": str(cert_file),
        "key_file": str(key_file),
        "ca_file": str(workdir / "pki" / "ca.crt"),
    }


def peer_client(workdir: Path, name: str = "tester") -> ssl.SSLContext:
    """A client with a certificate of the test CA, as the peer listeners require."""
    cert_file, key_file = issue_once(workdir, name, server=False)
    return client_context(workdir / "pki" / "ca.crt", cert_file, key_file)


def controller_settings(
    workdir: Path,
    name: str,
    controller_type: str,
    db_url: str,
    *,
    region: str | None = None,
    parent_url: str | None = None,
    mqtt_port: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    key_file = workdir / f"{name}.key"
    if not key_file.exists():
        pdsno_ok("key", "generate", "--out", str(key_file))
    settings: dict[str, Any] = {
        "type": controller_type,
        "name": name,
        "db_url": db_url,
        "key_file": str(key_file),
        "state_dir": str(workdir / f"{name}-state"),
        "listen_host": "127.0.0.1",
        "listen_port": free_port(),
        "peer_listen_port": free_port(),
        "metrics": {"port": free_port()},
        "tls": tls_settings(workdir, name),
        "message_window_seconds": 60,
        **extra,
    }
    if region:
        settings["region"] = region
    if parent_url:
        settings["parent_url"] = parent_url
    if mqtt_port:
        settings["mqtt"] = {"enabled": True, "host": "127.0.0.1", "port": mqtt_port}
    return settings


def wait_for(predicate, *, timeout: float = 20.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
