"""A one-dimensional quartic with a local and a global minimum."""

import math
from typing import ClassVar

from jaxtyping import Array, Float, Scalar

from ._problem import AbstractProblem, default_float


class Quartic(AbstractProblem):
    r"""The quartic $L(x) = x(x-1)(x-3)^2 + 1.62276$, started at $x_0 = 4$.

    $L'(x) = (x - 3)(4x^2 - 9x + 3)$: a local minimum at $x = 3$ ($L = 1.62276$,
    $L'' = 12$), a maximum at $(9 + \sqrt{33})/8 ≈ 1.843$ and the global minimum at
    $(9 - \sqrt{33})/8 ≈ 0.4069$ ($L ≈ 5.5 \cdot 10^{-7}$, $L'' ≈ 14.90$). From
    $x_0 = 4$ gradient flow (and so the stable and central flows, which are local) stops
    at the local minimum 3. GD's first step goes to $4 - 31η$: for η from 0.07 to 0.13
    it crosses the maximum and then converges to the global minimum (stable there for
    η < 2/14.90 ≈ 0.134); for η ≤ 0.065 it converges to 3; from η ≈ 0.15 it diverges.
    RMSProp's first step is exactly η (ν starts at $g_0^2$), so it, and sign descent,
    cross the maximum on their first step iff η > 4 − 1.843 ≈ 2.157 (docs/problems.md).
    """

    x0: float = 4.0
    local_minimum: ClassVar[float] = 3.0
    maximum: ClassVar[float] = (9 + math.sqrt(33)) / 8
    global_minimum: ClassVar[float] = (9 - math.sqrt(33)) / 8

    @property
    def w0(self) -> Float[Array, ""]:
        """The start `x0`, a scalar array."""
        return default_float(self.x0)

    def __call__(self, params: Float[Array, ""]) -> Scalar:
        x = params
        return x * (x - 1) * (x - 3) ** 2 + 1.62276


Quartic.__init__.__doc__ = """**Arguments:**

- `x0`: the start.
"""
