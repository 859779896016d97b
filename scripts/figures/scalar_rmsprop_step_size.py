"""Scalar RMSProp's effective step size against the stability bound 2/S(w).

The effective step size η/(√ν̂+ε) of Scalar RMSProp and of its flows beside 2/S(w), S the
top Hessian eigenvalue: at the edge of stability the step size adapts to sit at the
bound, which is where the effective sharpness is 2.

    python scripts/figures/scalar_rmsprop_step_size.py --small  # digits MLP, CPU
    python scripts/figures/scalar_rmsprop_step_size.py          # the paper's CIFAR-10 CNN
"""

import _common

import centralflows as cf


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    run = _common.load(_common.run_file(args, "scalar_rmsprop"))
    figure = cf.plot(run, panels=["step_size", "sharpness", "loss"])
    _common.save(figure, args, "scalar_rmsprop_step_size")


if __name__ == "__main__":
    main()
