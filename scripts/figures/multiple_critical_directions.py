"""The central flow with several critical directions.

The top Hessian eigenvalues locking at 2/η one after another, the number of critical
directions of the central flow, and the predicted variance along each against GD's
squared deltas.

    python scripts/figures/multiple_critical_directions.py --small  # digits MLP, CPU, minutes
    python scripts/figures/multiple_critical_directions.py          # the paper's CIFAR-10 MLP
"""

import _common

import centralflows as cf


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    run = _common.load(_common.run_file(args, "gd"))
    figure = cf.plot(run, panels=["sharpness", "num_critical", "variances"])
    _common.save(figure, args, "multiple_critical_directions")


if __name__ == "__main__":
    main()
