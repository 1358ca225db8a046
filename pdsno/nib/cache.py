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

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

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
        # Loads under way on an event loop, by key: (loop, generation, future).
        self._loading: dict[str, tuple[asyncio.AbstractEventLoop, int, asyncio.Future[V]]] = {}
        self.hits = 0
        self.misses = 0

    def get_or_load(self, key: str, load: Callable[[], V]) -> V:
        found, value, since = self._lookup(key)
        if found:
            return value  # type: ignore[return-value]
        loaded = load()  # outside the lock: a slow read must not block other keys
        self._store(key, loaded, since)
        return loaded

    async def get_or_load_async(self, key: str, load: Callable[[], V]) -> V:
        """get_or_load() for the event loop: a hit is answered on the loop,
        without the thread-pool hop a sync caller costs; only a miss runs the
        blocking `load` in the thread pool. The same generation rule.

        Concurrent misses of one key share one load (when an entry expires
        under load, every request in flight misses it at once: without this,
        each took a worker thread and a NIB connection). A miss joins a load
        only if no invalidation came between: one started before a logout
        must not answer a request that arrived after it.
        """
        found, value, since = self._lookup(key)
        if found:
            return value  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        pending = self._loading.get(key)
        if pending is not None and pending[0] is loop and pending[1] == since[1]:
            try:
                return await asyncio.shield(pending[2])
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this request was cancelled, not the load it joined
                # The request that led the load went away: load for this one.
        future: asyncio.Future[V] = loop.create_future()
        self._loading[key] = (loop, since[1], future)
        try:
            loaded = await run_in_threadpool(load)
        except BaseException as error:
            if isinstance(error, Exception):
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting for it
            else:
                future.cancel()
            raise
        else:
            future.set_result(loaded)
            self._store(key, loaded, since)
            return loaded
        finally:
            if self._loading.get(key, (None, None, None))[2] is future:
                del self._loading[key]

    def peek(self, key: str) -> tuple[bool, V | None]:
        """(hit, value) without loading: for a caller that answers only from
        the cache (pdsno.api.fast_device_read) and hands a miss to one that
        loads. A hit is counted, a miss is not: the load that follows counts it."""
        with self._lock:
            entry = self._hit(key, self._clock())
        return (False, None) if entry is None else (True, entry[1])

    def _lookup(self, key: str) -> tuple[bool, V | None, tuple[float, int]]:
        """(hit, value, since): a miss loads `since` (the time and generation
        of this lookup), which _store() needs."""
        now = self._clock()
        with self._lock:  # held for a dict lookup only: no I/O under it
            entry = self._hit(key, now)
            if entry is not None:
                return True, entry[1], (now, self._generation)
            self.misses += 1
            return False, None, (now, self._generation)

    def _hit(self, key: str, now: float) -> tuple[float, V] | None:
        """The live entry of `key`, counted as a hit; None if absent or expired. Under the lock."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def _store(self, key: str, value: V, since: tuple[float, int]) -> None:
        # The entry lives from the lookup, before the load read the NIB: what
        # is served is never older than the TTL (the revocation bound).
        now, generation = since
        with self._lock:
            if generation != self._generation:
                return  # invalidated while loading: may predate the change
            self._entries[key] = (now + self._ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

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
