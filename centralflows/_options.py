"""Declared options: a type, a default and a valid range, read by the config validation."""

import inspect
import json
from collections.abc import Callable
from typing import Any, NamedTuple


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
    """The valid values of an option whose default is read from a signature."""

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


def declare(fn: Callable, **ranges: Range) -> dict[str, Option]:
    """The options of `fn`: one per keyword in `ranges`, its default read from `fn`'s
    signature, so that defaults are written once, in the code that uses them.

    **Arguments:**

    - `fn`: a function or class whose keyword arguments are the options.
    - `ranges`: the valid range of each option.

    **Returns:**

    A dict from option name to [`Option`][], in the order of `ranges`.
    """
    parameters = inspect.signature(fn).parameters
    options = {}
    for name, spec in ranges.items():
        default = parameters[name].default
        if default is inspect.Parameter.empty:
            raise TypeError(f"{fn.__qualname__}'s option {name!r} has no default.")
        if isinstance(default, tuple):
            default = list(default)
        kind = spec.kind or type(default)
        options[name] = Option(kind, default, spec.expected, spec.valid, spec.item)
    return options
