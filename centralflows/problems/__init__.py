"""Built-in problems with known answers, imported on first use (see
`centralflows._lazy`); `_declared` holds their config options without jax."""

from typing import TYPE_CHECKING

from .._lazy import attach

if TYPE_CHECKING:
    from ._factorisation import ScalarFactorisation as ScalarFactorisation
    from ._least_squares import LeastSquares as LeastSquares
    from ._problem import AbstractProblem as AbstractProblem
    from ._quartic import Quartic as Quartic
    from ._toy import Toy as Toy
    from ._zoo import PROBLEMS as PROBLEMS
    from ._zoo import ProblemSpec as ProblemSpec

_EXPORTS = {
    "LeastSquares": "._least_squares",
    "AbstractProblem": "._problem",
    "Quartic": "._quartic",
    "ScalarFactorisation": "._factorisation",
    "Toy": "._toy",
    "PROBLEMS": "._zoo",
    "ProblemSpec": "._zoo",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = attach(__name__, _EXPORTS)
