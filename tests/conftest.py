import atexit
import gc
import os
import shutil
import tempfile

import jax
import pytest

# The suite is bound by XLA's compiler (its problems are small): LLVM at -O0 compiles a
# central flow's segment program in 20 s where -O2 takes 25 s, with results equal to rounding;
# without LLVM's expensive passes and XLA:CPU's fusion emitters, a small MLP's central flow
# spends 11 s in XLA instead of 15 s. Set before the first computation creates the CPU
# backend; CLI subprocesses inherit it.
_FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}"
jax.config.update("jax_enable_x64", True)

# One persistent compilation cache for the whole test session, in a temporary directory
# (never the user's), made by the first process that loads this file (pytest-xdist's
# controller, before it starts its workers, which inherit the variable): the workers, the
# CLI's subprocesses and later modules (after `jax.clear_caches`) read back the programs
# compiled before instead of compiling them again. (JAX falls back to compiling where an
# entry cannot be read, such as one another worker is still writing.)
_SESSION_CACHE = "CENTRALFLOWS_TEST_SESSION_CACHE"
if _SESSION_CACHE not in os.environ:
    os.environ[_SESSION_CACHE] = tempfile.mkdtemp(prefix="centralflows-test-cache-")
    atexit.register(shutil.rmtree, os.environ[_SESSION_CACHE], ignore_errors=True)
os.environ["CENTRALFLOWS_CACHE_DIR"] = os.environ[_SESSION_CACHE]

from centralflows._replay import _memory_maps  # noqa: E402 (after the environment above)


@pytest.fixture
def getkey():
    """Fresh PRNG keys, deterministic per test."""
    keys = iter(jax.random.split(jax.random.key(1234), 1000))
    return lambda: next(keys)


def _free():
    jax.clear_caches()
    gc.collect()  # and free the executables themselves now


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop compiled programs after each test module: the suite compiles many."""
    yield
    _free()


@pytest.fixture(autouse=True)
def _free_compiled_programs_near_the_map_limit():
    """And after any test that leaves the process holding many memory maps: XLA's CPU
    backend maps each program's code (one toy flow gradient: 7,300 maps, freed by
    clearing), and past Linux's default limit of 65530 LLVM aborts the process."""
    yield
    if _memory_maps() > 30000:
        _free()


# The longest files first (by their time in a full run on 2 cores), so that no worker is left
# with a long file at the end while the other idles.
_LONGEST_FIRST = ["test_flows.py", "test_docs.py", "test_run.py", "test_cli.py", "test_eigen.py",
                  "test_zoo.py", "test_resume.py", "test_cache.py"]  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    """Run tests/test_grad.py first, in a process that has compiled nothing else yet:
    late in two full runs XLA's compiler crashed (segfault) compiling its eigenvector
    derivative's CG, in a test that passes in a fresh process. Then the longest files."""
    order = ["test_grad.py", *_LONGEST_FIRST]
    rank = lambda name: order.index(name) if name in order else len(order)
    items.sort(key=lambda item: rank(item.path.name))
