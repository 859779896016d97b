"""The scalar factorisation ½(ab − y)², whose edge-of-stability regimes are known in closed
form."""

import math

from jaxtyping import Array, Float, Scalar

from ._problem import AbstractProblem, default_float


class ScalarFactorisation(AbstractProblem):
    r"""The scalar factorisation $L(a, b) = \tfrac12 (ab - y)^2$, $y > 0$: least squares
    through a depth-2 linear network of width 1 fit to one example.

    The global minimisers form the hyperbola $M = \{ab = y\}$, and there the Hessian is
    $(b, a)(b, a)^\top$: the sharpness is $a^2 + b^2 = \sqrt{q^2 + 4y^2}$ with the
    imbalance $q = a^2 - b^2$
    ([`sharpness_at_minimum`][centralflows.problems.ScalarFactorisation.sharpness_at_minimum]),
    smallest at the balanced minimum $a = b = \sqrt y$, $S_{\min} = 2y$. GD with learning
    rate η keeps $q_{k+1} = q_k (1 - η^2 r_k^2)$ ($r = ab - y$), so that its oscillation
    balances the factors, and its regime is set by $ηy$ against 1
    ([`critical_lr`][centralflows.problems.ScalarFactorisation.critical_lr] $= 1/y =
    2/S_{\min}$):

    - sub-critical, $ηy < 1$: linear convergence to a minimum of sharpness
      $S_\infty < 2/η$, at rate $|1 - ηS_\infty|$ per step;
    - critical, $ηy = 1$: $k L_k \to y^2/4$ (from $q_0 \neq 0$), a power law;
    - super-critical, $1 < ηy < \sqrt5 - 1$: linear convergence to a period-2 orbit on
      the line $a = b$
      ([`period_two_orbit`][centralflows.problems.ScalarFactorisation.period_two_orbit]), at
      the rate [`period_two_rate`][centralflows.problems.ScalarFactorisation.period_two_rate].

    docs/problems.md derives these. The parameters are `{"a": a, "b": b}`.

    ??? cite "Reference"
        The three regimes are those of

        ```bibtex
        @inproceedings{macdonald2025convergence,
            title={Convergence Rates for Gradient Descent on the Edge of Stability in
                   Overparametrised Least Squares},
            author={MacDonald, Lachlan Ewen and Min, Hancheng and Palma, Leandro and
                    Tarmoun, Salma and Xu, Ziqing and Vidal, Ren{\'e}},
            booktitle={Advances in Neural Information Processing Systems},
            year={2025},
            note={arXiv:2510.17506}
        }
        ```
    """

    y: float = 1.0
    a0: float = 1.5
    b0: float = 0.5

    @property
    def w0(self) -> dict[str, Float[Array, ""]]:
        """The start `{"a": a0, "b": b0}`."""
        return {"a": default_float(self.a0), "b": default_float(self.b0)}

    def __call__(self, params: dict[str, Float[Array, ""]]) -> Scalar:
        return 0.5 * (params["a"] * params["b"] - self.y) ** 2

    @property
    def critical_lr(self) -> float:
        """$η^* = 2/S_{\\min} = 1/y$, the learning rate that separates the regimes."""
        return 1 / self.y

    def sharpness_at_minimum(self, imbalance: float) -> float:
        """$\\sqrt{q^2 + 4y^2}$, the sharpness at the minimum of imbalance
        $q = a^2 - b^2$ (`imbalance`)."""
        return math.sqrt(imbalance**2 + 4 * self.y**2)

    def critical_loss(self, step: int) -> float:
        """$y^2/(4k)$, GD's loss at step $k$ = `step` for $η = 1/y$, asymptotically (from
        $q_0 \\neq 0$; from $q_0 = 0$ it is half that)."""
        return self.y**2 / (4 * step)

    def period_two_orbit(self, lr: float) -> tuple[float, float]:
        r"""The points $(x_1, x_1)$, $(x_2, x_2)$ between which GD with learning rate
        `lr` = η alternates for $ηy > 1$: $x_{1,2} > 0$ with $x_1 + x_2 = \sqrt{y + 3/η}$
        and $x_1 x_2 = 1/η$.

        **Returns:** `(x1, x2)`, $x_1 > x_2$.
        """
        total, product = math.sqrt(self.y + 3 / lr), 1 / lr
        spread = math.sqrt(total**2 - 4 * product)
        return (total + spread) / 2, (total - spread) / 2

    def period_two_multipliers(self, lr: float) -> tuple[float, float]:
        """The two-step multipliers of the period-2 orbit: along the line $a = b$,
        $9 - 2(1 + ηy)^2$, and across it, $3 - 2ηy$; both in $(-1, 1)$ (the orbit is
        stable) iff $1 < ηy < \\sqrt5 - 1$.

        **Returns:** `(along, across)`.
        """
        return 9 - 2 * (1 + lr * self.y) ** 2, 3 - 2 * lr * self.y

    def period_two_rate(self, lr: float) -> float:
        """GD's rate of convergence to the period-2 orbit, per step: the square root of
        the larger modulus of the two-step multipliers."""
        return math.sqrt(max(abs(mu) for mu in self.period_two_multipliers(lr)))


ScalarFactorisation.__init__.__doc__ = """**Arguments:**

- `y`: the target (> 0); the flattest minimum has sharpness 2y.
- `a0`, `b0`: the start. With `a0 = b0` GD stays on the balanced line a = b.
"""
