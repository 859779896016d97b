"""The two-parameter toy whose central flow is known in closed form."""

from jaxtyping import Array, Float, Scalar

from ._problem import AbstractProblem, default_float


class Toy(AbstractProblem):
    r"""The analytic toy $L(x, y) = \tfrac12 a(y) x^2 + b y$ with $a(y) = s_0 - c y$.

    At $x = 0$ the Hessian is $\mathrm{diag}(a(y), 0)$, so the sharpness is $a(y)$.
    Gradient flow (time in steps of GD with learning rate η) keeps $x = 0$ and moves $y$
    down at speed ηb, so the sharpness rises until $η a(y) = 2$ at
    $y^* = (s_0 - 2/η)/c$, reached at [`onset_time`][centralflows.problems.Toy.onset_time].
    From then on the GD central flow rests at $(0, y^*)$ with oscillation variance
    $σ^2 = \mathbb{E} x^2 = 2b/c$ and predicted time-averaged loss $b y^* + 2b/(ηc)$.
    GD itself does not settle: its period-2 orbit $x = \pm\sqrt{2b/c}$ is weakly
    unstable, and it cycles through sharpening and catapults around the central flow's
    rest point (see docs/problems.md). The parameters are `{"x": x, "y": y}`.
    """

    s0: float = 1.0
    b: float = 0.1
    c: float = 1.0
    x0: float = 0.0
    y0: float = 0.0

    @property
    def w0(self) -> dict[str, Float[Array, ""]]:
        """The start `{"x": x0, "y": y0}`."""
        return {"x": default_float(self.x0), "y": default_float(self.y0)}

    def __call__(self, params: dict[str, Float[Array, ""]]) -> Scalar:
        x, y = params["x"], params["y"]
        return 0.5 * (self.s0 - self.c * y) * x**2 + self.b * y

    def rest_point(self, lr: float) -> float:
        """$y^* = (s_0 - 2/η)/c$, where the sharpness reaches $2/η$ and the central flow
        of GD with learning rate `lr` = η rests."""
        return (self.s0 - 2 / lr) / self.c

    def onset_time(self, lr: float) -> float:
        r"""When gradient flow from `w0` reaches the edge of stability of GD with learning
        rate `lr` = η: $t^* = (y_0 - y^*)/(ηb)$, for $η a(y_0) < 2$.

        Exact for $x_0 = 0$. Otherwise x decays while y moves at $-η(b - c x^2/2)$, and
        (for $x_0^2 < 2b/c$) the onset comes later by at most $c x_0^2 / (4ηb\,a(y_0))$;
        the x-dependence of the Hessian's top eigenvalue, $O(x^2)$ with x decayed to
        $x_0 e^{-η a(y_0) t^*}$, is neglected.
        """
        return (self.y0 - self.rest_point(lr)) / (lr * self.b)

    @property
    def oscillation_variance(self) -> float:
        """$σ^2 = \\mathbb{E} x^2 = 2b/c$, the variance of GD's oscillation at rest."""
        return 2 * self.b / self.c

    def predicted_loss(self, lr: float) -> float:
        """The central flow's time-averaged loss at rest, $b y^* + 2b/(ηc)$, for GD with
        learning rate `lr` = η."""
        return self.b * self.rest_point(lr) + 2 * self.b / (lr * self.c)


Toy.__init__.__doc__ = """**Arguments:**

- `s0`: the sharpness $a(0)$.
- `b`: the slope of the loss in y (> 0): the speed of sharpening.
- `c`: how fast the sharpness grows as y decreases (> 0).
- `x0`, `y0`: the start. With `x0 = 0` GD never leaves the line x = 0 (its oscillation
  needs a seed), so give a small `x0` to compare with the discrete run.
"""
