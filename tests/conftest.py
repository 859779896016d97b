import atexit
import gc
import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# One persistent compilation cache per test process (each xdist worker has its own), in a
# temporary directory (never the user's): the CLI's subprocesses and later modules (after
# `jax.clear_caches`) read back the programs compiled before instead of compiling them again.
_CACHE = tempfile.mkdtemp(prefix="centralflows-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["CENTRALFLOWS_CACHE_DIR"] = _CACHE


@pytest.fixture
def getkey():
    """Fresh PRNG keys, deterministic per test."""
    keys = iter(jax.random.split(jax.random.key(1234), 1000))
    return lambda: next(keys)


def _free():
    jax.clear_caches()
    gc.collect()  # and free the executables themselves now


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux
        return 0


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


def pytest_collection_modifyitems(session, config, items):
    """Run tests/test_grad.py first, in a process that has compiled nothing else yet:
    late in two full runs XLA's compiler crashed (segfault) compiling its eigenvector
    derivative's CG, in a test that passes in a fresh process."""
    items.sort(key=lambda item: item.path.name != "test_grad.py")
