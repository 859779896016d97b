"""RMSProp's preconditioner under the optimizer and under its flows.

The run file holds summaries of the state ν, not ν itself: this draws ‖ν‖₁ of RMSProp,
its midpoints, its central flow and its stable flow, beside the effective eigenvalues of
each against 2.

    python scripts/figures/rmsprop_preconditioner.py --small  # digits MLP, CPU
    python scripts/figures/rmsprop_preconditioner.py          # the paper's CIFAR-10 ResNet
"""

import _common

import centralflows as cf


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    run = _common.load(_common.run_file(args, "rmsprop"))
    figure = cf.plot(run, panels=["preconditioner", "sharpness", "loss"])
    _common.save(figure, args, "rmsprop_preconditioner")


if __name__ == "__main__":
    main()
