"""The central flow's predicted squared gradient norm against GD's.

GD's squared gradient norm (with its moving average) beside the central flow's own
`‖∇L‖²` and its prediction of GD's time average, `‖∇L‖² + tr(HΣH)`: at the edge of
stability most of GD's gradient lies along the oscillating directions, which the flow's
own gradient leaves out.

    python scripts/figures/predicted_grad_norm.py --small  # digits MLP, CPU, minutes
    python scripts/figures/predicted_grad_norm.py          # the paper's CIFAR-10 MLP
"""

import _common

import centralflows as cf


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    run = _common.load(_common.run_file(args, "gd"))
    figure = cf.plot(run, panels=["grad_norm", "sharpness"])
    _common.save(figure, args, "predicted_grad_norm")


if __name__ == "__main__":
    main()
