"""Why differentiate the central flow: loss at time T against the learning rate.

On the default digits MLP (GD from the initialization), for a grid of η:

- the discrete run's loss at step T and its finite-difference slope between neighbouring
  η on a fine grid: at the edge of stability the discrete trajectory is chaotic, so the
  slope is noise;
- the central flow's predicted loss at T (its prediction of the discrete loss's time
  average) on a coarse grid, and its derivative dL/dη by `jax.grad` at a few η, drawn
  as tangents and checked against central differences of the flow (h = 1e-4 η).

    python scripts/loss_vs_lr.py [--steps 200] [--set data.n=200 ...]
Writes benchmarks/results/loss-vs-lr.json (after each phase, so a crash keeps what was measured) and
docs/figures/loss-vs-lr.png (needs the `figures` extra).
"""

import argparse
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._experiment import make_eig_config, make_flow_options, make_problem  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gd-mlp-digits.toml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr-min", type=float, default=0.3)
    parser.add_argument("--lr-max", type=float, default=0.9)
    parser.add_argument("--flow-points", type=int, default=7)
    parser.add_argument("--grad-points", type=int, default=3)
    parser.add_argument("--discrete-points", type=int, default=351)
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the phases benchmarks/results/loss-vs-lr.json already has",
    )
    args = parser.parse_args()
    cfg = load_config(ROOT / args.config, args.overrides)
    objective, w0 = make_problem(cfg)
    options, _ = make_flow_options(cfg)
    eig = make_eig_config(cfg["eig"])
    T = args.steps

    settings = {k: v for k, v in vars(args).items() if k != "reuse"}
    out = ROOT / "benchmarks/results/loss-vs-lr.json"
    result = {"settings": settings, "T": T, "seconds": {}}
    if args.reuse and out.is_file():
        previous = json.loads(out.read_text())
        if previous.get("settings") != settings:
            raise SystemExit(f"--reuse: {out} was written with other settings")
        result = previous

    def record(**entries):
        result.update(entries)
        out.write_text(json.dumps(result, indent=2) + "\n")

    if "discrete" not in result:
        start = time.perf_counter()
        fine = np.linspace(args.lr_min, args.lr_max, args.discrete_points)
        discrete_loss = np.array(
            [float(cf.discrete_losses(objective, w0, cf.GD(lr), T)[-1]) for lr in fine]
        )
        discrete_slope = np.diff(discrete_loss) / np.diff(fine)
        result["seconds"]["discrete"] = time.perf_counter() - start
        record(
            discrete={"lr": fine.tolist(), "loss": discrete_loss.tolist()},
            discrete_slope_std=float(np.std(discrete_slope)),
            discrete_slope_range=[float(discrete_slope.min()), float(discrete_slope.max())],
        )

    def predicted_loss(lr):
        solution = cf.central_flow(objective, w0, cf.GD(lr), T, options=options, eig=eig)
        print(f"  η = {float(jax.lax.stop_gradient(lr)):.4g}: flow solved", flush=True)
        return solution.predicted_loss[-1], solution.eos_onset

    if "central" not in result:
        start = time.perf_counter()
        coarse = np.linspace(args.lr_min, args.lr_max, args.flow_points)
        flow = [predicted_loss(lr) for lr in coarse]
        result["seconds"]["central"] = time.perf_counter() - start
        print(f"central flow at {len(coarse)} η: {result['seconds']['central']:.0f} s", flush=True)
        record(
            central={"lr": coarse.tolist(), "predicted_loss": [float(v) for v, _ in flow]},
            central_eos_onset=[float(onset) for _, onset in flow],
        )

    # jax.grad at a few η, each checked against a central difference of the flow;
    # recorded point by point.
    tangent_at = np.linspace(args.lr_min, args.lr_max, args.grad_points + 2)[1:-1]
    gradient = jax.grad(lambda lr: predicted_loss(lr)[0])
    grad = result.get("grad", {"lr": [], "dloss_dlr": [], "central_difference": []})
    for lr in tangent_at[len(grad["lr"]) :]:
        start = time.perf_counter()
        slope = float(gradient(lr))
        h = 1e-4 * lr
        above, below = (float(predicted_loss(lr + sign * h)[0]) for sign in (1, -1))
        grad["lr"].append(float(lr))
        grad["dloss_dlr"].append(slope)
        grad["central_difference"].append((above - below) / (2 * h))
        grad["relative_error"] = [
            abs(g - d) / abs(d) for g, d in zip(grad["dloss_dlr"], grad["central_difference"])
        ]
        result["seconds"][f"grad_and_check_{lr:.4g}"] = time.perf_counter() - start
        print(
            f"  dL/dη at η = {lr:.4g}: {slope:.6g} (FD {grad['central_difference'][-1]:.6g})",
            flush=True,
        )
        record(grad=grad)
    plot(result, ROOT / "docs/figures/loss-vs-lr.png")


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d, c, g, T = result["discrete"], result["central"], result["grad"], result["T"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    top.plot(d["lr"], d["loss"], ".", ms=2.5, color="tab:gray", label=f"GD: loss at step {T}")
    top.plot(
        c["lr"], c["predicted_loss"], "-", color="tab:blue", label="central flow: predicted loss"
    )
    width = 0.04 * (c["lr"][-1] - c["lr"][0])
    value_at = np.interp(g["lr"], c["lr"], c["predicted_loss"])
    for i, (lr, slope) in enumerate(zip(g["lr"], g["dloss_dlr"])):
        x = np.array([lr - width, lr + width])
        label = "jax.grad of the central flow" if i == 0 else None
        top.plot(x, value_at[i] + slope * (x - lr), "-", lw=2.5, color="tab:red", label=label)
    onset = [lr for lr, t in zip(c["lr"], result["central_eos_onset"]) if np.isfinite(t)]
    if onset:
        top.axvline(min(onset), color="k", lw=0.8, ls=":", label=f"EOS reached before step {T}")
    top.set_ylabel(f"training loss at step {T}")
    top.legend(fontsize=8)
    slope_lr = 0.5 * (np.array(d["lr"][1:]) + np.array(d["lr"][:-1]))
    bottom.plot(
        slope_lr,
        np.diff(d["loss"]) / np.diff(d["lr"]),
        ".",
        ms=2.5,
        color="tab:gray",
        label="GD: finite-difference slope",
    )
    bottom.plot(g["lr"], g["dloss_dlr"], "o", color="tab:red", label="central flow: jax.grad")
    bottom.set_yscale("symlog", linthresh=0.1)
    bottom.set_xlabel("learning rate η")
    bottom.set_ylabel("d loss / d η")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)


if __name__ == "__main__":
    main()
