from collections.abc import Callable
from typing import NamedTuple

from jaxtyping import PRNGKeyArray

from .._options import Option
from ._declared import DECLARED
from ._factorisation import ScalarFactorisation
from ._least_squares import LeastSquares
from ._problem import AbstractProblem
from ._quartic import Quartic
from ._toy import Toy


class ProblemSpec(NamedTuple):
    """A named problem: how to build it from its declared options, and those options.

    The problem is built as `make(**options, key=...)`; problems without random draws
    ignore the key.
    """

    make: Callable[..., AbstractProblem]
    options: dict[str, Option]


def _without_key(cls: type[AbstractProblem]) -> Callable[..., AbstractProblem]:
    def make(*, key: PRNGKeyArray, **options) -> AbstractProblem:
        del key
        return cls(**options)

    return make


_MAKERS: dict[str, Callable[..., AbstractProblem]] = {
    "toy": _without_key(Toy),
    "least_squares": LeastSquares,
    "quartic": _without_key(Quartic),
    "scalar_factorisation": _without_key(ScalarFactorisation),
}

# The options are declared in `_declared.py`, jax-free, for the command line.
PROBLEMS: dict[str, ProblemSpec] = {
    name: ProblemSpec(_MAKERS[name], options) for name, options in DECLARED.items()
}
