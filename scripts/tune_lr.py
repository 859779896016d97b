"""Tune hyperparameters by gradient descent on the central flow, then check with real runs.

Minimizes the central flow's predicted loss at time T (its prediction of the discrete
run's time-averaged loss) over log η (and logit β₂ for RMSProp) by Adam on `jax.grad` of
the flow (the tuned values: the evaluated point with the lowest predicted loss), then runs
the discrete optimizer at the tuned values and at every point of a grid, scoring each
discrete run by its loss averaged over the 9 steps centred on T (the loss at EOS
oscillates from step to step). Reports both optima and their cost.

    python scripts/tune_lr.py --optimizer gd [--steps 200 --iterations 12]
    python scripts/tune_lr.py --optimizer rmsprop --steps 30 --set data.n=200 --set eig.max_neigs=12
(the runs of docs/gradients.md; RMSProp's flow needs more tracked directions than the
default 8 once many are critical, and the flow warns where they are all critical).
Writes benchmarks/results/tune-<optimizer>.json (or --out) after every tuning step;
`--reuse` continues a tuning from it (e.g. with more --iterations). Costs are reported in
seconds and in gradient evaluations: the discrete runs' own count, and the flow's time
divided by the time of one discrete gradient evaluation measured on the grid.

The flows' programs are compiled once for the whole tuning (hyperparameters are their
inputs) and kept in the package's persistent compilation cache for later runs
(`CENTRALFLOWS_CACHE_DIR` moves it). A non-finite flow gradient stops the tuning.
"""

import argparse
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._experiment import (  # noqa: E402
    make_eig_config,
    make_flow_options,
    make_problem,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = {"gd": "configs/gd-mlp-digits.toml", "rmsprop": "configs/rmsprop-mlp-digits.toml"}
WARM_UP = {"gd": 0, "rmsprop": 10}  # discrete steps before the flow starts (S_eff < 2)
WINDOW = 9


def hyperparameters(name: str, u: np.ndarray) -> dict:
    """The optimizer's hyperparameters from unconstrained coordinates."""
    params = {"lr": jnp.exp(u[0])}
    if name == "rmsprop":
        params["beta2"] = jax.nn.sigmoid(u[1])
    return params


def coordinates(name: str, params: dict) -> np.ndarray:
    u = [np.log(params["lr"])]
    if name == "rmsprop":
        u.append(np.log(params["beta2"] / (1 - params["beta2"])))
    return np.array(u)


def build(name: str, base: dict, params: dict) -> cf.AbstractOptimizer:
    if name == "gd":
        return cf.GD(params["lr"])
    return cf.RMSProp(params["lr"], beta2=params["beta2"], eps=base["eps"])


def discrete_score(objective, w0, optimizer, steps: int) -> float:
    """The discrete run's loss averaged over the WINDOW steps centred on step `steps`."""
    losses = cf.discrete_losses(objective, w0, optimizer, steps + WINDOW // 2)
    return float(jnp.mean(losses[-WINDOW:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=sorted(CONFIGS), default="gd")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--adam-lr", type=float, default=0.15)
    parser.add_argument("--start", type=float, nargs="+", help="initial η (and β₂)")
    parser.add_argument("--grid-points", type=int, default=41, help="η values in the grid")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides"
    )
    parser.add_argument(
        "--out", help="the JSON file (default benchmarks/results/tune-<optimizer>.json)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="continue the tuning recorded in the JSON file (same settings)",
    )
    args = parser.parse_args()
    name = args.optimizer
    cfg = load_config(ROOT / CONFIGS[name], args.overrides)
    objective, w0 = make_problem(cfg)
    base = dict(cfg["opt"])
    options, _ = make_flow_options(cfg)
    eig = make_eig_config(cfg["eig"])
    out = pathlib.Path(args.out) if args.out else ROOT / f"benchmarks/results/tune-{name}.json"

    def predicted_loss(u):
        # The warm-up steps use the tuned values too, as in the discrete runs; they are
        # differentiated like the flow (a few steps before any oscillation: not chaotic).
        optimizer = build(name, base, hyperparameters(name, u))
        warm = cf.discrete_run(objective, w0, optimizer, WARM_UP[name])
        solution = cf.central_flow(
            objective,
            warm.w,
            optimizer,
            args.steps,
            options=options,
            eig=eig,
            opt_state0=warm.opt_state,
        )
        return solution.predicted_loss[-1]

    start_params = {"lr": base["lr"] * 0.5}
    if name == "rmsprop":
        start_params["beta2"] = 0.9
    if args.start:
        start_params = dict(zip(start_params, args.start))
    settings = {k: v for k, v in vars(args).items() if k not in ("reuse", "iterations")}
    history, tuning_time = [], 0.0
    if args.reuse:
        previous = json.loads(out.read_text())
        if previous.get("settings") != settings:
            raise SystemExit(f"--reuse: {out} was written with other settings")
        history = previous["flow_tuning"]["history"]
        tuning_time = previous["flow_tuning"]["seconds"]

    def adam_step(i, u, m, v, grad):
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        u = u - args.adam_lr * (m / (1 - 0.9**i)) / (np.sqrt(v / (1 - 0.999**i)) + 1e-12)
        return u, m, v

    u = coordinates(name, start_params)
    m, v = np.zeros_like(u), np.zeros_like(u)
    for i, entry in enumerate(history, 1):  # Adam's state from the recorded gradients
        u, m, v = adam_step(i, u, m, v, np.asarray(entry["grad"]))
    value_and_grad = jax.value_and_grad(predicted_loss)
    for i in range(len(history) + 1, args.iterations + 1):
        point = {k: float(x) for k, x in hyperparameters(name, u).items()}
        start = time.perf_counter()
        value, grad = value_and_grad(jnp.asarray(u))
        grad = np.asarray(grad)
        elapsed = time.perf_counter() - start
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            raise SystemExit(
                f"step {i}: the flow's loss {float(value)} or gradient {grad.tolist()} is "
                f"not finite at {point}"
            )
        tuning_time += elapsed
        history.append(
            {
                "params": point,
                "predicted_loss": float(value),
                "grad": grad.tolist(),
                "seconds": elapsed,
            }
        )
        print(json.dumps(history[-1]), flush=True)
        progress = {"history": history, "seconds": tuning_time}
        out.write_text(json.dumps({"settings": settings, "flow_tuning": progress}, indent=2))
        u, m, v = adam_step(i, u, m, v, grad)
    # Adam at a fixed step size circles the optimum: keep the best point it evaluated.
    tuned = min(history, key=lambda entry: entry["predicted_loss"])["params"]

    steps = WARM_UP[name] + args.steps

    def score(params):
        return discrete_score(objective, w0, build(name, base, params), steps)

    tuned_score = score(tuned)  # compiles
    start = time.perf_counter()
    grid_lr = np.geomspace(0.1, 3.0, args.grid_points) * base["lr"]
    grid_beta2 = [base.get("beta2")] if name == "gd" else [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    grid = [
        {"lr": lr} if name == "gd" else {"lr": lr, "beta2": b2}
        for lr in grid_lr
        for b2 in grid_beta2
    ]
    scores = np.array([score(p) for p in grid])
    scores = np.where(np.isfinite(scores), scores, np.inf)
    grid_time = time.perf_counter() - start
    best = grid[int(np.argmin(scores))]
    steps_per_run = steps + WINDOW // 2 + 1
    seconds_per_gradient = grid_time / (len(grid) * steps_per_run)
    result = {
        "settings": settings,
        "optimizer": name,
        "overrides": args.overrides,
        "T": args.steps,
        "warm_up_steps": WARM_UP[name],
        "flow_tuning": {
            "start": start_params,
            "tuned": tuned,
            "next_adam_iterate": {k: float(x) for k, x in hyperparameters(name, u).items()},
            "history": history,
            "flow_gradients": len(history),
            "seconds": tuning_time,
            "equivalent_gradient_evaluations": tuning_time / seconds_per_gradient,
            "discrete_score_at_tuned": tuned_score,
        },
        "grid_search": {
            "points": len(grid),
            "best": {k: float(x) for k, x in best.items()},
            "best_score": float(scores.min()),
            "scores": [{**p, "score": float(x)} for p, x in zip(grid, scores)],
            "discrete_gradient_evaluations": len(grid) * steps_per_run,
            "seconds": grid_time,
        },
        "score": f"discrete loss averaged over the {WINDOW} steps centred on T",
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "flow_tuning"}, indent=2))
    print("tuned:", tuned, "discrete score", tuned_score)


if __name__ == "__main__":
    main()
