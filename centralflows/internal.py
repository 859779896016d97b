"""Half-public helpers for scripts, benchmarks and tests: no stability promise."""

from ._compiles import CompileCounts as CompileCounts
from ._compiles import count_compiles as count_compiles
from ._stop import stop_reason_of as stop_reason_of
