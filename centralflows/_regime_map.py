"""A regime map: discrete runs over a grid of hyperparameters, in one program, classified."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree, Scalar

from ._cache import enable_compilation_cache
from ._eigen import EigConfig
from ._objective import Objective
from ._optimizers import AbstractOptimizer
from ._processes import Discrete
from ._regimes import REGIMES, classify_runs
from ._run import (
    _advance_chunk,
    _check_divergence_factor,
    _check_start,
    _initial_states,
    _loss_limit,
)
from ._solve import prepare


class RegimeMap(NamedTuple):
    """Discrete runs over a grid of hyperparameters, each classified (see
    [`centralflows.regime_map`][]). Arrays are NumPy arrays whose leading axes are the
    grid's, one per entry of `axes`, in order.

    - `axes`: each varied hyperparameter's values, e.g. `{"lr": ..., "beta2": ...}`.
    - `losses`: `(*grid, steps + 1)` training losses at steps 0 to `steps`; NaN after
      a step where the loss or the parameters were not finite (where the run stopped).
    - `sharpness`: `(*grid, steps + 1)` top eigenvalues of the effective Hessian P⁻¹H,
      as `centralflows.run` logs them (`effective_hessian_eigs[:, 0]`).
    - `regime`: `(*grid)` each run's regime, an index into `REGIMES` (`"stable"`,
      `"edge of stability"`, `"unsettled"`, `"diverged"`).
    - `onset`: `(*grid)` the step where that regime began: the first step with effective
      sharpness >= 2 (the EOS onset), for a diverged run the step where its loss last
      blew up, and -1 for a stable run.
    - `hover`: `(*grid)` the median effective sharpness over the second half after the
      onset (NaN for stable and diverged runs).
    """

    axes: dict[str, np.ndarray]
    losses: Float[np.ndarray, "*grid steps_plus_one"]
    sharpness: Float[np.ndarray, "*grid steps_plus_one"]
    regime: Int[np.ndarray, "*grid"]
    onset: Int[np.ndarray, "*grid"]
    hover: Float[np.ndarray, "*grid"]

    @property
    def final_loss(self) -> Float[np.ndarray, "*grid"]:
        """The training loss at the last step (NaN where the run stopped before)."""
        return self.losses[..., -1]

    @property
    def kinds(self) -> np.ndarray:
        """Each run's regime by name (strings shaped like the grid)."""
        return np.asarray(REGIMES)[self.regime]


def _with(optimizer: AbstractOptimizer, names: tuple[str, ...], values) -> AbstractOptimizer:
    return eqx.tree_at(lambda o: [getattr(o, name) for name in names], optimizer, list(values))


@eqx.filter_jit
def _grid_runs(
    objective: Objective,
    optimizer: AbstractOptimizer,
    names: tuple[str, ...],
    points: Float[Array, "p h"],
    w: Float[Array, " n"],
    key: PRNGKeyArray,
    eig: EigConfig,
    steps: int,
    limit: Scalar,
    batch_size: int | None,
) -> tuple[Float[Array, "p t"], Float[Array, "p t"]]:
    """The loss and top effective eigenvalue series of the discrete run at each point:
    `centralflows.run`'s discrete process and its chunk program, mapped over the points
    (`batch_size` of them vmapped at a time)."""

    def one(point):
        process = Discrete(objective, _with(optimizer, names, point), eig)
        (state,), _ = _initial_states((process,), (), key, w, None)
        t0, rows = jnp.array(0), jnp.array(steps + 1)
        _, records = _advance_chunk((process,), (state,), t0, rows, steps + 1, limit)
        record = records[process.name]
        return record["train_loss"], record["effective_hessian_eigs"][:, 0]

    if batch_size is None:
        return jax.vmap(one)(points)
    if batch_size == 1:  # a batch of one would still turn the branches into selects
        return jax.lax.map(one, points)
    return jax.lax.map(one, points, batch_size=batch_size)


def regime_map(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    steps: int,
    *,
    grid: Mapping[str, ArrayLike],
    eig: EigConfig = EigConfig(initial_neigs=1, max_neigs=1),
    key: PRNGKeyArray | None = None,
    divergence_factor: float | None = None,
    batch_size: int | None = 1,
    blowup: float = 10.0,
    band: float = 0.1,
) -> RegimeMap:
    """Run the discrete optimizer at every point of a grid of its hyperparameters, and
    classify each run: stable, at the edge of stability, unsettled or diverged.

    All runs are one compiled program (`centralflows.run`'s discrete process mapped over
    the grid), whatever the number of points; each run tracks the top eigenvalue of its
    effective Hessian as `centralflows.run` does with the same `eig` and `key`, so a run
    of the map is the run `cf.run(loss, w0, optimizer_at_that_point, steps=steps,
    eig=eig, key=key)` would log. The runs are classified by
    `centralflows._regimes.classify_runs`.

    **Arguments:**

    - `loss`: an `Objective` or a function of the parameter pytree.
    - `w0`: initial parameters, shared by every run.
    - `optimizer`: the optimizer; its other fields are kept at every point.
    - `steps`: number of steps of each run (a positive integer).
    - `grid`: the optimizer's fields to vary and their values (1-D each), e.g.
      `{"lr": lrs}` or `{"lr": lrs, "beta2": beta2s}`; the runs are at every
      combination (the last axis varying fastest).
    - `eig`: eigen-tracking settings (default: the top eigenpair alone, by LOBPCG at
      every step); `eig.frequency > 1` solves every that many steps, with Rayleigh–Ritz
      values in between, for less work.
    - `key`: PRNG key for the initial eigenvector guess (default `jr.key(0)`).
    - `divergence_factor`: also stop a run (its series NaN from there) where its loss
      exceeds this many times `|L(w0)|` (`None`: only where the loss or the parameters
      are not finite). A stopped run computes nothing more, except under `vmap` (see
      `batch_size`), where it goes on with its last finite state.
    - `batch_size`: how many points are vmapped together (`None`: all). Under `vmap`
      the eigensolver's iterations run for the slowest point of a batch and its
      branches are all evaluated, so on a CPU one at a time is fastest; a GPU gains
      from larger batches.
    - `blowup`, `band`: the classification's loss growth factor counted as divergence
      and relative half-width around 2 counted as hovering.

    **Returns:** a [`centralflows.RegimeMap`][].
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    if not grid:
        raise ValueError("`grid` must name at least one hyperparameter to vary.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive integer or None, got {batch_size!r}.")
    _check_divergence_factor(divergence_factor)
    fields = {f.name for f in dataclasses.fields(optimizer) if not f.metadata.get("static")}
    axes = {}
    for name, values in grid.items():
        if name not in fields:
            raise ValueError(
                f"{type(optimizer).__name__} has no field {name!r} to vary; it has "
                f"{', '.join(sorted(fields))}."
            )
        values = np.asarray(values, float)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"`grid[{name!r}]` must be a non-empty 1-D array of values.")
        # The optimizer checks its hyperparameters (e.g. lr > 0, beta2 in (0, 1)).
        dataclasses.replace(optimizer, **{name: values})
        axes[name] = values
    enable_compilation_cache()
    objective, optimizer, w, _ = prepare(loss, w0, optimizer, None)
    loss0, _ = _check_start(objective, optimizer, w, steps + 1)
    limit = _loss_limit(divergence_factor, loss0)
    shape = tuple(v.size for v in axes.values())
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    points = jnp.asarray(np.stack([m.ravel() for m in mesh], axis=1), w.dtype)
    names = tuple(axes)
    key = jr.key(0) if key is None else key
    losses, sharpness = _grid_runs(
        objective,
        optimizer,
        names,
        points,
        w,
        key,
        eig,
        steps,
        jnp.asarray(limit, w.dtype),
        batch_size,
    )
    losses = np.asarray(losses).reshape(*shape, steps + 1)
    sharpness = np.asarray(sharpness).reshape(*shape, steps + 1)
    regimes = classify_runs(losses, sharpness, blowup=blowup, band=band)
    return RegimeMap(axes, losses, sharpness, regimes.code, regimes.step, regimes.hover)
