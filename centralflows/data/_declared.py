"""The config options of every dataset, as plain data: read by the config validation
without importing jax. `tests/test_cli_fast.py` checks them against the loaders' signatures.
"""

from .._options import Declared, Range, at_least, between, option

_sequence = {
    "vocab": option(4, at_least(2)),
    "length": option(8, at_least(1)),
    "n": option(1000, at_least(1)),
    "n_test": option(1000, at_least(0)),
}
_sklearn_sizes = {"n": option(200, at_least(1)), "n_test": option(100, at_least(0))}

DECLARED: dict[str, Declared] = {
    "digits": Declared(
        {
            "n": option(1000, at_least(1)),
            "n_test": option(500, at_least(0)),
            "classes": option(10, between(2, 10)),
        },
        "images",
    ),
    "cifar10": Declared(
        {
            "path": option("", Range("a path (empty: the environment variable CENTRALFLOWS_DATA)")),
            "n": option(1000, at_least(1)),
            "n_test": option(1000, at_least(0)),
            "classes": option(
                10,
                Range(
                    'an integer from 2 to 10 or "binary"',
                    lambda v: v == "binary" or (type(v) is int and 2 <= v <= 10),
                    kind=int | str,
                ),
            ),
        },
        "images",
    ),
    "sorting": Declared(_sequence, "tokens"),
    "copying": Declared(_sequence, "tokens"),
    "moons": Declared({**_sklearn_sizes, "noise": option(0.2, at_least(0.0))}, "vectors"),
    "circles": Declared(
        {
            **_sklearn_sizes,
            "noise": option(0.2, at_least(0.0)),
            "factor": option(
                0.8, Range("a float in the open interval (0, 1)", lambda v: 0 < v < 1)
            ),
        },
        "vectors",
    ),
    "classification": Declared(
        {
            **_sklearn_sizes,
            "classes": option(2, between(2, 16)),
            "features": option(20, at_least(5)),
        },
        "vectors",
    ),
}
