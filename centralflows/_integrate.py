"""Integrating the flows with diffrax, one segment at a time."""

from collections.abc import Callable
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, Scalar

from ._flows import Basis, CentralFlow, FlowState, StableFlow

# Where each solver's stability region meets the negative real axis (hλ ≥ −r is stable).
_STABILITY_RADIUS = {dfx.Euler: 2.0, dfx.Heun: 2.0, dfx.Tsit5: 3.3, dfx.Dopri5: 3.3, dfx.Bosh3: 2.5}


class FlowOptions(eqx.Module):
    """How a flow is integrated (config sections `[central]` and `[stable]`).

    **Arguments:**

    - `solver`: a diffrax solver (default `Bosh3()`; `Euler()` for the reference scheme).
      An explicit solver's step is bounded by the relaxation rate 1/τ (Bosh3: h ≤ 2.5τ),
      so with the default τ = 0.5 and rtol = 1e-5 Bosh3 takes about one step per unit
      at the edge of stability on the digits MLP. At tight tolerances (rtol below about
      1e-7), where accuracy bounds the step, `Tsit5()` is cheaper.
    - `stepsize_controller`: e.g. `PIDController(rtol, atol)` or `ConstantStepSize()`.
    - `dt0`: the first step size (every step's, for `ConstantStepSize`); later segments
      start with the step their predecessor's controller proposed.
    - `tau`: the relaxation time of the stability constraint (central flow): the
      constraint's error decays as e^{−t/τ}, and X turns on about τ before the
      sharpness would reach 2/η. The flow tends to its τ → 0 limit at O(τ): on the digits
      MLP, 200 units from the onset, τ = 0.5 stays within 2e-4 of τ = 1/16 (a path 2.06
      long, 0.34 from the discrete run).
    - `sdcp_threshold`: tracked eigenvalues above this enter the critical set.
    - `max_seff`: the stable flow stops when its effective sharpness exceeds this.
    - `max_steps`: solver steps allowed per segment.
    - `guard`: tracked eigenvectors beyond the critical ones kept in the Rayleigh–Ritz
      basis inside the vector field: they let the critical directions rotate within a
      unit of time, and show the next eigenvalue entering the critical set.
    - `modified`: add the modified-equation term `−½ P⁻¹ H P⁻¹ ∇L` to `dw/dt` (in the
      central flow, along the stable directions only), so that the flow tracks the
      optimizer's iterates to second order in the step: for GD, the gradient flow of
      `L + (η/4)‖∇L‖²` before the edge of stability. One more Hessian-vector product
      per right-hand side; a static field (one set of programs per setting).
    - `stationary_nu`: log, along a central flow of Scalar RMSProp or RMSProp, how far
      its ν is from the stationary ν̄(w) (`stationary_nu_cosine`, `_distance`,
      `_residual`), at the cost of one more solve per unit of time; a static field.
    """

    solver: dfx.AbstractSolver = dfx.Bosh3()
    stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(rtol=1e-5, atol=1e-7)
    dt0: float = 0.1
    tau: float = 0.5
    sdcp_threshold: float = 1.95
    max_seff: float = 100.0
    max_steps: int = eqx.field(default=1024, static=True)
    guard: int = eqx.field(default=2, static=True)
    modified: bool = eqx.field(default=False, static=True)
    stationary_nu: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        for name in ("dt0", "tau", "sdcp_threshold", "max_seff"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
        if type(self.solver) not in _STABILITY_RADIUS:
            names = ", ".join(cls.__name__ for cls in _STABILITY_RADIUS)
            raise ValueError(f"Unsupported solver {self.solver!r}; use one of {names}.")
        if self.guard < 1:
            raise ValueError(f"`guard` must be >= 1, got {self.guard}.")

    @classmethod
    def euler(cls, nsubsteps: int, **kwargs) -> "FlowOptions":
        """The reference code's scheme: Euler with `dt = τ = 1/nsubsteps` (parity mode)."""
        if nsubsteps < 1:
            raise ValueError(f"`nsubsteps` must be >= 1, got {nsubsteps}.")
        dt = 1.0 / nsubsteps
        return cls(dfx.Euler(), dfx.ConstantStepSize(), dt, dt, **kwargs)

    def max_step(self, stiffness: float) -> float:
        """The longest step the solver takes stably on a mode decaying at rate
        `stiffness` (with a margin of 0.9): the error estimate of a mode that has
        decayed to round-off cannot see it grow, but its derivative would."""
        return 0.9 * _STABILITY_RADIUS[type(self.solver)] / max(stiffness, 1e-12)

    @property
    def evals_per_step(self) -> int:
        """Right-hand-side evaluations per solver step (first same as last counted once)."""
        tableau = explicit_tableau(self.solver)
        return len(tableau.a) + (0 if tableau.fsal else 1)


class ExplicitTableau(NamedTuple):
    """An explicit Runge–Kutta method: from `y` and the vector field `f(y)` (the first
    stage), stage `i + 1` is `f(y + h Σ_j a[i][j] k_j)` and the step ends at
    `y + h Σ_j b_j k_j`; `fsal`: the last stage is the vector field at the step's end."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    fsal: bool


def explicit_tableau(solver: dfx.AbstractSolver) -> ExplicitTableau:
    """The coefficients of one of the flows' solvers (`FlowOptions.solver`)."""
    if isinstance(solver, dfx.Euler):
        return ExplicitTableau((), (1.0,), False)
    tableau = solver.tableau
    a = tuple(tuple(float(x) for x in row) for row in tableau.a_lower)
    return ExplicitTableau(a, tuple(float(x) for x in tableau.b_sol), bool(tableau.fsal))


class _FirstStep(dfx.AbstractStepSizeController):
    """`controller` whose first step is the traced `dt0` (cut to the segment's end
    `t_end`), given here rather than to `diffeqsolve`, which checks a traced `dt0`'s sign
    with a host callback (such a program cannot be kept in JAX's persistent compilation
    cache). Its state also holds the step that the last accepted step not cut short by
    `t_end` proposed next (at first `dt0`): the step the next segment starts with, as the
    solver would have gone on; and the accepted steps' end times (inf past the last),
    which a replay steps through. No step is longer than `dt_max`."""

    controller: dfx.AbstractStepSizeController
    dt0: Scalar
    t_end: Scalar
    dt_max: Scalar
    max_steps: int = eqx.field(static=True)

    def wrap(self, direction):
        return _FirstStep(
            self.controller.wrap(direction),
            self.dt0 * direction,
            self.t_end,
            self.dt_max,
            self.max_steps,
        )

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        del dt0
        first = jnp.minimum(jnp.minimum(self.dt0, self.dt_max), self.t_end - t0)
        t_next, state = self.controller.init(
            terms, t0, t1, _unwatched(y0), first, args, func, error_order
        )
        ends = jnp.full(self.max_steps, jnp.inf, jnp.result_type(t0))
        return t_next, (state, self.dt0, ends, jnp.array(0))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        state, proposed, ends, accepted = state
        y0, y1_candidate, y_error = map(_unwatched, (y0, y1_candidate, y_error))
        keep, next_t0, next_t1, jump, state, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        next_t1 = jnp.minimum(next_t1, next_t0 + self.dt_max)
        proposed = jnp.where(keep & (t1 < self.t_end), next_t1 - next_t0, proposed)
        ends = jnp.where(keep, ends.at[accepted].set(t1, mode="drop"), ends)
        state = (state, proposed, ends, accepted + keep)
        return keep, next_t0, next_t1, jump, state, result


class SegmentStart(eqx.Module):
    """What an evaluation at a segment's start already gave: the vector field there (the
    solver's first stage, where its method reuses its last stage as the next step's
    first) and the event conditions there."""

    derivative: FlowState
    conditions: Float[Array, " e"] | None


def _reuses_last_stage(solver: dfx.AbstractSolver) -> bool:
    """Whether `solver` keeps the vector field at a step's end as the next one's first
    stage (first same as last), so that a known value there saves an evaluation."""
    return isinstance(solver, dfx.AbstractRungeKutta) and solver.tableau.fsal


class _Watched(eqx.Module):
    """A flow's state with the event conditions at it, NaN where they are not known."""

    y: FlowState
    conditions: Float[Array, " e"]


class _WatchedField(eqx.Module):
    """The vector field of a `_Watched` state: `watch(y, basis) -> (dy/dt, conditions)`
    gives the derivative and, from the same evaluation, the conditions at `y` (NaN where
    they do not come with it)."""

    watch: Callable[[FlowState, Basis], tuple[FlowState, Float[Array, " e"]]]

    def __call__(self, t, state: _Watched, basis: Basis) -> _Watched:
        del t
        return _Watched(*self.watch(state.y, basis))


class _Unwatched(dfx.AbstractLocalInterpolation):
    """A step's dense output of a `_Watched` state, the conditions NaN: inside the step
    they are not known (the interpolated slot is not their value)."""

    inner: dfx.AbstractLocalInterpolation
    t0: Scalar
    t1: Scalar

    def evaluate(self, t0, t1=None, left=True) -> _Watched:
        y = self.inner.evaluate(t0, t1, left)
        return _Watched(y.y, jnp.full_like(y.conditions, jnp.nan))


class _Watching(dfx.AbstractAdaptiveSolver, dfx.AbstractWrappedSolver):
    """A first-same-as-last Runge–Kutta `solver` on a `_Watched` state: the conditions at
    a step's end are the ones its last stage gave (which is evaluated at the step's end,
    and starts the next step), so watching for events costs no evaluation of its own;
    the step's error is the flow state's alone."""

    solver: dfx.AbstractRungeKutta

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        def interpolation(*, t0, t1, **dense_info):
            inner = self.solver.interpolation_cls(t0=t0, t1=t1, **dense_info)
            return _Unwatched(inner, t0, t1)

        return interpolation

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, solver_state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        _, last_stage = solver_state
        y1 = _Watched(y1.y, last_stage.conditions)
        y_error = _Watched(y_error.y, jnp.zeros_like(y_error.conditions))
        return y1, y_error, dense_info, solver_state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def _unwatched(y):
    """The flow's state of a `_Watched` state (`y` itself otherwise)."""
    return y.y if isinstance(y, _Watched) else y


class Segment(eqx.Module):
    """The end of one integrated segment."""

    y: FlowState
    t: Scalar  # where it stopped: t1, or an event time
    event: Int[Array, ""]  # the index of the condition that stopped it; -1 if none did
    steps: Int[Array, ""]  # accepted + rejected
    rejected: Int[Array, ""]
    failed: Bool[Array, ""]  # e.g. max_steps reached, or a non-finite step
    dt: Scalar  # the first step size for the next segment
    # The accepted steps' end times (the last one's may pass the event that cut it
    # short), inf past them.
    step_ends: Float[Array, " max_steps"]


def integrate_segment(
    field: CentralFlow | StableFlow,
    y0: FlowState,
    t0: Scalar,
    t1: Scalar,
    dt0: Scalar,
    basis: Basis,
    options: FlowOptions,
    conditions: Callable[[FlowState, Basis], Float[Array, " e"]] | None = None,
    dt_max: Scalar | float = jnp.inf,
    start: SegmentStart | None = None,
    watch: Callable[[FlowState, Basis], tuple[FlowState, Float[Array, " e"]]] | None = None,
) -> Segment:
    """Integrate `field` from `t0` to `t1`, stopping early where the first of `conditions`
    rises through 0.

    **Arguments:**

    - `field`: the vector field; `basis` is passed to it as `args`.
    - `y0`, `t0`, `t1`: initial state and interval.
    - `dt0`: the first step size (ignored by a constant step size controller, which
      always takes `options.dt0`).
    - `basis`: the eigenvector basis frozen for this segment.
    - `options`: solver settings.
    - `dt_max`: the longest step (ignored by a constant step size controller).
    - `start`: the vector field and conditions at `(t0, y0)` where they are known (each
      costs a right-hand side's work to evaluate again).
    - `conditions`: `(y, basis) -> vector`, none positive at `t0`; where their maximum
      crosses 0 upwards the segment ends, the time located by bisection on the solver's
      dense output (Newton can leave the step and fail). The condition that stopped it
      is the largest there.
    - `watch`: `(y, basis) -> (dy/dt, conditions)`, `field` with `conditions` from the
      same evaluation (NaN where they do not come with it). With a first-same-as-last
      solver, the conditions at a step's end are then those of its last stage, rather
      than an evaluation of their own.

    **Returns:** a `Segment`.
    """
    watched = conditions is not None and watch is not None and _reuses_last_stage(options.solver)
    constant = isinstance(options.stepsize_controller, dfx.ConstantStepSize)
    if constant:
        dt0, dt_max = options.dt0, jnp.inf
    event = None
    if conditions is not None:
        # Bisection stops where both the time bracket and the condition are within
        # tolerance, so neither may be finer than the dtype resolves (float64: 1e-12
        # and 1e-9; float32: 5e-7 and 1e-4, where times near 100 resolve to 1e-5).
        eps = float(jnp.finfo(y0.w.dtype).eps)
        known = None
        if start is not None and start.conditions is not None:
            known = jnp.max(start.conditions)

        def condition(t, y, args, **kwargs):
            """The largest condition; at `t0`, the known one (the initial sign)."""
            if known is not None and t is kwargs.get("t0"):
                return known  # diffrax's initial call (at its own `t0`): no copy traced
            if watched:
                # Known at a step's end where its last stage gave them; else (inside
                # the step, for the bisection) evaluated.
                value = lambda: jnp.max(conditions(y.y, args))
                unknown = jnp.any(jnp.isnan(y.conditions))
                return jax.lax.cond(unknown, value, lambda: jnp.max(y.conditions))
            value = lambda: jnp.max(conditions(y, args))
            return value() if known is None else jax.lax.cond(t == t0, lambda: known, value)

        event = dfx.Event(
            condition,
            # The step brackets the root with the condition rising through it, so the
            # orientation is known (`flip=False`): Bisection need not evaluate the
            # condition at both ends, two more copies of it in the compiled program.
            optx.Bisection(rtol=max(1e-12, 4 * eps), atol=max(1e-9, 1e3 * eps), flip=False),
            direction=True,
        )
    term, solver, y_start, solver_state = dfx.ODETerm(field), options.solver, y0, None
    if watched:
        if start is None:
            derivative, known_conditions = watch(y0, basis)
        else:
            derivative, known_conditions = start.derivative, start.conditions
        term, solver = dfx.ODETerm(_WatchedField(watch)), _Watching(options.solver)
        y_start = _Watched(y0, known_conditions)
        solver_state = (jnp.array(False), _Watched(derivative, known_conditions))
    elif start is not None and _reuses_last_stage(options.solver):
        solver_state = (jnp.array(False), start.derivative)  # the first stage is known
    solution = dfx.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        None,
        y_start,
        basis,
        saveat=dfx.SaveAt(t1=True, controller_state=True),
        stepsize_controller=_FirstStep(
            options.stepsize_controller,
            jnp.asarray(dt0),
            t1,
            jnp.asarray(dt_max),
            options.max_steps,
        ),
        event=event,
        solver_state=solver_state,
        max_steps=options.max_steps,
        throw=False,
    )
    y_end = _unwatched(jtu.tree_map(lambda x: x[-1], solution.ys))
    fired = jnp.array(-1)
    if event is not None:
        fired = jax.lax.cond(
            solution.event_mask,
            lambda: jnp.argmax(conditions(y_end, basis)),
            lambda: jnp.array(-1),
        )
    ok = (solution.result == dfx.RESULTS.successful) | (
        solution.result == dfx.RESULTS.event_occurred
    )
    t_end = solution.ts[-1]
    _, proposed, step_ends, _ = solution.controller_state
    dt = jnp.where(constant, dt0, proposed)
    return Segment(
        y_end,
        t_end,
        fired,
        solution.stats["num_steps"],
        solution.stats["num_rejected_steps"],
        ~ok,
        dt,
        step_ends,
    )
