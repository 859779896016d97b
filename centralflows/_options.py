"""Declared options: a type, a default and a valid range, read by the config validation.

Plain data without jax, so that the command line validates a config before importing it.
"""

import inspect
import json
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

Inputs = Literal["vectors", "images", "tokens"]


class Option(NamedTuple):
    """One option: its type, default, valid range and a description of that range.

    A default of `None` means the option must be given.
    """

    kind: type  # bool, int, float, str or list, or a union of them
    default: Any
    expected: str  # the valid range, in words
    valid: Callable[[Any], bool] = lambda value: True
    item: type | None = None  # the element type of a list


class Range(NamedTuple):
    """The valid values of an option, without its default (see [`option`][])."""

    expected: str
    valid: Callable[[Any], bool] = lambda value: True
    item: type | None = None
    kind: type | None = None  # by default the type of the default


def at_least(low: int | float, condition: str = "") -> Range:
    """Numbers `>= low` (integers if `low` is an integer), with a further `condition` on
    other values (checked where those are known, e.g. when the model is built) in words."""
    noun = "an integer" if isinstance(low, int) else "a float"
    return Range(f"{noun} >= {low}" + (f" ({condition})" if condition else ""), lambda v: v >= low)


def between(low: int, high: int) -> Range:
    """Integers from `low` to `high` inclusive."""
    return Range(f"an integer from {low} to {high}", lambda v: low <= v <= high)


def one_of(*values: str) -> Range:
    """One of the strings `values`."""
    return Range(f"one of {', '.join(map(json.dumps, values))}", values.__contains__)


def flag() -> Range:
    """A boolean."""
    return Range("a boolean")


def integers(low: int = 1, *, empty: bool = True) -> Range:
    """A list of integers `>= low`, which may be `empty` or not."""
    return Range(
        f"a {'' if empty else 'non-empty '}list of integers >= {low}",
        lambda v: (empty or len(v) > 0) and min(v, default=low) >= low,
        item=int,
        kind=list,
    )


class Declared(NamedTuple):
    """The config options of a named architecture or dataset, and the inputs it takes or
    gives (`"vectors"`, `"images"` or `"tokens"`)."""

    options: dict[str, Option]
    inputs: Inputs


def option(default: Any, valid: Range) -> Option:
    """The option taking values in `valid`, `default` if not given (a tuple is stored as a
    list, as TOML reads it)."""
    if isinstance(default, tuple):
        default = list(default)
    return Option(valid.kind or type(default), default, valid.expected, valid.valid, valid.item)


def signature_mismatches(options: dict[str, Option], *fns: Callable) -> list[str]:
    """How declared `options` disagree with the keyword arguments of `fns`: each option's
    default against the signature of the first of `fns` taking it (value and type, a tuple
    read as a list); empty when they agree.

    The declarations are written as plain data, so the config is validated without
    importing the code that uses them; a test calls this so the two cannot drift apart.
    """
    signatures = [inspect.signature(fn).parameters for fn in fns]
    problems = []
    for name, declared in options.items():
        found = [p[name] for p in signatures if name in p]
        if not found:
            problems.append(f"{name!r}: no such keyword argument")
            continue
        default = found[0].default
        if default is inspect.Parameter.empty:
            problems.append(f"{name!r}: the signature has no default")
            continue
        if isinstance(default, tuple):
            default = list(default)
        if type(default) is not type(declared.default) or default != declared.default:
            problems.append(f"{name!r}: declared {declared.default!r}, signature {default!r}")
        elif not declared.valid(default):
            problems.append(f"{name!r}: the default {default!r} is not {declared.expected}")
    return problems
