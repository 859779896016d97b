"""Classify a logged trajectory: stable, edge of stability, or diverged."""

from typing import Literal, NamedTuple

import numpy as np
from jaxtyping import Float


class SolverError(RuntimeError):
    """An eigensolver or SDCP solve missed its tolerance in a `strict` run."""


class Regime(NamedTuple):
    """The regime of one process, with the step where it began (`None` for stable).

    - `"stable"`: the effective sharpness stayed below 2.
    - `"edge of stability"`: it reached 2 (at `step`, the EOS onset) and hovered there.
    - `"unsettled"`: it reached 2 but has not (yet) settled near 2.
    - `"diverged"`: the loss became non-finite or exceeded `blowup` times its initial value.
    """

    kind: Literal["stable", "edge of stability", "unsettled", "diverged"]
    step: int | None
    hover: float | None  # median effective sharpness over the second half after onset


def last_finite(values: np.ndarray) -> float:
    """The last finite entry of a series (NaN if there is none)."""
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else float("nan")


def classify(
    train_loss: Float[np.ndarray, " t"],
    sharpness: Float[np.ndarray, " t"],
    *,
    blowup: float = 10.0,
    band: float = 0.1,
) -> Regime:
    """The regime of a run from its loss and top effective eigenvalue series.

    **Arguments:**

    - `train_loss`: the logged loss (NaN rows, not yet run, are ignored at the end).
    - `sharpness`: the top effective eigenvalue (NaN where not computed).
    - `blowup`: loss growth factor counted as divergence.
    - `band`: relative half-width around 2 counted as hovering.

    **Returns:** a [`Regime`][].
    """
    done = np.flatnonzero(~np.isnan(train_loss))
    loss = train_loss[: done[-1] + 1] if done.size else train_loss[:0]
    bad = ~np.isfinite(loss) | (loss > blowup * loss[0]) if loss.size else np.zeros(0, bool)
    if bad.any():
        return Regime("diverged", int(np.argmax(bad)), None)
    s = sharpness[: loss.size]
    above = np.flatnonzero(s >= 2)
    if not above.size:
        return Regime("stable", None, None)
    onset = int(above[0])
    after = s[onset:]
    after = after[np.isfinite(after)]
    hover = float(np.median(after[after.size // 2 :]))
    kind = "edge of stability" if abs(hover - 2) <= 2 * band else "unsettled"
    return Regime(kind, onset, hover)


_FINAL = ("train_loss", "train_acc", "test_loss", "test_acc")


class ProcessSummary(NamedTuple):
    """What one process of a run did, as [`summarize`][] reads it from the run file.

    - `process`: the group name (`"discrete"`, `"central"`, ...).
    - `regime`: its [`Regime`][], with `regime.step` counted in rows of the file.
    - `onset`: the optimizer step of the EOS onset (warm-start steps included): a flow's
        recorded `eos_time` where it has one, else the first row whose effective sharpness
        reached 2; `None` if it never did (or diverged first).
    - `final`: the last finite `train_loss`, `train_acc`, `test_loss`, `test_acc` (those
        logged) and `sharpness`, the top effective eigenvalue (NaN where never finite).
    """

    process: str
    regime: Regime
    onset: float | None
    final: dict[str, float]


def summarize(run) -> list[ProcessSummary]:
    """The regime, EOS onset and final metrics of each process of a run.

    **Arguments:**

    - `run`: a [`centralflows.Run`][] (finished, in progress or killed: rows not yet
        written are ignored).

    **Returns:** a [`ProcessSummary`][] for each group that logs a `train_loss`, in the
    file's order.
    """
    offset = int(run.attrs.get("warm_start", 0))
    summaries = []
    for group in run:
        series = run[group]
        if "train_loss" not in series:
            continue
        sharpness = series["effective_hessian_eigs"][:, 0]
        regime = classify(series["train_loss"], sharpness)
        recorded = last_finite(series["eos_time"]) if "eos_time" in series else float("nan")
        if np.isfinite(recorded):
            onset = offset + recorded
        elif regime.kind in ("edge of stability", "unsettled"):
            onset = float(offset + regime.step)
        else:
            onset = None
        final = {name: last_finite(series[name]) for name in _FINAL if name in series}
        final["sharpness"] = last_finite(sharpness)
        summaries.append(ProcessSummary(group, regime, onset, final))
    return summaries
