"""The central flow's predicted oscillation variances against GD's squared deltas.

The eigenvalues of X (the variances of the oscillation along the critical directions
that the central flow predicts) beside the moving average of the squared displacements
`δ² = (uᵀP(w_GD − w_central))²` of GD from the flow along those directions, with the
sharpness against 2/η above them for the EOS onset. For one critical direction the two are
the same quantity; for several, X's eigenvalues are compared with the deltas along the
critical eigenvectors, which agree where X is diagonal in them.

    python scripts/figures/variances_vs_deltas.py --small  # digits MLP, CPU, minutes
    python scripts/figures/variances_vs_deltas.py          # the paper's CIFAR-10 MLP
"""

import _common

import centralflows as cf


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    run = _common.load(_common.run_file(args, "gd"))
    figure = cf.plot(run, panels=["sharpness", "variances"])
    _common.save(figure, args, "variances_vs_deltas")


if __name__ == "__main__":
    main()
