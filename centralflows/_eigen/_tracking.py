"""The eigenpairs a process tracks: refreshed, grown past the tracking threshold, logged."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Int, PRNGKeyArray, Scalar

from .._custom_types import Record, Vector
from .._objective import Objective
from .._optimizers import AbstractOptimizer
from ._solve import EigConfig, EigenState, Vectors, random_vectors, track_eigs


class Visit(eqx.Module):
    """A point where the tracked vectors were computed, and those vectors."""

    w: Vector  # NaN before the first refresh
    effective: Vectors
    raw: Vectors | None


class Tracking(eqx.Module):
    """The eigenpairs a process tracks: of P⁻¹H (`effective`) and, when P is not a
    multiple of the identity, of H itself (`raw`), computed at `w`; `previous` is the
    point refreshed before `w` (its vectors predict the next refresh's start)."""

    effective: EigenState
    raw: EigenState | None
    w: Vector  # NaN before the first refresh
    previous: Visit


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
    nowhere = jnp.full_like(w, jnp.nan)
    return Tracking(effective, raw, nowhere, _visit(nowhere, effective, raw))


def _visit(w: Vector, effective: EigenState, raw: EigenState | None) -> Visit:
    return Visit(w, effective.vectors, None if raw is None else raw.vectors)


def path_coefficient(w: Vector, last: Vector, before: Vector) -> Scalar:
    """`α` such that `w ≈ last + α (last − before)`: where `w` lies along the line
    through the last two refreshed points, clipped to [−1, 1] (1: a smooth path goes on;
    −1: an oscillating iterate is back at `before`), and 0 where that is undefined."""
    step = last - before
    norm_sq = jnp.vdot(step, step)
    alpha = jnp.vdot(w - last, step) / jnp.where(norm_sq > 0, norm_sq, 1)
    return jnp.where(jnp.isfinite(alpha) & (norm_sq > 0), jnp.clip(alpha, -1, 1), 0)


def predicted_vectors(
    last: Vectors, before: Vectors, alpha: Scalar, p_diag: Vector, count: Int[Array, ""]
) -> Vectors:
    """The first `count` tracked vectors moved on along the path by `alpha`
    (`path_coefficient`): `last + α (last − R before)` in the P-inner product, where the
    rotation `R` aligns `before`'s rows with `last`'s (orthogonal Procrustes:
    eigenvectors are defined up to sign, and up to rotation within a cluster). A
    first-order prediction of the eigenvectors at the next point, as a start for
    `track_eigs`; the other rows, and every row where `alpha` is 0, stay as they were."""

    def moved():
        active = (jnp.arange(last.shape[0]) < count)[:, None]
        root = jnp.sqrt(p_diag)
        a, b = (jnp.where(active, x * root, 0) for x in (last, before))
        u, _, vt = jnp.linalg.svd(a @ b.T)
        return jnp.where(active, last + alpha * (last - ((u @ vt) @ b) / root), last)

    return jax.lax.cond(alpha == 0, lambda: last, moved)


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

    The start is not the previous vectors themselves but their prediction at `w` from
    the last two refreshed points (`predicted_vectors`): along a smooth path it
    extrapolates, and where an iterate oscillates at the edge of stability it goes back
    to the vectors of the point `w` is nearer to. On the digits MLP this roughly halves
    the products of a warm start before the edge of stability and saves a quarter at it.

    Compiled on its own, so every process shares one program, whatever the tracked count.
    """
    _, hvp = jax.linearize(objective.grad, w)  # the products share one linearization
    hvps = jax.vmap(hvp)
    count = tracking.effective.count
    previous = tracking.previous
    alpha = path_coefficient(w, tracking.w, previous.w)

    def refreshed(last: EigenState, before: Vectors, p: Vector) -> EigenState:
        """The pairs of P⁻¹H (P = diag(p)) tracked from `last`, started at the prediction."""
        start = predicted_vectors(last.vectors, before, alpha, p, count)
        return track_eigs(hvps, p, start, config, count, iterate)

    effective = refreshed(tracking.effective, previous.effective, p_diag)
    raw = tracking.raw
    if raw is not None:
        raw = refreshed(raw, previous.raw, jnp.ones_like(p_diag))
    # A refresh at the same point (a grown tracked set) keeps the point before.
    moved = jnp.any(w != tracking.w)
    visit = _visit(tracking.w, tracking.effective, tracking.raw)
    previous = jax.tree.map(lambda new, old: jnp.where(moved, new, old), visit, previous)
    return Tracking(effective, raw, w, previous)


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
    return Tracking(grown(effective), grown(tracking.raw), tracking.w, tracking.previous)
