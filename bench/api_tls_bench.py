"""Requests per second and p99 of an authenticated TLS GET /api/v1/devices/{id}.

Three servers, one after the other, each a single uvicorn process on
loopback with the same TLS certificate, loaded by wrk for a fixed time:

  bare        a bare uvicorn TLS app returning the same JSON (the ceiling)
  pdsno       a real pdsno controller, API key checked, rate limiter off
  pdsno+rl    the same with the rate limiter on (limits high enough that
              nothing is refused: this measures its cost, not its refusals)

Prints a table and the ratios to the bare app. A benchmark, not a test:
run it by hand (`make bench`), it asserts nothing. Needs wrk (Debian).

    python bench/api_tls_bench.py [--seconds 10] [--connections 32] [--nib sqlite]

The NIB is a real PostgreSQL 15 (as in production) unless --nib sqlite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from hierarchy import free_port  # noqa: E402
from services import PostgresServer, ServiceUser, private_directory  # noqa: E402
from tlsutil import CertificateAuthority  # noqa: E402

DEVICE_ID = "bench-1"
BARE_APP = """
import json
from pathlib import Path

BODY = Path(__file__).with_name("device.json").read_bytes()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
"""


def pdsno(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pdsno.cli", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
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


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_wrk(url: str, api_key: str | None, seconds: int, connections: int) -> dict[str, float]:
    headers = ["-H", f"X-API-Key: {api_key}"] if api_key else []
    warmup = ["wrk", "-t1", "-c", str(connections), "-d", "2s", *headers, url]
    subprocess.run(warmup, capture_output=True, check=True, timeout=30)
    command = [
        "wrk",
        "-t1",
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--latency",
        *headers,
        url,
    ]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])
    p99_value, p99_unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()
    p99_ms = float(p99_value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99_unit]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    return {
        "rps": rps,
        "p99_ms": p99_ms,
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": errors[0] if errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--nib", choices=["postgresql", "sqlite"], default="postgresql")
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
        measure(args, work, db_url)
    finally:
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path, db_url: str) -> None:
    ca = CertificateAuthority.create()
    ca_file = ca.write_ca(work / "ca.crt")
    cert_file, key_file = ca.issue("bench").write(work / "server.crt", work / "server.key")
    env = {**os.environ, "PDSNO_DB_URL": db_url}
    pdsno("db", "upgrade", env=env)
    api_key = pdsno("apikey", "create", "--name", "bench", "--role", "auditor", env=env)
    admin_key = pdsno("apikey", "create", "--name", "bench-admin", "--role", "admin", env=env)
    pdsno("key", "generate", "--out", str(work / "controller.key"), env=env)

    results: dict[str, dict[str, float]] = {}
    device_json: bytes | None = None
    for label, rate_limited in (("pdsno", False), ("pdsno+rl", True)):
        port = free_port()
        settings = {
            "type": "global",
            "name": "bench",
            "key_file": str(work / "controller.key"),
            "state_dir": str(work / "state"),
            "listen_port": port,
            "peer_listen_port": free_port(),
            "tls": {
                "cert_file": str(cert_file),
                "key_file": str(key_file),
                "ca_file": str(ca_file),
            },
            "metrics": {"port": free_port()},
            "logging": {"level": "WARNING"},
            "limits": {
                "rate_limit_enabled": rate_limited,
                "rate_per_second": 1e6,
                "burst": 1_000_000,
                "max_concurrent_requests": 10_000,
            },
        }
        config = work / f"{label}.yaml"
        config.write_text(yaml.safe_dump(settings))
        server = subprocess.Popen(
            [sys.executable, "-m", "pdsno.cli", "controller", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(work / f"{label}.log").open("w"),
        )
        base = f"https://127.0.0.1:{port}"
        try:
            wait_healthy(f"{base}/health/live", ca_file, server)
            client = httpx.Client(base_url=base, verify=str(ca_file), timeout=10)
            if device_json is None:
                client.post(
                    "/api/v1/devices",
                    headers={"X-API-Key": admin_key},
                    json={"device_id": DEVICE_ID, "name": "bench switch", "region": "bench"},
                )
                device_json = client.get(
                    f"/api/v1/devices/{DEVICE_ID}", headers={"X-API-Key": api_key}
                ).content
            results[label] = run_wrk(
                f"{base}/api/v1/devices/{DEVICE_ID}", api_key, args.seconds, args.connections
            )
        finally:
            stop(server)

    (work / "device.json").write_bytes(device_json or b"{}")
    (work / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    bare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(port),
            "--ssl-certfile",
            str(cert_file),
            "--ssl-keyfile",
            str(key_file),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"https://127.0.0.1:{port}/", ca_file, bare)
        results["bare"] = run_wrk(
            f"https://127.0.0.1:{port}/api/v1/devices/{DEVICE_ID}",
            api_key,
            args.seconds,
            args.connections,
        )
    finally:
        stop(bare)

    print(
        f"\nGET /api/v1/devices/{{id}} over TLS 1.3, NIB on {args.nib}, "
        f"{args.connections} connections, {args.seconds} s each, wrk -t1, "
        f"one uvicorn process each, {os.cpu_count()} cores"
    )
    print(f"{'server':<10} {'req/s':>10} {'p99 ms':>8} {'vs bare req/s':>14} {'non-2xx':>8}")
    for label in ("bare", "pdsno", "pdsno+rl"):
        row = results[label]
        ratio = row["rps"] / results["bare"]["rps"]
        print(
            f"{label:<10} {row['rps']:>10.0f} {row['p99_ms']:>8.2f} {ratio:>14.2f} "
            f"{row['non_2xx']:>8}"
        )
    limiter_cost = 1 - results["pdsno+rl"]["rps"] / results["pdsno"]["rps"]
    print(
        f"rate limiter: {limiter_cost:+.1%} throughput cost "
        f"(p99 {results['pdsno']['p99_ms']:.2f} -> {results['pdsno+rl']['p99_ms']:.2f} ms)"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
