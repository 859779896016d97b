import gc
import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# No persistent compilation cache in the tests (nor in the CLI's subprocesses): the
# programs stay in memory, as they always did here, and nothing is written to the user's
# cache. tests/test_cache.py turns it on in processes of its own.
os.environ["CENTRALFLOWS_CACHE_DIR"] = "off"


@pytest.fixture
def getkey():
    """Fresh PRNG keys, deterministic per test."""
    keys = iter(jax.random.split(jax.random.key(1234), 1000))
    return lambda: next(keys)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop compiled programs after each test module: the suite compiles many, and
    keeping them all has aborted XLA's compiler late in a full run."""
    yield
    jax.clear_caches()
    gc.collect()  # and free the executables themselves now


def pytest_collection_modifyitems(session, config, items):
    """Run tests/test_grad.py first, in a process that has compiled nothing else yet:
    late in two full runs XLA's compiler crashed (segfault) compiling its eigenvector
    derivative's CG, in a test that passes in a fresh process."""
    items.sort(key=lambda item: item.path.name != "test_grad.py")
