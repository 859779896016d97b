"""JAX's persistent compilation cache: a second process compiles (almost) nothing."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

import centralflows as cf
from centralflows._cache import CACHE_ENV, default_cache_dir

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "gd-mlp-digits.toml"

# Runs the CLI in a fresh process and prints what XLA compiled there.
_COUNTING_RUN = """
import json, sys
from centralflows import cli
from centralflows.internal import count_compiles
with count_compiles() as counts:
    code = cli.main(sys.argv[1:])
print("COUNTS", json.dumps({"code": code, **counts.as_dict()}))
"""


def _counting_run(tmp_path: pathlib.Path, cache: pathlib.Path) -> dict:
    argv = [str(CONFIG), "--steps", "3", "--set", "data.n=200", "--set", "data.n_test=50"]
    argv += ["--out", str(tmp_path), "--quiet", "--compilation-cache", str(cache)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
    out = subprocess.run(
        [sys.executable, "-c", _COUNTING_RUN, "run", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=1800,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("COUNTS "))
    return json.loads(line.removeprefix("COUNTS "))


def test_a_second_process_compiles_almost_nothing(tmp_path):
    cache = tmp_path / "cache"
    first = _counting_run(tmp_path, cache)
    second = _counting_run(tmp_path, cache)
    assert first["code"] == second["code"] == 0
    assert first["uncacheable"] == 0  # no host callbacks in any program of the job
    run_programs = ("_start_values", "_advance_chunk", "refresh_tracking", "segment")
    for name in run_programs:  # the four processes' programs, really compiled
        assert first["programs"][f"jit({name})"] >= 1, first["programs"]
    # Array code outside the run's programs is jitted or on the host: no one-operation
    # programs (there were 125 of them).
    assert first["compiled"] <= 30, first["programs"]
    assert second["compiled"] <= 2, (first, second)
    assert any(cache.iterdir())


def test_the_cache_directory_defaults_moves_and_turns_off(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "centralflows" / "jax"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    for off in ("off", "0", ""):
        monkeypatch.setenv(CACHE_ENV, off)
        assert default_cache_dir() is None


@pytest.fixture
def no_cache_dir():
    """JAX with no cache directory for one test (the suite's conftest sets one)."""
    saved = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", saved)


def test_enabling_keeps_a_directory_already_set(no_cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cf.enable_compilation_cache() is None  # off by the environment
    assert jax.config.jax_compilation_cache_dir is None
    assert cf.enable_compilation_cache(False) is None
    assert cf.enable_compilation_cache(tmp_path / "a") == tmp_path / "a"
    assert cf.enable_compilation_cache(tmp_path / "b") == tmp_path / "a"  # JAX's is kept
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
