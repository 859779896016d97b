import difflib
import json
import os
import pathlib
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from ._options import Option as _Key
from ._process_names import PROCESS_NAMES
from .data._declared import DECLARED as DATASETS  # plain data: no jax is imported
from .models._declared import DECLARED as ARCHITECTURES
from .problems._declared import DECLARED as PROBLEMS


class ConfigError(ValueError):
    """Raised for a configuration that cannot be read or is invalid.

    Validation reports every problem it finds in one message, one per line.
    """


def _format(value: Any) -> str:
    """Writes a value as TOML (strings quoted, booleans lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_format, value)) + "]"
    return repr(value)


def _one_of(*options: str) -> _Key:
    """A string key taking one of `options`, by default the first."""
    return _Key(
        str,
        options[0],
        f"one of {', '.join(map(_format, options))}",
        options.__contains__,
    )


_SCHEMA: dict[str, dict[str, _Key]] = {
    "opt": {
        "name": _one_of("gd", "scalar_rmsprop", "rmsprop"),
        "lr": _Key(float, None, "a float > 0", lambda v: v > 0),
        "beta2": _Key(float, 0.99, "a float in the open interval (0, 1)", lambda v: 0 < v < 1),
        "eps": _Key(float, 0.0, "a float >= 0", lambda v: v >= 0),
        "bias_correction": _Key(bool, False, "a boolean"),
    },
    # `data` and `model` also take the options their `name` declares (see `_keys`).
    "data": {
        "name": _one_of(*DATASETS),
        "criterion": _one_of("mse", "ce"),
        "chunk_size": _Key(
            int, 0, "an integer >= 0 (0: the whole dataset at once)", lambda v: v >= 0
        ),
    },
    "model": {
        "name": _one_of(*ARCHITECTURES),
    },
    # A built-in problem, in place of `data` and `model`; it also takes the options its
    # `name` declares.
    "problem": {
        "name": _Key(
            str,
            None,
            f"one of {', '.join(map(_format, PROBLEMS))}",
            PROBLEMS.__contains__,
        ),
    },
    "eig": {
        "frequency": _Key(int, 1, "an integer >= 1", lambda v: v >= 1),
        "track_threshold": _Key(float, 1.5, "a float > 0", lambda v: v > 0),
        "initial_neigs": _Key(int, 1, "an integer >= 1", lambda v: v >= 1),
        "max_neigs": _Key(int, 8, "an integer >= 1", lambda v: v >= 1),
        "tol": _Key(float, 1e-3, "a float > 0", lambda v: v > 0),
        "max_iters": _Key(int, 100, "an integer >= 1", lambda v: v >= 1),
    },
    "run": {
        "steps": _Key(int, 500, "an integer >= 1", lambda v: v >= 1),
        "seed": _Key(int, 0, "an integer"),
        "precision": _one_of("float64", "float32"),
        "processes": _Key(
            list,
            ["discrete", "midpoint"],
            "a non-empty list of distinct names from " + ", ".join(map(_format, PROCESS_NAMES)),
            lambda v: 0 < len(v) == len(set(v)) and set(v) <= set(PROCESS_NAMES),
            item=str,
        ),
        "chunk": _Key(int, 25, "an integer >= 1", lambda v: v >= 1),
        "save_w_every": _Key(int, 0, "an integer >= 0 (0: never)", lambda v: v >= 0),
        "warm_start": _Key(
            int, 0, "an integer >= 0 (unlogged optimizer steps first)", lambda v: v >= 0
        ),
        "divergence_factor": _Key(
            float,
            1000.0,
            "a float > 1 (a process whose loss exceeds this many times the initial loss is "
            "stopped as diverged), or 0 (only a non-finite loss or iterate stops one)",
            lambda v: v == 0 or v > 1,
        ),
        "outputs": _Key(
            int,
            8,
            "an integer >= 0 (train and test examples whose network outputs are logged)",
            lambda v: v >= 0,
        ),
        "devices": _Key(
            int,
            1,
            "an integer >= 1 (devices to split the examples over, at most as many as JAX sees)",
            lambda v: v >= 1,
        ),
    },
    "central": {
        "tau": _Key(float, 0.5, "a float > 0", lambda v: v > 0),
        "rtol": _Key(float, 1e-5, "a float > 0", lambda v: v > 0),
        "atol": _Key(float, 1e-7, "a float > 0", lambda v: v > 0),
        "nsubsteps": _Key(int, 4, "an integer >= 1", lambda v: v >= 1),
        "solver": _one_of("bosh3", "tsit5", "euler"),
        "sdcp_threshold": _Key(float, 1.95, "a float > 0", lambda v: v > 0),
        "guard": _Key(
            int, 2, "an integer >= 1 (tracked vectors beyond the critical ones)", lambda v: v >= 1
        ),
        "modified": _Key(
            bool, False, "a boolean (add the modified-equation term along stable directions)"
        ),
        "stationary_nu": _Key(
            bool,
            False,
            "a boolean (log how far the flow's ν is from its stationary value; RMSProp family)",
        ),
    },
    "stable": {
        "max_Seff": _Key(float, 100.0, "a float > 0", lambda v: v > 0),
        "modified": _Key(bool, False, "a boolean (add the modified-equation term)"),
    },
    "checkpoint": {
        "frequency": _Key(int, 100, "an integer >= 0 (0: only at the end)", lambda v: v >= 0),
        "steps": _Key(
            list,
            [],
            "a list of integers >= 1",
            lambda v: min(v, default=1) >= 1,
            item=int,
        ),
    },
}


_NAMED = {"data": DATASETS, "model": ARCHITECTURES}
_OPTIONS = {
    "data": {name: spec.options for name, spec in DATASETS.items()},
    "model": {name: spec.options for name, spec in ARCHITECTURES.items()},
    "problem": PROBLEMS,
}
_PROBLEM_REPLACES = ("data", "model")


def _named(section: str, name: Any):
    """The dataset or architecture called `name`, or `None`."""
    return _NAMED[section].get(name) if isinstance(name, str) else None


def _keys(section: str, table: Mapping) -> dict[str, _Key]:
    """The keys of `section`: for `data`, `model` and `problem`, the common ones and the
    options declared by the dataset, architecture or problem that `table` names."""
    keys = _SCHEMA[section]
    if section not in _OPTIONS:
        return keys
    name = table.get("name", keys["name"].default)
    options = _OPTIONS[section].get(name) if isinstance(name, str) else None
    return keys if options is None else {**keys, **options}


def _sections(raw: Mapping) -> tuple[list[str], list[str]]:
    """The sections a config holds, and its problems with them: a `[problem]` replaces
    `[data]` and `[model]`, which are otherwise filled in."""
    if "problem" not in raw:
        return [s for s in _SCHEMA if s != "problem"], []
    problems = [
        f"[problem] replaces [data] and [model]: remove [{section}] (or [problem])"
        for section in _PROBLEM_REPLACES
        if section in raw
    ]
    return [s for s in _SCHEMA if s not in _PROBLEM_REPLACES], problems


def _has_type(value: Any, type_: type) -> bool:
    if type_ is float:  # an integer is accepted where a float is expected
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type_)


def _unknown(kind: str, name: str, valid: Sequence[str], prefix: str = "") -> str:
    """Names an unknown section or key, suggesting the closest valid one."""
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return f"unknown {kind} {prefix + name!r}; did you mean {prefix + close[0]!r}?"
    names = ", ".join(repr(prefix + v) for v in valid)
    return f"unknown {kind} {prefix + name!r}; valid {kind}s are {names}"


def check_config(raw: Mapping) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`raw` with its defaults filled in, and every problem with it, one line each (the
    work of `validate_config`, which raises where there are problems)."""
    problems = [
        _unknown("section", section, list(_SCHEMA)) for section in raw if section not in _SCHEMA
    ]
    sections, conflicts = _sections(raw)
    problems += conflicts
    cfg = {}
    for section in sections:
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            problems.append(f"{section} = {_format(table)} must be a table [{section}]")
            table = {}
        keys = _keys(section, table)
        problems += [
            _unknown("key", key, list(keys), prefix=f"{section}.")
            for key in table
            if key not in keys
        ]
        cfg[section] = {}
        for key, spec in keys.items():
            name = f"{section}.{key}"
            value = table.get(key, spec.default)
            if value is None:
                problems.append(f"missing required key {name!r} ({spec.expected})")
            elif not _has_type(value, spec.kind) or (
                spec.item is not None and not all(_has_type(v, spec.item) for v in value)
            ):
                problems.append(
                    f"{name} = {_format(value)} has the wrong type; expected {spec.expected}"
                )
            elif not spec.valid(value):
                problems.append(f"{name} = {_format(value)} is invalid; expected {spec.expected}")
            elif spec.kind is float:
                value = float(value)
            elif spec.kind is list:
                value = list(value)
            cfg[section][key] = value
    model, data = (
        _named(section, cfg.get(section, {}).get("name")) for section in ("model", "data")
    )
    accepted = {"vectors": ("vectors", "images"), "images": ("images",), "tokens": ("tokens",)}
    if model and data and data.inputs not in accepted[model.inputs]:
        problems.append(
            f"model.name = {_format(cfg['model']['name'])} takes {model.inputs}, but "
            f"data.name = {_format(cfg['data']['name'])} gives {data.inputs}"
        )
    processes = cfg["run"]["processes"]
    listed = lambda name: isinstance(processes, list) and name in processes
    if listed("central_no_penalty") and cfg["opt"]["name"] == "gd":
        problems.append(
            'run.processes lists "central_no_penalty", which is undefined for opt.name = "gd": '
            "GD's preconditioner does not adapt, so without the curvature penalty nothing "
            'holds S_eff at 2 (GD without the penalty is the "stable" process); use '
            '"scalar_rmsprop" or "rmsprop"'
        )
    if listed("central_stationary") and cfg["opt"]["name"] == "gd":
        problems.append(
            'run.processes lists "central_stationary", which is undefined for opt.name = "gd": '
            "the stationary flow holds RMSProp's ν at its fixed point ν̄(w), and GD has no ν; "
            'use "scalar_rmsprop" or "rmsprop"'
        )
    if listed("central_stationary") and cfg["central"]["modified"] is True:
        problems.append(
            'run.processes lists "central_stationary", which is defined without the '
            "modified-equation term; set central.modified = false"
        )
    devices = cfg["run"]["devices"]
    if "problem" in cfg and _has_type(devices, int) and devices > 1:
        problems.append(
            f"run.devices = {devices} splits a dataset's examples over devices, but a "
            "[problem] has no dataset; use 1"
        )
    eig = cfg["eig"]
    if (
        _has_type(eig["initial_neigs"], int)
        and _has_type(eig["max_neigs"], int)
        and eig["initial_neigs"] > eig["max_neigs"]
    ):
        problems.append(
            f"eig.initial_neigs = {eig['initial_neigs']} exceeds eig.max_neigs = {eig['max_neigs']}"
        )
    return cfg, problems


def config_error(problems: Sequence[str], source: str) -> ConfigError:
    """One `ConfigError` listing `problems`, in the configuration `source`."""
    plural = "s" if len(problems) > 1 else ""
    header = f"{len(problems)} problem{plural} in the configuration {source}:"
    return ConfigError("\n".join([header, *(f"  - {p}" for p in problems)]))


def validate_config(raw: Mapping) -> dict[str, dict[str, Any]]:
    """Checks a configuration and fills in its defaults.

    **Arguments:**

    - `raw`: a mapping from section name to a mapping from key to value, as read from
        TOML; missing sections and keys take their defaults. A `[problem]` section
        replaces `[data]` and `[model]`, which it must then be without.

    **Returns:**

    A new nested dict holding every section and key (`problem` or else `data` and
    `model`); an integer given for a float key is converted to `float`.

    Raises a `ConfigError` listing every unknown section or key (with the closest
    valid name), wrong type, out-of-range value and missing required key.
    """
    cfg, problems = check_config(raw)
    if problems:
        raise config_error(problems, "given")
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parses a command-line override `section.key=value`.

    **Arguments:**

    - `text`: the override. The value is read as a TOML value (so `0.1`, `true`,
        `"abc"` and `[1, 2]` work); if it is not valid TOML it is kept as the raw
        string, so `opt.name=rmsprop` needs no quotes.

    **Returns:**

    The tuple `(section, key, value)`.
    """
    name, eq, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not eq or not dot or not section or not key:
        raise ConfigError(f"malformed override {text!r}; expected the form section.key=value")
    value = value.strip()
    try:
        value = tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError:
        pass
    return section, key, value


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a TOML config file as it is, unvalidated.

    Raises a `ConfigError` for a missing file, a binary one (a run file, say) and
    malformed TOML.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open("rb") as f:
        data = f.read()
    if data.startswith(b"\x89HDF"):
        raise ConfigError(
            f"{path} is an HDF5 file (a run file?), not a TOML config; to continue a "
            f"run, use `centralflows run --resume {path}`"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path} is not a TOML config: it is not UTF-8 text (byte "
            f"{data[e.start]:#04x} at offset {e.start}); is it a binary file?"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"malformed TOML in {path}: {e}") from e


def apply_overrides(raw: Mapping, overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """`raw` (unvalidated) with the overrides `section.key=value` applied in order, and
    the malformed overrides, described."""
    merged = {s: dict(t) if isinstance(t, Mapping) else t for s, t in raw.items()}
    problems = []
    for text in overrides:
        try:
            section, key, value = parse_override(text)
        except ConfigError as e:
            problems.append(str(e))
            continue
        table = merged.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
    return merged, problems


def load_config(
    path: str | os.PathLike | None, overrides: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Reads a TOML configuration, applies overrides and validates the result.

    **Arguments:**

    - `path`: the TOML file, or `None` for all defaults.
    - `overrides`: strings `section.key=value` (see `parse_override`), applied in
        order on top of the file.

    **Returns:**

    The complete configuration, as from `validate_config`.

    Raises a `ConfigError` for a missing or malformed file, and for every problem
    with the overrides or the merged configuration, all reported together.
    """
    raw = {} if path is None else read_toml(path)
    merged, problems = apply_overrides(raw, overrides)
    cfg, invalid = check_config(merged)
    problems += invalid
    if problems:
        source = "from defaults" if path is None else f"from {path}"
        raise config_error(problems, source + (" and overrides" if overrides else ""))
    return cfg


def config_to_toml(cfg: Mapping) -> str:
    """Writes a configuration as TOML that `load_config` reads back to the same
    dict.

    **Arguments:**

    - `cfg`: a configuration; it is validated and completed first.

    **Returns:**

    The TOML text, with every section and key.
    """
    lines = []
    for section, table in validate_config(cfg).items():
        lines += [
            f"[{section}]",
            *(f"{k} = {_format(v)}" for k, v in table.items()),
            "",
        ]
    return "\n".join(lines)
