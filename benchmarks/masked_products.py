"""Hessian-vector products of a padded block: batched against one column at a time.

Eigen tracking holds `eig.max_neigs` columns whatever the tracked count; `masked_products`
multiplies the tracked ones one at a time under `lax.cond` where they are at most half
the block or the block is narrower than 3 (the others cost nothing), else the whole
block in one batch. This measures,
on the default digits MLP, a plain batch of all columns, `masked_products` with all of
them on (its batch), and every column one at a time, per column (the three alternate,
in one process):

    python benchmarks/masked_products.py --columns 8 --reps 40

Writes benchmarks/results/masked_products.json.
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import jax.random as jr

from centralflows._config import load_config
from centralflows._eigen._lobpcg import masked_products
from centralflows._experiment import make_problem

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _products(objective, columns: int, variant: str):
    def apply(w, block):
        _, hvp = jax.linearize(objective.grad, w)
        matvec = jax.vmap(hvp, in_axes=1, out_axes=1)
        if variant == "batched":
            return matvec(block)
        if variant == "masked_all":
            return masked_products(matvec)(block, jnp.ones(columns, bool))[0]
        column = lambda c: matvec(c[:, None])[:, 0]
        return jax.lax.map(column, block.T).T

    return jax.jit(apply)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, default=8)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/masked_products.json"))
    args = parser.parse_args()
    objective, w = make_problem(load_config(ROOT / "configs/gd-mlp-digits.toml"))
    block = jr.normal(jr.key(0), (w.size, args.columns), w.dtype)
    names = ("batched", "masked_all", "one_column_at_a_time")
    variants = {name: _products(objective, args.columns, name) for name in names}
    times = {name: [] for name in variants}
    for name, f in variants.items():
        f(w, block).block_until_ready()
    for _ in range(args.reps):
        for name, f in variants.items():
            start = time.perf_counter()
            f(w, block).block_until_ready()
            times[name].append(time.perf_counter() - start)
    medians = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    result = {
        "command": " ".join(["benchmarks/masked_products.py", *sys.argv[1:]]),
        "columns": args.columns,
        "median_ms": medians,
        "ratios_to_batched": {name: medians[name] / medians["batched"] for name in names},
    }
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
