"""Requests per second and p99 of an authenticated TLS GET /api/v1/devices/{id}.

Every server is a single uvicorn process on loopback with the same TLS
certificate and the same server settings (h11, asyncio loop), loaded by wrk
(one thread) for a fixed time. All run at once, idle but for the row being
measured; the rows run interleaved, `--rounds` times, and the table shows
each row's median:

  bare          a raw ASGI app sending the same JSON (the ceiling)
  minimal       FastAPI's default path: async endpoint, async header
                dependency, response_model (pdsno's DeviceOut)
  pdsno key     a pdsno controller, API key, rate limiter on
  pdsno key-rl  the same controller config with the rate limiter off
  pdsno session the rate-limited controller, an operator session token
  pdsno region  the rate-limited controller, an API key bound to the region

Limits are high enough that nothing is refused: this measures the limiter's
cost, not its refusals. Then it prints each target of issue 14 with its
ratio and whether this run meets it. A benchmark, not a test: it asserts
nothing (`make bench`). Needs wrk (Debian).

    python bench/api_tls_bench.py [--seconds 10] [--rounds 3] [--nib sqlite]
                                  [--clients 100000] [--profile DIR]

Memory: a controller's resident set (VmRSS) idle, after a warm-up, and after
--clients requests each from another client address (X-Forwarded-For from a
trusted proxy, so the rate limiter tracks each one, in its bounded LRU).

--profile DIR runs the rate-limited controller under py-spy (samples of the
thread holding the GIL: where Python spends the CPU) and writes DIR/pdsno.raw
(collapsed stacks) and DIR/pdsno-top.txt (top frames).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from hierarchy import free_port  # noqa: E402
from profile_top import summarise  # noqa: E402
from reference_apps import BARE_APP, MINIMAL_APP  # noqa: E402
from services import PostgresServer, ServiceUser, private_directory  # noqa: E402
from tlsutil import CertificateAuthority  # noqa: E402

DEVICE_ID = "bench-1"
REGION = "bench"
OPERATOR_PASSWORD = "bench-operator-password-1"  # noqa: S105 (a throwaway lab account)
# The server settings of a pdsno listener (pdsno.runtime._server), for the references.
UVICORN_SETTINGS = ("--http", "h11", "--loop", "asyncio", "--no-access-log")


@dataclass(frozen=True)
class Target:
    """One target of issue 14: `row` against `reference`, a bound on the ratio."""

    name: str
    measure: Callable[[dict[str, dict[str, float]]], float]
    bound: float
    at_least: bool  # else at most

    def met(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound


def _ratio(row: str, reference: str, key: str = "rps") -> Callable[[dict], float]:
    return lambda results: results[row][key] / results[reference][key]


API_TARGETS = (
    Target("API key, limiter on: req/s vs bare", _ratio("key", "bare"), 0.70, True),
    Target("API key, limiter on: p99 vs bare", _ratio("key", "bare", "p99_ms"), 1.5, False),
    Target("session token: req/s vs bare", _ratio("session", "bare"), 0.60, True),
    Target("region-bound key: req/s vs bare", _ratio("region", "bare"), 0.60, True),
    Target(
        "rate limiter's cost (1 - on/off req/s)",
        lambda results: 1 - results["key"]["rps"] / results["key-rl"]["rps"],
        0.03,
        False,
    ),
)


def pdsno(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pdsno.cli", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        input=stdin,
    )
    return result.stdout.strip()


def wait_healthy(url: str, ca_file: Path, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            httpx.get(url, verify=str(ca_file), timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    process.send_signal(signum)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_wrk(url: str, headers: dict[str, str], seconds: int, connections: int) -> dict[str, float]:
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    warmup = ["wrk", "-t1", "-c", str(connections), "-d", "1s", *header_args, url]
    subprocess.run(warmup, capture_output=True, check=True, timeout=30)
    command = ["wrk", "-t1", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    output = subprocess.run(
        [*command, *header_args, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])
    p99_value, p99_unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()
    p99_ms = float(p99_value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99_unit]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return {"rps": rps, "p99_ms": p99_ms, "non_2xx": int(non_2xx[1]) if non_2xx else 0}


@dataclass
class Setup:
    work: Path
    env: dict[str, str]
    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Running:
    base: str
    pid: int


@contextmanager
def pdsno_server(
    setup: Setup,
    label: str,
    *,
    rate_limited: bool,
    profile: Path | None = None,
    trusted_proxies: tuple[str, ...] = (),
) -> Iterator[Running]:
    """A running controller: its base URL and process ID."""
    port = free_port()
    settings = {
        "type": "global",
        "name": "bench",
        "key_file": str(setup.work / "controller.key"),
        # One identity for every controller of the run: a NIB has one global controller.
        "state_dir": str(setup.work / "state"),
        "listen_port": port,
        "peer_listen_port": free_port(),
        "tls": {
            "cert_file": str(setup.cert_file),
            "key_file": str(setup.key_file),
            "ca_file": str(setup.ca_file),
        },
        "metrics": {"port": free_port()},
        "logging": {"level": "WARNING"},
        "limits": {
            "rate_limit_enabled": rate_limited,
            "rate_per_second": 1e6,
            "burst": 1_000_000,
            "max_concurrent_requests": 10_000,
            "trusted_proxies": list(trusted_proxies),
        },
    }
    config = setup.work / f"{label}.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "pdsno.cli", "controller", "run", "--config", str(config)]
    if profile is not None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        raw = profile / "pdsno.raw"
        command = [
            spy,
            "record",
            "--format",
            "raw",
            "--rate",
            "200",
            "-o",
            str(raw),
            "--",
            *command,
        ]
    server = subprocess.Popen(
        command,
        env=setup.env,
        stdout=subprocess.DEVNULL,
        stderr=(setup.work / f"{label}.log").open("w"),
    )
    base = f"https://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/health/live", setup.ca_file, server)
        yield Running(base, server.pid)
    finally:
        # py-spy writes its profile when the controller it runs exits.
        stop(server, signal.SIGINT if profile is not None else signal.SIGTERM)


@contextmanager
def reference_server(setup: Setup, module: str) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--port",
            str(port),
            "--ssl-certfile",
            str(setup.cert_file),
            "--ssl-keyfile",
            str(setup.key_file),
            "--log-level",
            "warning",
            *UVICORN_SETTINGS,
        ],
        cwd=setup.work,
        env=setup.env,
        stdout=subprocess.DEVNULL,
        stderr=(setup.work / f"{module}.log").open("w"),
    )
    base = f"https://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/", setup.ca_file, server)
        yield base
    finally:
        stop(server)


def credentials(setup: Setup, base: str) -> dict[str, dict[str, str]]:
    """The headers of each authenticated row, after creating the bench device."""
    env = setup.env
    admin = pdsno("apikey", "create", "--name", "bench-admin", "--role", "admin", env=env)
    key = pdsno("apikey", "create", "--name", "bench", "--role", "auditor", env=env)
    regional = pdsno(
        "apikey", "create", "--name", "bench-region", "--role", "auditor", "--region", REGION,
        env=env,
    )  # fmt: skip
    pdsno(
        "user", "create", "--username", "bench-operator", "--role", "operator",
        env=env, stdin=OPERATOR_PASSWORD + "\n",
    )  # fmt: skip
    with httpx.Client(base_url=base, verify=str(setup.ca_file), timeout=30) as client:
        client.post(
            "/api/v1/devices",
            headers={"X-API-Key": admin},
            json={"device_id": DEVICE_ID, "name": "bench switch", "region": REGION},
        ).raise_for_status()
        login = client.post(
            "/api/v1/auth/login",
            json={"username": "bench-operator", "password": OPERATOR_PASSWORD},
        )
        login.raise_for_status()
        token = login.json()["token"]
    return {
        "key": {"X-API-Key": key},
        "session": {"Authorization": f"Bearer {token}"},
        "region": {"X-API-Key": regional},
    }


def prepare(work: Path, db_url: str) -> Setup:
    ca = CertificateAuthority.create()
    ca_file = ca.write_ca(work / "ca.crt")
    cert_file, key_file = ca.issue("bench").write(work / "server.crt", work / "server.key")
    env = {**os.environ, "PDSNO_DB_URL": db_url}
    pdsno("db", "upgrade", env=env)
    pdsno("key", "generate", "--out", str(work / "controller.key"), env=env)
    return Setup(work, env, ca_file, cert_file, key_file)


def measure(
    args: argparse.Namespace, setup: Setup
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """The median of each row, and the API key's headers (for the memory row)."""
    path = f"/api/v1/devices/{DEVICE_ID}"
    with ExitStack() as servers:
        limited = servers.enter_context(pdsno_server(setup, "pdsno", rate_limited=True)).base
        unlimited = servers.enter_context(pdsno_server(setup, "pdsno-rl", rate_limited=False)).base
        headers = credentials(setup, limited)
        device_json = httpx.get(
            limited + path, headers=headers["key"], verify=str(setup.ca_file)
        ).content
        (setup.work / "device.json").write_bytes(device_json)
        (setup.work / "bare_app.py").write_text(BARE_APP)
        (setup.work / "minimal_app.py").write_text(MINIMAL_APP)
        bare = servers.enter_context(reference_server(setup, "bare_app"))
        minimal = servers.enter_context(reference_server(setup, "minimal_app"))
        rows = {
            "bare": (bare, headers["key"]),
            "minimal": (minimal, headers["key"]),
            "key": (limited, headers["key"]),
            "key-rl": (unlimited, headers["key"]),
            "session": (limited, headers["session"]),
            "region": (limited, headers["region"]),
        }
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in rows}
        for round_number in range(args.rounds):
            # Alternate the order, so that no row always follows the same one.
            order = list(rows) if round_number % 2 == 0 else list(reversed(rows))
            for label in order:
                print(f"round {round_number + 1}: {label}", file=sys.stderr, flush=True)
                base, row_headers = rows[label]
                runs[label].append(
                    run_wrk(base + path, row_headers, args.seconds, args.connections)
                )
    medians = {
        label: {
            "rps": statistics.median(run["rps"] for run in row_runs),
            "p99_ms": statistics.median(run["p99_ms"] for run in row_runs),
            "non_2xx": sum(run["non_2xx"] for run in row_runs),
            "runs_rps": [run["rps"] for run in row_runs],
        }
        for label, row_runs in runs.items()
    }
    return medians, headers["key"]


# Each request from another client address (X-Forwarded-For, from a trusted
# proxy): the rate limiter tracks every one it sees, in a bounded LRU.
# wrk runs it in chunks (its thread:stop() ends the requests, not the run);
# each chunk starts where the last ended (its first argument), so every
# request of the whole run comes from another address.
DISTINCT_CLIENTS_SCRIPT = """
local sent = 0
local headers = {}

init = function(args)
  sent = tonumber(args[1])
  for name, value in pairs(wrk.headers) do headers[name] = value end
end

request = function()
  sent = sent + 1
  local a, b = 10 + math.floor(sent / 65536) % 200, math.floor(sent / 256) % 256
  headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", a, b, sent % 256)
  return wrk.format(nil, nil, headers)
end
"""


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def memory(args: argparse.Namespace, setup: Setup, headers: dict[str, str]) -> dict[str, float]:
    """A controller's RSS idle (after a warm-up), then after `--clients` distinct clients."""
    script = setup.work / "distinct_clients.lua"
    script.write_text(DISTINCT_CLIENTS_SCRIPT)
    with pdsno_server(
        setup, "pdsno-memory", rate_limited=True, trusted_proxies=("127.0.0.1",)
    ) as server:
        url = f"{server.base}/api/v1/devices/{DEVICE_ID}"
        run_wrk(url, headers, 2, args.connections)  # warm: caches, pools, first-use imports
        idle = resident_mib(server.pid)
        print(f"memory: {args.clients} distinct clients", file=sys.stderr, flush=True)
        header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
        command = ["wrk", "-t1", "-c", str(args.connections), "-d", "10s", "-s", str(script)]
        answered = 0
        while answered < args.clients:
            output = subprocess.run(
                [*command, *header_args, url, "--", str(answered)],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
            answered += int(re.search(r"(\d+) requests in", output)[1])
        loaded = resident_mib(server.pid)
    return {"idle_mib": idle, "loaded_mib": loaded, "clients": answered}


def profile(args: argparse.Namespace, setup: Setup, directory: Path) -> None:
    """The rate-limited controller under py-spy, loaded by the API-key row."""
    directory.mkdir(parents=True, exist_ok=True)
    with pdsno_server(setup, "pdsno-profile", rate_limited=True, profile=directory) as server:
        headers = credentials(setup, server.base)
        run_wrk(f"{server.base}/api/v1/devices/{DEVICE_ID}", headers["key"], args.seconds, 32)
    raw = (directory / "pdsno.raw").read_text()
    top = summarise(raw, limit=12)
    (directory / "pdsno-top.txt").write_text(top)
    print(top)


def report(
    args: argparse.Namespace, results: dict[str, dict[str, float]], rss: dict[str, float] | None
) -> None:
    print(
        f"\nGET /api/v1/devices/{{id}} over TLS 1.3, NIB on {args.nib}, {args.connections} "
        f"connections, {args.seconds} s a run, median of {args.rounds} interleaved runs, "
        f"wrk -t1, one uvicorn process each, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )
    header = (
        f"{'row':<9} {'req/s':>8} {'p99 ms':>8} {'/bare':>6} {'/minimal':>9} {'non-2xx':>8}  runs"
    )
    print(header)
    for label, row in results.items():
        print(
            f"{label:<9} {row['rps']:>8.0f} {row['p99_ms']:>8.2f} "
            f"{row['rps'] / results['bare']['rps']:>6.2f} "
            f"{row['rps'] / results['minimal']['rps']:>9.2f} {row['non_2xx']:>8}  "
            + ", ".join(f"{rps:.0f}" for rps in row["runs_rps"])
        )
    print(f"\n{'target':<42} {'bound':>7} {'ratio':>7}  met")
    for target in API_TARGETS:
        value = target.measure(results)
        bound = f"{'>=' if target.at_least else '<='}{target.bound:g}"
        print(f"{target.name:<42} {bound:>7} {value:>7.2f}  {'yes' if target.met(value) else 'NO'}")
    if rss is not None:
        growth = rss["loaded_mib"] - rss["idle_mib"]
        name = f"RSS growth after {rss['clients']:.0f} clients (MiB)"
        print(
            f"{name:<42} {'<=64':>7} "
            f"{growth:>7.1f}  {'yes' if growth <= 64 else 'NO'}   "
            f"(idle {rss['idle_mib']:.1f} MiB, after {rss['loaded_mib']:.1f} MiB)"
        )
    print(json.dumps({**results, "memory": rss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--nib", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--profile", type=Path, help="profile the controller instead")
    parser.add_argument(
        "--clients", type=int, default=100_000, help="distinct clients of the memory row (0: none)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="pdsno-bench-"))
    postgres = None
    if args.nib == "postgresql":
        owner = ServiceUser.for_service("postgres")
        postgres = PostgresServer(private_directory("pdsno-bench-pg-", owner), owner)
        postgres.init()
        postgres.start()
        db_url = postgres.create_database()
    else:
        db_url = f"sqlite:///{work / 'nib.db'}"
    try:
        setup = prepare(work, db_url)
        if args.profile is not None:
            profile(args, setup, args.profile)
        else:
            results, headers = measure(args, setup)
            rss = memory(args, setup, headers) if args.clients else None
            report(args, results, rss)
    finally:
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
