"""Differentiating a flow: replay a solve planned from concrete values, with traced inputs.

The discrete decisions of a flow (how many directions are critical, which event ends
each segment, how many eigenpairs are tracked) are made in Python from concrete
eigenvalues, so `jax.grad` cannot trace them. A replay takes those decisions from a
concrete solve and recomputes everything else as a function of the traced inputs: the
tracked eigenbasis by `eigenbasis` (implicit eigenvector derivatives), each segment in
the solver steps the solve took, and each event time by the implicit function theorem.
"""

import pathlib
import warnings
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Scalar

from ._custom_types import Record
from ._eigen import eigenbasis
from ._events import ArmedEvents
from ._flow_processes import AbstractFlowProcess, Count, PlannedSegment, critical_count
from ._flows import Basis, FlowState, ritz_at
from ._integrate import explicit_tableau

_NEWTON_STEPS = 10
# How far before the event the replay may stop, in time. Stepping to another end time
# cuts the last step elsewhere, so the condition there is only as accurate as the solve: about 1e-4
# in time at the default rtol 1e-6, more where the condition crosses 0 slowly (an
# active-rank event: 4e-3 on the deactivation toy of the tests). The window doubles after
# the third Newton step, up to 0.128; the linear extrapolation over the gap errs by
# O(gap²).
_EVENT_TOLERANCE = 1e-3


# Memory maps a replay adds per structure of segment it compiles (its basis width):
# measured 3,700 (toy) and 5,800 (digits MLP) from the replay's start, when a replay
# compiled an adaptive solve per structure, more than it does now (`benchmarks/
# memory_maps.py`, benchmarks/results/memory_maps.json).
_MAPS_PER_STRUCTURE = 6000


def _map_limit() -> int | None:
    """Linux's per-process limit on memory maps (`None` where there is none to read)."""
    path = pathlib.Path("/proc/sys/vm/max_map_count")
    return int(path.read_text()) if path.is_file() else None


def _memory_maps() -> int:
    """The memory maps this process holds now (0 where it cannot tell)."""
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return 0


def _structures(segments: list[PlannedSegment]) -> set:
    """The structures of segment a replay compiles programs for: their basis widths
    (critical counts, ranks and events are data)."""
    return {segment.basis.shape[0] for segment in segments}


def _check_map_limit(segments: list[PlannedSegment]) -> None:
    """Warn where replaying `segments` may pass Linux's per-process limit on memory maps.
    XLA's CPU backend maps each compiled program's code, and past the limit LLVM aborts
    the process ("LLVM compilation error: Cannot allocate memory") with most of the RAM
    free. The estimate: the maps held now, and `_MAPS_PER_STRUCTURE` for each structure
    of segment the replay compiles; the warning comes past 80% of the limit. Only for the
    CPU backend, where the maps were measured: other backends (a GPU) load a program's
    code onto the device, and the estimate says nothing about them."""
    limit = _map_limit()
    if limit is None or jax.default_backend() != "cpu":
        return
    structures = _structures(segments)
    estimate = _memory_maps() + _MAPS_PER_STRUCTURE * len(structures)
    if estimate > 0.8 * limit:
        warnings.warn(
            f"vm.max_map_count is {limit}, and this differentiated flow may need about "
            f"{estimate} memory maps ({len(structures)} structures of segment to compile); "
            "past the limit the process aborts with 'LLVM compilation error: Cannot "
            f"allocate memory'. Raise it (as root: sysctl -w vm.max_map_count="
            f"{max(262144, 2 * estimate)}), or call `jax.clear_caches()` between gradients.",
            stacklevel=4,
        )


class Observation(NamedTuple):
    """The flow was observed (at an integer time) with `num_critical` critical
    directions in the tracked `basis`."""

    num_critical: int
    basis: Basis


@eqx.filter_jit
@eqx.filter_checkpoint
def _basis(process: AbstractFlowProcess, y: FlowState, basis: Basis) -> Basis:
    """`basis`, differentiable as the eigenbasis at `y` (its derivative's intermediates
    are recomputed in reverse mode rather than kept: a Hessian's worth per vector)."""
    return eigenbasis(process.objective, y.w, process.p_diag(y), basis=basis)


@eqx.filter_jit
@eqx.filter_checkpoint
def _observe(
    process: AbstractFlowProcess, y: FlowState, tracked: Basis, num_critical: Count
) -> Record:
    """What is logged at `y`, with `effective_sharpness`, differentiable in `y` and the
    tracked basis; recomputed in reverse mode rather than kept (third-order terms)."""
    basis = _basis(process, y, tracked)
    record = dict(process.point_record(y, basis, num_critical))
    ritz = ritz_at(process.objective, process.optimizer, y, basis)
    record["effective_sharpness"] = ritz.values[0]
    return record


@eqx.filter_jit
@eqx.filter_checkpoint
def _velocity(
    process: AbstractFlowProcess, num_critical: Count, rank: Count, y: FlowState, basis: Basis
) -> FlowState:
    """The vector field at `y`, X held at active `rank` (recomputed in reverse mode rather
    than kept)."""
    return process.field(num_critical, rank)(None, y, basis)


@eqx.filter_jit
@eqx.filter_checkpoint
def _condition_and_rate(
    process: AbstractFlowProcess,
    events: ArmedEvents,
    num_critical: Count,
    rank: Count,
    y: FlowState,
    basis: Basis,
) -> tuple[Scalar, Scalar, FlowState]:
    """The condition of the one event armed in `events` at `y`, its rate of change along
    the flow, and the flow's velocity there (X held at active `rank`). The event is
    data, so that one program serves every event.

    The rate carries no derivative: it is Newton's slope, and the event time's
    implicit derivative `−dc / (dc/dt)` holds it fixed. Its own derivative is second
    order through the SDCP's eigendecompositions, whose padding rows share an eigenvalue
    (`pad_sdcp`, `complementarity_margins`), where JAX's `eigh` derivative divides by
    their zero gap: NaN, which any cotangent reaching the rate, even a zero one (e.g.
    from the untaken side of a `jnp.where`), would carry into the gradient."""
    conditions = process.conditions(events, num_critical)
    velocity = _velocity(process, num_critical, rank, y, basis)
    value, rate = jax.jvp(lambda x: jnp.max(conditions(x, basis)), (y,), (velocity,))
    return value, jax.lax.stop_gradient(rate), velocity


def _axpy(a: Scalar, x: FlowState, y: FlowState) -> FlowState:
    return jtu.tree_map(lambda u, v: a * u + v, x, y)


@eqx.filter_jit
def _stage_point(
    y: FlowState, h: Scalar, weights: tuple[float, ...], stages: tuple[FlowState, ...]
) -> FlowState:
    """`y + h Σ_j weights_j stages_j`: where a Runge–Kutta stage is evaluated, or the
    step ends."""
    return jtu.tree_map(
        lambda y0, *ks: y0 + h * sum(a * k for a, k in zip(weights, ks) if a != 0), y, *stages
    )


def _stepper(
    process: AbstractFlowProcess,
    segment: PlannedSegment,
    y: FlowState,
    basis: Basis,
) -> Callable[[float], FlowState]:
    """`t -> y(t)` along `segment` from `y` at its start: the solver's steps as the solve
    took them (its accepted `step_ends`), the last one cut at `t` (or one more step to
    a `t` past them), X held at the segment's active rank.

    The steps are the solve's own rather than an adaptive solve again, so that reverse
    mode transposes only the vector field (one program per basis width, `_velocity`),
    not a while loop of steps; and so that the values are those of the solve. Each
    planned step is taken once, however many end times are asked for (the event's
    Newton iteration)."""
    k, rank = critical_count(segment.num_critical), critical_count(segment.rank)
    tableau = explicit_tableau(process.options.solver)
    field = lambda x: _velocity(process, k, rank, x, basis)
    dtype = y.w.dtype
    # After the first i planned steps: the time, the state and the vector field there
    # (`None` until a step needs it).
    taken = [(segment.t0, y, None)]

    def step(t0: float, t1: float, y0: FlowState, f0: FlowState | None):
        """`(y1, f1)`: the step's end, and the vector field there where the step gave
        it (first same as last), else `None`."""
        h = jnp.asarray(t1 - t0, dtype)
        stages, point = (field(y0) if f0 is None else f0,), y0
        for weights in tableau.a:
            point = _stage_point(y0, h, weights, stages[: len(weights)])
            stages += (field(point),)
        if tableau.fsal:  # the last stage is at the step's end
            return point, stages[-1]
        return _stage_point(y0, h, tableau.b, stages), None

    def at(t: float) -> FlowState:
        # The planned steps that end by `t` (to round-off), then one to `t` if need be.
        resolution = 1e-12 * max(1.0, abs(t))
        full = [end for end in segment.step_ends if end <= t + resolution]
        while len(taken) <= len(full):
            t0, y0, f0 = taken[-1]
            t1 = full[len(taken) - 1]
            taken.append((t1, *step(t0, t1, y0, f0)))
        t0, y0, f0 = taken[len(full)]
        return y0 if t - t0 <= resolution else step(t0, t, y0, f0)[0]

    return at


def _through_event(
    process: AbstractFlowProcess,
    segment: PlannedSegment,
    y: FlowState,
    basis: Basis,
    following: PlannedSegment | None,
) -> tuple[FlowState, Basis | None, Scalar]:
    """Integrate `segment` from `y` to its event and step through the event.

    The solve located the event on the solver's dense output; here Newton's method on
    the event condition `c` stops the integration just before it (so that no solver
    step straddles the switch of vector field, whose derivative would then be taken
    over the whole step; for the same reason X is held at the segment's active rank,
    as no stage, evaluated off the path, may switch it), and the event time is
    extrapolated linearly from there:
    `t_e = t − c / (dc/dt)`, whose derivative is the implicit one, `−dc / (dc/dt)`.
    The next segment starts at its planned time, so its start is moved back along the
    new vector field to there: the state's derivative jumps by `(f_before − f_after)
    dt_e`, both fields at the extrapolated event point, as across any switch of vector
    field. (A `"track"` event's tracked vector is held at its planned value: that event
    switches only to a refreshed basis, so the jump, and with it its time's derivative,
    scarcely matters. The same holds for a change of the SDCP's active rank, where the
    vector field, which does not depend on the rank, is continuous.)

    **Returns:** `(state, next_basis, event_time)`: the state to start the next segment
    from at its planned start (`None` basis if the flow stopped at the event), and the
    event time.
    """
    k, rank = critical_count(segment.num_critical), critical_count(segment.rank)
    armed = process.arm((segment.event,), k, y.w)
    integrate = _stepper(process, segment, y, basis)

    # Newton's method on the event time, to a point just before the event (c < 0): a
    # solver step that straddled the switch would differentiate the new vector field's
    # terms over the whole step. c is only as accurate as the solve, so the event time
    # is then extrapolated linearly from there, which also carries its derivative.
    # Where c creeps through 0, Newton's steps from past the event can crawl: after two
    # points past it in a row, bisect between the last times known to lie before and
    # after it.
    t_end, before, after, past = segment.t1, segment.t0, None, 0
    for i in range(_NEWTON_STEPS):
        window = _EVENT_TOLERANCE * 2.0 ** max(0, i - 2)
        end = integrate(t_end)
        value, rate, velocity = _condition_and_rate(process, armed, k, rank, end, basis)
        gap = float(jax.lax.stop_gradient(value / rate))
        if -window < gap <= 0:
            break
        if gap <= 0:
            before, past = t_end, 0
        else:
            after, past = t_end, past + 1
        t_end = t_end - gap - window / 2
        if past > 1 or not (before < t_end and (after is None or t_end < after)):
            t_end = (before + after) / 2 if after is not None else t_end
    else:
        if not segment.event.kind.continuous or following is None:
            raise RuntimeError(
                f"Replaying the {segment.event.kind.value!r} event at t = {segment.t1:.6g}: the "
                "event condition could not be bracketed; tighten the solver's tolerances."
            )
        # The vector field scarcely changes there (a refreshed basis only): hold the
        # event's time at the planned one (its derivative multiplies that small change).
        # Met where a condition creeps through 0: a frozen eigenvector's quotient (RMSProp
        # on digits, rtol 1e-6, t = 24.53), or the margin of a direction that the flow
        # holds at the edge, re-planned inactive at every integer time (n = 200, t = 86.98).
        warnings.warn(
            f"Replaying the {segment.event.kind.value!r} event at t = {segment.t1:.6g}: the event "
            "condition could not be bracketed; its planned time is held fixed (the change "
            "of basis there is not differentiated through its time).",
            stacklevel=2,
        )
        end = integrate(segment.t1)
        return end, _basis(process, end, following.basis), jnp.asarray(segment.t1)
    if gap < -_EVENT_TOLERANCE:
        warnings.warn(
            f"Replaying the {segment.event.kind.value!r} event at t = {segment.t1:.6g}: stopped "
            f"{-gap:.2g} before it (the solve is too coarse to come closer); the event "
            "time's derivative is extrapolated over that gap. Tighter solver tolerances "
            "make it more accurate.",
            stacklevel=2,
        )
    delta = -value / rate  # `rate` carries no derivative (`_condition_and_rate`)
    t_event = t_end + delta
    if following is None or following.t0 != segment.t1:  # the flow stopped here
        return end, None, t_event
    end = _axpy(delta, velocity, end)
    before = _velocity(process, k, rank, end, basis)
    next_basis = _basis(process, end, following.basis)
    k_after, rank_after = (critical_count(n) for n in (following.num_critical, following.rank))
    after = _velocity(process, k_after, rank_after, end, next_basis)
    # Zero, but its derivative moves the old field's share of the jump to the event:
    # `(f_before(y_e) − f_after(y_e)) dt_e`, right to O(δ²) rather than O(δ).
    at_event = jtu.tree_map(jnp.subtract, before, velocity)
    end = _axpy(t_event - jax.lax.stop_gradient(t_event), at_event, end)
    return _axpy(segment.t1 - t_event, after, end), next_basis, t_event


def replay(
    process: AbstractFlowProcess, y0: FlowState, trace: list
) -> tuple[list[tuple[FlowState, Record]], dict[str, Scalar]]:
    """Retrace a planned solve from `y0` (traced), following `trace`.

    **Arguments:**

    - `process`: the flow process, built from the traced objective and optimizer.
    - `y0`: the initial state.
    - `trace`: `Observation`s and `PlannedSegment`s in the order the solve met them.

    **Returns:** `(observed, times)`: the state and logged terms (with
    `effective_sharpness`) at each observation, and for each event kind that fired
    (`"onset"`, `"activate"`, `"deactivate"`, `"eos"`, `"ceiling"`, `"enter"`,
    `"track"`), the last such event's time.
    """
    segments = [item for item in trace if isinstance(item, PlannedSegment)]
    _check_map_limit(segments)
    y, basis = y0, None  # `basis`: carried across an event into the next segment
    starts, times = [], {}
    for i, segment in enumerate(segments):
        starts.append(y)
        if segment.event is None:
            if basis is None:
                # Differentiated at `y` where the vector field uses it (something is
                # critical).
                basis = _basis(process, y, segment.basis) if segment.num_critical else segment.basis
            y = _stepper(process, segment, y, basis)(segment.t1)
            basis = None
            continue
        if basis is None:
            basis = _basis(process, y, segment.basis)
        following = segments[i + 1] if i + 1 < len(segments) else None
        y, basis, times[segment.event.kind.value] = _through_event(
            process, segment, y, basis, following
        )
    starts.append(y)
    observed, done = [], 0
    for item in trace:
        if isinstance(item, PlannedSegment):
            done += 1
            continue
        y = starts[done]
        observed.append((y, _observe(process, y, item.basis, critical_count(item.num_critical))))
    return observed, times
