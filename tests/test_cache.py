from pdsno.nib.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hit_within_ttl_then_reload_after_it():
    clock = Clock()
    cache: TTLCache[int] = TTLCache(ttl_seconds=2, clock=clock)
    loads = []

    def load() -> int:
        loads.append(1)
        return len(loads)

    assert cache.get_or_load("a", load) == 1
    clock.now = 1.9
    assert cache.get_or_load("a", load) == 1
    clock.now = 2.1
    assert cache.get_or_load("a", load) == 2
    assert (cache.hits, cache.misses) == (1, 2)


def test_peek_answers_live_entries_only_and_never_loads():
    clock = Clock()
    cache: TTLCache[str | None] = TTLCache(ttl_seconds=2, clock=clock)
    assert cache.peek("a") == (False, None)
    cache.get_or_load("a", lambda: None)  # a cached None (a resource of no region)
    assert cache.peek("a") == (True, None)
    clock.now = 2.1
    assert cache.peek("a") == (False, None)
    # A hit counts; a miss does not: the load that follows it counts it.
    assert (cache.hits, cache.misses) == (1, 1)


def test_invalidate_forces_a_reload():
    cache: TTLCache[str] = TTLCache(ttl_seconds=60)
    assert cache.get_or_load("a", lambda: "old") == "old"
    cache.invalidate("a")
    assert cache.get_or_load("a", lambda: "new") == "new"


def test_size_stays_bounded_evicting_the_least_recently_used():
    cache: TTLCache[int] = TTLCache(max_entries=3, ttl_seconds=60)
    for key in "abc":
        cache.get_or_load(key, lambda: 0)
    cache.get_or_load("a", lambda: 1)  # touch a: b is now the oldest
    cache.get_or_load("d", lambda: 0)
    assert len(cache) == 3
    assert cache.get_or_load("a", lambda: 99) == 0, "a stayed cached"
    assert cache.get_or_load("b", lambda: 42) == 42, "b was evicted"


def test_a_value_loaded_before_a_clear_is_returned_but_not_stored():
    cache: TTLCache[str] = TTLCache(ttl_seconds=60)

    def load_then_revoked() -> str:
        cache.clear()  # the revocation commits while this read is under way
        return "stale"

    assert cache.get_or_load("a", load_then_revoked) == "stale"
    assert cache.get_or_load("a", lambda: "fresh") == "fresh"


def test_a_value_loaded_before_an_invalidation_is_not_stored():
    cache: TTLCache[str] = TTLCache(ttl_seconds=60)

    def load_then_invalidated() -> str:
        cache.invalidate("a")
        return "stale"

    assert cache.get_or_load("a", load_then_invalidated) == "stale"
    assert cache.get_or_load("a", lambda: "fresh") == "fresh"
