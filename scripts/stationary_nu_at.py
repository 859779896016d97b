"""Copy a central-flow run file with `central.stationary_nu` switched on, to log ν vs ν̄
from its last checkpoint on without paying the logging at every earlier step.

The logging (`stationary_nu_cosine`, `_distance`, `_residual`, `_sharpness`) costs a
solve of ν̄ and an eigensolve per sweep at every step, about ten times the flow's own
cost on the digits MLP at 24 tracked directions. It does not change the flow. So run the
flow without it, then continue a copy with it on for one step:

    centralflows run configs/rmsprop-mlp-digits-small.toml --runs central --steps 60 \\
        --set opt.beta2=0.9 --set eig.max_neigs=24 --out runs --name plain
    python scripts/stationary_nu_at.py runs/plain.h5 runs/nu60.h5
    centralflows run --resume runs/nu60.h5 --steps 61

(the runs of docs/ablations.md, "Does ν converge to ν̄?"). Row 61 of the copy holds the
four `stationary_nu_*` series; the rows before it are NaN. The copy's stored config and
central options say `stationary_nu = true`, so `--resume` accepts it.
"""

import argparse
import json
import shutil

import h5py

_NAMES = ("cosine", "distance", "residual", "sharpness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run file of `central` written without the logging")
    parser.add_argument("copy", help="the copy to write, to resume with the logging on")
    args = parser.parse_args()
    with h5py.File(args.run, "r") as file:
        config = json.loads(file.attrs["config"])
    if config["central"].get("stationary_nu"):
        raise SystemExit(f"{args.run} already logs ν vs ν̄")
    config["central"]["stationary_nu"] = True
    shutil.copy(args.run, args.copy)
    with h5py.File(args.copy, "r+") as file:
        file.attrs["config"] = json.dumps(config)
        options = file.attrs["central"]  # FlowOptions(...) as written by `cf.run`
        if "stationary_nu=False" in options:
            options = options.replace("stationary_nu=False", "stationary_nu=True")
        else:  # the repr leaves out fields at their defaults
            options = options.rstrip().removesuffix(")").rstrip() + ",\n  stationary_nu=True\n)"
        file.attrs["central"] = options
        template = file["central/sigma_trace"]  # one float per row
        for name in _NAMES:
            file.create_dataset(
                f"central/stationary_nu_{name}",
                shape=template.shape,
                maxshape=template.maxshape,
                dtype=template.dtype,
                fillvalue=float("nan"),
            )


if __name__ == "__main__":
    main()
