"""A small TTL cache for hot NIB reads, bounded in size, invalidated on write.

Controllers share the NIB, so a write made by another process reaches this
cache only when the entry expires: the TTL bounds that staleness (a couple
of seconds by default). Writes made through this process invalidate at once.

An invalidation wins over a read that was under way when it happened: every
invalidate() and clear() advances a generation counter, and a value loaded
under an older generation is returned to its caller but never stored. So a
logout (or any revocation) made here is never undone by a request that read
the session just before it committed.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._generation = 0
        self.hits = 0
        self.misses = 0

    def get_or_load(self, key: str, load: Callable[[], V]) -> V:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self.misses += 1
            generation = self._generation
        value = load()  # outside the lock: a slow read must not block other keys
        with self._lock:
            if generation != self._generation:
                return value  # invalidated while loading: may predate the change
            self._entries[key] = (now + self._ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return value

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
