"""GD and its central flow on six architectures: one train-loss panel per network.

Each panel draws GD's train loss (with its moving average) beside the central flow's loss
and predicted loss and the stable flow's (gradient flow's) loss, for an MLP, a CNN, a ViT,
an LSTM, a transformer and a Mamba network.

    python scripts/figures/loss_across_architectures.py --small  # digits and sorting, CPU
    python scripts/figures/loss_across_architectures.py          # the paper-size configs
    python scripts/figures/loss_across_architectures.py --run A.h5 B.h5 --out f.png
"""

import math

import _common

import centralflows as cf
from centralflows._plot import _figure_class

ARCHITECTURES = ("mlp", "cnn", "vit", "lstm", "transformer", "mamba")
"""The panels, in order: run `gd-<name>` of `_common.RUNS` each."""


def _title(run: cf.Run) -> str:
    """The network, the data and the learning rate of `run` (its file name if the run
    file holds no config)."""
    config = run.config
    if not config:
        return run.path.stem
    model, data, lr = config["model"]["name"], config["data"]["name"], config["opt"]["lr"]
    n = f" ({config['data']['n']} examples)" if "n" in config["data"] else ""
    return f"{model} on {data}{n}, η = {lr:g}"


def main() -> None:
    args = _common.parser(__doc__, several=True).parse_args()
    figure_class = _figure_class()  # before any run: no matplotlib, cf.plot's message
    if args.run:
        paths = args.run
    else:
        paths = [_common.run_file(args, f"gd-{name}") for name in ARCHITECTURES]
    runs = [_common.load(path) for path in paths]
    ncols = min(len(runs), 3)
    nrows = math.ceil(len(runs) / ncols)
    figure = figure_class(figsize=(4.2 * ncols, 3.3 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(runs) :]:
        ax.remove()
    for i, (ax, run) in enumerate(zip(axes, runs)):
        cf.plot(run, panels=["loss"], axes=[ax])
        ax.set_title(_title(run), fontsize=9)
        ax.set_yscale("log")
        if i and ax.get_legend():  # one legend, in the first panel
            ax.get_legend().remove()
    figure.suptitle("train loss: GD, its central flow and its stable flow", fontsize=10)
    _common.save(figure, args, "loss_across_architectures")


if __name__ == "__main__":
    main()
