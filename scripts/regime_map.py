"""A regime map: where the discrete optimizer is stable, at the edge of stability or diverges.

Sweeps the learning rate η (and β₂ for RMSProp and Scalar RMSProp) on a config's problem:
every discrete run of the grid is one compiled program (`cf.regime_map`), classified as
stable, edge of stability, unsettled or diverged, with the step where that began. At a
few η (at the config's β₂) the central flow is solved for what it predicts: its EOS
onset time, against the discrete runs' onset steps; its predicted (time-averaged) loss
at T, against the discrete loss at T and its mean over the last steps; and, at some of
them, the derivative of that loss in η by `jax.grad` through `cf.central_flow`, drawn as
tangents.

    python scripts/regime_map.py --small      # GD on the toy of docs/problems.md
    python scripts/regime_map.py              # GD on the digits MLP (configs/gd-mlp-digits.toml)
    python scripts/regime_map.py --config configs/rmsprop-mlp-digits.toml   # a map over (η, β₂)
    python scripts/regime_map.py --small --redraw   # draw the JSON file again, computing nothing

Writes benchmarks/results/regime-map[-small].json (with the command; `--results`) and
docs/figures/regime-map[-small].png (`--out`; needs the `figures` extra). The runs start
at the config's initial parameters (its `run.warm_start` is not applied).
"""

import argparse
import dataclasses
import json
import pathlib
import shlex
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import centralflows as cf
from centralflows._config import load_config
from centralflows._experiment import (
    make_eig_config,
    make_flow_options,
    make_optimizer,
    make_problem,
)
from centralflows._plot import _figure_class

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "figures"))

MODES = {
    # The toy L = ½ (s0 − c y) x² + b y (configs/gd-toy.toml): 2 parameters, so the cost
    # is compiling; η a(y0) = 2 at η = 0.513, and the onset comes within 300 steps from
    # η = 0.40 on. GD cycles through catapults there, so its loss is averaged over the
    # second half of the run.
    "small": {
        "config": "configs/gd-toy.toml",
        "lr": (0.3, 0.7, 41),
        "flow": 5,
        "grad": 3,
        "window": 0.5,
    },
    "full": {
        "config": "configs/gd-mlp-digits.toml",
        "lr": (0.1, 2.0, 39),
        "flow": 5,
        "grad": 3,
        "window": 0.1,
    },
}
BETA2 = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="the toy: minutes on a CPU")
    parser.add_argument("--config", help="the config (default: by mode, see above)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides"
    )
    parser.add_argument("--steps", type=int, help="T (default: the config's run.steps)")
    parser.add_argument(
        "--lr", type=float, nargs=3, metavar=("MIN", "MAX", "POINTS"), help="the η grid"
    )
    parser.add_argument("--beta2", type=float, nargs="+", help=f"the β₂ grid (default {BETA2})")
    parser.add_argument("--flow-points", type=int, help="η where the central flow is solved")
    parser.add_argument("--grad-points", type=int, help="of those, where jax.grad is taken")
    parser.add_argument(
        "--window",
        type=float,
        help="average the discrete loss over this fraction of the steps, the last ones "
        "(default 0.5 small, 0.1 full)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="grid points vmapped together (default 1)"
    )
    parser.add_argument("--results", help="the JSON file (default benchmarks/results/...)")
    parser.add_argument("--out", metavar="FILE", help="the figure (default docs/figures/...)")
    parser.add_argument("--redraw", action="store_true", help="draw --results again, only")
    return parser.parse_args()


def overlay_points(lrs, count: int, grads: int) -> tuple[list[float], list[bool]]:
    """`count` η spread over the interior of the grid, and which `grads` of them get a
    derivative (spread among them)."""
    inner = np.linspace(lrs[0], lrs[-1], count + 2)[1:-1]
    chosen = set(np.round(np.linspace(0, count - 1, grads)).astype(int)) if grads else set()
    return [float(x) for x in inner], [i in chosen for i in range(count)]


def compute(args: argparse.Namespace, mode: dict, command: str) -> dict:
    """Runs the map and the central flows; the results as the JSON file holds them."""
    config = args.config or mode["config"]
    cfg = load_config(ROOT / config, args.overrides)
    jax.config.update("jax_enable_x64", cfg["run"]["precision"] == "float64")
    objective, w0 = make_problem(cfg)
    optimizer = make_optimizer(cfg["opt"])
    eig = make_eig_config(cfg["eig"])
    options, _ = make_flow_options(cfg)
    steps = args.steps or cfg["run"]["steps"]
    low, high, count = args.lr or mode["lr"]
    grid = {"lr": np.linspace(low, high, int(count))}
    if cfg["opt"]["name"] != "gd":  # with the config's β₂, where the flows are solved
        grid["beta2"] = np.unique([*(args.beta2 or BETA2), cfg["opt"]["beta2"]])
    flows = mode["flow"] if args.flow_points is None else args.flow_points
    grads = mode["grad"] if args.grad_points is None else args.grad_points
    result = {
        "command": command,
        "config": config,
        "overrides": args.overrides,
        "optimizer": repr(optimizer),
        "steps": steps,
        "grid": {name: values.tolist() for name, values in grid.items()},
        "seconds": {},
    }

    start = time.perf_counter()
    # The top eigenvalue alone decides the regime: track one eigenpair.
    single = dataclasses.replace(eig, initial_neigs=1, max_neigs=1)
    found = cf.regime_map(
        objective, w0, optimizer, steps, grid=grid, eig=single, batch_size=args.batch_size
    )
    result["seconds"]["discrete"] = time.perf_counter() - start
    window = max(1, int((args.window or mode["window"]) * steps))
    with np.errstate(invalid="ignore"):
        mean = np.mean(found.losses[..., -window:], axis=-1)
    finite = lambda a: [None if not np.isfinite(x) else float(x) for x in np.ravel(a)]
    result["discrete"] = {
        "shape": list(found.regime.shape),
        "regime": found.kinds.ravel().tolist(),
        "onset": found.onset.ravel().tolist(),
        "hover": finite(found.hover),
        "loss_at_T": finite(found.final_loss),
        "mean_loss_last": finite(mean),
        "window": window,
    }
    result["counts"] = {str(k): int(np.sum(found.kinds == k)) for k in np.unique(found.kinds)}
    took = result["seconds"]["discrete"]
    print(f"{found.regime.size} discrete runs: {result['counts']} ({took:.1f} s)", flush=True)

    def flow(lr):
        at = eqx.tree_at(lambda o: o.lr, optimizer, lr)
        solution = cf.central_flow(objective, w0, at, steps, options=options, eig=eig)
        return solution.predicted_loss[-1], solution.eos_onset

    lrs, with_grad = overlay_points(grid["lr"], flows, grads)
    central = {"lr": [], "predicted_loss": [], "eos_onset": [], "dloss_dlr": [], "seconds": []}
    value_and_grad = jax.value_and_grad(flow, has_aux=True)
    start = time.perf_counter()
    for lr, differentiate in zip(lrs, with_grad):
        begin = time.perf_counter()
        if differentiate:
            (value, onset), slope = value_and_grad(jnp.asarray(lr, w0.dtype))
            slope = float(slope)
        else:
            value, onset = flow(lr)
            slope = None
        central["lr"].append(lr)
        central["predicted_loss"].append(float(value))
        central["eos_onset"].append(None if not np.isfinite(onset) else float(onset))
        central["dloss_dlr"].append(slope)
        central["seconds"].append(time.perf_counter() - begin)
        derivative = "" if slope is None else f", dL/dη {slope:.6g}"
        print(
            f"  central flow at η = {lr:.4g}: predicted loss {float(value):.6g}, onset "
            f"{float(onset):.4g}{derivative} ({central['seconds'][-1]:.1f} s)",
            flush=True,
        )
    result["seconds"]["central"] = time.perf_counter() - start
    if "beta2" in grid:
        central["beta2"] = float(cfg["opt"]["beta2"])
    result["central"] = central
    return result


def main() -> None:
    args = parse_args()
    _figure_class()  # before any computation: without matplotlib, cf.plot's message
    mode = MODES["small" if args.small else "full"]
    suffix = "-small" if args.small else ""
    results = pathlib.Path(args.results or ROOT / f"benchmarks/results/regime-map{suffix}.json")
    figure = pathlib.Path(args.out or ROOT / f"docs/figures/regime-map{suffix}.png")
    if args.redraw:
        result = json.loads(results.read_text())
    else:
        start = time.perf_counter()
        command = shlex.join(["python", "scripts/regime_map.py", *sys.argv[1:]])
        result = compute(args, mode, command)
        result["seconds"]["total"] = time.perf_counter() - start
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{results} ({result['seconds']['total']:.0f} s)")
    import _regime_map

    figure.parent.mkdir(parents=True, exist_ok=True)
    _regime_map.draw(result).savefig(figure, dpi=110)
    print(figure)


if __name__ == "__main__":
    main()
