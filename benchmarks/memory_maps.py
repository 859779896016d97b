"""Memory maps a flow gradient adds, per structure of segment its replay compiles.

XLA's CPU backend maps the code of each compiled program, and past Linux's
`vm.max_map_count` LLVM aborts the process. A replay warns where its estimate (the maps
held now, plus a constant per structure of segment: its basis width) passes 80% of the
limit; this measures that constant. Each problem's gradient runs in this one process
from a cleared cache: maps before it, where its replay starts (after the planning solve,
as the warning sees them) and after it, the structures its replay met, and the maps the
replay added per structure.

    python benchmarks/memory_maps.py --units 40
Writes benchmarks/results/memory_maps.json.
"""

import argparse
import json
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import centralflows as cf  # noqa: E402
from centralflows import _replay  # noqa: E402
from centralflows._config import load_config  # noqa: E402
from centralflows._experiment import make_eig_config, make_flow_options, make_problem  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def toy_loss(w):
    """The two-parameter toy of DESIGN §6 (s0 = 1, c = 1, b = 0.1)."""
    return 0.5 * (1.0 - w["y"]) * w["x"] ** 2 + 0.1 * w["y"]


def toy(units):
    options = cf.FlowOptions(tau=0.25, stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-10))
    w0 = {"x": jnp.array(0.0), "y": jnp.array(-2.5)}
    return lambda lr: cf.central_flow(toy_loss, w0, cf.GD(lr), units, options=options).loss[-1]


def digits(units):
    cfg = load_config(ROOT / "configs/gd-mlp-digits.toml")
    objective, w0 = make_problem(cfg)
    options, _ = make_flow_options(cfg)
    eig = make_eig_config(cfg["eig"])
    return lambda lr: cf.central_flow(
        objective, w0, cf.GD(lr), units, options=options, eig=eig
    ).loss[-1]


def measure(name, loss_at_end, lr):
    structures, at_replay = [], []
    check = _replay._check_map_limit

    def counting(segments):  # called where the replay starts, after the planning solve
        structures.append(len(_replay._structures(segments)))
        at_replay.append(_replay._memory_maps())
        check(segments)

    _replay._check_map_limit = counting
    try:
        jax.clear_caches()
        before = _replay._memory_maps()
        jax.block_until_ready(jax.grad(loss_at_end)(lr))
        after = _replay._memory_maps()
    finally:
        _replay._check_map_limit = check
    return {
        "problem": name,
        "maps_before": before,
        "maps_at_replay": at_replay[0],
        "maps_after": after,
        "structures": structures[0],
        "maps_per_structure": (after - at_replay[0]) / structures[0],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=40, help="digits flow length")
    args = parser.parse_args()
    results = {
        "limit": _replay._map_limit(),
        "estimate_per_structure": _replay._MAPS_PER_STRUCTURE,
        "runs": [
            measure("toy, 30 units, eta 0.5", toy(30), 0.5),
            measure(f"digits MLP GD, {args.units} units, eta 0.5", digits(args.units), 0.5),
        ],
    }
    out = ROOT / "benchmarks/results/memory_maps.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
