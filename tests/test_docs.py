"""The documentation: its code blocks run, the site builds, the references are the code's.

Python blocks of the README, the getting-started page, the concepts page and the how-to
pages run as tests, each on its own: a fresh namespace, in a fresh directory that holds
`configs/` (the repository's), as if run from the repository root. A marker on the line
just before a block's fence changes that:

- `<!-- docs-test: skip (why) -->`: not run (an edit to the package's source, a fragment,
  a run too long for the suite);
- `<!-- docs-test: slow -->`: run only with `pytest -m slow`;
- `<!-- docs-test: default-job -->`: the block reads the default job's run file from
  `runs/`; the test writes a 3-step run of `configs/gd-mlp-digits.toml` there first
  (200 training examples), made once per test process.

The `centralflows ...` commands of the README's and the getting-started page's bash
blocks run too (the `pip install` and `pytest` commands beside them do not), in order, in
one such directory: each `run` for 3 steps on 200 training examples (`SHORT`), the
default job by reusing the run above, and `plot` on the run file the pages name.
"""

import argparse
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import types

import pytest

import centralflows as cf
from centralflows._config import _SCHEMA, _format, load_config
from centralflows.cli import _parser, main

ROOT = pathlib.Path(__file__).parent.parent
DOCS = ROOT / "docs"
TESTED = [
    ROOT / "README.md",
    DOCS / "getting-started.md",
    DOCS / "concepts.md",
    DOCS / "plotting.md",
    *sorted((DOCS / "how-to").glob("*.md")),
]
MARKERS = ("skip", "slow", "default-job")
_BLOCK = re.compile(
    r"(?:^<!-- docs-test: (?P<marker>[\w-]+)[^\n]*?-->\n)?"  # an optional marker line,
    r"^```(?P<lang>\w*)\n(?P<code>.*?)^```$",  # then a fenced block
    re.S | re.M,
)


def code_blocks(path: pathlib.Path, lang: str = "python"):
    """`(line, marker, code)` for each fenced block of `lang` in `path`."""
    text = path.read_text()
    for match in _BLOCK.finditer(text):
        if match["lang"] == lang:
            line = text.count("\n", 0, match.start("code"))
            yield line, match["marker"], match["code"]


def _cases():
    for path in TESTED:
        for line, marker, code in code_blocks(path):
            marks = []
            if marker == "skip":
                marks.append(pytest.mark.skip(reason="marked `docs-test: skip` in the page"))
            elif marker == "slow":
                marks.append(pytest.mark.slow)
            name = f"{path.relative_to(ROOT)}:{line}"
            yield pytest.param(code, marker, id=name, marks=marks)


# What the suite adds to a documented `centralflows run`: 3 steps, 200 training examples.
SHORT = ["--steps", "3", "--set", "data.n=200", "--set", "data.n_test=50"]
DEFAULT_JOB = ["run", "configs/gd-mlp-digits.toml"]


def shortened(argv: list[str]) -> list[str]:
    """A documented `centralflows run` command's arguments, cut to the suite's size."""
    argv = list(argv)
    if "--steps" in argv:  # the page's own step count gives way to SHORT's
        i = argv.index("--steps")
        del argv[i : i + 2]
    return [*argv, *SHORT]


@pytest.fixture(scope="module")
def default_job(tmp_path_factory):
    """A 3-step run of the default config, as `centralflows run` names it."""
    out = tmp_path_factory.mktemp("default-job")
    config = str(ROOT / DEFAULT_JOB[1])
    assert main([*shortened([DEFAULT_JOB[0], config]), "--quiet", "--out", str(out)]) == 0
    (path,) = out.glob("gd-mlp-digits-2*.h5")
    return path


def test_pages_hold_no_control_characters():
    # A LaTeX command written into a page from a Python string without an r prefix turns
    # into one: "\\nabla" into a line break and "abla", "\\frac" into a form feed.
    pages = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
    bad = {
        f"{page.relative_to(ROOT)}:{number}"
        for page in pages
        for number, line in enumerate(page.read_bytes().decode().split("\n"), 1)
        if re.search(r"[\x00-\x08\x0b-\x1f]", line)
    }
    assert not bad, sorted(bad)


def test_the_markers_are_known():
    for path in TESTED:
        text = path.read_text()
        for marker in re.findall(r"<!-- docs-test: ([\w-]+)", text):
            assert marker in MARKERS, f"{path.name}: unknown marker {marker!r}"
        # A marker applies only to the fence right below it.
        for match in re.finditer(r"<!-- docs-test:[^\n]*-->\n(.*)", text):
            assert match[1].startswith("```"), f"{path.name}: a marker not above a fence"


@pytest.mark.parametrize("code, marker", list(_cases()))
def test_code_block_runs(code, marker, tmp_path, monkeypatch, request):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    if marker == "default-job":
        runs = tmp_path / "runs"
        runs.mkdir()
        source = request.getfixturevalue("default_job")
        shutil.copy(source, runs / source.name)
    monkeypatch.chdir(tmp_path)
    # A module of its own, so that classes defined in the block have a home.
    module = types.ModuleType("docs_block")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, request.node.name, "exec"), module.__dict__)


def shell_commands(path: pathlib.Path):
    """The `centralflows ...` commands of `path`'s bash blocks, in order, each as its
    argument list and the comment after it (`&&` separates commands on a line)."""
    for _, _, code in code_blocks(path, "bash"):
        for line in code.splitlines():
            command, _, comment = line.partition("#")
            for part in command.split("&&"):
                argv = shlex.split(part)
                if argv[:1] == ["centralflows"]:
                    yield argv[1:], comment.strip()


# The run file the pages name as the default job's output: the plot command draws it.
EXAMPLE_RUN = "runs/gd-mlp-digits-20261123-120000.h5"


def test_shell_commands_run(default_job, tmp_path, monkeypatch):
    pages = [ROOT / "README.md", DOCS / "getting-started.md"]
    for page in pages:  # "... prints the path of its run file, e.g. `runs/...`"
        assert f"`{EXAMPLE_RUN}`" in page.read_text(), page.name
    commands = [command for page in pages for command in shell_commands(page)]
    assert [argv[0] for argv, _ in commands].count("plot") >= 1, commands
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    for argv, comment in commands:
        assert argv[0] in ("run", "plot"), f"a documented command the test does not run: {argv}"
        if argv == DEFAULT_JOB:  # the fixture's run, made once: stands for it
            pathlib.Path("runs").mkdir(exist_ok=True)
            shutil.copy(default_job, EXAMPLE_RUN)
        elif argv[0] == "run":
            assert main(shortened(argv)) == 0, argv
        else:
            assert main(argv) == 0, argv
            image = pathlib.Path(comment.removeprefix("writes ").strip())
            assert comment.startswith("writes ") and image.suffix == ".png", comment
            data = image.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, image


def test_config_reference_is_the_validation():
    reference = (DOCS / "reference/cli.md").read_text()
    for section, keys in _SCHEMA.items():
        assert f"### `[{section}]`" in reference, section
        for key, option in keys.items():
            default = "(required)" if option.default is None else f"`{_format(option.default)}`"
            row = f"| `{key}` | {default} | {option.expected} |"
            assert row in reference, row


def test_cli_reference_has_every_option():
    reference = (DOCS / "reference/cli.md").read_text()
    commands = next(
        a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    for name, parser in commands.items():
        assert f"## `centralflows {name}`" in reference, name
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in reference, f"centralflows {name} {flag}"


def test_toml_blocks_are_valid_configs(tmp_path):
    pages = [DOCS / "how-to/run-a-config.md", DOCS / "reference/cli.md"]
    blocks = [code for page in pages for _, _, code in code_blocks(page, "toml")]
    assert blocks
    for i, code in enumerate(blocks):
        path = tmp_path / f"block{i}.toml"
        path.write_text(code)
        load_config(path)


def test_the_api_reference_covers_the_public_namespace():
    reference = (DOCS / "reference/api.md").read_text()
    public = [name for name in cf.__all__ if not isinstance(getattr(cf, name), types.ModuleType)]
    assert len(public) > 20
    missing = [name for name in public if f"::: centralflows.{name}\n" not in reference]
    assert not missing, missing


def test_docs_holds_pages_not_results():
    assert not list(DOCS.rglob("*.json")), "results go to benchmarks/results/ or notes/"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
