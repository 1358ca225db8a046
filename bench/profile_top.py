"""The top frames of a py-spy raw profile (collapsed stacks: `a;b;c count`)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

# Leaves where a thread waits rather than works: py-spy's GIL detection still
# samples the thread pool's idle workers and the selector now and then.
IDLE_LEAVES = ("Condition.wait ", ".select (selectors.py")


# Frames worth naming in the total-time list: the app and its libraries, not
# the event loop's and the interpreter's own plumbing, which hold every sample.
NAMED = ("pdsno/", "fastapi/", "starlette/", "sqlalchemy/", "pydantic", "prometheus_client/")


def summarise(raw: str, limit: int = 12) -> str:
    """The `limit` frames with most own samples and most total samples, idle
    samples left out (their share is printed)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = idle = in_pool = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES) or ".select (selectors.py" in frames[-1]:
            idle += count
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):  # a recursive frame counts once a sample
            if any(name in frame for name in NAMED):
                total[frame] += count
        if any(frame.startswith("WorkerThread.run ") for frame in frames):
            in_pool += count
    lines = [
        f"{samples} working samples ({idle} idle ones left out); "
        f"{100 * in_pool / max(samples, 1):.1f}% of them in thread-pool workers"
    ]
    for title, counter in (("own", own), ("total", total)):
        lines.append(f"-- top {limit} by {title} time")
        lines += [
            f"{100 * count / max(samples, 1):5.1f}%  {frame}"
            for frame, count in counter.most_common(limit)
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]).read_text()))
