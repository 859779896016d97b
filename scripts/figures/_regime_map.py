"""The regime map's figure, drawn from the results `scripts/regime_map.py` writes.

Panels, against the learning rate η: the regime of each discrete run (shaded) with the
step where it began, beside the central flow's EOS onset time; and the discrete loss at
T (and its mean over the last steps) beside the central flow's predicted loss at T, with
its derivative in η as tangents. With a β₂ axis, a first panel maps the regimes over
(η, β₂), and the others show the row at the β₂ where the central flow was solved.
"""

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

REGIMES = ("stable", "edge of stability", "unsettled", "diverged")
COLORS = {
    "stable": "tab:green",
    "edge of stability": "tab:blue",
    "unsettled": "tab:orange",
    "diverged": "tab:red",
}


def _array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around the points `x` (midpoints, extended at both ends)."""
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]])


def draw(result: dict) -> Figure:
    """The figure of a regime map's `result` (the JSON file's contents)."""
    lr = np.asarray(result["grid"]["lr"])
    discrete, central = result["discrete"], result["central"]
    shape = tuple(discrete["shape"])
    kinds = np.asarray(discrete["regime"]).reshape(shape)
    onset = np.asarray(discrete["onset"], float).reshape(shape)
    # Diverged runs' losses (where still finite) would set the scale: left out.
    kept = kinds != "diverged"
    loss_at_t = np.where(kept, _array(discrete["loss_at_T"]).reshape(shape), np.nan)
    mean_loss = np.where(kept, _array(discrete["mean_loss_last"]).reshape(shape), np.nan)
    beta2 = result["grid"].get("beta2")
    panels = 3 if beta2 is not None else 2
    figure = Figure(figsize=(7.5, 3.2 * panels), layout="constrained")
    axes = figure.subplots(panels, 1, sharex=True)
    if beta2 is not None:
        row = int(np.argmin(np.abs(np.asarray(beta2) - central["beta2"])))
        _draw_map(axes[0], lr, np.asarray(beta2), kinds, row)
        kinds, onset = kinds[:, row], onset[:, row]
        loss_at_t, mean_loss = loss_at_t[:, row], mean_loss[:, row]
        where = f" at β₂ = {beta2[row]:g}"
    else:
        where = ""
    top, bottom = axes[-2], axes[-1]
    steps = result["steps"]
    _shade(top, lr, kinds)
    _shade(bottom, lr, kinds)
    for kind in REGIMES:
        chosen = (kinds == kind) & (onset >= 0)
        marker = "x" if kind == "diverged" else "o"
        top.plot(lr[chosen], onset[chosen], marker, ls="", ms=4, color=COLORS[kind])
    c_lr = np.asarray(central["lr"])
    if c_lr.size:
        c_onset = _array(central["eos_onset"])
        top.plot(c_lr, c_onset, "kD-", ms=5, lw=1, label="central flow: EOS onset time")
    top.set_ylim(-0.04 * steps, 1.04 * steps)
    top.set_ylabel("step")
    top.set_title(f"discrete runs{where}: regime, and the step where it began", fontsize=9)
    handles = [Patch(color=COLORS[k], alpha=0.35, label=k) for k in REGIMES if k in kinds]
    top.legend(
        handles=[*handles, *top.get_legend_handles_labels()[0]], fontsize=7, loc="upper right"
    )

    window = discrete["window"]
    bottom.plot(
        lr, mean_loss, "-", color="0.45", lw=1.2, label=f"mean over the last {window} steps"
    )
    for kind in REGIMES:
        chosen = kinds == kind
        bottom.plot(lr[chosen], loss_at_t[chosen], ".", ms=5, color=COLORS[kind])
    bottom.plot([], [], ".", color="0.3", label=f"discrete loss at T = {steps}")
    c_loss = np.asarray(central["predicted_loss"], float)
    if c_lr.size:
        bottom.plot(c_lr, c_loss, "kD-", ms=5, lw=1, label="central flow: predicted loss at T")
    width = 0.04 * (lr[-1] - lr[0])
    slopes = _array(central["dloss_dlr"])
    for n, i in enumerate(np.flatnonzero(np.isfinite(slopes))):
        x = np.array([c_lr[i] - width, c_lr[i] + width])
        label = "dL/dη by jax.grad (tangent)" if n == 0 else None
        y = c_loss[i] + slopes[i] * (x - c_lr[i])
        bottom.plot(x, y, "-", lw=2.5, color="tab:purple", label=label)
    shown = np.concatenate([loss_at_t, mean_loss, c_loss])
    shown = shown[np.isfinite(shown)]
    low, high = shown.min(), shown.max()
    if low > 0 and high > 20 * low:
        bottom.set_yscale("log")
        bottom.set_ylim(low / 1.5, high * 1.5)
    else:
        bottom.set_ylim(low - 0.08 * (high - low), high + 0.08 * (high - low))
    bottom.set_ylabel(f"training loss at step {steps}")
    bottom.set_xlabel("learning rate η")
    bottom.legend(fontsize=7)
    figure.suptitle(f"{result['config']}: {result['optimizer']}", fontsize=9)
    return figure


def _shade(ax, lr: np.ndarray, kinds: np.ndarray) -> None:
    """Each grid point's cell along η, coloured by its regime."""
    edges = _edges(lr)
    for i, kind in enumerate(kinds):
        ax.axvspan(edges[i], edges[i + 1], color=COLORS[kind], alpha=0.18, lw=0)
    ax.set_xlim(edges[0], edges[-1])


def _draw_map(ax, lr: np.ndarray, beta2: np.ndarray, kinds: np.ndarray, row: int) -> None:
    """The regimes over (η, β₂), rows evenly spaced in β₂'s order, the flow's row marked."""
    codes = np.vectorize(REGIMES.index)(kinds).T
    cmap = ListedColormap([COLORS[k] for k in REGIMES])
    norm = BoundaryNorm(np.arange(len(REGIMES) + 1) - 0.5, len(REGIMES))
    ax.pcolormesh(_edges(lr), np.arange(len(beta2) + 1), codes, cmap=cmap, norm=norm, alpha=0.6)
    ax.set_yticks(np.arange(len(beta2)) + 0.5, [f"{b:g}" for b in beta2])
    ax.axhline(row + 0.5, color="k", lw=0.8, ls=":")
    ax.set_ylabel("β₂")
    ax.set_title("regime of each discrete run (dotted: the β₂ of the panels below)", fontsize=9)
