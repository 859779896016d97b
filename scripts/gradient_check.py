"""Autodiff through the central flow against central finite differences of the same flow.

For each case (a problem, an optimizer, a time T, hyperparameter values on the stable
side, where the flow has not reached the edge of stability by T, and on the EOS side),
reverse-mode autodiff of (training loss at T, predicted loss at T) with respect to the
optimizer's hyperparameters (η for GD; η, β₂ and ε for the RMSProps) is compared with
central differences `(f(p + h) − f(p − h)) / 2h`, `h = 1e-4 p` (for β₂,
`h = 1e-4 (1 − β₂)`; `--rel-steps` for others, to see whether the differences have
converged), in float64 with tight solver tolerances. Errors are relative to the finite
difference with the first step (meaningless where the derivative vanishes: compare the
values).

Problems: the analytic toy of DESIGN §6 (GD and Scalar RMSProp) and the digits MLP of
the default config (GD from the gradient-flow point at t = 120, RMSProp from
`configs/rmsprop-mlp-digits.toml`'s 10 discrete warm-up steps).

    python scripts/gradient_check.py [--problems toy digits] [--gd-lrs ...] [--rmsprop-lrs ...]
                                     [--rel-steps 1e-4 3e-4 ...]
Writes benchmarks/results/gradient-check-<problems>.json (after every case) and prints a
Markdown table.
"""

import argparse
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._experiment import make_optimizer, make_problem  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONS = cf.FlowOptions(stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-11))
EIG = cf.EigConfig(tol=1e-9, max_iters=500)


def toy_loss(w, s0, c, b):
    """DESIGN §6: sharpness s0 − c y rises as y descends the slope b."""
    return 0.5 * (s0 - c * w["y"]) * w["x"] ** 2 + b * w["y"]


def toy_problem():
    loss = jax.tree_util.Partial(toy_loss, s0=1.0, c=1.0, b=0.1)
    return loss, {"x": jnp.array(0.0), "y": jnp.array(0.0)}, None


def digits_gd_problem():
    """The default config's MLP from its gradient flow at t = 120 (GD, η = 0.5)."""
    cfg = load_config(ROOT / "configs/gd-mlp-digits.toml")
    objective, w0 = make_problem(cfg)
    start = cf.stable_flow(objective, w0, cf.GD(0.5), 120, options=OPTIONS, eig=EIG).w[-1]
    return objective, start, None


def digits_rmsprop_problem():
    """The RMSProp config's MLP after its 10 discrete warm-up steps (where S_eff < 2)."""
    cfg = load_config(ROOT / "configs/rmsprop-mlp-digits.toml")
    objective, w0 = make_problem(cfg)
    warm = cf.discrete_run(objective, w0, make_optimizer(cfg["opt"]), 10)
    return objective, warm.w, warm.opt_state


def step(name: str, value: float, rel_step: float) -> float:
    return rel_step * (1 - value) if name == "beta2" else rel_step * value


def check(problem, make_optimizer, params: dict, t1: int, rel_steps) -> dict:
    """Autodiff and finite differences of (loss, predicted loss) at `t1`."""
    loss, w0, opt_state0 = problem
    names = list(params)

    def solve(*values):
        optimizer = make_optimizer(**dict(zip(names, values)))
        return cf.central_flow(
            loss, w0, optimizer, t1, options=OPTIONS, eig=EIG, opt_state0=opt_state0
        )

    def outcomes(*values):
        solution = solve(*values)
        return jnp.stack([solution.loss[-1], solution.predicted_loss[-1]])

    values = [float(params[n]) for n in names]
    start = time.perf_counter()
    onset = float(solve(*values).eos_onset)
    forward = time.perf_counter() - start
    start = time.perf_counter()
    # One forward replay, one backward pass per outcome (cheaper to trace than jacrev's
    # vmapped backward pass).
    _, pullback = jax.vjp(outcomes, *values)
    rows = [pullback(jnp.eye(2)[j]) for j in range(2)]
    jacobian = [np.array([rows[j][i] for j in range(2)]) for i in range(len(names))]
    autodiff_time = time.perf_counter() - start
    row = {
        "t1": t1,
        "params": params,
        "eos_onset": onset,
        "side": "EOS" if onset <= t1 else "stable",
        "forward_s": forward,
        "autodiff_s": autodiff_time,
        "derivatives": {},
    }
    for i, name in enumerate(names):
        ad = np.asarray(jacobian[i])
        fds = []
        for rel_step in rel_steps:
            h = step(name, values[i], rel_step)
            plus, minus = list(values), list(values)
            plus[i] += h
            minus[i] -= h
            fds.append((np.asarray(outcomes(*plus)) - np.asarray(outcomes(*minus))) / (2 * h))
        row["derivatives"][name] = {
            quantity: {
                "autodiff": float(ad[j]),
                "finite_difference": float(fds[0][j]),
                "relative_error": float(abs(ad[j] - fds[0][j]) / abs(fds[0][j])),
                "finite_differences": {f"{r:g}": float(fd[j]) for r, fd in zip(rel_steps, fds)},
            }
            for j, quantity in enumerate(("loss", "predicted_loss"))
        }
    print(json.dumps(row), flush=True)
    return row


def rmsprop(cls):
    return lambda lr, beta2, eps: cls(lr, beta2=beta2, eps=eps)


def cases(problems, gd_lrs, rmsprop_lrs):
    """(problem name, optimizer name, problem, optimizer factory, params, t1)."""
    if "toy" in problems:
        toy = toy_problem()
        for lr in (0.3, 0.5, 0.7):  # EOS onset at 189 (past T), 60, 29
            yield "toy", "GD", toy, cf.GD, {"lr": lr}, 100
        for lr in (0.03, 0.04, 0.05):  # onset past T, at 102, ...
            params = {"lr": lr, "beta2": 0.99, "eps": 1e-3}
            yield "toy", "ScalarRMSProp", toy, rmsprop(cf.ScalarRMSProp), params, 150
    if "digits" in problems:
        gd = digits_gd_problem()
        for lr in gd_lrs:
            yield "digits", "GD", gd, cf.GD, {"lr": lr}, 40
        rms = digits_rmsprop_problem()
        for lr in rmsprop_lrs:
            params = {"lr": lr, "beta2": 0.99, "eps": 1e-6}
            yield "digits", "RMSProp", rms, rmsprop(cf.RMSProp), params, 20


def table(rows) -> str:
    lines = [
        "| problem | optimizer | T | hyperparameters | side (onset) | w.r.t. | d loss/dp: autodiff (rel. error) | d predicted loss/dp: autodiff (rel. error) |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hyper = ", ".join(f"{k} = {v:g}" for k, v in r["params"].items())
        side = f"{r['side']} ({r['eos_onset']:.4g})"
        for name, d in r["derivatives"].items():
            cells = [
                f"{d[q]['autodiff']:.6g} ({d[q]['relative_error']:.1e})"
                for q in ("loss", "predicted_loss")
            ]
            lines.append(
                f"| {r['problem']} | {r['optimizer']} | {r['t1']} | {hyper} | {side} | {name} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["toy", "digits"])
    # The acceptance set (docs/gradients.md): both sides of the threshold, every flow
    # starting below it (GD η ≥ 0.6, RMSProp η ≥ 0.0023 start past it: not smooth there).
    parser.add_argument("--gd-lrs", type=float, nargs="*", default=[0.3, 0.4, 0.5, 0.52, 0.55])
    parser.add_argument(
        "--rmsprop-lrs",
        type=float,
        nargs="*",
        default=[0.0005, 0.001, 0.002, 0.0021, 0.0022],
    )
    parser.add_argument(
        "--rel-steps",
        type=float,
        nargs="+",
        default=[1e-4],
        help="relative finite-difference steps; errors are against the first",
    )
    parser.add_argument(
        "--out", help="JSON file (default benchmarks/results/gradient-check-<problems>.json)"
    )
    args = parser.parse_args()
    out = pathlib.Path(
        args.out
        or ROOT / "benchmarks" / "results" / f"gradient-check-{'-'.join(args.problems)}.json"
    )
    rows = []
    for problem, optimizer, data, factory, params, t1 in cases(
        args.problems, args.gd_lrs, args.rmsprop_lrs
    ):
        row = check(data, factory, params, t1, args.rel_steps)
        rows.append({"problem": problem, "optimizer": optimizer, **row})
        out.write_text(json.dumps(rows, indent=2) + "\n")  # after every case
    worst = max(d[q]["relative_error"] for r in rows for d in r["derivatives"].values() for q in d)
    print(table(rows))
    print(f"largest relative error: {worst:.2e} (target 1e-3)")


if __name__ == "__main__":
    main()
