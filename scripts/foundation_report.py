"""Measure the foundation on the default config: EOS onset, hovering, eigen-tracking cost.

Runs discrete GD on `configs/gd-mlp-digits.toml`, classifies its regime, then, at several
steps of that run, compares the Hessian-vector products LOBPCG needs warm-started from the
previous step's eigenvectors against a cold (random) start. Prints JSON and writes it to
benchmarks/results/foundation.json.

    python scripts/foundation_report.py
"""

import json
import pathlib
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._eigen import preconditioner_diagonal, random_vectors  # noqa: E402
from centralflows._experiment import make_eig_config, make_optimizer, make_problem  # noqa: E402
from centralflows._regimes import classify  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    cfg = load_config(ROOT / "configs/gd-mlp-digits.toml")
    objective, w0 = make_problem(cfg)
    optimizer, eig = make_optimizer(cfg["opt"]), make_eig_config(cfg["eig"])
    steps = 500  # as measured in notes/results/foundation.json (the default job now runs 400)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = cf.run(
            objective,
            w0,
            optimizer,
            steps=steps,
            eig=eig,
            save_w_every=1,
            out=pathlib.Path(tmp) / "run.h5",
        )
        wall = time.perf_counter() - start
    series = run["discrete"]
    sharpness = series["effective_hessian_eigs"][:, 0]
    regime = classify(series["train_loss"], sharpness)
    after = sharpness[regime.step + 100 :] if regime.step is not None else sharpness[:0]

    track = eqx.filter_jit(
        lambda w, p, u: cf.track_eigs(lambda vs: objective.hvps(w, vs), p, u, eig)
    )
    comparisons = []
    for t in (50, 100, 200, 300, 400):
        w_prev, w = jnp.asarray(series["w"][t - 1]), jnp.asarray(series["w"][t])
        state = optimizer.init(w, objective.grad(w))
        p = preconditioner_diagonal(optimizer.preconditioner(state, w))
        k = int(np.sum(np.isfinite(series["effective_hessian_eigs"][t])))
        previous = track(w_prev, p, random_vectors(jr.key(t), k, w.size, w.dtype))
        warm = track(w, p, previous.vectors)
        cold = track(w, p, random_vectors(jr.key(t + 1), k, w.size, w.dtype))
        comparisons.append(
            {"step": t, "k": k, "warm_hvps": int(warm.hvps), "cold_hvps": int(cold.hvps)}
        )
    report = {
        "config": "configs/gd-mlp-digits.toml",
        "steps": steps,
        "wall_seconds_discrete_with_tracking_every_step": round(wall, 1),
        "regime": regime.kind,
        "eos_onset_step": regime.step,
        "median_sharpness_100_steps_after_onset_to_end": float(np.median(after)),
        "sharpness_range_100_steps_after_onset_to_end": [float(after.min()), float(after.max())],
        "mean_hvps_per_step": float(np.nanmean(series["eig_hvps"])),
        "warm_vs_cold": comparisons,
    }
    text = json.dumps(report, indent=2)
    print(text)
    (ROOT / "benchmarks/results/foundation.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
