"""A central-flow unit with the event conditions taken from the solver's stages, against
the same unit with the conditions evaluated on their own after each step.

Both processes advance from the same state at every unit (the digits GD central flow from
the discrete iterate at `--start`, at the edge of stability), alternating in this one
process, compilation excluded; the path continues from the watched one.

    python benchmarks/watched_conditions.py --start 250 --units 20
Writes benchmarks/results/watched_conditions.json.
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

import centralflows as cf  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._experiment import (  # noqa: E402
    make_eig_config,
    make_flow_options,
    make_optimizer,
    make_problem,
)
from centralflows._flow_processes import CentralFlowProcess  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
    parser.add_argument("--units", type=int, default=20)
    args = parser.parse_args()
    cfg = load_config(ROOT / args.config)
    objective, w0 = make_problem(cfg)
    optimizer, eig = make_optimizer(cfg["opt"]), make_eig_config(cfg["eig"])
    options, _ = make_flow_options(cfg)
    run = cf.run(
        objective,
        w0,
        optimizer,
        steps=args.start,
        eig=eig,
        save_w_every=args.start,
        processes=("discrete",),
        progress=False,
    )
    w = jnp.asarray(run["discrete"]["w"][args.start])
    watched = CentralFlowProcess(objective, optimizer, eig, options)
    unwatched = UnwatchedCentralFlowProcess(objective, optimizer, eig, options)
    state = watched.init(w, jr.key(3))
    state = eqx.tree_at(lambda s: s.eos_time, state, jnp.asarray(0.0))  # already at EOS
    other = state
    for t in range(3):  # compiles both
        state, _, _ = watched.advance_unit(state, t)
        other, _, _ = unwatched.advance_unit(other, t)
    rows = []
    for t in range(3, 3 + args.units):
        new, record, seconds = timed_unit(watched, state, t)
        alone, record_alone, seconds_alone = timed_unit(unwatched, state, t)
        rows.append(
            {
                "seconds": seconds,
                "seconds_unwatched": seconds_alone,
                "solver_steps": float(record["solver_steps"]),
                "solver_steps_unwatched": float(record_alone["solver_steps"]),
                "distance": float(jnp.linalg.norm(new.y.w - alone.y.w)),
            }
        )
        state = new
    ratios = [r["seconds"] / r["seconds_unwatched"] for r in rows]
    result = {
        "config": args.config,
        "start_step": args.start,
        "units": args.units,
        "critical_at_end": watched.critical_size(state),
        "unit_ms_watched": 1e3 * float(np.median([r["seconds"] for r in rows])),
        "unit_ms_unwatched": 1e3 * float(np.median([r["seconds_unwatched"] for r in rows])),
        "median_ratio_watched_over_unwatched": float(np.median(ratios)),
        "largest_distance_between_the_two": max(r["distance"] for r in rows),
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    (ROOT / "benchmarks/results/watched_conditions.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
