"""Timing shared by the benchmarks (run as scripts: this directory is on `sys.path`)."""

import time

import jax


def timed(fn, *args):
    """`(fn(*args), seconds)`, waiting for the result to be computed."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start
