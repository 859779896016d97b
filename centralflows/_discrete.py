"""The discrete optimizer along its trajectory, as one compiled scan."""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree, Scalar

from ._objective import Objective
from ._optimizers import AbstractOptimizer
from ._processes import initial_opt_state
from ._solve import prepare


class DiscreteRun(NamedTuple):
    """A discrete run: its training `losses` at the iterates 0, 1, …, `steps`, and the
    last iterate `w` (shaped like `w0`) with the optimizer's state `opt_state` there."""

    losses: Float[Array, " steps_plus_one"]
    w: PyTree
    opt_state: PyTree


def discrete_run(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    steps: int,
    *,
    opt_state0: PyTree | None = None,
) -> DiscreteRun:
    """`steps` steps of the discrete optimizer from `w0`.

    One compiled `lax.scan`, compiled once per `steps` and problem: a sweep over the
    optimizer's hyperparameters reuses it. No eigen tracking and no run file (see
    `centralflows.run` for those): this is the cheap side of a comparison with a flow
    (a grid search, the chaotic loss-against-η curve at the edge of stability), or a
    warm start for one (`central_flow(loss, run.w, optimizer, T, opt_state0=run.opt_state)`).

    **Arguments:**

    - `loss`: an `Objective` or a function of the parameter pytree.
    - `w0`: initial parameters.
    - `optimizer`: the optimizer (its float fields may be traced: this runs under
      `jax.jit`, `jax.vmap` and `jax.grad`).
    - `steps`: number of steps (a non-negative integer).
    - `opt_state0`: the optimizer's state at `w0` (default: `optimizer.init` there).

    **Returns:** a `DiscreteRun`: the `steps + 1` losses (NaN or inf from where the run
    diverged), the last iterate and the optimizer's state there.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    objective, optimizer, w, unravel = prepare(loss, w0, optimizer, opt_state0)
    state = initial_opt_state(optimizer, objective, w, opt_state0)
    (w, state), values = discrete_steps(objective, optimizer, w, state, steps)
    return DiscreteRun(jnp.append(values, objective.value(w)), unravel(w), state)


def discrete_losses(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    steps: int,
    *,
    opt_state0: PyTree | None = None,
) -> Float[Array, " steps_plus_one"]:
    """The training loss of the discrete optimizer at its iterates 0, 1, …, `steps`:
    `discrete_run(...).losses` (same arguments)."""
    return discrete_run(loss, w0, optimizer, steps, opt_state0=opt_state0).losses


@eqx.filter_jit
def discrete_steps(
    objective: Objective, optimizer: AbstractOptimizer, w: Array, state: PyTree, steps: int
) -> tuple[tuple[Array, PyTree], Float[Array, " steps"]]:
    """`steps` optimizer steps from the flat `w` and `state`: the last `(w, state)`, and
    the loss before each step."""

    def body(carry, _):
        w, state = carry
        value, grad = objective.value_and_grad(w)
        return optimizer.step(w, state, grad), value

    return jax.lax.scan(body, (w, state), None, length=steps)
