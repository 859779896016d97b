"""GD's convergence rates on the scalar factorisation ½(ab − y)², measured against the
closed forms of docs/problems.md, across the three regimes of the learning rate.

Left: the rate per step against ηy. Sub-critical (ηy < 1), the residual ab − y shrinks by
|1 − ηS∞| per step, S∞ the sharpness of the minimum GD reaches, against what the central
flow predicts (it ends at ηS = min(ηS_GF, 2), S_GF the gradient flow's limit);
super-critical, the distance to the period-2 orbit shrinks at the square root of the
orbit's larger two-step multiplier. Second: the effective sharpness of the limit, GD's
against gradient flow's and the central flow's (closed form, and solved at a few η).
Third: at ηy = 1 the loss falls as a power law, k L_k → y²/4 (y²/8 from a balanced
start). Fourth, super-critical: GD's mean loss on its orbit, (y² − 1/η²)/4, against the
central flow's predicted loss at rest, 2(y² − 1/η²)/9 (closed forms, and measured).

    python scripts/figures/factorisation_regimes.py   # under a minute on a CPU

Writes docs/figures/factorisation_regimes.png (`--out`; needs the `figures` extra).
"""

import argparse
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows._plot import _figure_class  # noqa: E402
from centralflows.problems import ScalarFactorisation  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROBLEM = ScalarFactorisation()  # y = 1, from (a, b) = (1.5, 0.5)
SUBCRITICAL = np.linspace(0.3, 0.98, 35)
SUPERCRITICAL = np.linspace(1.02, 1.22, 21)
CHUNK, CHUNKS = 10, 1000  # GD runs of 10,000 steps, the iterate kept every 10
FIT = (1e-11, 1e-5)  # the fitted range of distances: past the transient, above round-off
CRITICAL_STEPS = 100_000
CENTRAL = {"sub": ([0.5, 0.8, 0.9, 0.95], 80), "super": ([1.05, 1.1, 1.15, 1.2], 200)}
"""The η at which the central flow is solved, and its horizon: long enough to come to rest."""


def _rate(distances: np.ndarray, steps: np.ndarray) -> float:
    """The per-step rate of a linearly converging sequence: the slope of log distance
    against the step, fitted where the distance lies in `FIT`."""
    keep = (distances > FIT[0]) & (distances < FIT[1])
    if keep.sum() < 3:
        return float("nan")
    return float(np.exp(np.polyfit(steps[keep], np.log(distances[keep]), 1)[0]))


def _trajectories(lrs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GD from `PROBLEM.w0` at each η of `lrs` (vmapped): the losses at every step, and
    a and b every `CHUNK` steps."""
    lrs = jnp.asarray(lrs)
    chunk = jax.jit(
        jax.vmap(lambda lr, w: cf.discrete_run(PROBLEM, w, cf.GD(lr), CHUNK)),
    )
    w = jax.tree.map(lambda x: jnp.full(lrs.shape, x), PROBLEM.w0)
    losses, a, b = [], [w["a"]], [w["b"]]
    for _ in range(CHUNKS):
        run = chunk(lrs, w)
        w = run.w
        losses.append(run.losses[:, :-1])
        a.append(w["a"])
        b.append(w["b"])
    return np.concatenate(losses, axis=1), np.stack(a, 1), np.stack(b, 1)


def _central_flows(lrs: list[float], t1: float) -> tuple[np.ndarray, np.ndarray]:
    """The central flow of GD from `PROBLEM.w0` at each η of `lrs`: its effective
    sharpness and predicted loss at `t1`."""
    solutions = [cf.central_flow(PROBLEM, PROBLEM.w0, cf.GD(lr), t1) for lr in lrs]
    sharpness = np.array([float(sol.effective_sharpness[-1]) for sol in solutions])
    return sharpness, np.array([float(sol.predicted_loss[-1]) for sol in solutions])


def measure() -> dict[str, np.ndarray]:
    """The measured and predicted rates and limit sharpnesses, the critical losses, and
    the central flows' ends."""
    steps = np.arange(CHUNKS + 1) * CHUNK
    losses, a, b = _trajectories(SUBCRITICAL)
    limit = a[:, -1] ** 2 + b[:, -1] ** 2  # the sharpness a² + b² of the minimum reached
    residuals = np.sqrt(2 * losses)
    sub_measured = [_rate(r, np.arange(r.size)) for r in residuals]
    flow_limit = PROBLEM.sharpness_at_minimum(PROBLEM.a0**2 - PROBLEM.b0**2)
    losses, a, b = _trajectories(SUPERCRITICAL)
    super_mean_loss = losses[:, -2:].mean(axis=1)
    super_measured = []
    for lr, a_lr, b_lr in zip(SUPERCRITICAL, a, b):
        x1, x2 = PROBLEM.period_two_orbit(lr)
        distance = np.minimum(np.hypot(a_lr - x1, b_lr - x1), np.hypot(a_lr - x2, b_lr - x2))
        super_measured.append(_rate(distance, steps))
    starts = {"a": jnp.array([PROBLEM.a0, 0.5]), "b": jnp.array([PROBLEM.b0, 0.5])}
    critical = jax.vmap(
        lambda w: cf.discrete_losses(PROBLEM, w, cf.GD(PROBLEM.critical_lr), CRITICAL_STEPS)
    )(starts)
    return {
        "sub_measured": np.array(sub_measured),
        "sub_predicted": np.abs(1 - SUBCRITICAL * limit),
        "sub_central": np.abs(1 - np.minimum(SUBCRITICAL * flow_limit, 2)),
        "sub_limit": SUBCRITICAL * limit,
        "sub_flow_limit": SUBCRITICAL * flow_limit,
        "super_measured": np.array(super_measured),
        "super_mean_loss": super_mean_loss,
        "critical": np.asarray(critical),
        "central_sub_sharpness": _central_flows(*CENTRAL["sub"])[0],
        "central_super_loss": _central_flows(*CENTRAL["super"])[1],
    }


def plot_solved(ax, regime: str, values: np.ndarray, y: float) -> None:
    """The central flow solved at the learning rates of `CENTRAL[regime]`, against ηy."""
    lrs, _ = CENTRAL[regime]
    ax.plot(np.array(lrs) * y, values, "C2s", mfc="none", label="central flow, solved")


def draw(result: dict[str, np.ndarray]):
    """The three panels."""
    figure = _figure_class()(figsize=(12, 8.4), layout="constrained")
    (rates, sharpness), (critical, averaged) = figure.subplots(2, 2)
    y = PROBLEM.y
    fine = np.linspace(SUPERCRITICAL[0] - 0.02, SUPERCRITICAL[-1], 200)
    along, across = np.array([PROBLEM.period_two_multipliers(lr) for lr in fine]).T
    rates.plot(SUBCRITICAL * y, result["sub_predicted"], "C0-", label="|1 − ηS∞|, S∞ GD's limit")
    rates.plot(SUBCRITICAL * y, result["sub_central"], "C2--", label="|1 − ηS|, central flow's")
    rates.plot(SUBCRITICAL * y, result["sub_measured"], "C0o", ms=4, label="GD, measured")
    rates.plot(fine * y, np.sqrt(np.maximum(abs(along), abs(across))), "C1-", label="period 2")
    rates.plot(fine * y, np.sqrt(abs(along)), "C1:", lw=1, label="√|μ∥| (along a = b)")
    rates.plot(fine * y, np.sqrt(abs(across)), "C1-.", lw=1, label="√|μ⊥| (across)")
    rates.plot(SUPERCRITICAL * y, result["super_measured"], "C1o", ms=4, label="GD, measured")
    for ax in (rates, sharpness):
        ax.axvline(1, color="k", lw=0.8)
        ax.axvspan(SUBCRITICAL[0] * y, 1, color="C0", alpha=0.05)
        ax.axvspan(1, SUPERCRITICAL[-1] * y, color="C1", alpha=0.05)
        ax.set_xlim(SUBCRITICAL[0] * y, SUPERCRITICAL[-1] * y)
        ax.set_xlabel("ηy = ηS_min/2  (1: critical)")
    rates.set_ylabel("convergence rate per step")
    rates.set_title("GD's rate: to a minimum (ηy < 1), to the period-2 orbit (ηy > 1)", fontsize=10)
    rates.legend(fontsize=7, loc="upper left")

    sharpness.plot(SUBCRITICAL * y, result["sub_flow_limit"], "C7-", label="gradient flow's")
    sharpness.plot(
        SUBCRITICAL * y,
        np.minimum(result["sub_flow_limit"], 2),
        "C2--",
        label="central flow's: min(ηS_GF, 2)",
    )
    plot_solved(sharpness, "sub", result["central_sub_sharpness"], y)
    sharpness.plot(SUBCRITICAL * y, result["sub_limit"], "C0o", ms=4, label="GD's")
    sharpness.plot(SUBCRITICAL * y, 2 * SUBCRITICAL * y, "k:", lw=1, label="ηS_min = 2ηy")
    sharpness.axhline(2, color="k", lw=0.8)
    sharpness.set_ylim(0.5, 3)
    sharpness.set_ylabel("ηS at the minimum reached")
    sharpness.set_title("sub-critical: effective sharpness of the limit", fontsize=10)
    sharpness.legend(fontsize=7)

    steps = np.arange(1, CRITICAL_STEPS + 1)
    unbalanced, balanced = result["critical"][:, 1:]
    critical.loglog(
        steps, steps * unbalanced, "C0-", label=f"GD from (a, b) = ({PROBLEM.a0}, {PROBLEM.b0})"
    )
    critical.loglog(steps, steps * balanced, "C1-", label="GD from (0.5, 0.5)")
    critical.axhline(y**2 / 4, color="C0", ls="--", lw=1, label="y²/4")
    critical.axhline(y**2 / 8, color="C1", ls="--", lw=1, label="y²/8")
    critical.set_xlabel("step k")
    critical.set_ylabel("k · L_k")
    critical.set_title("critical (ηy = 1): the loss falls as 1/k", fontsize=10)
    critical.set_ylim(0.05, 1)
    critical.legend(fontsize=7)

    dense = np.linspace(1, SUPERCRITICAL[-1], 100)
    excess = y**2 - 1 / dense**2
    averaged.plot(dense * y, excess / 4, "C1-", label="GD's orbit: (y² − 1/η²)/4")
    averaged.plot(SUPERCRITICAL * y, result["super_mean_loss"], "C1o", ms=4, label="GD, measured")
    averaged.plot(dense * y, 2 * excess / 9, "C2--", label="central flow: 2(y² − 1/η²)/9")
    plot_solved(averaged, "super", result["central_super_loss"], y)
    averaged.set_xlabel("ηy = ηS_min/2  (1: critical)")
    averaged.set_ylabel("time-averaged loss")
    averaged.set_title(
        "super-critical: the central flow predicts 8/9 of GD's mean loss", fontsize=10
    )
    averaged.legend(fontsize=7)
    return figure


def _report(regime: str, measured: np.ndarray, predicted: np.ndarray) -> None:
    """Print how many rates of `regime` were measured and their largest relative error."""
    ok = np.isfinite(measured)
    error = np.max(np.abs(measured[ok] / predicted[ok] - 1))
    print(f"{regime}: {ok.sum()} of {ok.size} rates measured, largest relative error {error:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", metavar="FILE", help="the image (default: docs/figures/...)")
    args = parser.parse_args()
    _figure_class()  # before any computation: without matplotlib, cf.plot's message
    result = measure()
    predicted = np.array([PROBLEM.period_two_rate(lr) for lr in SUPERCRITICAL])
    _report("sub-critical", result["sub_measured"], result["sub_predicted"])
    _report("super-critical", result["super_measured"], predicted)
    k = CRITICAL_STEPS
    print(
        f"critical: k L_k at k = {k}: {k * result['critical'][0, -1]:.4f} (y²/4 = "
        f"{PROBLEM.y**2 / 4}), balanced {k * result['critical'][1, -1]:.4f} (y²/8)"
    )
    for lr, value in zip(CENTRAL["sub"][0], result["central_sub_sharpness"]):
        print(f"central flow at η = {lr}: effective sharpness {value:.6f} at the end")
    for lr, value in zip(CENTRAL["super"][0], result["central_super_loss"]):
        closed = 2 * (PROBLEM.y**2 - 1 / lr**2) / 9
        print(
            f"central flow at η = {lr}: predicted loss {value:.6f} (2(y² − 1/η²)/9 = {closed:.6f})"
        )
    out = pathlib.Path(args.out or ROOT / "docs" / "figures" / "factorisation_regimes.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(result).savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
