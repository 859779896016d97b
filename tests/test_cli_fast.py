"""The command line answers before importing jax (issue 21, deliverable 2): `--help`, every
config error and an unusable `--out` are found by plain Python; the lazy namespaces and the
plain-data option declarations that make this possible agree with the code they stand for.

Wall-clock times are not asserted here (they depend on the machine's load); what is
asserted is the cause of slowness, whether `jax` was imported. `benchmarks/cli_latency.py`
measures the times.
"""

import ast
import importlib
import inspect

import pytest

from centralflows._options import (
    Option,
    at_least,
    integers,
    one_of,
    option,
    signature_mismatches,
)

# --- the lazy namespaces -----------------------------------------------------------------

_PACKAGES = ["centralflows", "centralflows.models", "centralflows.data", "centralflows.internal"]


def _type_checking_imports(module) -> dict[str, str]:
    """`{name: module}` of the `from X import name as name` lines under `if TYPE_CHECKING:`."""
    tree = ast.parse(inspect.getsource(module))
    (block,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    names = {}
    for node in block.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                assert alias.asname == alias.name  # `import X as X`: a deliberate export
                names[alias.name] = "." * node.level + (node.module or "")
    return names


@pytest.mark.parametrize("name", _PACKAGES)
def test_lazy_namespace_is_complete(name):
    package = importlib.import_module(name)
    exports = dict(package._EXPORTS)
    exports.pop("__version__", None)
    # What type checkers and the docs read is what is exported, from the same modules.
    assert _type_checking_imports(package) == exports
    assert list(package.__all__) == list(exports)
    assert set(package.__all__) <= set(dir(package))
    for public, module in exports.items():
        defined = getattr(importlib.import_module(module, package.__package__), public)
        assert getattr(package, public) is defined
        assert vars(package)[public] is defined  # stored: later reads skip __getattr__
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        package.nope  # noqa: B018


def test_version_and_star_import():
    import centralflows as cf

    assert isinstance(cf.__version__, str) and cf.__version__
    namespace = {}
    exec("from centralflows import *", namespace)
    assert {"run", "GD", "load_run", "StopReason"} <= set(namespace)


# --- the option declarations, as plain data ----------------------------------------------


def test_declarations_agree_with_the_signatures():
    from centralflows.data import _declared as data_declared
    from centralflows.data._cifar10 import load_cifar10
    from centralflows.data._digits import load_digits
    from centralflows.data._sequences import make_sequence_task
    from centralflows.data._sklearn import _GENERATORS, make_sklearn
    from centralflows.data._zoo import _LOADERS
    from centralflows.models import _declared as model_declared
    from centralflows.models._zoo import _MODELS

    assert list(model_declared.DECLARED) == list(_MODELS)
    for name, declared in model_declared.DECLARED.items():
        assert signature_mismatches(declared.options, _MODELS[name]) == [], name
    assert list(data_declared.DECLARED) == list(_LOADERS)
    loaders = {
        "digits": (load_digits,),
        "cifar10": (load_cifar10,),
        "sorting": (make_sequence_task,),
        "copying": (make_sequence_task,),
        **{name: (make_sklearn, draw) for name, (draw, _) in _GENERATORS.items()},
    }
    assert set(loaders) == set(data_declared.DECLARED)
    for name, declared in data_declared.DECLARED.items():
        assert signature_mismatches(declared.options, *loaders[name]) == [], name


def test_declared_choices_are_those_the_code_accepts():
    from centralflows.models import _declared, _resnet, _transformer, _vit
    from centralflows.models._layers import ACTIVATIONS

    choices = lambda *values: one_of(*values).expected
    assert _declared.ACTIVATION_NAMES == tuple(ACTIVATIONS)
    for name, declared in _declared.DECLARED.items():
        if "activation" in declared.options:
            assert declared.options["activation"].expected == choices(*ACTIVATIONS), name
    norms = {"resnet": _resnet._NORMS, "vit": _vit._NORMS, "transformer": _transformer._NORMS}
    for name, values in norms.items():
        assert _declared.DECLARED[name].options["norm"].expected == choices(*values), name


def test_signature_mismatches_finds_drift():
    def model(first, *, width: int = 8, scale: float = 0.5, sizes=(1, 2), required):
        del first, width, scale, sizes, required

    agreeing = {
        "width": option(8, at_least(1)),
        "scale": option(0.5, at_least(0.0)),
        "sizes": option([1, 2], integers(1)),
    }
    assert signature_mismatches(agreeing, model) == []
    drifted = {
        "width": option(16, at_least(1)),  # the default changed in the code
        "scale": option(0, at_least(0)),  # an int where the code has a float
        "depth": option(2, at_least(1)),  # a keyword the code does not take
        "required": Option(int, 1, "an integer"),  # no default in the code
    }
    problems = signature_mismatches(drifted, model)
    assert [p.split(":")[0] for p in problems] == ["'width'", "'scale'", "'depth'", "'required'"]
