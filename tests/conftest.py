import jax
import pytest

jax.config.update("jax_enable_x64", True)


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
