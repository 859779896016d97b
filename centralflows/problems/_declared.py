"""The config options of every built-in problem, as plain data: read by the config
validation without importing jax. `tests/test_cli_fast.py` checks them against the
problems' signatures.
"""

from .._options import Option, Range, at_least, option

_real = Range("a float")
_positive = Range("a float > 0", lambda v: v > 0)

DECLARED: dict[str, dict[str, Option]] = {
    "toy": {
        "s0": option(1.0, _real),
        "b": option(0.1, _positive),
        "c": option(1.0, _positive),
        "x0": option(0.0, _real),
        "y0": option(0.0, _real),
    },
    "least_squares": {
        "n": option(20, at_least(1)),
        "d": option(50, at_least(1)),
        "depth": option(1, at_least(1)),
        "width": option(16, at_least(1, "the hidden width, used when depth >= 2")),
    },
    "quartic": {"x0": option(4.0, _real)},
    "scalar_factorisation": {
        "y": option(1.0, _positive),
        "a0": option(1.5, _real),
        "b0": option(0.5, _real),
    },
}
