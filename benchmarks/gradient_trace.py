"""Where a flow gradient's time goes when nothing is left to compile.

Runs the reverse-mode Jacobian of the toy flow of `tests/test_grad.py` (its outcomes `y`
at t = 30 and the EOS onset, with respect to η, the loss's constants and the start)
under cProfile, with JAX's persistent compilation cache on, in a fresh process (run the
script twice: the first run fills the cache), then twice more in the same process, and
splits the first call's time into JAX's phases: transposing the replay, batching it
(`jacrev` differentiates two outcomes at once), tracing, lowering to StableHLO, and
compiling or reading the cache.

    python benchmarks/gradient_trace.py && python benchmarks/gradient_trace.py
Writes benchmarks/results/gradient_trace.json.
"""

import cProfile
import json
import pathlib
import pstats
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from centralflows.internal import count_compiles  # noqa: E402
from tests.test_grad import ARGS, toy_outcomes  # noqa: E402

# (phase, the function whose cumulative time measures it)
PHASES = (
    ("transposing (reverse mode)", ("jax/_src/interpreters/ad.py", "backward_pass3")),
    ("batching (jacrev's vmap)", ("jax/_src/pjit.py", "_pjit_batcher")),
    ("tracing to jaxprs", ("jax/_src/interpreters/partial_eval.py", "trace_to_jaxpr_dynamic")),
    ("lowering to StableHLO", ("jax/_src/interpreters/mlir.py", "lower_jaxpr_to_module")),
    ("compiling or reading the cache", ("jax/_src/compiler.py", "compile_or_get_cached")),
)


def jacobian():
    return jax.block_until_ready(jax.jacrev(toy_outcomes, argnums=(0, 1, 2))(*ARGS))


def cumulative(stats: pstats.Stats, path: str, name: str) -> float:
    """The largest cumulative time of a function `name` in a file ending in `path`
    (recursive calls are counted once: their outermost call)."""
    times = [v[3] for (file, _, fn), v in stats.stats.items() if file.endswith(path) and fn == name]
    return max(times, default=0.0)


def main():
    profile = cProfile.Profile()
    with count_compiles() as counts:
        start = time.perf_counter()
        profile.enable()
        jacobian()
        profile.disable()
        first = time.perf_counter() - start
    stats = pstats.Stats(profile)
    again = []
    for _ in range(2):
        start = time.perf_counter()
        jacobian()
        again.append(time.perf_counter() - start)
    result = {
        "command": "python benchmarks/gradient_trace.py",
        "first_call_s": first,
        "programs_sent_to_xla": counts.requests,
        "read_from_cache": counts.cache_hits,
        "compiled": counts.compiled,
        "xla_s": counts.seconds,
        "phases_s (cumulative, they overlap)": {
            label: cumulative(stats, *where) for label, where in PHASES
        },
        "second_and_third_call_s": again,
    }
    text = json.dumps(result, indent=2)
    print(text)
    (ROOT / "benchmarks/results/gradient_trace.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
