"""The stable and central flows as processes observed at integer times."""

import abc
import warnings
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, Scalar

from ._custom_types import Record
from ._eigen import (
    EigConfig,
    Tracking,
    above_threshold,
    eig_record,
    init_tracking,
    most_tracked,
    preconditioner_diagonal,
    refresh_tracking,
)
from ._events import ArmedEvents, Event, EventKind
from ._flows import (
    Basis,
    CentralFlow,
    CentralTerms,
    FlowState,
    StableFlow,
    check_penalty_free,
    hessian_rows,
    ritz_pairs,
    used_rows,
)
from ._integrate import FlowOptions, Segment, SegmentStart, integrate_segment
from ._objective import Objective
from ._optimizers import AbstractOptimizer
from ._processes import grow, initial_opt_state
from ._sdcp import complementarity_margins, held_at_rank
from ._stationary import (
    StationaryFlow,
    StationaryNu,
    check_stationary,
    has_stationary_nu,
    stationary_nu,
)
from ._stop import StopReason, stop_code

Vector = Float[Array, " n"]
Count = int | Int[Array, ""]  # a critical-set size: traced inside the compiled programs
_MAX_SEGMENTS = 16  # events handled per unit of time before stopping (StopReason.chatter)
_SOLVER_STATS = ("solver_steps", "rejected_steps", "rhs_evals", "segments")
_STATIONARY_SWEEPS = 8  # solves of ν̄, each in the tracked span refreshed at the last
# ν̄'s relative residual above which its solve failed: good float32 solves of the digits
# MLP reach 1e-9 to 3e-4, failed ones 4e-3 and 0.8 (docs/ablations.md).
STATIONARY_TOLERANCE = 1e-3
_stationary_nu = eqx.filter_jit(stationary_nu)  # one program per basis width


class FlowProcessState(eqx.Module):
    """A flow at time t: its point, tracked eigenpairs and what has happened so far."""

    y: FlowState
    tracking: Tracking
    eos_time: Scalar  # NaN until the edge of stability is reached
    stop_time: Scalar  # NaN unless stopped, for the reason `stop_reason`
    stop_reason: StopReason
    dt: Scalar  # the solver's first step size in the next segment


def critical_count(num_critical: int) -> np.ndarray:
    """A critical-set size as the data a compiled program takes (not a static argument,
    which would compile a program per size)."""
    return np.asarray(num_critical, np.int32)


def _as_array(value, dtype) -> Array | np.ndarray:
    """`value` as an array of `dtype`: a NumPy array unless it is a JAX array (converting
    a concrete value with `jnp.asarray` would compile a program)."""
    return jnp.asarray(value, dtype) if isinstance(value, Array) else np.asarray(value, dtype)


@eqx.filter_jit
def _padded_rows(vectors: Basis, size: int, used: Count) -> Basis:
    """The first `size` rows of `vectors`, those past the first `used` zero."""
    return jnp.where(jnp.arange(size)[:, None] < used, vectors[:size], 0)


@eqx.filter_jit
def _p_diag(optimizer: AbstractOptimizer, y: FlowState) -> Vector:
    """The diagonal of `P` at `y` (one program for every flow)."""
    return preconditioner_diagonal(optimizer.preconditioner(y.opt_state, y.w))


def _rank_armed(events: ArmedEvents, slots: tuple[str, ...]) -> Bool[Array, ""]:
    """Whether a rank slot (`"activate"`, `"deactivate"`) of `events` is armed: only
    while something is critical, when the flow's terms hold the whole basis's Ritz pairs."""
    return events.armed[slots.index("activate")] | events.armed[slots.index("deactivate")]


@eqx.filter_jit
def _state_record(state: FlowProcessState, p_diag: Vector) -> Record:
    """The logged eigen series, onset and stop of a flow at its current time."""
    record = eig_record(state.tracking, p_diag, True)
    record.update(
        eos_time=state.eos_time,
        stop_time=state.stop_time,
        stop_reason=stop_code(state.stop_reason),
    )
    return record


class PlannedSegment(NamedTuple):
    """One integrated segment, as planned from concrete values: from `t0` to `t1`
    (where `event`, if not `None`, stopped it) in solver steps ending at `step_ends`
    (the last may pass the event), `num_critical` critical directions in the frozen
    `basis`, of which X spans `rank` (the SDCP's active rank)."""

    t0: float
    t1: float
    step_ends: tuple[float, ...]
    num_critical: int
    basis: Basis
    event: Event | None
    rank: int = 0


class Observed(NamedTuple):
    """What `observe_now` found at an integer time: the `state` (tracking refreshed),
    its critical-set size and armed `events`, the logged `record`, and the flow's
    `terms` there (the next segment's start; `None` where the flow gives none)."""

    state: FlowProcessState
    num_critical: int
    events: tuple[Event, ...]
    record: Record
    terms: CentralTerms | None


class AbstractFlowProcess(eqx.Module):
    """A flow advanced one unit of time per call, with eigenpairs refreshed by LOBPCG at
    every integer time and frozen (Rayleigh–Ritz inside the vector field) in between."""

    name: ClassVar[str]
    objective: eqx.AbstractVar[Objective]
    optimizer: eqx.AbstractVar[AbstractOptimizer]
    eig: eqx.AbstractVar[EigConfig]
    options: eqx.AbstractVar[FlowOptions]

    def init(
        self, w0: Vector, key: PRNGKeyArray, opt_state: PyTree | None = None
    ) -> FlowProcessState:
        """The flow at time 0 from `w0` and `opt_state` (default: the optimizer's
        initial state at `w0`)."""
        default = jnp.zeros(()).dtype
        if w0.dtype != default:
            raise ValueError(
                f"The {self.name} flow computes in JAX's default float precision ({default} "
                f"here) but `w0` is {w0.dtype}: cast `w0`, or set `jax_enable_x64` to "
                "match (the CLI's run.precision does)."
            )
        y = FlowState(w0, initial_opt_state(self.optimizer, self.objective, w0, opt_state))
        tracking = init_tracking(key, self.optimizer, w0, self.eig)
        nan = jnp.array(jnp.nan, w0.dtype)
        dt = jnp.asarray(self.options.dt0, w0.dtype)
        return FlowProcessState(y, tracking, nan, nan, StopReason.running, dt)

    def p_diag(self, y: FlowState) -> Vector:
        return _p_diag(self.optimizer, y)

    @classmethod
    def check_optimizer(cls, optimizer: AbstractOptimizer) -> None:
        """Raise `ValueError` where this flow is undefined for `optimizer` (called by
        `cf.run` before any computation); every flow is defined for every optimizer
        unless it says otherwise."""
        del optimizer

    def refresh(self, state: FlowProcessState, tracking: Tracking) -> FlowProcessState:
        """Recompute `tracking` at the current point by warm-started LOBPCG."""
        w = state.y.w
        tracking = refresh_tracking(tracking, self.objective, w, self.p_diag(state.y), self.eig)
        return eqx.tree_at(lambda s: s.tracking, state, tracking)

    def retrack(self, state: FlowProcessState, tracking: Tracking) -> FlowProcessState:
        return self.refresh(state, tracking)

    def _base_record(self, y: FlowState, grad_norm_sq: Scalar) -> Record:
        record = dict(self.objective.metrics(y.w))
        record["grad_norm_sq"] = grad_norm_sq
        summary = self.optimizer.summary(y.opt_state)
        record.update({f"opt.{k}": jnp.asarray(v, y.w.dtype) for k, v in summary.items()})
        return record

    def basis(self, state: FlowProcessState, num_critical: int) -> Float[Array, "b n"]:
        """The tracked vectors the vector field works in: the critical ones and
        `options.guard` more, padded with zero rows to `basis_width` rows (at most the
        tracked capacity)."""
        effective = state.tracking.effective
        used = min(num_critical + self.options.guard, int(effective.count))
        size = min(self.basis_width(used), most_tracked(state.tracking, self.eig))
        return _padded_rows(effective.vectors, size, critical_count(used))

    def basis_width(self, used: int) -> int:
        """The rows of a basis of `used` vectors: a power of two (at least `guard + 2`),
        so that a handful of compiled programs serve every critical-set size."""
        return max(self.options.guard + 2, 1 << (used - 1).bit_length())

    @abc.abstractmethod
    def field(self, num_critical: Count, rank: Count | None = None) -> CentralFlow | StableFlow:
        """The vector field with `num_critical` critical directions (X held at active
        `rank` where given: `CentralFlow`)."""

    def critical_size(self, state: FlowProcessState) -> int:
        """How many tracked directions are critical (from concrete eigenvalues)."""
        del state
        return 0

    @abc.abstractmethod
    def plan(
        self,
        state: FlowProcessState,
        now: float,
        fired: Event | None = None,
        margins: Float[Array, " k"] | None = None,
    ) -> tuple[FlowProcessState, int, tuple[Event, ...]]:
        """From concrete eigenvalues at time `now`, just after the event `fired` (if
        any): `(state, num_critical, events)`, where `state` may record an onset that is
        already under way, and `events` are the events armed for the next segment, which
        ends at the first of them (at most one per slot of `slots`). `margins`: the
        SDCP's rank margins at `state` where `point_terms` gave them."""

    @abc.abstractmethod
    def slots(self, num_critical: int) -> tuple[str, ...]:
        """The condition slots a segment with `num_critical` critical directions watches:
        `"activate"` and `"deactivate"` (margins of the SDCP's rank branch), `"ritz"` (a
        Ritz value of the basis against a threshold) and `"track"`."""

    def ritz_index(self, num_critical: Count) -> Count:
        """Which Ritz value of the basis the `"ritz"` slot watches."""
        del num_critical
        return 0

    def arm(self, events: tuple[Event, ...], num_critical: Count, w: Vector) -> ArmedEvents:
        """`events` as the data a segment's program takes (the others disarmed)."""
        slots, dtype = self.slots(num_critical), w.dtype
        armed = [False] * len(slots)
        rank, threshold, track_threshold, track_vectors = 0, jnp.inf, jnp.inf, None
        for event in events:
            slot = event.kind.slot
            armed[slots.index(slot)] = True
            if slot in ("activate", "deactivate"):
                rank = event.rank  # both rank events of a segment leave the same rank
            elif slot == "ritz":
                threshold = event.threshold
            else:
                track_threshold, track_vectors = event.threshold, event.vectors
        if track_vectors is None:  # a stand-in for the disarmed slot (the replay's conditions)
            track_vectors = jnp.zeros((1, w.size)).at[0, 0].set(1)
        return ArmedEvents(
            np.asarray(armed),
            np.asarray(rank, np.int32),
            _as_array(threshold, dtype),
            _as_array(track_threshold, dtype),
            _as_array(track_vectors, dtype),
        )

    def fired_event(
        self, events: tuple[Event, ...], num_critical: Count, slot: int
    ) -> Event | None:
        """The event of `events` watched in slot number `slot` (`None` for -1)."""
        if slot < 0:
            return None
        name = self.slots(num_critical)[slot]
        return next(event for event in events if event.kind.slot == name)

    def track_event(self, state: FlowProcessState) -> Event:
        """The smallest tracked eigenvalue rising through `eig.track_threshold`, as the
        Rayleigh quotient of its eigenvector frozen for the segment (exact to first
        order). Once `eig.max_neigs` (or all) are tracked the threshold is unreachable."""
        effective = state.tracking.effective
        count = int(effective.count)
        room = count < most_tracked(state.tracking, self.eig)
        threshold = self.eig.track_threshold if room else jnp.inf
        return Event(
            EventKind.track, threshold=threshold, vectors=effective.vectors[count - 1 : count]
        )

    @abc.abstractmethod
    def point_record(self, y: FlowState, basis: Basis, num_critical: Count) -> Record:
        """What is logged about the point `y` (compiled once per basis width: the
        critical-set size is data)."""

    def point_terms(
        self, y: FlowState, basis: Basis, num_critical: Count
    ) -> tuple[Record, Float[Array, " k"] | None, CentralTerms | None]:
        """`point_record` at `y`, what `plan` needs from the same terms (the central
        flow's rank margins) and the terms, which start a segment at `y` (`None` here:
        the stable flow's cost nothing to evaluate again)."""
        return self.point_record(y, basis, num_critical), None, None

    def start_terms(self, state: FlowProcessState, num_critical: int) -> CentralTerms | None:
        """The terms `point_terms` gives at `state` (`None` where it gives none)."""
        del state, num_critical
        return None

    def observe(
        self, state: FlowProcessState, num_critical: int, point: Record | None = None
    ) -> dict[str, np.ndarray]:
        """Everything logged at the current time (compiled per basis width only: the
        critical-set size is data, and the tracked set's size enters outside the
        compiled part), from `point` (the `point_record` at `state`) where given."""
        if point is None:
            basis = self.basis(state, num_critical)
            point = self.point_record(state.y, basis, critical_count(num_critical))
        record = {**point, **_state_record(state, self.p_diag(state.y))}
        return {name: np.asarray(value) for name, value in record.items()}

    @eqx.filter_jit
    def segment(
        self,
        y: FlowState,
        dt: Scalar,
        basis: Basis,
        t0: Scalar,
        t1: Scalar,
        num_critical: Count,
        events: ArmedEvents,
        dt_max: Scalar,
        terms: CentralTerms | None = None,
    ) -> Segment:
        """Integrate from `(t0, y)` towards `t1` in the frozen `basis` in steps of at
        most `dt_max`, stopping where the first armed slot of `events` rises through 0;
        `Segment.event` is that slot's number. `terms`, the flow's terms at `y` where
        known (`point_terms`), give its first stage and initial conditions."""
        conditions = self.conditions(events, num_critical)
        start = None
        if terms is not None:
            start = SegmentStart(terms.derivative, conditions(y, basis, terms))
        return integrate_segment(
            self.field(num_critical),
            y,
            t0,
            t1,
            dt,
            basis,
            self.options,
            conditions,
            dt_max,
            start,
            self.watch(events, num_critical),
        )

    def watch(
        self, events: ArmedEvents, num_critical: Count
    ) -> Callable[[FlowState, Basis], tuple[FlowState, Float[Array, " e"]]] | None:
        """`(y, basis) -> (dy/dt, conditions)`: the vector field with the event
        conditions from the same evaluation, where that saves one of their own (`None`:
        the stable flow's conditions cost products its vector field does not make)."""
        del events, num_critical
        return None

    def max_step(self, state: FlowProcessState) -> float:
        """The longest stable step from `state`: its modes decay at the effective
        sharpness S (the top tracked eigenvalue of P⁻¹H), at S + S²/2 with the
        modified-equation term (whose Jacobian adds ½(P⁻¹H)²), and, where the flow
        relaxes a constraint, at that rate."""
        top = np.nan_to_num(float(np.asarray(state.tracking.effective.values)[0]))
        if self.options.modified:
            top = top + top**2 / 2
        return self.options.max_step(max(top, self.relaxation_rate()))

    def relaxation_rate(self) -> float:
        """The rate at which the flow relaxes a constraint (none here)."""
        return 0.0

    def conditions(
        self, events: ArmedEvents, num_critical: Count
    ) -> Callable[..., Float[Array, " s"]]:
        """`(y, basis, terms=None) -> c`, entry i rising through 0 where the event in
        slot i (`slots`) happens, and -inf where that slot is disarmed. While a rank slot
        is armed, the flow's terms at `y` (evaluated unless given) give the Ritz values
        and one SDCP branch the rank margins (`conditions_from_terms`); otherwise one
        batch of Hessian-vector products gives the Ritz and track values
        (`conditions_from_products`)."""
        slots = self.slots(num_critical)
        from_products = self.conditions_from_products(events, num_critical)
        if "activate" not in slots:
            return lambda y, basis, terms=None: from_products(y, basis)
        from_terms = self.conditions_from_terms(events, num_critical)
        rank_armed = _rank_armed(events, slots)

        def values(y, basis, terms=None):
            given = lambda: from_terms(y, basis, terms)
            return jax.lax.cond(rank_armed, given, lambda: from_products(y, basis))

        return values

    def conditions_from_products(
        self, events: ArmedEvents, num_critical: Count
    ) -> Callable[[FlowState, Basis], Float[Array, " s"]]:
        """`(y, basis) -> c`, the `conditions` while no rank slot is armed: the Ritz and
        track values from one batch of products (the rank slots' entries -inf)."""

        def values(y, basis):
            spans = jnp.concatenate([basis, events.track_vectors])
            used = used_rows(spans)
            products = hessian_rows(self.objective, y.w, spans, used)
            m, p_diag = len(basis), self.p_diag(y)
            ritz = ritz_pairs(products[:m], basis, p_diag, used[:m]).values
            track = ritz_pairs(products[m:], events.track_vectors, p_diag).values[0]
            margins = jnp.full(m, -jnp.inf, y.w.dtype)
            return self._condition_values(events, num_critical, basis, ritz, track, margins)

        return values

    def conditions_from_terms(
        self, events: ArmedEvents, num_critical: Count
    ) -> Callable[..., Float[Array, " s"]]:
        """`(y, basis, terms=None) -> c`, the `conditions` while a rank slot is armed
        (something is critical, so that the terms' Ritz pairs span the whole basis): the
        rank margins and Ritz values from the flow's terms at `y` (evaluated unless
        given), and one more product for the track slot."""

        def values(y, basis, terms=None):
            at_y = self.field(num_critical).terms(y, basis) if terms is None else terms
            margins = self._margins(at_y, basis, num_critical, events.rank)
            track_used = used_rows(events.track_vectors)
            products = hessian_rows(self.objective, y.w, events.track_vectors, track_used)
            track = ritz_pairs(products, events.track_vectors, self.p_diag(y)).values[0]
            ritz = at_y.ritz.values
            return self._condition_values(events, num_critical, basis, ritz, track, margins)

        return values

    def _condition_values(
        self,
        events: ArmedEvents,
        num_critical: Count,
        basis: Basis,
        ritz: Float[Array, " m"],
        track: Scalar,
        margins: Float[Array, " m"],
    ) -> Float[Array, " s"]:
        """The conditions of `events`' slots from the basis's Ritz values, the tracked
        vector's quotient and the SDCP's rank margins."""
        slots = self.slots(num_critical)
        index = jnp.minimum(self.ritz_index(num_critical), jnp.sum(used_rows(basis)) - 1)
        out = {"ritz": ritz[index] - events.threshold, "track": track - events.track_threshold}
        if "activate" in slots:
            # z_{r+1} rises through 0 as X gains a direction, z_r falls as it loses one.
            rank = events.rank
            out["activate"] = margins[jnp.minimum(rank, num_critical - 1)]
            out["deactivate"] = -margins[jnp.maximum(rank - 1, 0)]
        value = jnp.stack([out[slot] for slot in slots])
        return jnp.where(events.armed, value, -jnp.inf)

    def observe_now(self, state: FlowProcessState, t: float) -> Observed:
        """Refresh (and grow) the tracked eigenpairs, plan the critical set, and log, at
        time `t`."""
        state = grow(self, self.refresh(state, state.tracking))
        k = self.critical_size(state)
        point, margins, terms = self.point_terms(state.y, self.basis(state, k), critical_count(k))
        state, k, events = self.plan(state, t, margins=margins)
        return Observed(state, k, events, self.observe(state, k, point), terms)

    def advance_unit(
        self,
        state: FlowProcessState,
        t: float,
        trace: list | None = None,
        end: float | None = None,
        observed: Observed | None = None,
    ) -> tuple[FlowProcessState, Vector, Record]:
        """Log time `t` and integrate to `end` (default `t + 1`), re-planning at every
        event; `observed` is `observe_now(state, t)` where the caller has it already.

        With a list `trace`, every integrated segment is appended to it as a
        `PlannedSegment` (what a replay needs to retrace the unit differentiably).

        **Returns:** `(state_at_end, position_at_t, record_at_t)`; once the flow has
        stopped, the position and record are NaN but for the stop and onset times.
        """
        if not np.isnan(float(state.stop_time)):
            record = self.observe(state, 0)
            kept = ("eos_time", "stop_time", "stop_reason")
            record = {n: v if n in kept else np.full_like(v, np.nan) for n, v in record.items()}
            record.update({n: np.asarray(np.nan) for n in _SOLVER_STATS})
            return state, jnp.full_like(state.y.w, jnp.nan), record
        state, k, events, record, terms = observed or self.observe_now(state, t)
        position = state.y.w
        steps = rejected = segments = 0
        now, end = float(t), float(t + 1 if end is None else end)
        while now < end and np.isnan(float(state.stop_time)):
            basis = self.basis(state, k)
            armed = self.arm(events, k, state.y.w)
            dt_max = self.max_step(state)
            times = jax.device_put((now, end, dt_max))
            segment = self.segment(
                state.y, state.dt, basis, *times[:2], critical_count(k), armed, times[2], terms
            )
            steps += int(segment.steps)
            rejected += int(segment.rejected)
            segments += 1
            finite = bool(np.all(np.isfinite(np.asarray(segment.y.w))))
            if bool(segment.failed) or not finite:
                reason = StopReason.solver_failed if finite else StopReason.diverged
                state = self.stop(state, now, reason)
                break
            fired = self.fired_event(events, k, int(segment.event))
            if trace is not None:
                rank = next((e.rank for e in events if e.kind.changes_rank), 0)
                ends = np.asarray(segment.step_ends)
                ends = tuple(float(t) for t in ends[np.isfinite(ends)])
                trace.append(PlannedSegment(now, float(segment.t), ends, k, basis, fired, rank))
            state = eqx.tree_at(lambda s: (s.y, s.dt), state, (segment.y, segment.dt))
            now = float(segment.t)
            if fired is not None:
                state = self.on_event(state, fired, now)
                if segments >= _MAX_SEGMENTS:  # rather than skip the rest of the unit
                    state = self.stop(state, now, StopReason.chatter)
                    break
                state = grow(self, self.refresh(state, state.tracking))
                state, k, events = self.plan(state, now, fired)
                terms = self.start_terms(state, k)
        record["solver_steps"] = np.asarray(steps, float)
        record["rejected_steps"] = np.asarray(rejected, float)
        record["rhs_evals"] = np.asarray(steps * self.options.evals_per_step, float)
        record["segments"] = np.asarray(segments, float)
        return state, position, record

    def on_event(self, state: FlowProcessState, event: Event, time: float) -> FlowProcessState:
        """Update the state after `event` stopped a segment at `time`."""
        if event.kind in (EventKind.onset, EventKind.eos):
            return eqx.tree_at(lambda s: s.eos_time, state, jnp.asarray(time, state.y.w.dtype))
        if event.kind is EventKind.ceiling:
            return self.stop(state, time, StopReason.sharpness_ceiling)
        return state

    def stop(self, state: FlowProcessState, time: float, reason: StopReason) -> FlowProcessState:
        """`state` stopped at `time` for `reason`."""
        stop = (jnp.asarray(time, state.y.w.dtype), reason)
        return eqx.tree_at(lambda s: (s.stop_time, s.stop_reason), state, stop)


class StableFlowProcess(AbstractFlowProcess):
    """The stable flow, `dw/dt = −P⁻¹∇L`: stopped when its effective sharpness exceeds
    `options.max_seff`; its EOS onset is where the sharpness crosses 2."""

    objective: Objective
    optimizer: AbstractOptimizer
    eig: EigConfig
    options: FlowOptions
    name: ClassVar[str] = "stable"

    def field(self, num_critical: Count, rank: Count | None = None) -> StableFlow:
        del num_critical, rank
        return StableFlow(self.objective, self.optimizer, self.options.modified)

    def basis_width(self, used: int) -> int:
        """`guard` rows, nothing critical ever: the vector field uses no basis and the
        conditions only its top Ritz value, so that padding rows would cost products for
        nothing."""
        del used
        return self.options.guard

    def plan(self, state, now, fired=None, margins=None):
        del fired, margins
        # A crossing already past when planned is recorded now: an event cannot fire on a
        # segment's first step.
        sharpness = float(np.asarray(state.tracking.effective.values)[0])
        if np.isnan(float(state.eos_time)) and sharpness >= 2:
            state = eqx.tree_at(lambda s: s.eos_time, state, jnp.asarray(now, state.y.w.dtype))
        if sharpness > self.options.max_seff:
            return self.stop(state, now, StopReason.sharpness_ceiling), 0, ()
        if np.isnan(float(state.eos_time)):
            sharpening = Event(EventKind.eos, threshold=2.0)
        else:
            sharpening = Event(EventKind.ceiling, threshold=self.options.max_seff)
        return state, 0, (sharpening, self.track_event(state))

    def slots(self, num_critical):
        del num_critical
        return ("ritz", "track")

    @eqx.filter_jit
    def point_record(self, y, basis, num_critical):
        return self._base_record(y, jnp.sum(self.objective.grad(y.w) ** 2))


class CentralFlowProcess(AbstractFlowProcess):
    """The central flow, with the critical set re-planned at every integer time and
    after every event: the EOS onset, a tracked eigenvalue rising through
    `options.sdcp_threshold`, the smallest rising through `eig.track_threshold`."""

    objective: Objective
    optimizer: AbstractOptimizer
    eig: EigConfig
    options: FlowOptions
    name: ClassVar[str] = "central"

    def field(self, num_critical: Count, rank: Count | None = None) -> CentralFlow:
        return CentralFlow(
            self.objective,
            self.optimizer,
            self.options.tau,
            num_critical,
            rank,
            modified=self.options.modified,
        )

    def relaxation_rate(self):
        return 1 / float(self.options.tau)  # the stability constraint's Baumgarte rate

    def watch(self, events, num_critical):
        """While the rank slots are armed (something is critical), the flow's terms give
        the Ritz values and the rank margins, and one more product the track slot's: the
        conditions then come with each evaluation of the vector field. Otherwise they
        are NaN (evaluated when needed, from one batch of products)."""
        field, slots = self.field(num_critical), self.slots(num_critical)
        from_terms = self.conditions_from_terms(events, num_critical)

        def watched(y, basis):
            terms = field.terms(y, basis)
            unknown = lambda: jnp.full(len(slots), jnp.nan, y.w.dtype)
            given = lambda: from_terms(y, basis, terms)
            return terms.derivative, jax.lax.cond(_rank_armed(events, slots), given, unknown)

        return watched

    def critical_size(self, state):
        values = np.asarray(state.tracking.effective.values)  # NaN past the tracked count
        return int(np.sum(above_threshold(values, self.options.sdcp_threshold)))

    def plan(self, state, now, fired=None, margins=None):
        values = np.asarray(state.tracking.effective.values)
        count = int(state.tracking.effective.count)
        k = self.critical_size(state)
        if k == count >= self.eig.max_neigs:
            warnings.warn(
                f"All eig.max_neigs = {self.eig.max_neigs} tracked eigenvalues are critical "
                f"(above sdcp_threshold = {self.options.sdcp_threshold}): an untracked one "
                "may be too, and the flow would miss it; the tracked space's derivative "
                "(jax.grad of a flow) is then ill-conditioned. Raise eig.max_neigs.",
                stacklevel=2,
            )
        events = []
        if k >= 1:
            rank = self.active_rank(state, k, fired, margins)
            if rank >= 1 and np.isnan(float(state.eos_time)):
                # Already active (an event cannot fire on a segment's first step): onset now.
                state = eqx.tree_at(lambda s: s.eos_time, state, jnp.asarray(now, values.dtype))
            if rank < k:
                kind = EventKind.onset if np.isnan(float(state.eos_time)) else EventKind.activate
                events.append(Event(kind, rank))
            if rank >= 1:
                events.append(Event(EventKind.deactivate, rank))
        if k < count:
            events.append(Event(EventKind.enter, threshold=self.options.sdcp_threshold))
        return state, k, (*events, self.track_event(state))

    def slots(self, num_critical):
        del num_critical  # the rank slots are disarmed while nothing is critical
        return ("activate", "deactivate", "ritz", "track")

    def ritz_index(self, num_critical):
        return num_critical  # the first Ritz value outside the critical set

    def active_rank(
        self,
        state: FlowProcessState,
        num_critical: int,
        fired: Event | None,
        margins: Float[Array, " k"] | None = None,
    ) -> int:
        """The SDCP's active rank (the rank of X) for the next segment: one more or less
        than before a rank event that just `fired` (X's new direction is at 0 there, on
        either side as rounding goes), else the count of positive `margins` (computed
        here unless given)."""
        if fired is not None and fired.kind.changes_rank:
            step = -1 if fired.kind is EventKind.deactivate else 1
            return min(max(fired.rank + step, 0), num_critical)
        if margins is None:  # the observation's program, so that no other one compiles
            basis = self.basis(state, num_critical)
            _, margins, _ = self.point_terms(state.y, basis, critical_count(num_critical))
        return int(np.sum(np.asarray(margins) > 0))

    @staticmethod
    def _margins(
        terms: CentralTerms, basis: Basis, num_critical: Count, rank: int | Int[Array, ""] | None
    ) -> Float[Array, " k"]:
        """`complementarity_margins` of the SDCP in `terms`, on its branch of active rank
        `rank` (default: at its solution): while X has rank r, the r first are positive
        and the rest negative. With r = 0 the first is `−λ_min(α)`, positive once X = 0
        no longer solves the SDCP (the EOS onset)."""
        x = held_at_rank(terms.alpha, terms.operator, terms.sdcp, rank)
        critical = jnp.arange(len(basis)) < num_critical
        return complementarity_margins(x, terms.alpha, terms.operator, critical)

    @eqx.filter_jit
    def point_record(self, y, basis, num_critical):
        return self._record(y, self.field(num_critical).terms(y, basis), basis, num_critical)

    @eqx.filter_jit
    def point_terms(self, y, basis, num_critical):
        """`point_record` and the SDCP's rank margins (`_margins`) at `y`, from one
        evaluation of the terms."""
        terms = self.field(num_critical).terms(y, basis)
        margins = self._margins(terms, basis, num_critical, None)
        return self._record(y, terms, basis, num_critical), margins, terms

    def start_terms(self, state, num_critical):
        basis = self.basis(state, num_critical)
        return self.point_terms(state.y, basis, critical_count(num_critical))[2]

    def _record(self, y: FlowState, terms: CentralTerms, basis: Basis, num_critical: Count):
        """`point_record` from the terms at `y`."""
        record = self._base_record(y, terms.grad_norm_sq)
        critical = jnp.arange(len(basis)) < num_critical
        record.update(
            predicted_loss=terms.predicted_loss,
            predicted_grad_norm_sq=terms.predicted_grad_norm_sq,
            predicted_variances=jnp.where(critical, jnp.linalg.eigvalsh(terms.X)[::-1], jnp.nan),
            sigma_trace=terms.sigma_trace,
            sdcp_residual=terms.sdcp.residual,
            num_critical=jnp.asarray(num_critical, y.w.dtype),
            # For the driver's deltas Uᵀ P (w_other − w_central); not logged as such.
            _critical_vectors=jnp.where(critical[:, None], terms.ritz.vectors, jnp.nan),
            _p_diag=self.p_diag(y),
        )
        return record

    @property
    def logs_stationary_nu(self) -> bool:
        """Whether the records compare ν with its stationary value ν̄(w) (`stationary_nu`)."""
        return (
            self.options.stationary_nu
            and has_stationary_nu(self.optimizer)
            and not self.options.modified
        )

    def central_field(self, num_critical: Count) -> CentralFlow:
        """The central flow whose stationary ν `stationary_point` solves for."""
        return self.field(num_critical)

    def stationary_point(self, state: FlowProcessState) -> tuple[FlowProcessState, StationaryNu]:
        """`state` with ν set to ν̄(w) (`stationary_nu`) and its tracked eigenpairs
        refreshed (and grown) at P(ν̄). ν̄ is solved in the span of the tracked directions
        the flow works in; directions that turn critical at P(ν̄) lie partly outside it,
        so ν̄ is solved again in the span refreshed at P(ν̄), until the effective
        sharpness there moves by less than 1% (at most `_STATIONARY_SWEEPS` solves)."""
        sharpness, found = np.inf, None
        for _ in range(_STATIONARY_SWEEPS):
            k = self.critical_size(state)
            field = self.central_field(critical_count(k))
            solution = _stationary_nu(field, state.y, self.basis(state, k))
            if not np.all(np.isfinite(np.asarray(solution.nu))) and found is not None:
                break  # a failed solve (float32 in an ill-conditioned span): keep the last
            y = FlowState(state.y.w, eqx.tree_at(lambda s: s.nu, state.y.opt_state, solution.nu))
            state = eqx.tree_at(lambda s: s.y, state, y)
            state = grow(self, AbstractFlowProcess.refresh(self, state, state.tracking))
            found = (state, solution)
            previous, sharpness = sharpness, float(state.tracking.effective.values[0])
            if abs(sharpness - previous) < 0.01 * sharpness:
                break
        return found

    @np.errstate(invalid="ignore")
    def _stationary_record(self, state: FlowProcessState) -> dict[str, np.ndarray]:
        """How far ν is from ν̄(w): their cosine similarity, ‖ν − ν̄‖ / ‖ν̄‖, ν̄'s
        residual and the effective sharpness at P(ν̄) (NaN once stopped, and but for the
        residual where the solve of ν̄ failed: Josephy–Newton's step limit, or a residual
        above `STATIONARY_TOLERANCE`)."""
        names = ("cosine", "distance", "residual", "sharpness")
        if not np.isnan(float(state.stop_time)):
            return {f"stationary_nu_{name}": np.asarray(np.nan) for name in names}
        stationary, solution = self.stationary_point(state)
        residual = float(solution.residual)
        solved = bool(solution.result == optx.RESULTS.successful)
        if not (solved and residual <= STATIONARY_TOLERANCE):
            values = (np.nan, np.nan, residual, np.nan)
        else:
            nu, nu_bar = (np.ravel(np.asarray(x)) for x in (state.y.opt_state.nu, solution.nu))
            norm = np.linalg.norm(nu_bar)
            values = (
                nu @ nu_bar / (np.linalg.norm(nu) * norm),
                np.linalg.norm(nu - nu_bar) / norm,
                residual,
                stationary.tracking.effective.values[0],
            )
        return {f"stationary_nu_{n}": np.asarray(v) for n, v in zip(names, values)}

    def observe(self, state, num_critical, point=None):
        record = super().observe(state, num_critical, point)
        if self.logs_stationary_nu:
            record.update(self._stationary_record(state))
        m = state.tracking.effective.capacity  # both padded with NaN to eig.max_neigs
        for name in ("predicted_variances", "_critical_vectors"):
            value = record[name]
            pad = [(0, m - len(value))] + [(0, 0)] * (value.ndim - 1)
            record[name] = np.pad(value, pad, constant_values=np.nan)
        return record


class CentralNoPenaltyFlowProcess(CentralFlowProcess):
    """The central flow without its implicit curvature penalty (`CentralFlow` with
    `penalty=False`): Σ still holds the stability constraint, through the optimizer
    state alone. Refused for GD (see `check_penalty_free`)."""

    name: ClassVar[str] = "central_no_penalty"

    def __check_init__(self):
        self.check_optimizer(self.optimizer)

    @classmethod
    def check_optimizer(cls, optimizer: AbstractOptimizer) -> None:
        check_penalty_free(optimizer)

    def field(self, num_critical: Count, rank: Count | None = None) -> CentralFlow:
        return CentralFlow(
            self.objective,
            self.optimizer,
            self.options.tau,
            num_critical,
            rank,
            penalty=False,
            modified=self.options.modified,
        )


class StationaryFlowProcess(CentralFlowProcess):
    """RMSProp's stationary flow (`StationaryFlow`): the central flow with ν held at
    its stationary value ν̄(w) at every `w`. The ν in its state is set to ν̄(w) wherever
    the tracked eigenpairs are refreshed (every integer time and event), so that its
    preconditioner, effective eigenvalues and `opt.*` series are those at ν̄. Refused
    for GD (no ν) and with the modified-equation term."""

    name: ClassVar[str] = "central_stationary"

    def __check_init__(self):
        self.check_optimizer(self.optimizer)
        if self.options.modified:
            raise ValueError(
                "The stationary flow (`central_stationary`) is defined without the "
                "modified-equation term; set `[central] modified = false`."
            )

    @classmethod
    def check_optimizer(cls, optimizer: AbstractOptimizer) -> None:
        check_stationary(optimizer)

    @property
    def logs_stationary_nu(self) -> bool:
        return False  # ν is ν̄

    def central_field(self, num_critical: Count, rank: Count | None = None) -> CentralFlow:
        return super().field(num_critical, rank)

    def field(self, num_critical: Count, rank: Count | None = None) -> StationaryFlow:
        return StationaryFlow(self.central_field(num_critical, rank))

    def refresh(self, state: FlowProcessState, tracking: Tracking) -> FlowProcessState:
        """ν ← ν̄(w), with the tracked eigenpairs at P(ν̄) (`stationary_point`)."""
        state = eqx.tree_at(lambda s: s.tracking, state, tracking)
        return self.stationary_point(state)[0]

    def retrack(self, state: FlowProcessState, tracking: Tracking) -> FlowProcessState:
        return AbstractFlowProcess.refresh(self, state, tracking)  # at the ν just set


FLOW_PROCESSES: dict[str, type[AbstractFlowProcess]] = {
    "central": CentralFlowProcess,
    "central_no_penalty": CentralNoPenaltyFlowProcess,
    "central_stationary": StationaryFlowProcess,
    "stable": StableFlowProcess,
}
