"""The standard figure of a run file: one panel per quantity, every process side by side.

Reads only what a run file holds (finished, or still being written) and needs matplotlib
(the `figures` extra) only when a figure is drawn.
"""

import dataclasses
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._process_names import PROCESS_NAMES
from ._regimes import last_finite
from ._runfile import Run, load_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_THRESHOLD = "threshold"  # the gid of the stability threshold's line
_CLIP = 2.5  # the sharpness panel's y axis ends at most this many thresholds up
_COLORS = {
    "discrete": "0.15",
    "midpoint": "tab:green",
    "central": "tab:blue",
    "central_no_penalty": "tab:purple",
    "central_stationary": "tab:cyan",
    "stable": "tab:red",
}
_NAMES = {
    "discrete": "discrete",
    "midpoint": "midpoint",
    "central": "central flow",
    "central_no_penalty": "central flow, no penalty",
    "central_stationary": "stationary flow",
    "stable": "stable flow",
}
_INSTALL = "pip install 'centralflows[figures]'"


@dataclasses.dataclass(frozen=True)
class _View:
    """The rows of a run that a figure shows, with their optimizer steps as `x`."""

    run: Run
    optimizer: str  # the optimizer's class name, e.g. "GD" ("" if unknown)
    done: int  # rows written
    rows: slice  # the rows shown, within the rows written
    offset: int  # the warm start: row t is optimizer step offset + t
    smooth: int  # moving-average window, in rows (1: none)

    @property
    def x(self) -> np.ndarray:
        return self.offset + np.arange(self.done)[self.rows]

    def processes(self, field: str) -> list[str]:
        """The processes, in their standard order, that log `field`."""
        return [p for p in PROCESS_NAMES if p in self.run and field in self.run[p]]

    def values(self, group: str, field: str) -> np.ndarray:
        """The series `group/field` over the rows written (the rows not shown included,
        so that a moving average near the range's ends uses them)."""
        return self.run[group][field][: self.done]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The centred moving average over `window` entries (`window + 1` if it is even),
    narrower near the ends so that it stays centred (the first and last entries are
    their own averages)."""
    total = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    half = np.minimum(np.minimum(index, len(values) - 1 - index), window // 2)
    return (total[index + half + 1] - total[index - half]) / (2 * half + 1)


def _draw(
    ax: "Axes",
    view: _View,
    values: np.ndarray,
    gid: str,
    *,
    smooth: bool = False,
    **style: Any,
) -> None:
    """Draw `values` (one per written row) over the rows shown, skipping non-finite
    entries (not computed, not yet written, or diverged); `smooth` draws their moving
    average over the finite entries instead."""
    finite = np.isfinite(values)
    shown = np.zeros_like(finite)
    shown[view.rows] = True
    y = values[finite]
    if smooth and view.smooth > 1:
        y = _moving_average(y, view.smooth)
    keep = shown[finite]
    if not keep.any():  # keep the line (empty), leave it out of the legend
        style.pop("label", None)
    x = view.offset + np.flatnonzero(finite)[keep]
    ax.plot(x, y[keep], gid=gid, **style)


def _averaged(name: str, view: _View) -> str:
    """The label of a moving average of `name`."""
    window = 2 * (view.smooth // 2) + 1
    return name if window == 1 else f"{name}, average over {window} steps"


def _stop_note(view: _View, process: str) -> str:
    """`" (stopped at step s: reason)"` for a process that has stopped, else `""`."""
    series = view.run[process]
    if "stop_reason" not in series:
        return ""
    codes = series["stop_reason"][: view.done]
    stopped = np.flatnonzero(np.isfinite(codes))
    if not len(stopped):
        return ""
    code = int(codes[stopped[-1]])
    reasons = view.run.attrs.get("stop_reasons")
    if not reasons:  # a file from before the attribute
        from ._stop import stop_messages  # jax: not imported by `centralflows --help`

        reasons = stop_messages()
    reason = reasons.get(str(code), f"stop reason {code}")
    when = view.offset + float(series["stop_time"][stopped[-1]])
    return f" (stopped at step {when:g}: {reason})"


def _averaged_panel(
    field: str, predicted: str, log: bool = False
) -> Callable[["Axes", _View], None]:
    """A panel drawing `field` of every process, the discrete run's also as a moving
    average, and the central flow's prediction `central/<predicted>` dashed."""

    def draw(ax: "Axes", view: _View) -> None:
        for p in view.processes(field):
            values, gid = view.values(p, field), f"{p}/{field}"
            label = _NAMES[p] + _stop_note(view, p)
            smooth = p == "discrete" and view.smooth > 1
            if smooth:
                _draw(ax, view, values, gid, color="0.6", lw=0.6, label=label)
                label, gid = _averaged("discrete", view), gid + ":smoothed"
            _draw(ax, view, values, gid, smooth=smooth, color=_COLORS[p], label=label)
        if "central" in view.run and predicted in view.run["central"]:
            values = view.values("central", predicted)
            style = {"color": "tab:cyan", "ls": "--", "label": "central flow: predicted"}
            _draw(ax, view, values, f"central/{predicted}", **style)
        if log:
            ax.set_yscale("log")

    return draw


def _sharpness(ax: "Axes", view: _View) -> None:
    """GD: the top eigenvalues of H against 2/η (where the run logs both); otherwise
    those of P⁻¹H against 2."""
    gd = view.optimizer == "GD" and bool(
        view.processes("hessian_eigs") and view.processes("opt.lr")
    )
    field = "hessian_eigs" if gd else "effective_hessian_eigs"
    for p in view.processes(field):
        eigs = view.values(p, field)
        for i in range(eigs.shape[1]):  # the top one thicker, and in the legend
            style = {"lw": 0.6} if i else {"lw": 1.2, "label": _NAMES[p]}
            _draw(ax, view, eigs[:, i], f"{p}/{field}:{i}", color=_COLORS[p], **style)
    for p in view.processes("eos_time"):
        onset = view.offset + last_finite(view.values(p, "eos_time"))
        if view.x[0] <= onset <= view.x[-1]:  # False for NaN: not reached
            style = {"color": _COLORS[p], "ls": ":", "lw": 0.8, "label": f"{_NAMES[p]}: EOS onset"}
            ax.axvline(onset, gid=f"{p}/eos_time", **style)
    if gd:
        (p, *_) = view.processes("opt.lr")
        threshold = 2 / view.values(p, "opt.lr")
        _draw(ax, view, threshold, _THRESHOLD, color="k", ls="--", lw=0.8, label="2/η")
        ax.set_ylabel("top eigenvalues of H")
    else:
        threshold = np.array([2.0])
        ax.axhline(2.0, color="k", ls="--", lw=0.8, label="2", gid=_THRESHOLD)
        ax.set_ylabel("top eigenvalues of P⁻¹H")
    top = _CLIP * np.nanmax(threshold[view.rows] if gd else threshold, initial=0.0)
    if ax.get_ylim()[1] > top > 0:  # e.g. a start far above the threshold
        ax.set_ylim(top=top)


def _distances(ax: "Axes", view: _View) -> None:
    others = iter(f"C{i}" for i in range(4, 10))
    for pair in view.run["distances"]:
        a, b = pair.split("-")
        label = f"{_NAMES.get(a, a)} – {_NAMES.get(b, b)}"
        if "discrete" in (a, b):  # solid, in the colour of the other process
            style = {"color": _COLORS.get(b if a == "discrete" else a), "ls": "-"}
        else:
            style = {"color": next(others, None), "ls": "--"}
        _draw(ax, view, view.values("distances", pair), f"distances/{pair}", label=label, **style)
    ax.set_yscale("log")


def _variances(ax: "Axes", view: _View) -> None:
    """Column i of the predicted variances (X's eigenvalues, in decreasing order) beside
    the moving average of the squared delta along critical direction i."""
    variances = view.values("central", "predicted_variances")
    deltas = view.run["deltas"] if "deltas" in view.run else {}
    for i in range(variances.shape[1]):
        style = {"color": f"C{i}", "label": f"predicted variance {i + 1}"}
        _draw(ax, view, variances[:, i], f"central/predicted_variances:{i}", **style)
        for p, ls in zip(deltas, (":", "-.")):
            if i < deltas[p].shape[1]:
                style = {"color": f"C{i}", "ls": ls}
                if i == 0:  # one legend entry per process
                    style["label"] = _averaged(f"{p} δᵢ² (colour of variance i)", view)
                squared = view.values("deltas", p)[:, i] ** 2
                _draw(ax, view, squared, f"deltas/{p}:{i}", smooth=True, **style)


def _step_size(ax: "Axes", view: _View) -> None:
    for p in view.processes("opt.effective_step_size"):
        step = view.values(p, "opt.effective_step_size")
        label = f"{_NAMES[p]}: η/(√ν̂+ε)"
        _draw(ax, view, step, f"{p}/opt.effective_step_size", color=_COLORS[p], label=label)
        if "hessian_eigs" in view.run[p]:
            bound = 2 / view.values(p, "hessian_eigs")[:, 0]
            style = {"color": _COLORS[p], "ls": "--", "label": f"{_NAMES[p]}: 2/S(w)"}
            _draw(ax, view, bound, f"{p}/hessian_eigs:2/S", **style)
    ax.set_yscale("log")


def _outputs(ax: "Axes", view: _View) -> None:
    """The network's outputs on the first training example, one colour per output."""
    styles = {
        "discrete": "-",
        "midpoint": "-.",
        "central": "--",
        "central_no_penalty": (0, (5, 1, 1, 1)),
        "central_stationary": (0, (3, 1, 1, 1, 1, 1)),
        "stable": ":",
    }
    for p in view.processes("train_outputs"):
        outputs = view.values(p, "train_outputs")[:, 0]
        for j in range(outputs.shape[1]):
            style = {"color": f"C{j % 10}", "ls": styles[p], "lw": 0.8}
            if j == 0:  # one legend entry per process
                style["label"] = f"{_NAMES[p]} (colour: output j)"
            _draw(ax, view, outputs[:, j], f"{p}/train_outputs:0,{j}", **style)


def _field_panel(field: str, log: bool = False) -> Callable[["Axes", _View], None]:
    """A panel drawing `field` of every process that logs it."""

    def draw(ax: "Axes", view: _View) -> None:
        for p in view.processes(field):
            values = view.values(p, field)
            _draw(ax, view, values, f"{p}/{field}", color=_COLORS[p], label=_NAMES[p])
        if log:
            ax.set_yscale("log")

    return draw


@dataclasses.dataclass(frozen=True)
class _Panel:
    """One panel: its title and y label, the series it needs (`*/field`: some process's
    `field`), whether the standard figure shows it, and how to draw it."""

    title: str
    ylabel: str
    needs: tuple[str, ...]
    draw: Callable[["Axes", _View], None]
    default: bool = True


PANELS: dict[str, _Panel] = {
    "loss": _Panel(
        "train loss",
        "loss",
        ("*/train_loss",),
        _averaged_panel("train_loss", "predicted_loss"),
    ),
    "sharpness": _Panel("sharpness", "", ("*/effective_hessian_eigs",), _sharpness),
    "distances": _Panel("distance between processes", "‖w − w′‖", ("distances/*",), _distances),
    "variances": _Panel(
        "predicted variances vs squared deltas",
        "variance",
        ("central/predicted_variances",),
        _variances,
    ),
    "grad_norm": _Panel(
        "squared gradient norm",
        "‖∇L‖²",
        ("*/grad_norm_sq",),
        _averaged_panel("grad_norm_sq", "predicted_grad_norm_sq", log=True),
    ),
    "step_size": _Panel(
        "effective step size", "step size", ("*/opt.effective_step_size",), _step_size
    ),
    "preconditioner": _Panel(
        "preconditioner: ‖ν‖₁",
        "‖ν‖₁",
        ("*/opt.nu_l1",),
        _field_panel("opt.nu_l1", log=True),
    ),
    "test_loss": _Panel(
        "test loss", "loss", ("*/test_loss",), _field_panel("test_loss"), default=False
    ),
    "accuracy": _Panel(
        "train accuracy",
        "accuracy",
        ("*/train_acc",),
        _field_panel("train_acc"),
        default=False,
    ),
    "outputs": _Panel(
        "network outputs on the first training example",
        "output",
        ("*/train_outputs",),
        _outputs,
        default=False,
    ),
    "num_critical": _Panel(
        "critical directions",
        "count",
        ("central/num_critical",),
        _field_panel("num_critical"),
        default=False,
    ),
}
"""The panels `plot` can draw, in the order the standard figure shows them."""


def _missing(run: Run, needs: Sequence[str]) -> list[str]:
    """The entries of `needs` that `run` has no series for."""
    missing = []
    for name in needs:
        group, field = name.split("/", 1)
        if group == "*":
            found = any(p in run and field in run[p] for p in PROCESS_NAMES)
        elif field == "*":
            found = group in run and len(run[group]) > 0
        else:
            found = group in run and field in run[group]
        if not found:
            missing.append(name)
    return missing


def _offset(run: Run) -> int:
    """The run's warm start: row t of its file is optimizer step `offset + t`."""
    return int(run.attrs.get("warm_start", 0))


def _optimizer(run: Run) -> str:
    """The class name of the run's optimizer (from its `optimizer` attribute)."""
    return str(run.attrs.get("optimizer", "")).split("(")[0].strip()


def _select_panels(run: Run, panels: Sequence[str] | None) -> list[str]:
    if panels is None:
        chosen = [
            name
            for name, panel in PANELS.items()
            if panel.default and not _missing(run, panel.needs)
        ]
        if not chosen:
            raise ValueError(
                f"{str(run.path)!r} holds none of the series the standard panels draw "
                f"(groups: {list(run)})."
            )
        return chosen
    if isinstance(panels, str) or not panels:
        raise ValueError(f"`panels` must be a non-empty list of panel names, got {panels!r}.")
    unknown = [name for name in panels if name not in PANELS]
    if unknown:
        raise ValueError(f"Unknown panel(s) {unknown}; valid panels: {', '.join(PANELS)}.")
    for name in panels:
        missing = _missing(run, PANELS[name].needs)
        if missing:
            where = "any process" if any(m.startswith("*/") for m in missing) else "the run"
            raise ValueError(
                f"Panel {name!r} needs the series {', '.join(missing)} ('*' meaning "
                f"{where}), which {str(run.path)!r} does not hold (groups: {list(run)})."
            )
    return list(panels)


def _select_rows(run: Run, steps: tuple[int | None, int | None] | None) -> tuple[int, slice]:
    """The number of rows written and the slice of them within optimizer steps
    `a <= t < b`."""
    done, offset = run.steps_done, _offset(run)
    if done == 0:
        raise ValueError(f"{str(run.path)!r} has no rows written yet.")
    if steps is None:
        return done, slice(0, done)
    try:
        start, stop = steps
    except (TypeError, ValueError):
        raise ValueError(f"`steps` must be a pair (a, b) of optimizer steps, got {steps!r}.")
    for bound in (start, stop):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
            raise ValueError(f"`steps` must hold integers or None, got {steps!r}.")
    written = f"steps {offset} to {offset + done - 1} are written"
    if start is not None and stop is not None and start >= stop:
        raise ValueError(f"`steps` = {steps!r} is empty: a must be less than b.")
    lo = 0 if start is None else max(start - offset, 0)
    hi = done if stop is None else min(stop - offset, done)
    if lo >= hi:
        raise ValueError(f"`steps` = {steps!r} holds no written rows: {written}.")
    return done, slice(lo, hi)


def _given_axes(axes: Any, names: Sequence[str]) -> "list[Axes]":
    """`axes` as a list, checked to hold one matplotlib `Axes` per panel of `names`."""
    _figure_class()  # matplotlib is installed
    from matplotlib.axes import Axes

    if isinstance(axes, np.ndarray):  # e.g. from `subplots`
        axes = axes.ravel().tolist()
    if not isinstance(axes, Sequence) or not all(isinstance(ax, Axes) for ax in axes):
        raise ValueError(f"`axes` must be a sequence of matplotlib Axes, got {axes!r}.")
    if len(axes) != len(names):
        raise ValueError(
            f"`axes` holds {len(axes)} Axes for the {len(names)} panel(s) {names}: give one "
            "per panel."
        )
    return list(axes)


def _figure_class() -> "type[Figure]":
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"Plotting needs matplotlib: {_INSTALL}.") from error
    return Figure


def plot(
    run: Run | str | os.PathLike[str],
    *,
    panels: Sequence[str] | None = None,
    steps: tuple[int | None, int | None] | None = None,
    smooth: int = 11,
    axes: "Sequence[Axes] | None" = None,
) -> "Figure":
    """The standard multi-panel figure of a run, finished or still being written.

    Each process that logs a panel's series is drawn in it: the discrete run in black
    (with a moving average where it oscillates), its midpoints in green, the central flow
    in blue (its predictions dashed), the stable flow in red. For GD the sharpness panel
    shows the top eigenvalues of H against 2/η; for other optimizers those of the
    effective Hessian P⁻¹H against 2. Rows not computed (NaN) are skipped.

    **Arguments:**

    - `run`: a [`centralflows.Run`][] or the path of a run file.
    - `panels`: the panels to draw, in order, from the keys of `PANELS`: `"loss"`,
        `"sharpness"`, `"distances"`, `"variances"`, `"grad_norm"`, `"step_size"`
        (Scalar RMSProp), `"preconditioner"` (RMSProp), `"test_loss"`, `"accuracy"`,
        `"outputs"`, `"num_critical"`. Default: those of the first seven whose series
        the run holds.
    - `steps`: `(a, b)`: draw optimizer steps `a <= t < b` (`None`: no bound). With a
        warm start of N steps, row t of the file is step N + t.
    - `smooth`: the window, in steps, of the centred moving averages drawn for the
        discrete run's loss and gradient norm and for the squared deltas (an even one is
        widened by one step; narrower near the ends, so that it stays centred; 1: none).
    - `axes`: matplotlib `Axes` to draw into, one per panel in the order of `panels`
        (e.g. a row of a figure holding several runs); default: a new figure. With
        `axes`, no figure title is set (each panel's title names the panel).

    **Returns:**

    A `matplotlib.figure.Figure` (not registered with pyplot; save it with `savefig`); with
    `axes`, the figure they belong to.
    Each panel's axes has the panel's name as its label, and each line the name of the
    series it draws as its gid (`"discrete/train_loss"`, `"central/hessian_eigs:0"`).
    """
    if not isinstance(run, Run):
        run = load_run(pathlib.Path(run))
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"`smooth` must be a positive integer, got {smooth!r}.")
    optimizer = _optimizer(run)
    names = _select_panels(run, panels)
    done, rows = _select_rows(run, steps)
    offset = _offset(run)
    view = _View(run, optimizer, done, rows, offset, smooth)

    given = axes is not None
    if axes is None:
        figure = _figure_class()
        ncols = 1 if len(names) == 1 else 2
        nrows = math.ceil(len(names) / ncols)
        fig = figure(figsize=(6.0 * ncols, 3.6 * nrows), layout="constrained")
        axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
        for ax in axes[len(names) :]:
            ax.remove()
    else:
        axes = _given_axes(axes, names)
        fig = axes[0].figure.figure  # the root figure, also for an Axes in a SubFigure
    first, last = offset + rows.start, offset + rows.stop - 1
    for ax, name in zip(axes, names):
        panel = PANELS[name]
        ax.set_label(name)
        ax.set_title(panel.title)
        if panel.ylabel:
            ax.set_ylabel(panel.ylabel)
        panel.draw(ax, view)
        if not any(
            len(line.get_xdata()) for line in ax.get_lines() if line.get_gid() != _THRESHOLD
        ):
            empty = f"no values in steps {first}–{last}"
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="0.4")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.set_xlim(first, max(last, first + 1))
    if given:  # the caller's figure keeps its own title
        return fig
    progress = "" if done == run.num_rows else f", {done} of {run.num_rows} rows written"
    fig.suptitle(f"{run.path.name}: {optimizer or 'optimizer unknown'}{progress}", fontsize=10)
    return fig
