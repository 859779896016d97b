"""Public names imported on first use (PEP 562), so that `import centralflows` and the
command line's argument parsing do not import jax."""

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def attach(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of a package whose public names are
    imported when first read.

    **Arguments:**

    - `package`: the package's `__name__`.
    - `exports`: each public name and the module that defines it, relative to
        `package` (to its parent if `package` is a module, not a package); the package
        lists the same imports under `if TYPE_CHECKING:` for type checkers and
        documentation (a test checks the two agree).

    **Returns:**

    `(__getattr__, __dir__)`. A name is imported once: its value is then stored in the
    package, where later reads find it without calling `__getattr__`.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = sys.modules[package]
        value = getattr(importlib.import_module(exports[name], module.__package__), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
