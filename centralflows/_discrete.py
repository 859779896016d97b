"""The discrete optimizer's training loss along its trajectory, as one compiled scan."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree, Scalar

from ._objective import Objective
from ._optimizers import AbstractOptimizer
from ._processes import initial_opt_state
from ._solve import prepare


def discrete_losses(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    steps: int,
    *,
    opt_state0: PyTree | None = None,
) -> Float[Array, " steps_plus_one"]:
    """The training loss of the discrete optimizer at its iterates 0, 1, …, `steps`.

    One compiled `lax.scan`, compiled once per `steps` and problem: a sweep over the
    optimizer's hyperparameters reuses it. No eigen tracking and no run file (see
    `centralflows.run` for those): this is the cheap side of a comparison with a flow,
    e.g. a grid search, or the chaotic loss-against-η curve at the edge of stability.

    **Arguments:**

    - `loss`: an `Objective` or a function of the parameter pytree.
    - `w0`: initial parameters.
    - `optimizer`: the optimizer (its float fields may be traced: this runs under
      `jax.jit`, `jax.vmap` and `jax.grad`).
    - `steps`: number of steps (a non-negative integer).
    - `opt_state0`: the optimizer's state at `w0` (default: `optimizer.init` there).

    **Returns:** the `steps + 1` losses (NaN or inf from where the run diverged).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    objective, optimizer, w, _ = prepare(loss, w0, optimizer, opt_state0)
    return _losses(objective, optimizer, w, opt_state0, steps)


@eqx.filter_jit
def _losses(objective, optimizer, w, opt_state0, steps: int):
    def body(carry, _):
        w, state = carry
        value, grad = objective.value_and_grad(w)
        return optimizer.step(w, state, grad), value

    state = initial_opt_state(optimizer, objective, w, opt_state0)
    (w, _), values = jax.lax.scan(body, (w, state), None, length=steps)
    return jnp.append(values, objective.value(w))
