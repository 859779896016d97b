"""Overparametrised linear least squares, whose Hessian is constant."""

import functools

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from ._problem import AbstractProblem


class LeastSquares(AbstractProblem):
    r"""Least squares $L(w) = \|A w - y\|^2 / (2n)$ on random Gaussian data, $A \in
    \mathbb{R}^{n \times d}$, optionally through a deep linear network.

    With `depth = 1` the parameters are $w \in \mathbb{R}^d$, starting at 0, and the
    Hessian is $A^\top A / n$ at every w: the sharpness is the constant
    [`sharpness()`][centralflows.problems.LeastSquares.sharpness] $= λ_{\max}(A^\top A/n)$,
    and GD with learning rate η is stable (its loss decreases at every step) iff
    $η < 2/λ_{\max}$. Below that threshold (sub-critical) the central flow is the
    gradient flow; above it (super-critical) GD diverges along the top eigenvector, and
    no oscillation can lower a constant curvature. With $n < d$ the minimum loss is 0.

    With `depth` $= D \ge 2$ the parameters are the matrices $W_1 \in \mathbb{R}^{d
    \times h}$, $W_2, \dots, W_{D-1} \in \mathbb{R}^{h \times h}$ and $W_D \in
    \mathbb{R}^h$ of a linear network, and the loss is that of the end-to-end vector
    $W_1 \cdots W_D$: the same minima, but a Hessian that changes along training.
    """

    inputs: Float[Array, "n d"]
    targets: Float[Array, " n"]
    w0: list[Float[Array, "..."]]

    def __init__(
        self, n: int = 20, d: int = 50, depth: int = 1, width: int = 16, *, key: PRNGKeyArray
    ):
        k_inputs, k_targets, k_layers = jr.split(key, 3)
        dtype = jnp.result_type(float)  # the default float precision
        self.inputs = jr.normal(k_inputs, (n, d), dtype)
        self.targets = jr.normal(k_targets, (n,), dtype)
        if depth == 1:
            self.w0 = [jnp.zeros(d, dtype)]
        else:
            # Each layer scaled by 1/sqrt(fan-in), so that the network's output is O(1).
            shapes = [(d, width)] + [(width, width)] * (depth - 2) + [(width,)]
            keys = jr.split(k_layers, depth)
            self.w0 = [
                jr.normal(k, shape, dtype) / jnp.sqrt(shape[0]) for k, shape in zip(keys, shapes)
            ]

    def __call__(self, params: list[Float[Array, "..."]]) -> Scalar:
        residual = self.inputs @ functools.reduce(jnp.matmul, params) - self.targets
        return 0.5 * jnp.mean(residual**2)

    def sharpness(self) -> Scalar:
        """$λ_{\\max}(A^\\top A / n)$: the sharpness of the depth-1 loss at every w (from
        the smaller of the two Gram matrices, which share their nonzero eigenvalues)."""
        n, d = self.inputs.shape
        gram = self.inputs @ self.inputs.T if n <= d else self.inputs.T @ self.inputs
        return jnp.linalg.eigvalsh(gram)[-1] / n


LeastSquares.__init__.__doc__ = """**Arguments:**

- `n`: the number of examples (rows of A).
- `d`: the input dimension (columns of A); `n < d` is overparametrised.
- `depth`: 1 for linear least squares, D >= 2 for a deep linear network of D layers.
- `width`: the hidden width h of the deep linear network (unused for `depth = 1`).
- `key`: draws A and y (standard normal entries) and the network's initial layers.
"""
