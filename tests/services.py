"""Real PostgreSQL and Mosquitto servers for the tests, on free ports of 127.0.0.1.

A pytest plugin, loaded from tests/conftest.py. Each server is private to the
test session: its own data in a temporary directory, its own port, stopped and
removed at the end. Missing binaries fail the tests (never skip them, that
would hide them): `make deps` installs the packages.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Debian installs each PostgreSQL major under its own directory (15 on Debian
# 12, 17 on Debian 13); the control node's tests run whichever is there.
POSTGRESQL_LIB = Path("/usr/lib/postgresql")
MOSQUITTO = Path("/usr/sbin/mosquitto")
START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _version_key(directory: Path) -> tuple[int, ...]:
    """`/usr/lib/postgresql/9.6/bin` -> (9, 6); a name that is no version sorts first."""
    try:
        return tuple(int(part) for part in directory.parent.name.split("."))
    except ValueError:
        return ()


def find_postgres_bindir(root: Path = POSTGRESQL_LIB, pg_config: str | None = None) -> Path | None:
    """The directory of the PostgreSQL server binaries (initdb, pg_ctl, postgres).

    What `pg_config --bindir` names, when it holds them (Debian's pg_config
    comes with libpq-dev and may name a version whose server is not
    installed); else the newest `ROOT/<version>/bin` that holds them.
    """
    candidates: list[Path] = []
    pg_config = pg_config if pg_config is not None else shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    candidates += sorted(root.glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def postgres_bindir() -> Path:
    """find_postgres_bindir(), or fail the test with what to install."""
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.fail(
            f"No PostgreSQL server binaries (initdb, pg_ctl, postgres) under "
            f"{POSTGRESQL_LIB}/*/bin nor where `pg_config --bindir` points: the tests need "
            "a real PostgreSQL. Run `make deps` (it installs the apt package postgresql).",
            pytrace=False,
        )
    return bindir


def require_binary(path: Path, package: str) -> None:
    if not path.exists():
        pytest.fail(
            f"{path} is missing: the tests need a real {package}. Run `make deps` "
            f"(it installs the apt packages, {package} among them).",
            pytrace=False,
        )


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} was not written)"


@dataclass(frozen=True)
class ServiceUser:
    """Who a server runs as: the package's system user when we are root.

    PostgreSQL refuses to run as root, and neither server needs to.
    """

    name: str
    uid: int
    gid: int

    @classmethod
    def for_service(cls, name: str) -> ServiceUser | None:
        if os.geteuid() != 0:
            return None  # run as ourselves
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            pytest.fail(
                f"There is no `{name}` user (its Debian package creates it): run `make deps`.",
                pytrace=False,
            )
        return cls(name, entry.pw_uid, entry.pw_gid)

    def process_options(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def private_directory(prefix: str, owner: ServiceUser | None) -> Path:
    # Not tmp_path: pytest's base directory is readable by root only.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    return path


class PostgresServer:
    """A PostgreSQL cluster of its own; stop() and start() keep port and data."""

    def __init__(self, base: Path, owner: ServiceUser | None) -> None:
        self.port = free_port()
        self._base = base
        self._owner = owner
        self._data = base / "data"
        self._log = base / "postgres.log"
        self._running = False
        self._bin = postgres_bindir()

    @property
    def running(self) -> bool:
        return self._running

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> None:
        self._run(
            self._bin / "initdb",
            *("-D", str(self._data), "--username=postgres", "--auth=trust"),
            *("--encoding=UTF8", "--locale=C.UTF-8"),
        )

    def start(self) -> None:
        if self._running:
            return
        # Durability settings off: a test cluster trades crash safety for speed.
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self._base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self._run(
            self._bin / "pg_ctl",
            *("-D", str(self._data), "-l", str(self._log), "-o", options),
            *("-w", "-t", str(int(START_TIMEOUT_SECONDS)), "start"),
        )
        self._running = True

    def stop(self) -> None:
        if not self._running:
            return
        self._run(self._bin / "pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")
        self._running = False

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg2

        name = f"test_{uuid.uuid4().hex[:16]}"
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE refuses to run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def _run(self, *command: str | Path) -> None:
        options = self._owner.process_options() if self._owner else {}
        result = subprocess.run(
            [str(part) for part in command],
            cwd=self._base,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **options,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\nlast lines of {self._log}:\n{tail(self._log)}"
            )


class MosquittoBroker:
    """A Mosquitto of its own; stop() and start() keep port and persisted sessions."""

    host = "127.0.0.1"

    def __init__(self, base: Path, owner: ServiceUser | None) -> None:
        self.port = free_port()
        self._base = base
        self._owner = owner
        self._config = base / "mosquitto.conf"
        self._log = base / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._config.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {base}/\n"
            "max_queued_messages 100000\n"
            f"log_dest file {self._log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            self.resume()  # a test that failed while the broker was paused
            return
        options = self._owner.process_options() if self._owner else {}
        self._process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self._config)],
            cwd=self._base,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **options,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_open(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mosquitto did not start on {self.host}:{self.port}; "
                    f"last lines of {self._log}:\n{tail(self._log)}"
                )
            time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is acknowledged."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, number: signal.Signals) -> None:
        if not self.running:
            raise RuntimeError("mosquitto is not running")
        assert self._process is not None
        self._process.send_signal(number)

    def stop(self) -> None:
        """SIGTERM, so that the broker saves its persistence file, then wait."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL, for the session; databases come from create_database()."""
    postgres_bindir()
    owner = ServiceUser.for_service("postgres")
    base = private_directory("pdsno-pg-", owner)
    server = PostgresServer(base, owner)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def mosquitto_broker() -> Iterator[MosquittoBroker]:
    """A real Mosquitto, for the session; a test that stops it must start it again."""
    require_binary(MOSQUITTO, "Mosquitto (package mosquitto)")
    owner = ServiceUser.for_service("mosquitto")
    base = private_directory("pdsno-mqtt-", owner)
    broker = MosquittoBroker(base, owner)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)
