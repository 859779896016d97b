"""The flows' solver and eigen tolerance: what each setting costs and how far it moves
the central flow, on the digits GD central flow from initialisation.

Each variant `SOLVER,RTOL,ATOL,EIG_TOL[,TAU]` (TAU: the config's `central.tau` unless
given) runs the central flow alone for `--steps` units, after `--warm-start` unlogged GD
steps (eigen tracking every unit), and reports its solver steps, right-hand-side
evaluations, LOBPCG products, end values, and the largest distance of its parameters
(stored every `--save-every` units) from those of the first variant, the reference:

    python benchmarks/flow_defaults.py --steps 300 \
        Tsit5,1e-6,1e-8,1e-5 Tsit5,1e-4,1e-6,1e-5 Tsit5,1e-6,1e-8,1e-3 Bosh3,1e-6,1e-8,1e-3

    python benchmarks/flow_defaults.py --steps 200 --warm-start 130 --save-every 1 \
        --out benchmarks/results/flow_tau.json \
        Bosh3,1e-6,1e-8,1e-3,0.0625 Bosh3,1e-6,1e-8,1e-3,0.25 Bosh3,1e-5,1e-7,1e-3,0.5

Writes benchmarks/results/flow_defaults.json (or `--out`).
"""

import argparse
import json
import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import numpy as np  # noqa: E402
from _timing import timed  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._experiment import make_flow_options, make_optimizer, make_problem  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gd-mlp-digits.toml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warm-start", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=10, help="units between stored w")
    parser.add_argument("--out", default="benchmarks/results/flow_defaults.json")
    parser.add_argument(
        "variants", nargs="+", help="SOLVER,RTOL,ATOL,EIG_TOL[,TAU]; the first is the reference"
    )
    args = parser.parse_args()
    cfg = load_config(ROOT / args.config)
    objective, w0 = make_problem(cfg)
    optimizer = make_optimizer(cfg["opt"])
    base, _ = make_flow_options(cfg)
    results, paths = {}, {}
    for variant in args.variants:
        solver, rtol, atol, eig_tol, *tau = variant.split(",")
        options = cf.FlowOptions(
            getattr(dfx, solver)(),
            dfx.PIDController(rtol=float(rtol), atol=float(atol)),
            tau=float(tau[0]) if tau else base.tau,
            sdcp_threshold=base.sdcp_threshold,
            max_seff=base.max_seff,
            guard=base.guard,
        )
        run = lambda: cf.run(
            objective,
            w0,
            optimizer,
            steps=args.steps,
            processes=("central",),
            central=options,
            eig=cf.EigConfig(tol=float(eig_tol)),
            save_w_every=args.save_every,
            warm_start=args.warm_start,
            progress=False,
        )
        result, seconds = timed(run)
        central = result["central"]
        paths[variant] = np.asarray(central["w"])
        results[variant] = {
            "wall_s (compilation included)": seconds,
            "solver_steps": float(np.nansum(central["solver_steps"])),
            "rejected_steps": float(np.nansum(central["rejected_steps"])),
            "rhs_evals": float(np.nansum(central["rhs_evals"])),
            "eig_hvps": float(np.nansum(central["eig_hvps"])),
            "eos_time": float(np.asarray(central["eos_time"])[-1]),
            "predicted_loss_end": float(np.asarray(central["predicted_loss"])[-1]),
            "top_effective_eigs_end": np.asarray(central["effective_hessian_eigs"])[
                -1, :2
            ].tolist(),
        }
        print(variant, json.dumps(results[variant]), flush=True)
    reference = paths[args.variants[0]]
    for variant in args.variants:
        distances = np.linalg.norm(paths[variant] - reference, axis=1)
        results[variant]["max_distance_to_reference"] = float(np.nanmax(distances))
    out = {
        "command": " ".join(["benchmarks/flow_defaults.py", *sys.argv[1:]]),
        "reference_path_length": float(np.linalg.norm(reference[-1] - reference[0])),
        "variants": results,
    }
    text = json.dumps(out, indent=1)
    print(text)
    (ROOT / args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
