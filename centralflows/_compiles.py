"""Counting the programs XLA compiles in a block of code, with `jax.monitoring`."""

import collections
import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax.monitoring

_REQUEST = "/jax/core/compile/backend_compile_duration"  # every program sent to XLA
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_CACHE_MISS = "/jax/compilation_cache/cache_misses"  # compiled, then written to the cache


@dataclasses.dataclass
class CompileCounts:
    """Programs handed to XLA while `count_compiles` was open.

    `requests` counts them all, `cache_hits` those read back from the persistent
    compilation cache, `cache_misses` those compiled and written to it; with a cache
    directory set, the rest could not be stored (programs with host callbacks).
    `seconds` is XLA's time on them (compiling, or reading from the cache), `slow` the
    number that took over a second, and `programs` counts them by name (e.g.
    `"jit(refresh_tracking)"`).
    """

    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0
    slow: int = 0
    programs: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def compiled(self) -> int:
        """Programs really compiled (not read from the cache)."""
        return self.requests - self.cache_hits

    @property
    def uncacheable(self) -> int:
        """Programs the persistent cache could not hold (with a cache directory set)."""
        return self.requests - self.cache_hits - self.cache_misses

    def as_dict(self) -> dict[str, Any]:
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {
            **fields,
            "programs": dict(self.programs),
            "compiled": self.compiled,
            "uncacheable": self.uncacheable,
        }


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCounts]:
    """Count the programs compiled inside the `with` block (this process only).

    **Returns:** a `CompileCounts`, filled in as the block runs.
    """
    counts = CompileCounts()

    def on_duration(event: str, duration: float, **kwargs):
        if event == _REQUEST:
            counts.requests += 1
            counts.seconds += duration
            counts.slow += duration > 1
            counts.programs[kwargs.get("fun_name", "?")] += 1

    def on_event(event: str, **kwargs):
        if event == _CACHE_HIT:
            counts.cache_hits += 1
        elif event == _CACHE_MISS:
            counts.cache_misses += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
