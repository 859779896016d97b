"""Central-flow cost per unit time against the discrete GD step, on the digits MLP.

Both are measured in this one process, from the same point in the EOS phase (the discrete
GD iterate at `--start`), with eigen tracking every step, compilation excluded (the first
calls are timed separately). Also reports the gradient and Hessian-vector-product cost,
right-hand-side evaluations per unit time, and where the central flow's time goes; and
the unit against the same unit with its event conditions evaluated on their own after
each step, rather than taken from the solver's stages (the two alternate from the same
states, the path continuing from the first).

    python benchmarks/central_flow_speed.py --start 250 --units 30
Writes benchmarks/results/central_flow_speed.json.
"""

import argparse
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from _timing import timed  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._experiment import (  # noqa: E402
    make_eig_config,
    make_flow_options,
    make_optimizer,
    make_problem,
)
from centralflows._flow_processes import CentralFlowProcess  # noqa: E402
from centralflows._processes import Discrete, grow  # noqa: E402
from centralflows._run import _advance_chunk  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_LIMIT = jnp.asarray(jnp.inf)  # no loss limit: only a non-finite loss stops a process


class UnwatchedCentralFlowProcess(CentralFlowProcess):
    """The central flow with its event conditions evaluated after each step."""

    def watch(self, events, num_critical):
        return None


def timed_unit(process, state, t):
    start = time.perf_counter()
    state, _, record = process.advance_unit(state, t)
    jax.block_until_ready(state.y.w)
    return state, record, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gd-mlp-digits.toml")
    parser.add_argument("--start", type=int, default=250)
    parser.add_argument("--units", type=int, default=30)
    args = parser.parse_args()
    cfg = load_config(ROOT / args.config)
    objective, w0 = make_problem(cfg)
    optimizer, eig = make_optimizer(cfg["opt"]), make_eig_config(cfg["eig"])
    central_options, _ = make_flow_options(cfg)

    # Primitive costs.
    grad = eqx.filter_jit(objective.grad)
    hvps = eqx.filter_jit(objective.hvps)
    third = eqx.filter_jit(objective.third_order)
    vs = jr.normal(jr.key(0), (8, w0.size))
    for fn, a in ((grad, (w0,)), (hvps, (w0, vs)), (third, (w0, vs[0], vs[1]))):
        timed(fn, *a)
    t_grad = np.median([timed(grad, w0)[1] for _ in range(20)])
    t_hvp = np.median([timed(hvps, w0, vs)[1] for _ in range(20)]) / 8
    t_third = np.median([timed(third, w0, vs[0], vs[1])[1] for _ in range(20)])

    # Reach the EOS phase with discrete GD.
    start_run = cf.run(
        objective, w0, optimizer, steps=args.start, eig=eig, save_w_every=args.start, progress=False
    )
    w_start = jnp.asarray(start_run["discrete"]["w"][args.start])

    # Discrete GD with tracking every step: chunks of 10 steps, compile excluded.
    discrete = (Discrete(objective, optimizer, eig),)
    states = (discrete[0].init(w_start, jr.key(1)),)
    for _ in range(3):  # let the tracked set grow to its EOS size
        states, _ = _advance_chunk(
            discrete, states, jnp.asarray(0), jnp.asarray(10**6), 10, NO_LIMIT
        )
        states = (grow(discrete[0], states[0]),)
    (_, _), compile_discrete = timed(
        _advance_chunk, discrete, states, jnp.asarray(0), jnp.asarray(10**6), 10, NO_LIMIT
    )
    times, hvp_counts = [], []
    for i in range(args.units // 10 + 1):
        (states, records), dt = timed(
            _advance_chunk,
            discrete,
            states,
            jnp.asarray(10 * i),
            jnp.asarray(10**6),
            10,
            NO_LIMIT,
        )
        times.append(dt / 10)
        hvp_counts.append(float(np.nanmean(records["discrete"]["eig_hvps"])))
    discrete_step = float(np.median(times))

    # Central flow from the same point: per unit time, compile excluded.
    process = CentralFlowProcess(objective, optimizer, eig, central_options)
    unwatched = UnwatchedCentralFlowProcess(objective, optimizer, eig, central_options)
    state = process.init(w_start, jr.key(3))
    state = eqx.tree_at(lambda s: s.eos_time, state, jnp.asarray(0.0))  # already at EOS
    compile_start = time.perf_counter()
    for t in range(3):
        state, _, _ = process.advance_unit(state, t)
    compile_central = time.perf_counter() - compile_start
    for t in range(3):
        unwatched.advance_unit(state, t)
    units, units_unwatched, distances, breakdown = [], [], [], []
    records = []
    for t in range(3, 3 + args.units):
        start = time.perf_counter()
        observed, k, *_ = process.observe_now(state, t)  # the breakdown only
        breakdown.append(time.perf_counter() - start)
        alone, _, seconds = timed_unit(unwatched, state, t)
        units_unwatched.append(seconds)
        state, record, seconds = timed_unit(process, state, t)
        units.append(seconds)
        distances.append(float(jnp.linalg.norm(state.y.w - alone.y.w)))
        records.append({**record, "k": k, "m": int(observed.tracking.effective.count)})
    central_unit = float(np.median(units))
    rhs = float(np.mean([r["rhs_evals"] for r in records]))
    ks = [r["k"] for r in records]
    ms = [r["m"] for r in records]
    eig_hvps = float(np.mean([r["eig_hvps"] for r in records]))
    k, m = int(np.median(ks)), int(np.median(ms))
    # Per right-hand-side evaluation: one gradient, b = k + guard HVPs (Rayleigh-Ritz),
    # one third-order product per critical pair, and, for the event conditions that come
    # with it at the edge of stability, one HVP (the smallest tracked vector's quotient).
    b = min(k + central_options.guard, m)
    hvps_per_unit = eig_hvps + rhs * (b + 1)
    third_per_unit = rhs * k * (k + 1) / 2
    result = {
        "config": args.config,
        "num_params": int(w0.size),
        "num_train": int(cfg["data"]["n"]),
        "start_step": args.start,
        "units_measured": args.units,
        "grad_ms": 1e3 * t_grad,
        "hvp_ms": 1e3 * t_hvp,
        "hvp_in_grads": t_hvp / t_grad,
        "third_order_in_grads": t_third / t_grad,
        "discrete_step_ms": 1e3 * discrete_step,
        "discrete_hvps_per_step": float(np.mean(hvp_counts)),
        "central_unit_ms": 1e3 * central_unit,
        "ratio_central_unit_over_discrete_step": central_unit / discrete_step,
        "central_observe_ms (LOBPCG refresh + logged terms)": 1e3 * float(np.median(breakdown)),
        "central_unit_ms_conditions_evaluated_after_each_step": 1e3
        * float(np.median(units_unwatched)),
        "ratio_central_unit_over_conditions_after_each_step": float(
            np.median(np.array(units) / np.array(units_unwatched))
        ),
        "largest_distance_from_conditions_after_each_step": max(distances),
        "central_rhs_evals_per_unit": rhs,
        "central_critical_k_median": k,
        "central_tracked_m_median": m,
        "central_ritz_basis_size": b,
        "central_hvps_per_unit_estimate": hvps_per_unit,
        "central_third_order_products_per_unit": third_per_unit,
        "compile_seconds_discrete_chunk": compile_discrete,
        "compile_seconds_central_first_units": compile_central,
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = ROOT / "benchmarks/results"
    out.mkdir(exist_ok=True)
    (out / "central_flow_speed.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
