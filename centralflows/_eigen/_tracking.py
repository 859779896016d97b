"""The eigenpairs a process tracks: refreshed, grown past the tracking threshold, logged."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray

from .._custom_types import Record, Vector
from .._objective import Objective
from .._optimizers import AbstractOptimizer
from ._solve import EigConfig, EigenState, random_vectors, track_eigs


class Tracking(eqx.Module):
    """The eigenpairs a process tracks: of P⁻¹H (`effective`) and, when P is not a
    multiple of the identity, of H itself (`raw`)."""

    effective: EigenState
    raw: EigenState | None


def _empty_eigs(key: PRNGKeyArray, num: int, n: int, dtype) -> EigenState:
    nan = jnp.full((num,), jnp.nan, dtype)
    zero = jnp.array(0)
    return EigenState(random_vectors(key, num, n, dtype), nan, nan, zero, zero, jnp.array(True))


def init_tracking(
    key: PRNGKeyArray, optimizer: AbstractOptimizer, w: Vector, config: EigConfig
) -> Tracking:
    """Random starting vectors for `config.initial_neigs` eigenpairs."""
    k_eff, k_raw = jr.split(key)
    effective = _empty_eigs(k_eff, config.initial_neigs, w.size, w.dtype)
    raw = None
    if not optimizer.scalar_preconditioner:
        raw = _empty_eigs(k_raw, config.initial_neigs, w.size, w.dtype)
    return Tracking(effective, raw)


@eqx.filter_jit
def refresh_tracking(
    tracking: Tracking,
    objective: Objective,
    w: Vector,
    p_diag: Vector,
    config: EigConfig,
) -> Tracking:
    """Recompute the tracked eigenpairs at `w`, warm-started from the previous ones.

    Compiled on its own, so every process shares one program per tracked-set size.
    """
    hvps = lambda vs: objective.hvps(w, vs)
    effective = track_eigs(hvps, p_diag, tracking.effective.vectors, config)
    raw = tracking.raw
    if raw is not None:
        raw = track_eigs(hvps, jnp.ones_like(p_diag), raw.vectors, config)
    return Tracking(effective, raw)


def eig_record(tracking: Tracking, p_diag: Vector, computed) -> Record:
    """The logged eigen series; NaN on steps where nothing was recomputed."""
    nan_unless = lambda x: jnp.where(computed, x, jnp.nan)
    effective = tracking.effective
    if tracking.raw is None:  # P = p·I: the raw eigenvalues are p times the effective ones
        raw_values = effective.values * p_diag[0]
    else:
        raw_values = tracking.raw.values
    return {
        "effective_hessian_eigs": nan_unless(effective.values),
        "hessian_eigs": nan_unless(raw_values),
        "eig_residuals": nan_unless(effective.residuals),
        "eig_converged": nan_unless(effective.converged.astype(p_diag.dtype)),
        "eig_hvps": nan_unless(effective.hvps.astype(p_diag.dtype)),
    }


def above_threshold(values, threshold):
    """`values > threshold`, with a relative slack of 1e-7 for an eigenvalue that an event
    just stopped on, at the threshold."""
    return values > threshold * (1 - 1e-7)


def grow_tracking(tracking: Tracking, key: PRNGKeyArray, config: EigConfig) -> Tracking | None:
    """One more tracked eigenpair where the smallest tracked one exceeds the threshold.

    **Returns:** the extended tracking, or `None` when nothing needs to grow.
    """
    grown = False
    parts = []
    for eigs, threshold in ((tracking.effective, config.track_threshold), (tracking.raw, None)):
        if eigs is None:
            parts.append(None)
            continue
        if threshold is None:  # raw eigenpairs follow the effective count
            target = parts[0].num
        else:
            smallest = float(eigs.values[-1])
            needs = jnp.isfinite(smallest) and above_threshold(smallest, threshold)
            target = eigs.num + 1 if needs and eigs.num < config.max_neigs else eigs.num
        if target > eigs.num:
            grown = True
            n, dtype = eigs.vectors.shape[1], eigs.vectors.dtype
            extra = random_vectors(key, target - eigs.num, n, dtype)
            pad = jnp.full((target - eigs.num,), jnp.nan, eigs.values.dtype)
            eigs = EigenState(
                jnp.concatenate([eigs.vectors, extra]),
                jnp.concatenate([eigs.values, pad]),
                jnp.concatenate([eigs.residuals, pad]),
                eigs.iterations,
                eigs.hvps,
                eigs.converged,
            )
        parts.append(eigs)
    return Tracking(*parts) if grown else None
