"""Half-public helpers for scripts, benchmarks and tests: no stability promise."""

from typing import TYPE_CHECKING

from ._lazy import attach

if TYPE_CHECKING:
    from ._compiles import CompileCounts as CompileCounts
    from ._compiles import count_compiles as count_compiles
    from ._stop import stop_reason_of as stop_reason_of

_EXPORTS = {
    "CompileCounts": "._compiles",
    "count_compiles": "._compiles",
    "stop_reason_of": "._stop",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = attach(__name__, _EXPORTS)
