import atexit
import gc
import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# One persistent compilation cache for the test session, in a temporary directory (never
# the user's): the CLI's subprocesses and later modules (after `jax.clear_caches`) read
# back the programs compiled before instead of compiling them again.
_CACHE = tempfile.mkdtemp(prefix="centralflows-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["CENTRALFLOWS_CACHE_DIR"] = _CACHE


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
