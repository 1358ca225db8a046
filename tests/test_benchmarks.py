"""The benchmarks still run: `make bench` is not part of `make test`, so
without this a change to the API, the publisher, the outbox or the test
services could break a benchmark unnoticed. Short runs, one round; what is
asserted is what a bench reports that is not a timing: every row measured,
every answer a success, no event lost or duplicated.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ROWS = ("raw", "outbox", "enqueue", "producers", "drain")


def run_bench(script: str, *options: str) -> tuple[str, Any]:
    """A bench's output and the JSON of its last line; fails with its output's tail."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def test_events_bench_runs_every_row_and_loses_nothing() -> None:
    output, (measured,) = run_bench(
        "events_bench.py",
        *("--events", "300", "--rounds", "1", "--latency-samples", "3", "--producers", "4"),
    )
    assert measured["producer_threads"] == 4
    for row in ROWS:
        assert len(measured[f"{row}_rates"]) == 1, row
        assert measured[row] > 0, row
    assert (measured["lost"], measured["duplicated"]) == (0, 0)
    assert 0 < measured["latency_p50_ms"] <= measured["latency_p99_ms"]
    assert "outbox vs raw paho events/s" in output
    assert "(producers alone vs raw paho: the ceiling)" in output


def test_api_bench_runs_every_row_with_only_successful_answers() -> None:
    """Every row's requests answered 2xx: a bench whose requests were refused
    (authentication, the rate limiter) would time the refusal, not the read."""
    output, measured = run_bench(
        "api_tls_bench.py",
        *("--seconds", "1", "--rounds", "1", "--clients", "1000", "--nib", "sqlite"),
    )
    for row in ("bare", "minimal", "key", "key-rl", "session", "region"):
        assert measured[row]["rps"] > 0, row
        assert measured[row]["non_2xx"] == 0, row
    assert measured["memory"]["clients"] >= 1000
    assert "API key, limiter on: req/s vs bare" in output
