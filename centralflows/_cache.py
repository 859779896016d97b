"""JAX's persistent compilation cache, on by default in a user cache directory."""

import os
import pathlib

import jax

CACHE_ENV = "CENTRALFLOWS_CACHE_DIR"  # a directory, or "off"
_OFF = ("", "0", "off", "false", "none", "no")
_MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def default_cache_dir() -> pathlib.Path | None:
    """Where compiled programs are kept: `$CENTRALFLOWS_CACHE_DIR` (`"off"` for nowhere),
    else `$XDG_CACHE_HOME/centralflows/jax` (default `~/.cache/centralflows/jax`)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else pathlib.Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "centralflows" / "jax"


def enable_compilation_cache(
    path: str | os.PathLike | bool | None = True,
) -> pathlib.Path | None:
    """Turn on JAX's persistent compilation cache, so that a new process reuses the
    programs an earlier one compiled (`centralflows.run` and the CLI call this).

    A directory already set in JAX (`JAX_COMPILATION_CACHE_DIR` or
    `jax.config.update("jax_compilation_cache_dir", ...)`) is left as it is. Every program
    is stored, however quick to compile, unless `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`
    says otherwise. This sets JAX's process-wide configuration.

    **Arguments:**

    - `path`: the cache directory; `True` for `default_cache_dir()`; `False` or `None`
      to leave JAX's configuration alone.

    **Returns:** the cache directory in use, or `None` when there is none.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return pathlib.Path(current)
    if path is True:
        path = default_cache_dir()
    if path is None or path is False:
        return None
    path = pathlib.Path(path).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(path))
    if _MIN_TIME_ENV not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
