"""Fidelity of the central flow on the digits MLP (issue: central and stable flows).

For each optimizer config and integration mode, runs discrete, central and stable side by
side from the same point (the initialization, or the discrete iterate after the config's
`run.warm_start` steps) and reports, over the EOS phase (from the discrete run's EOS onset
to the end):

- `distance_ratio`: max_t ‖w_central − w_discrete‖ / max_t ‖w_stable − w_discrete‖;
- `loss_rel_error`: median relative error of the central flow's predicted loss against a
  centred 9-step moving average of the discrete loss;
- `sharpness_error`: median |effective sharpness − 2| of the central flow;

and, before the discrete run's onset, the largest distances from the discrete run to the
central and stable flows (the drift that backward error analysis describes: `--set
central.modified=true --set stable.modified=true` adds its correction to both flows).

    python scripts/fidelity_report.py --config configs/gd-mlp-digits.toml --steps 600 \
        --mode adaptive euler4 [--set run.warm_start=130] [--set run.precision=float32]

Rows are optimizer steps after the warm start; `--steps` counts logged steps.
Writes benchmarks/results/fidelity-<config>[-warm<N>][-<precision>][-modified]-<mode>.json
(`-modified` where either flow is) and prints the same JSON.
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
from centralflows._experiment import (  # noqa: E402
    make_eig_config,
    make_flow_options,
    make_optimizer,
    make_problem,
)
from centralflows._regimes import classify  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def moving_average(x: np.ndarray, width: int = 9) -> np.ndarray:
    """Centred moving average; NaN where the window does not fit."""
    out = np.full_like(x, np.nan)
    half = width // 2
    kernel = np.ones(width) / width
    out[half : len(x) - half] = np.convolve(x, kernel, mode="valid")
    return out


def fidelity(run: cf.Run) -> dict:
    d, c, s = run["discrete"], run["central"], run["stable"]
    regime = classify(d["train_loss"], d["effective_hessian_eigs"][:, 0])
    onset = regime.step
    if onset is None:
        return {"discrete_regime": regime.kind, "note": "the discrete run never reached EOS"}
    phase = slice(onset, None)
    dist_c = run["distances"]["central-discrete"][phase]
    dist_s = run["distances"]["discrete-stable"][phase]
    before = lambda name: float(np.nanmax(run["distances"][name][: onset + 1]))
    smooth = moving_average(d["train_loss"])[phase]
    predicted = c["predicted_loss"][phase]
    ok = np.isfinite(smooth) & np.isfinite(predicted)
    sharp = c["effective_hessian_eigs"][phase, 0]
    return {
        "discrete_regime": regime.kind,
        "warm_start": int(run.attrs.get("warm_start", 0)),
        "discrete_eos_onset_row": onset,
        "central_eos_onset_time": float(c["eos_time"][-1]),
        "stable_eos_onset_time": float(s["eos_time"][-1]),
        "eos_phase_steps": int(len(dist_c)),
        "distance_ratio": float(np.nanmax(dist_c) / np.nanmax(dist_s)),
        "max_distance_central_discrete": float(np.nanmax(dist_c)),
        "max_distance_stable_discrete": float(np.nanmax(dist_s)),
        "final_distance_central_discrete": float(dist_c[-1]),
        "final_distance_stable_discrete": float(dist_s[-1]),
        "max_distance_central_discrete_before_onset": before("central-discrete"),
        "max_distance_stable_discrete_before_onset": before("discrete-stable"),
        "loss_rel_error": float(np.median(np.abs(predicted[ok] - smooth[ok]) / smooth[ok])),
        "sharpness_error": float(np.nanmedian(np.abs(sharp - 2))),
        "central_rhs_evals_per_unit": float(np.nanmean(c["rhs_evals"])),
        "stable_stop_time": float(s["stop_time"][-1]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gd-mlp-digits.toml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--mode", nargs="+", default=["adaptive", "euler4"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    results = {}
    for mode in args.mode:
        overrides = list(args.overrides) + [f"run.steps={args.steps}"]
        if mode.startswith("euler"):
            overrides += ["central.solver=euler", f"central.nsubsteps={int(mode[5:])}"]
        cfg = load_config(ROOT / args.config, overrides)
        jax.config.update("jax_enable_x64", cfg["run"]["precision"] == "float64")
        objective, w0 = make_problem(cfg)
        central, stable = make_flow_options(cfg)
        start = time.perf_counter()
        run = cf.run(
            objective,
            w0,
            make_optimizer(cfg["opt"]),
            steps=args.steps,
            processes=("discrete", "central", "stable"),
            eig=make_eig_config(cfg["eig"]),
            central=central,
            stable=stable,
            chunk=cfg["run"]["chunk"],
            warm_start=cfg["run"]["warm_start"],
        )
        report = {
            "config": args.config,
            "mode": mode,
            "steps": args.steps,
            "overrides": args.overrides,
            **fidelity(run),
            "wall_seconds": round(time.perf_counter() - start, 1),
        }
        results[mode] = report
        name = pathlib.Path(args.config).stem
        if cfg["run"]["warm_start"]:
            name += f"-warm{cfg['run']['warm_start']}"
        if cfg["run"]["precision"] != "float64":
            name += f"-{cfg['run']['precision']}"
        if cfg["central"]["modified"] or cfg["stable"]["modified"]:
            name += "-modified"
        text = json.dumps(report, indent=2)
        print(text, flush=True)
        (ROOT / f"benchmarks/results/fidelity-{name}-{mode}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
