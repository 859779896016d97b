"""Reverse mode through a long central flow on the digits MLP: peak memory and time.

Differentiates the training loss at time `--units` of the central flow from the
initialization (GD, η = `--lr`) with respect to η by `jax.grad`, and compares its time
with the forward solve's, both measured twice in this one process (the first call
compiles). Peak memory is the process's maximum resident set size (compilation
included), read after the forward solves and after the gradients. The result is
checked against a central finite difference of the same flow.

    python benchmarks/gradient_cost.py --units 300
Writes benchmarks/results/gradient_cost.json.
"""

import argparse
import json
import pathlib
import resource

import jax

jax.config.update("jax_enable_x64", True)

from _timing import timed  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._experiment import make_eig_config, make_flow_options, make_problem  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gd-mlp-digits.toml")
    parser.add_argument("--units", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    cfg = load_config(ROOT / args.config)
    objective, w0 = make_problem(cfg)
    options, _ = make_flow_options(cfg)
    eig = make_eig_config(cfg["eig"])

    def flow(lr):
        return cf.central_flow(objective, w0, cf.GD(lr), args.units, options=options, eig=eig)

    def final_loss(lr):
        return flow(lr).loss[-1]

    solution, forward_first = timed(flow, args.lr)
    _, forward = timed(flow, args.lr)
    rss_forward = peak_rss_gib()
    gradient = jax.grad(final_loss)
    _, grad_first = timed(gradient, args.lr)
    dloss, grad = timed(gradient, args.lr)
    rss_grad = peak_rss_gib()
    h = 1e-4 * args.lr
    finite_difference = (final_loss(args.lr + h) - final_loss(args.lr - h)) / (2 * h)
    result = {
        "config": args.config,
        "lr": args.lr,
        "units": args.units,
        "num_params": int(w0.size),
        "eos_onset": float(solution.eos_onset),
        "loss_at_T": float(solution.loss[-1]),
        "forward_first_s": forward_first,
        "forward_s": forward,
        "grad_first_s": grad_first,
        "grad_s": grad,
        "grad_over_forward": grad / forward,
        "peak_rss_after_forward_gib": rss_forward,
        "peak_rss_after_grad_gib": rss_grad,
        "dloss_dlr": float(dloss),
        "finite_difference": float(finite_difference),
        "relative_error": float(abs(dloss - finite_difference) / abs(finite_difference)),
    }
    out = ROOT / "benchmarks/results/gradient_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
