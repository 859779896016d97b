"""GD, its central flow and its stable flow on one network.

The train loss of GD (with its moving average) beside the central flow's loss and
predicted loss and the stable flow's (gradient flow's) loss; the top Hessian eigenvalues
of each against 2/η; and the distance from GD to each flow.

    python scripts/figures/gd_central_flow.py --small     # digits MLP, CPU, minutes
    python scripts/figures/gd_central_flow.py             # the paper's CIFAR-10 MLP
"""

import _common

import centralflows as cf


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    run = _common.load(_common.run_file(args, "gd"))
    figure = cf.plot(run, panels=["loss", "sharpness", "distances"])
    _common.save(figure, args, "gd_central_flow")


if __name__ == "__main__":
    main()
