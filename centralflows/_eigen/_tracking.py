"""The eigenpairs a process tracks: refreshed, grown past the tracking threshold, logged."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, PRNGKeyArray

from .._custom_types import Record, Vector
from .._objective import Objective
from .._optimizers import AbstractOptimizer
from ._solve import EigConfig, EigenState, random_vectors, track_eigs


class Tracking(eqx.Module):
    """The eigenpairs a process tracks: of P⁻¹H (`effective`) and, when P is not a
    multiple of the identity, of H itself (`raw`)."""

    effective: EigenState
    raw: EigenState | None


def _empty_eigs(key: PRNGKeyArray, count: int, capacity: int, n: int, dtype) -> EigenState:
    nan = jnp.full((capacity,), jnp.nan, dtype)
    zero = jnp.array(0, jnp.int32)  # int32 as `track_eigs` returns them (not weakly typed)
    vectors = random_vectors(key, capacity, n, dtype)
    count = jnp.array(count, jnp.int32)
    return EigenState(vectors, nan, nan, count, zero, zero, jnp.array(True))


def init_tracking(
    key: PRNGKeyArray, optimizer: AbstractOptimizer, w: Vector, config: EigConfig
) -> Tracking:
    """Random starting vectors for `config.initial_neigs` eigenpairs, with room for
    `config.max_neigs`."""
    k_eff, k_raw = jr.split(key)
    sizes = (config.initial_neigs, config.max_neigs, w.size, w.dtype)
    effective = _empty_eigs(k_eff, *sizes)
    raw = None
    if not optimizer.scalar_preconditioner:
        raw = _empty_eigs(k_raw, *sizes)
    return Tracking(effective, raw)


@eqx.filter_jit
def refresh_tracking(
    tracking: Tracking,
    objective: Objective,
    w: Vector,
    p_diag: Vector,
    config: EigConfig,
    iterate: Bool[Array, ""] | bool = True,
) -> Tracking:
    """Recompute the tracked eigenpairs at `w`, warm-started from the previous ones; with
    `iterate` false (may be traced), only their Rayleigh–Ritz pairs at `w` in the span of
    the previous ones.

    Compiled on its own, so every process shares one program, whatever the tracked count.
    """
    _, hvp = jax.linearize(objective.grad, w)  # the products share one linearization
    hvps = jax.vmap(hvp)
    count = tracking.effective.count
    effective = track_eigs(hvps, p_diag, tracking.effective.vectors, config, count, iterate)
    raw = tracking.raw
    if raw is not None:
        raw = track_eigs(hvps, jnp.ones_like(p_diag), raw.vectors, config, count, iterate)
    return Tracking(effective, raw)


def eig_record(tracking: Tracking, p_diag: Vector, solved) -> Record:
    """The logged eigen series. Where the eigenpairs were not `solved` by LOBPCG but are
    Rayleigh–Ritz pairs in the previous span, `eig_converged` is NaN (their residuals
    tell how accurate they are)."""
    effective = tracking.effective
    if tracking.raw is None:  # P = p·I: the raw eigenvalues are p times the effective ones
        raw_values = effective.values * p_diag[0]
    else:
        raw_values = tracking.raw.values
    converged = effective.converged.astype(p_diag.dtype)
    return {
        "effective_hessian_eigs": effective.values,
        "hessian_eigs": raw_values,
        "eig_residuals": effective.residuals,
        "eig_converged": jnp.where(solved, converged, jnp.nan),
        "eig_hvps": effective.hvps.astype(p_diag.dtype),
    }


def above_threshold(values, threshold):
    """`values > threshold`, with a relative slack of 1e-7 for an eigenvalue that an event
    just stopped on, at the threshold."""
    return values > threshold * (1 - 1e-7)


def most_tracked(tracking: Tracking, config: EigConfig) -> int:
    """The most eigenpairs `tracking` may hold: `eig.max_neigs`, or the dimension."""
    return min(config.max_neigs, tracking.effective.vectors.shape[1])


def grow_tracking(tracking: Tracking, config: EigConfig) -> Tracking | None:
    """One more tracked eigenpair where the smallest tracked one exceeds the threshold
    (at most `eig.max_neigs`, and the dimension), started from the vector its row holds.

    **Returns:** the extended tracking, or `None` when nothing needs to grow.
    """
    effective = tracking.effective
    count = int(effective.count)
    smallest = float(np.asarray(effective.values)[count - 1])
    if count >= most_tracked(tracking, config) or not (
        np.isfinite(smallest) and above_threshold(smallest, config.track_threshold)
    ):
        return None
    grown = lambda eigs: (
        None
        if eigs is None
        else eqx.tree_at(lambda e: e.count, eigs, jnp.asarray(count + 1, eigs.count.dtype))
    )
    return Tracking(grown(effective), grown(tracking.raw))
