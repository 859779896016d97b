"""Half-public helpers for scripts, benchmarks and tests: no stability promise."""

from ._compiles import CompileCounts as CompileCounts
from ._compiles import count_compiles as count_compiles
