"""Classify a logged trajectory: stable, edge of stability, or diverged."""

import warnings
from typing import Literal, NamedTuple

import numpy as np
from jaxtyping import Bool, Float, Int


class SolverError(RuntimeError):
    """An eigensolver or SDCP solve missed its tolerance in a `strict` run."""


REGIMES = ("stable", "edge of stability", "unsettled", "diverged")
"""The regimes a run can be in; [`classify_runs`][] returns each run's as its index here."""


class Regime(NamedTuple):
    """The regime of one process, with the step where it began (`None` for stable).

    - `"stable"`: the effective sharpness stayed below 2.
    - `"edge of stability"`: it reached 2 (at `step`, the EOS onset) and hovered there.
    - `"unsettled"`: it reached 2 but has not (yet) settled near 2.
    - `"diverged"`: the loss ended non-finite or blown up (see [`classify`][]); `step`
      is where that last began.
    """

    kind: Literal["stable", "edge of stability", "unsettled", "diverged"]
    step: int | None
    hover: float | None  # median effective sharpness over the second half after onset


class Regimes(NamedTuple):
    """The regimes of a batch of runs (see [`classify_runs`][]).

    - `code`: each run's regime, an index into `REGIMES`.
    - `step`: where it began: the EOS onset (the first step with effective sharpness
      >= 2) for `"edge of stability"` and `"unsettled"`, the step where the loss last
      blew up for `"diverged"`, -1 for `"stable"`.
    - `hover`: the median effective sharpness over the second half of the finite values
      after the onset (NaN where there is no onset, or the run diverged).
    """

    code: Int[np.ndarray, "*batch"]
    step: Int[np.ndarray, "*batch"]
    hover: Float[np.ndarray, "*batch"]


def last_finite(values: np.ndarray) -> float:
    """The last finite entry of a series (NaN if there is none)."""
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else float("nan")


@np.errstate(invalid="ignore", over="ignore")
def blown_up(
    train_loss: Float[np.ndarray, "*batch t"], blowup: float
) -> Bool[np.ndarray, "*batch t"]:
    r"""Where a loss series is non-finite or blown up.

    A loss $L_t$ is blown up where it exceeds its initial value $L_0$ by more than
    $(\text{blowup} - 1)\, r_t$, with the scale $r_t = \max(|L_0|, L_0 - \min_{s \le t}
    L_s)$: for a nonnegative loss that is $L_t > \text{blowup} \cdot L_0$; a loss that
    starts near zero, or below it (a loss unbounded below, such as the toy's), is
    measured against how far it has come down.

    **Arguments:**

    - `train_loss`: loss series along the last axis, starting at step 0.
    - `blowup`: the growth factor (> 1).

    **Returns:** a boolean array shaped like `train_loss`.
    """
    initial = train_loss[..., :1]
    scale = np.maximum(np.abs(initial), initial - np.fmin.accumulate(train_loss, axis=-1))
    return ~np.isfinite(train_loss) | (train_loss - initial > (blowup - 1) * scale)


def classify_runs(
    train_loss: Float[np.ndarray, "*batch t"],
    sharpness: Float[np.ndarray, "*batch t"],
    *,
    blowup: float = 10.0,
    band: float = 0.1,
) -> Regimes:
    """The regimes of runs from their loss and top effective eigenvalue series.

    A run has diverged if its loss is blown up (see [`blown_up`][]) at its last step; a
    spike that comes back down, such as a catapult, is not divergence. Otherwise it is
    stable if its effective sharpness never reached 2, at the edge of stability if the
    median over the second half after it did is within `2 * band` of 2, and unsettled
    if not.

    **Arguments:**

    - `train_loss`: `(*batch, t)` losses at steps 0 to t - 1 (all of them run).
    - `sharpness`: `(*batch, t)` top effective eigenvalues (NaN where not computed).
    - `blowup`: loss growth factor counted as divergence (> 1).
    - `band`: relative half-width around 2 counted as hovering.

    **Returns:** [`Regimes`][] shaped like the batch.
    """
    steps = np.arange(train_loss.shape[-1])
    bad = blown_up(train_loss, blowup)
    # The first step of the last stretch of blown-up losses (t where the last is fine).
    fine = np.where(~bad, steps, -1)
    diverged_at = np.max(fine, axis=-1) + 1
    diverged = bad[..., -1]
    above = sharpness >= 2
    reached = np.any(above, axis=-1)
    onset = np.argmax(above, axis=-1)
    after = (steps >= onset[..., None]) & np.isfinite(sharpness) & reached[..., None]
    rank = np.cumsum(after, axis=-1) - 1
    late = after & (rank >= np.sum(after, axis=-1, keepdims=True) // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no onset
        hover = np.nanmedian(np.where(late, sharpness, np.nan), axis=-1)
    settled = np.abs(hover - 2) <= 2 * band
    code = np.select(
        [diverged, ~reached, settled],
        [REGIMES.index("diverged"), REGIMES.index("stable"), REGIMES.index("edge of stability")],
        REGIMES.index("unsettled"),
    )
    step = np.select([diverged, reached], [diverged_at, onset], -1)
    return Regimes(code, step, np.where(diverged | ~reached, np.nan, hover))


def classify(
    train_loss: Float[np.ndarray, " t"],
    sharpness: Float[np.ndarray, " t"],
    *,
    blowup: float = 10.0,
    band: float = 0.1,
) -> Regime:
    """The regime of a run from its loss and top effective eigenvalue series: one run of
    [`classify_runs`][], whose rule it follows, read from a run file's series.

    **Arguments:**

    - `train_loss`: the logged loss (NaN rows, not yet run, are ignored at the end).
    - `sharpness`: the top effective eigenvalue (NaN where not computed).
    - `blowup`: loss growth factor counted as divergence (> 1).
    - `band`: relative half-width around 2 counted as hovering.

    **Returns:** a [`Regime`][].
    """
    done = np.flatnonzero(~np.isnan(train_loss))
    rows = done[-1] + 1 if done.size else 0
    if rows == 0:
        return Regime("stable", None, None)
    regimes = classify_runs(
        train_loss[None, :rows], sharpness[None, :rows], blowup=blowup, band=band
    )
    kind = REGIMES[int(regimes.code[0])]
    step = int(regimes.step[0]) if kind != "stable" else None
    hover = float(regimes.hover[0]) if kind in ("edge of stability", "unsettled") else None
    return Regime(kind, step, hover)


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
