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
import json
import os
import pathlib
import subprocess
import sys

import pytest

from centralflows._options import (
    Option,
    at_least,
    integers,
    one_of,
    option,
    signature_mismatches,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT = "configs/gd-mlp-digits.toml"

# Runs `main(argv)` in a fresh interpreter and reports its exit status, its stderr and
# whether jax (or anything under it) was imported by then.
_PROBE = """
import contextlib, io, json, sys
from centralflows.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
        status = main(json.loads(sys.argv[1]))
    except SystemExit as e:
        status = e.code
print(json.dumps({
    "status": status,
    "err": err.getvalue(),
    "jax": sorted(m for m in sys.modules if m == "jax" or m.startswith(("jax.", "jaxlib"))),
}))
"""


def _probe(argv: list[str], prelude: str = "") -> dict:
    """`main(argv)` in a fresh interpreter that first runs `prelude`."""
    proc = subprocess.run(
        [sys.executable, "-c", prelude + _PROBE, json.dumps(argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang, not a slow machine
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _imports_jax(code: str) -> bool:
    proc = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('jax' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[-1] == "True"


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["plot", "--help"], ["sweep", "--help"], []]
)
def test_help_and_usage_errors_do_not_import_jax(argv):
    result = _probe(argv)
    assert result["status"] == (0 if argv else 2)
    assert result["jax"] == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", DEFAULT, "--set", "opt.lr=-1"], "opt.lr = -1 is invalid"),
        (["run", DEFAULT, "--set", "opt.lrr=0.1"], "did you mean 'opt.lr'"),
        (["run", DEFAULT, "--set", "modle.width=3"], "did you mean 'model'"),
        (["run", DEFAULT, "--set", "model.widht=3"], "did you mean 'model.width'"),
        (["run", DEFAULT, "--set", "model.width=0"], "model.width = 0 is invalid"),
        (["run", DEFAULT, "--set", "data.classes=11"], "data.classes = 11 is invalid"),
        (["run", DEFAULT, "--set", "model.name=lstm"], 'model.name = "lstm" takes tokens'),
        (["run", DEFAULT, "--set", "opt"], "malformed override"),
        (["run", DEFAULT, "--steps", "0"], "run.steps = 0 is invalid"),
        (["run", DEFAULT, "--runs", "sideways"], "run.processes"),
        (["run", DEFAULT, "--set", "opt.lr=-1", "--dry-run"], "opt.lr = -1 is invalid"),
        (["run", "configs/gd-toy.toml", "--set", "problem.b=0"], "problem.b = 0 is invalid"),
        (["run", DEFAULT, "--set", "problem.name=toy"], "[problem] replaces [data] and [model]"),
        (["run", "configs/nope.toml"], "config file not found"),
        (["run"], "a CONFIG file is required"),
        (["run", "--resume", "x.h5", "--set", "opt.lr=1"], "takes no --set opt.lr"),
        (["sweep", DEFAULT, "--grid", "opt.lr=0.3,-1"], "opt.lr = -1 is invalid"),
        (["sweep", DEFAULT, "--grid", "model.widht=8,16"], "did you mean 'model.width'"),
        (["sweep", DEFAULT, "--grid", "opt.lr=0.3", "--slurm", "x"], "malformed --slurm"),
    ],
)
def test_config_errors_do_not_import_jax(argv, message):
    result = _probe(argv)
    assert result["status"] == 2 and message in result["err"], result["err"]
    assert result["jax"] == []


def test_unwritable_out_is_refused_without_jax(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _probe(["run", DEFAULT, "--out", str(blocker / "runs")])
    assert result["status"] == 2 and "is a file, not a directory" in result["err"]
    assert result["jax"] == []
    assert blocker.read_text() == ""


@pytest.mark.parametrize("made", [True, False])
def test_an_unwritable_out_directory_is_refused_without_jax(tmp_path, made):
    # Tests run as root, for whom `chmod` refuses nothing: the probe refuses writes under
    # `tmp_path` as the kernel does for a user without write permission there.
    out = tmp_path if made else tmp_path / "new" / "runs"
    refuse = f"from tests.denied import refuse_writes\nrefuse_writes({str(tmp_path)!r})\n"
    argv = ["run", "configs/gd-toy.toml", "--steps", "2", "--name", "r", "--out", str(out)]
    result = _probe(argv, prelude=refuse)
    why = "written" if made else "made"
    expected = f"Cannot write run file '{out}/r.h5': directory '{out}' cannot be {why}"
    assert result["status"] == 2 and expected in result["err"], result["err"]
    assert "Permission denied" in result["err"]
    assert result["jax"] == []  # refused before the model was built
    assert not any(tmp_path.iterdir())


def test_the_probe_sees_jax():
    # The control: the first read of a public name imports its module, and jax with it.
    assert _imports_jax("import centralflows as cf\ncf.GD")
    assert _imports_jax("import centralflows.models as m\nm.MLP")


def test_importing_the_packages_does_not_import_jax():
    code = "import centralflows, centralflows.cli, centralflows.models, centralflows.data"
    code += ", centralflows.problems"
    assert not _imports_jax(code + ", centralflows.internal, centralflows._config")
    assert not _imports_jax("import centralflows as cf\ncf.__version__, dir(cf)")


# --- the lazy namespaces -----------------------------------------------------------------

_PACKAGES = [
    "centralflows",
    "centralflows.models",
    "centralflows.data",
    "centralflows.problems",
    "centralflows.internal",
]


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


def test_problem_declarations_agree_with_the_signatures():
    from centralflows.problems import LeastSquares, Quartic, ScalarFactorisation, Toy
    from centralflows.problems import _declared as problem_declared
    from centralflows.problems._zoo import _MAKERS

    classes = {
        "toy": Toy,
        "least_squares": LeastSquares,
        "quartic": Quartic,
        "scalar_factorisation": ScalarFactorisation,
    }
    assert list(problem_declared.DECLARED) == list(_MAKERS) == list(classes)
    for name, options in problem_declared.DECLARED.items():
        assert signature_mismatches(options, classes[name]) == [], name


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
