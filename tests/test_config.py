import pathlib

import pytest

from centralflows._config import (
    ConfigError,
    config_to_toml,
    load_config,
    parse_override,
    validate_config,
)

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_defaults_filled():
    cfg = validate_config({"opt": {"lr": 1}})
    assert cfg["opt"] == {
        "name": "gd",
        "lr": 1.0,
        "beta2": 0.99,
        "eps": 0.0,
        "bias_correction": False,
    }
    assert isinstance(cfg["opt"]["lr"], float)  # an int is accepted for a float key
    assert cfg["data"]["n"] == 1000 and cfg["data"]["criterion"] == "mse"
    assert cfg["run"]["processes"] == ["discrete", "midpoint"]
    assert cfg["checkpoint"] == {"frequency": 100, "steps": []}
    assert cfg["stable"]["max_Seff"] == 100.0
    assert set(cfg) == {
        "opt",
        "data",
        "model",
        "eig",
        "run",
        "central",
        "stable",
        "checkpoint",
    }


def test_defaults_not_shared():
    cfg = validate_config({"opt": {"lr": 0.1}})
    cfg["run"]["processes"].append("central")
    assert validate_config({"opt": {"lr": 0.1}})["run"]["processes"] == [
        "discrete",
        "midpoint",
    ]


def test_lr_required():
    with pytest.raises(ConfigError, match=r"missing required key 'opt\.lr'"):
        load_config(None)
    assert load_config(None, ["opt.lr=0.1"])["opt"]["lr"] == 0.1


def test_shipped_configs_load():
    names = {path.name for path in CONFIGS}
    assert {
        "gd-mlp-digits.toml",
        "rmsprop-mlp-digits.toml",
        "scalar-rmsprop-mlp-digits.toml",
    } <= names
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg["opt"]["lr"] > 0
        assert path.read_text().startswith("#")  # a comment says what the job is
    gd = load_config(CONFIGS[0].parent / "gd-mlp-digits.toml")
    assert gd["opt"]["name"] == "gd" and gd["data"]["n"] == 1000
    assert gd["model"] == {
        "name": "mlp",
        "width": 32,
        "depth": 2,
        "widths": [],
        "bias": True,
        "activation": "tanh",
    }
    assert gd["run"]["steps"] == 400  # the README's default job: all four processes
    assert gd["run"]["processes"] == ["discrete", "midpoint", "central", "stable"]
    rmsprop = load_config(CONFIGS[0].parent / "rmsprop-mlp-digits.toml")
    assert rmsprop["opt"]["name"] == "rmsprop" and rmsprop["opt"]["lr"] == 0.002
    scalar = load_config(CONFIGS[0].parent / "scalar-rmsprop-mlp-digits.toml")
    assert scalar["opt"]["name"] == "scalar_rmsprop" and scalar["opt"]["lr"] == 0.01


@pytest.mark.parametrize(
    "text, expected",
    [
        ("opt.lr=0.1", ("opt", "lr", 0.1)),
        ("opt.lr = 1e-3", ("opt", "lr", 1e-3)),
        ("data.n=200", ("data", "n", 200)),
        ("opt.bias_correction=true", ("opt", "bias_correction", True)),
        (
            'run.processes=["midpoint", "discrete"]',
            ("run", "processes", ["midpoint", "discrete"]),
        ),
        ("checkpoint.steps=[1,2]", ("checkpoint", "steps", [1, 2])),
        ("opt.name=rmsprop", ("opt", "name", "rmsprop")),  # bare string
        ('opt.name="rmsprop"', ("opt", "name", "rmsprop")),
        ("central.solver=a=b", ("central", "solver", "a=b")),
    ],
)
def test_parse_override(text, expected):
    result = parse_override(text)
    assert result == expected
    assert type(result[2]) is type(expected[2])


@pytest.mark.parametrize("text", ["opt.lr", "lr=0.1", ".lr=0.1", "opt.=0.1"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_override(text)


def test_overrides_apply(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[opt]\nname = "gd"\nlr = 0.5\n')
    cfg = load_config(
        path,
        [
            "opt.name=rmsprop",
            "opt.lr=0.01",
            "opt.beta2=0.9",
            "opt.bias_correction=true",
            'run.processes=["midpoint"]',
            "model.width=8",
        ],
    )
    assert cfg["opt"] == {
        "name": "rmsprop",
        "lr": 0.01,
        "beta2": 0.9,
        "eps": 0.0,
        "bias_correction": True,
    }
    assert cfg["run"]["processes"] == ["midpoint"]
    assert cfg["model"]["width"] == 8
    # Later overrides win.
    assert load_config(path, ["opt.lr=0.1", "opt.lr=0.2"])["opt"]["lr"] == 0.2


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'opt\.lrr'; did you mean 'opt\.lr'\?"):
        validate_config({"opt": {"lrr": 0.1, "lr": 0.1}})
    with pytest.raises(ConfigError, match=r"did you mean 'eig\.max_neigs'\?"):
        load_config(None, ["opt.lr=0.1", "eig.max_neig=3"])
    # With nothing close, the valid keys are listed.
    with pytest.raises(ConfigError, match=r"'stable\.max_Seff'"):
        validate_config({"opt": {"lr": 0.1}, "stable": {"zzz": 1}})


def test_unknown_section_suggests():
    with pytest.raises(ConfigError, match=r"unknown section 'optim'; did you mean 'opt'\?"):
        validate_config({"opt": {"lr": 0.1}, "optim": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown section 'modle'; did you mean 'model'"):
        load_config(None, ["opt.lr=0.1", "modle.width=3"])


def test_section_not_a_table():
    with pytest.raises(ConfigError, match=r"must be a table \[opt\]"):
        validate_config({"opt": 0.1})


@pytest.mark.parametrize(
    "override, message",
    [
        ("opt.lr=-0.1", r"opt\.lr = -0\.1 .*a float > 0"),
        ("opt.lr=0", r"opt\.lr = 0 .*a float > 0"),
        ("opt.beta2=1.0", r"opt\.beta2 = 1\.0 .*open interval \(0, 1\)"),
        ("opt.beta2=0", r"opt\.beta2 = 0 .*open interval \(0, 1\)"),
        ("opt.eps=-1e-8", r"opt\.eps = -1e-08 .*a float >= 0"),
        ("opt.name=adam", r'opt\.name = "adam" .*"gd", "scalar_rmsprop", "rmsprop"'),
        ("opt.lr=abc", r'opt\.lr = "abc" has the wrong type; expected a float > 0'),
        ("opt.bias_correction=1", r"opt\.bias_correction = 1 has the wrong type"),
        ("data.n=true", r"data\.n = true has the wrong type; expected an integer"),
        ("data.n=10.0", r"data\.n = 10\.0 has the wrong type"),
        ("data.n=0", r"data\.n = 0 .*>= 1"),
        ("data.classes=11", r"data\.classes = 11 .*from 2 to 10"),
        ("data.criterion=l2", r'data\.criterion = "l2" .*"mse", "ce"'),
        ("model.activation=sigmoid", r'model\.activation = "sigmoid" .*"tanh"'),
        ('run.processes=["discrete", "foo"]', r'run\.processes = .*"foo".*"midpoint"'),
        ("run.processes=[]", r"run\.processes = \[\] .*non-empty"),
        ("run.processes=[1]", r"run\.processes = \[1\] has the wrong type"),
        ("run.precision=float16", r'run\.precision = "float16"'),
        ("central.solver=dopri5", r'central\.solver = "dopri5" .*"tsit5", "euler"'),
        ("checkpoint.steps=[0]", r"checkpoint\.steps = \[0\] .*integers >= 1"),
        ("checkpoint.steps=[10, -1]", r"checkpoint\.steps = \[10, -1\] .*integers >= 1"),
        ("checkpoint.steps=[1.5]", r"checkpoint\.steps = \[1\.5\] has the wrong type"),
        ("checkpoint.steps=5", r"checkpoint\.steps = 5 has the wrong type; expected a list"),
        ("checkpoint.frequency=-1", r"checkpoint\.frequency = -1 .*>= 0 \(0: only at the end\)"),
        ("checkpoint.frequency=true", r"checkpoint\.frequency = true has the wrong type"),
        ("checkpoint.every=10", r"unknown key 'checkpoint\.every'"),
        ("eig.initial_neigs=9", r"eig\.initial_neigs = 9 exceeds eig\.max_neigs = 8"),
    ],
)
def test_invalid_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["opt.lr=0.1", override])


def test_all_problems_reported_together(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[opt]\nlr = -1.0\nbeta2 = 1.5\nlrr = 3\n[model]\nwidth = "wide"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.n=true", "oops", "optim.lr=1"])
    message = str(info.value)
    lines = message.splitlines()
    assert str(path) in lines[0] and "7 problems" in lines[0]
    expected = [
        "opt.lr = -1.0",
        "opt.beta2 = 1.5",
        "unknown key 'opt.lrr'",
        'model.width = "wide"',
        "data.n = true",
        "malformed override 'oops'",
        "unknown section 'optim'",
    ]
    for fragment in expected:  # each problem on a line of its own
        assert sum(fragment in line for line in lines[1:]) == 1, fragment
    assert len(lines) == 1 + len(expected)


def test_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            "opt.name=rmsprop",
            "opt.lr=3e-4",
            "opt.eps=1e-12",
            "opt.bias_correction=true",
            'run.processes=["midpoint", "discrete"]',
            "checkpoint.steps=[5, 10, 100]",
            "checkpoint.frequency=0",
            "eig.tol=1e-9",
            "central.atol=1",  # an int for a float key
        ],
    )
    path = tmp_path / "round.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path) == cfg
    for shipped in CONFIGS:
        cfg = load_config(shipped)
        path.write_text(config_to_toml(cfg))
        assert load_config(path) == cfg


def test_config_to_toml_validates():
    with pytest.raises(ConfigError, match=r"opt\.lr = -1"):
        config_to_toml({"opt": {"lr": -1.0}})


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_config(path)


def test_malformed_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[opt]\nlr = = 0.1\n")
    with pytest.raises(ConfigError, match=r"malformed TOML in .*broken\.toml: .*line 2"):
        load_config(path)
