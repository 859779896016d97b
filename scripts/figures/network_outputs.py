"""The network's outputs under GD and under its central flow.

The outputs on the first training example, one colour per output: GD's oscillate around
the central flow's once the edge of stability is reached, and the flow's follow their time
average; the stable flow's (gradient flow's) drift away.

    python scripts/figures/network_outputs.py --small  # digits MLP, CPU, minutes
    python scripts/figures/network_outputs.py          # the paper's CIFAR-10 MLP
"""

import _common

import centralflows as cf


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    run = _common.load(_common.run_file(args, "gd"))
    figure = cf.plot(run, panels=["outputs", "sharpness"])
    _common.save(figure, args, "network_outputs")


if __name__ == "__main__":
    main()
