import atexit
import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# One persistent compilation cache for the session (and the CLI's subprocesses): a
# program that another test compiled is read back rather than compiled again, and
# nothing is written to the user's own cache.
_CACHE = tempfile.mkdtemp(prefix="centralflows-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["CENTRALFLOWS_CACHE_DIR"] = _CACHE
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


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
