"""The architectures, datasets, losses and configs of the zoo (issue 19)."""

import io
import pathlib
import pickle
import re
import tarfile

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import centralflows as cf
from centralflows._config import _format, load_config, validate_config
from centralflows._experiment import make_problem
from centralflows.cli import main
from centralflows.data import (
    DATASETS,
    IGNORE,
    load_cifar10,
    locate_cifar10,
    make_sequence_task,
    make_sklearn,
)
from centralflows.models import (
    ARCHITECTURES,
    CNN,
    LSTM,
    MLP,
    MSE,
    CrossEntropy,
    GroupNorm,
    LayerNorm,
    Mamba,
    RMSNorm,
    Transformer,
    cross_entropy,
    mse,
)

ROOT = pathlib.Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
SMALL = [path for path in CONFIGS if path.stem.endswith("-small")]
ZOO_DOC = (ROOT / "docs/zoo.md").read_text()

# Tiny instances of every architecture (and of each normalisation), with nonzero heads so
# that no derivative vanishes because a read-out starts at zero.
TINY = {
    "mlp": dict(width=5, depth=2, activation="gelu"),
    "cnn": dict(width=2),
    "resnet": dict(width=2, stage_sizes=(1, 1), norm="group"),
    "vit": dict(patch_size=4, dim=8, depth=1, heads=2, dim_head=2, mlp_dim=4, init_scale=1.0),
    "lstm": dict(layers=1, embed_dim=3, hidden_dim=3),
    "transformer": dict(layers=1, d_model=4, heads=2, weight_multiplier=1.0),
    "mamba": dict(layers=1, d_model=4, d_state=2, init_scale=1.0),
}


def compiled(fn, *args):
    """`fn(*args)`, compiled with XLA's cheap settings: these programs are tiny and run
    once, so compiling them is nearly all the cost."""
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)


def build(cls, *args, key, **kwargs):
    """`cls(*args, **kwargs, key=key)`, initialised in one compiled program rather than
    op by op."""
    return compiled(lambda key: cls(*args, **kwargs, key=key), key)


def tiny_objective(name, key):
    """The full-batch loss of a tiny instance of architecture `name` on random data:
    3-class images (MSE) for the vision models, a next-token task with ignored
    positions (cross-entropy) for the sequence models."""
    architecture = ARCHITECTURES[name]
    kx, ky, kmodel = jr.split(key, 3)
    if architecture.inputs == "tokens":
        x = jr.randint(kx, (3, 5), 0, 3)
        y = jr.randint(ky, (3, 5), 0, 3).at[:, :2].set(IGNORE)
        first, loss = 3, CrossEntropy()
    else:
        x = jr.normal(kx, (3, 1, 8, 8))
        y = jr.randint(ky, (3,), 0, 3)
        first, loss = (1, 8, 8), MSE()
        if architecture.inputs == "vectors":
            x, first = x.reshape(3, -1), 64
    model = build(architecture.model, first, 3, **TINY[name], key=kmodel)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    objective = cf.Objective.supervised(
        lambda p, x, y: loss(eqx.combine(p, static)(x), y), params, (x, y)
    )
    return objective, jfu.ravel_pytree(params)[0]


# Measured 2026-12-02 on the shared 2-core CPU at a load of 4: at most 14 s each (vit, resnet;
# transformer 11 s, mamba 10 s); 20 to 26 s with another job's compile beside them.
# In the default run: one architecture of each kind of layer stack (dense, recurrent, scan);
# `pytest -m slow` adds the convolutional and attention ones (35 s).
_THIRD_ORDER_SLOW = ("vit", "resnet", "transformer")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in _THIRD_ORDER_SLOW else n for n in TINY],
)
def test_third_order_matches_finite_differences_of_hvps(name, getkey):
    objective, w0 = tiny_objective(name, getkey())
    # A generic point: away from the zero-initialised scales of the norms and heads.
    w = w0 + 0.3 * jr.normal(getkey(), w0.shape)
    u, v = (x / jnp.linalg.norm(x) for x in jr.normal(getkey(), (2,) + w.shape))

    def check(w, u, v):
        h = 1e-4
        third = objective.third_order(w, u, v)
        # ∇_w(uᵀH(w)v) is the third derivative T[u, v, ·] = d/dh H(w + h u) v (symmetry).
        fd = (objective.hvp(w + h * u, v) - objective.hvp(w - h * u, v)) / (2 * h)
        return third, fd

    third, fd = compiled(check, w, u, v)
    size = float(jnp.linalg.norm(third))
    assert size > 1e-3  # measured 0.01 to 0.7: the term is not trivially zero
    # Central differences: O(h²) truncation; measured relative errors 1e-9 to 3e-9.
    assert float(jnp.linalg.norm(third - fd)) <= 1e-6 * size


@pytest.mark.parametrize(
    "norm",
    [
        LayerNorm(5, dtype=jnp.float64),
        LayerNorm(5, affine=False, dtype=jnp.float64),
        RMSNorm(5, dtype=jnp.float64),
        GroupNorm(5, 1, dtype=jnp.float64),  # one group: layer normalisation of a map
    ],
    ids=["layer", "frozen", "rms", "group"],
)
def test_norm_third_derivatives(norm, getkey):
    # The third derivative of a scalar of the normalised input, against finite
    # differences of its Hessian.
    shape = (5, 1, 2) if isinstance(norm, GroupNorm) else (5,)
    c = jr.normal(getkey(), shape)
    f = lambda x: jnp.sum(c * jnp.tanh(norm(x)))
    x = 0.5 * jr.normal(getkey(), shape)
    u, v = jr.normal(getkey(), (2,) + shape)

    def check(x, u, v):
        hvp = lambda x: jax.jvp(jax.grad(f), (x,), (v,))[1]
        third = jax.grad(lambda x: jnp.vdot(u, hvp(x)))(x)
        h = 1e-5
        return third, (hvp(x + h * u) - hvp(x - h * u)) / (2 * h)

    third, fd = compiled(check, x, u, v)
    assert float(jnp.linalg.norm(third)) > 1.0
    np.testing.assert_allclose(third, fd, rtol=1e-6, atol=1e-8 * float(jnp.max(jnp.abs(third))))


def _count(model):
    shaped = lambda x: isinstance(x, jax.ShapeDtypeStruct) or eqx.is_array(x)
    return sum(p.size for p in jax.tree.leaves(eqx.filter(model, shaped)))


def test_parameter_counts():
    # MLP: per-layer widths, without biases.
    model = eqx.filter_eval_shape(MLP, 10, 3, widths=(7, 5), bias=False, key=jr.key(0))
    assert [layer.weight.shape for layer in model.layers] == [(7, 10), (5, 7), (3, 5)]
    assert _count(model) == 10 * 7 + 7 * 5 + 5 * 3
    # CNN: 9 c w + 18 w² + (h w / 16)(2 w)(4 w) + (4 w + 1) k.
    c, w, h, k = 3, 4, 16, 5
    assert _count(eqx.filter_eval_shape(CNN, (c, h, h), k, width=w, key=jr.key(0))) == (
        9 * c * w + 18 * w**2 + (h * h // 16) * 2 * w * 4 * w + (4 * w + 1) * k
    )


def test_mlp_default_unchanged_by_the_new_options():
    a = build(MLP, 8, 3, width=6, key=jr.key(1))
    b = build(MLP, 8, 3, widths=(6, 6), bias=True, key=jr.key(1))
    assert eqx.tree_equal(a, b)


def test_heads_start_at_zero(getkey):
    resnet = build(ARCHITECTURES["resnet"].model, (1, 8, 8), 4, **TINY["resnet"], key=getkey())
    vit_options = {**TINY["vit"], "init_scale": 0.0}
    vit = build(ARCHITECTURES["vit"].model, (1, 8, 8), 4, **vit_options, key=getkey())
    transformer = build(Transformer, 4, 3, layers=1, d_model=4, heads=2, key=getkey())
    for head in (resnet.head, vit.head):
        assert jnp.all(head.weight == 0) and jnp.all(head.bias == 0)
    assert jnp.all(transformer.head.weight == 0) and jnp.any(transformer.head.bias != 0)
    # Each residual block starts as its shortcut: the second norm's scale is zero.
    assert all(jnp.all(block.norm2.weight == 0) for block in resnet.blocks)


@pytest.mark.parametrize("cls", [LSTM, Transformer, Mamba])
def test_sequence_models_are_causal(cls, getkey):
    name = {LSTM: "lstm", Transformer: "transformer", Mamba: "mamba"}[cls]
    model = build(cls, 4, 3, **TINY[name], key=getkey())
    tokens = jr.randint(getkey(), (7,), 0, 4)
    changed = tokens.at[4].set((tokens[4] + 1) % 4)
    before, after = compiled(lambda a, b: (model(a), model(b)), tokens, changed)
    assert before.shape == (7, 3)
    np.testing.assert_allclose(before[:4], after[:4], rtol=1e-12)
    assert float(jnp.max(jnp.abs(before[4:] - after[4:]))) > 1e-6


def test_mamba_parallel_scan_equals_sequential(getkey):
    key, tokens = getkey(), jr.randint(getkey(), (9,), 0, 5)
    options = dict(layers=1, d_model=4, d_state=3, init_scale=1.0)
    sequential = build(Mamba, 5, 2, **options, key=key)
    parallel = build(Mamba, 5, 2, **options, parallel_scan=True, key=key)
    # Perturb the step sizes so that the recurrence does not decay to nothing at once.
    bump = lambda m: eqx.tree_at(lambda m: m.blocks[0].log_a, m, m.blocks[0].log_a - 2.0)
    sequential, parallel = bump(sequential), bump(parallel)
    for a, b in zip(jax.tree.leaves(sequential), jax.tree.leaves(parallel)):
        assert jnp.array_equal(a, b)  # the same parameters
    params, static = eqx.partition(sequential, eqx.is_inexact_array)
    params_p, static_p = eqx.partition(parallel, eqx.is_inexact_array)

    def both(params, params_p, tokens):
        loss = lambda p, s: jnp.sum(eqx.combine(p, s)(tokens) ** 2)
        return jax.value_and_grad(loss)(params, static), jax.value_and_grad(loss)(
            params_p, static_p
        )

    (value, grad), (value_p, grad_p) = compiled(both, params, params_p, tokens)
    assert float(value) > 1e-3
    np.testing.assert_allclose(value_p, value, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_p)):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-14)


def test_losses_categorical_binary_and_ignore():
    outputs = jnp.array([[1.0, 2.0, -1.0], [0.5, 0.0, 0.2], [3.0, 0.0, 0.0]])
    labels = jnp.array([1, IGNORE, 0])
    one_hot = jnp.eye(3)[jnp.array([1, 0])]
    kept = outputs[jnp.array([0, 2])]
    # Sequence: the mean over labelled positions of the one-hot losses.
    expected = (mse(kept[0], one_hot[0]) + mse(kept[1], one_hot[1])) / 2
    assert jnp.allclose(MSE()(outputs, labels), expected)
    expected = (cross_entropy(kept[0], one_hot[0]) + cross_entropy(kept[1], one_hot[1])) / 2
    assert jnp.allclose(CrossEntropy()(outputs, labels), expected)
    assert MSE().accuracy(outputs, labels) == 1.0  # argmax 1 and 0: both right
    assert MSE().accuracy(outputs, jnp.array([2, IGNORE, 0])) == 0.5
    # One position: the loss of the label.
    assert jnp.allclose(MSE()(outputs[0], jnp.array(2)), mse(outputs[0], jnp.eye(3)[2]))
    # Binary: ±1 targets for the squared loss, the logistic loss log(1 + e^{-y f}).
    f = jnp.array([0.7])
    assert jnp.allclose(MSE(binary=True)(f, jnp.array(1)), 0.5 * 0.3**2)
    assert jnp.allclose(MSE(binary=True)(f, jnp.array(0)), 0.5 * 1.7**2)
    assert jnp.allclose(CrossEntropy(binary=True)(f, jnp.array(1)), jnp.log1p(jnp.exp(-0.7)))
    assert jnp.allclose(CrossEntropy(binary=True)(f, jnp.array(0)), jnp.log1p(jnp.exp(0.7)))
    assert CrossEntropy(binary=True).accuracy(f, jnp.array(1)) == 1.0
    assert CrossEntropy(binary=True).accuracy(-f, jnp.array(1)) == 0.0
    sequence = jnp.array([[0.3], [-2.0], [1.0]])
    assert MSE(binary=True).accuracy(sequence, jnp.array([1, 1, IGNORE])) == 0.5


@pytest.mark.parametrize("task", ["sorting", "copying"])
def test_sequence_task_targets(task):
    data = make_sequence_task(task, vocab=5, length=6, n=30, n_test=10, seed=3)
    assert data.vocab == data.num_classes == 5 and not data.binary
    assert data.x_train.shape == (30, 11) and data.y_train.shape == (30, 11)
    assert data.x_test.shape == (10, 11)
    x = np.concatenate([data.x_train, data.x_test])
    y = np.concatenate([data.y_train, data.y_test])
    prompt = x[:, :6]
    answer = np.sort(prompt, axis=1) if task == "sorting" else prompt
    # Position t predicts token t + 1; only the answer is scored.
    assert np.all(y[:, :5] == IGNORE)
    np.testing.assert_array_equal(y[:, 5:], answer)
    np.testing.assert_array_equal(x[:, 6:], answer[:, :-1])
    assert x.min() >= 0 and x.max() < 5
    again = make_sequence_task(task, vocab=5, length=6, n=30, n_test=10, seed=3)
    assert eqx.tree_equal(data, again)
    other = make_sequence_task(task, vocab=5, length=6, n=30, seed=4)
    assert not np.array_equal(other.x_train, data.x_train)
    # The config's loader is the same function.
    assert eqx.tree_equal(DATASETS[task].load(vocab=5, length=6, n=30, n_test=10, seed=3), data)


def test_unknown_generated_dataset_is_named():
    with pytest.raises(ValueError, match="Unknown task 'reversing'.*'sorting', 'copying'"):
        make_sequence_task("reversing")
    with pytest.raises(ValueError, match="Unknown dataset 'blobs'.*'moons', 'circles'"):
        make_sklearn("blobs")


@pytest.mark.parametrize("task", ["sorting", "copying"])
def test_gd_fits_the_sequence_tasks(task):
    # The small LSTM config (one layer of 8 units), on 64 sequences of 4 tokens.
    cfg = load_config(
        ROOT / "configs/gd-lstm-sorting-small.toml",
        [f"data.name={task}", "data.n=64", "data.n_test=0"],
    )
    objective, w0 = make_problem(cfg)
    run = cf.discrete_run(objective, w0, cf.GD(lr=2.0), 150)
    accuracy = lambda w: jax.vmap(lambda w: objective.metrics(w)["train_acc"])(w)
    before, after = map(float, compiled(accuracy, jnp.stack([w0, run.w])))
    assert np.all(np.isfinite(run.losses)) and run.losses[-1] < run.losses[0]
    # Measured: from 0.23 to 0.71 (sorting) and 0.86 (copying).
    assert after > before + 0.15, (before, after)


@pytest.mark.parametrize(
    "name, binary, size",
    [("moons", True, 2), ("circles", True, 2), ("classification", False, 20)],
)
def test_sklearn_datasets(name, binary, size):
    data = make_sklearn(name, n=40, n_test=10, seed=1)
    assert data.binary is binary and data.out_size == (1 if binary else 2)
    assert data.x_train.shape == (40, size) and data.x_test.shape == (10, size)
    assert set(np.unique(data.y_train)) == {0, 1}
    assert eqx.tree_equal(data, make_sklearn(name, n=40, n_test=10, seed=1))
    assert eqx.tree_equal(data, DATASETS[name].load(n=40, n_test=10, seed=1))


def test_sklearn_parameters_reach_the_generator():
    wide = make_sklearn("classification", n=60, n_test=0, classes=3, features=7)
    assert wide.x_train.shape == (60, 7) and wide.x_test is None
    assert wide.num_classes == wide.out_size == 3
    assert set(np.unique(wide.y_train)) == {0, 1, 2}
    radius = lambda data: np.linalg.norm(np.asarray(data.x_train), axis=1)
    # Without noise the inner circle (label 1) has radius `factor`, the outer one 1.
    circles = make_sklearn("circles", n=20, n_test=0, noise=0.0, factor=0.3)
    inner = np.asarray(circles.y_train) == 1
    np.testing.assert_allclose(radius(circles)[inner], 0.3, rtol=1e-12)
    np.testing.assert_allclose(radius(circles)[~inner], 1.0, rtol=1e-12)
    noisy = make_sklearn("moons", n=20, n_test=0, noise=0.5)
    assert not np.allclose(noisy.x_train, make_sklearn("moons", n=20, n_test=0, noise=0.0).x_train)
    with pytest.raises(TypeError, match="factor"):
        make_sklearn("moons", factor=0.5)  # the moons have no such parameter


def _fake_cifar(root: pathlib.Path, per_batch: int = 30) -> tuple[pathlib.Path, dict]:
    """A CIFAR-10 python archive in the real format (pickled dicts of uint8 rows in
    channel-major order and integer labels), small: `per_batch` images per batch."""
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]
        batches[name] = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, batch in batches.items():
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive, batches


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    return _fake_cifar(tmp_path_factory.mktemp("cifar"))


def test_cifar10_reads_the_python_archive(fake_cifar, tmp_path, monkeypatch):
    archive, batches = fake_cifar
    data = load_cifar10(path=str(archive), n=8, n_test=4, classes=4, seed=0)
    assert data.x_train.shape == (8, 3072) and data.image_shape == (3, 32, 32)
    assert data.x_test.shape == (4, 3072) and data.out_size == 4
    assert np.array_equal(np.bincount(data.y_train, minlength=4), [2, 2, 2, 2])
    assert np.array_equal(np.sort(data.y_test), [0, 1, 2, 3])
    # The test split is the first test image of each class, in class order, normalised
    # per channel with the training set's mean and standard deviation.
    test = batches["test_batch"]
    first = [test[b"labels"].index(c) for c in range(4)]
    raw = test[b"data"][first].reshape(4, 3, 1024) / 255.0
    mean = np.array([0.49139968, 0.48215827, 0.44653124])[:, None]
    std = np.array([0.24703233, 0.24348505, 0.26158768])[:, None]
    np.testing.assert_allclose(data.x_test, ((raw - mean) / std).reshape(4, -1), rtol=1e-12)
    # The training split is the first two of each class in batch order, shuffled.
    train = batches["data_batch_1"]
    zeros = [i for i, label in enumerate(train[b"labels"]) if label == 0][:2]
    expected = (train[b"data"][zeros].reshape(2, 3, 1024) / 255.0 - mean) / std
    got = np.asarray(data.x_train)[np.asarray(data.y_train) == 0]
    assert {tuple(row[:5]) for row in got} == {tuple(row[:5]) for row in expected.reshape(2, -1)}
    # The extracted folder, its parent and the environment variable give the same data.
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):
        assert eqx.tree_equal(load_cifar10(path=str(path), n=8, n_test=4, classes=4), data)
    monkeypatch.setenv("CENTRALFLOWS_DATA", str(archive.parent))
    assert eqx.tree_equal(load_cifar10(n=8, n_test=4, classes=4), data)
    # Binary: airplane against automobile, one output.
    binary = load_cifar10(path=str(archive), n=6, n_test=0, classes="binary")
    assert binary.binary and binary.out_size == 1 and binary.x_test is None
    assert set(np.unique(binary.y_train)) == {0, 1}


def test_cifar10_missing_is_a_clear_error_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CENTRALFLOWS_DATA", raising=False)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found at .*nowhere"):
        locate_cifar10(missing)
    with pytest.raises(FileNotFoundError, match="CENTRALFLOWS_DATA"):
        locate_cifar10("")
    out = tmp_path / "runs"
    argv = ["run", str(ROOT / "configs/gd-cnn-cifar10.toml"), "--set", f"data.path={missing}"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found at" in err and str(missing) in err
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err
    assert not out.exists() or not any(out.iterdir())  # no run file


def test_every_config_validates_and_builds(fake_cifar, tmp_path, capsys, monkeypatch):
    archive, _ = fake_cifar
    assert {
        "gd-cnn-cifar10.toml",
        "gd-vit-cifar10.toml",
        "scalar-rmsprop-cnn-cifar10.toml",
        "rmsprop-resnet-cifar10.toml",
        "gd-lstm-sorting.toml",
        "gd-transformer-sorting.toml",
        "gd-mamba-sorting.toml",
    } <= {path.name for path in CONFIGS}
    for name in ARCHITECTURES:  # every architecture has a full and a small config
        assert any(f"-{name}-" in path.name for path in SMALL), name
        assert any(f"-{name}-" in path.name for path in set(CONFIGS) - set(SMALL)), name
    # The parameter counts docs/zoo.md gives, e.g. "`gd-cnn-cifar10`, `...` (544 100)".
    documented = {
        config: int(count.replace(" ", ""))
        for configs, count in re.findall(r"((?:`[\w-]+`(?:, )?)+) \((\d[\d ]*)\)", ZOO_DOC)
        for config in re.findall(r"`([\w-]+)`", configs)
    }
    assert len(documented) >= 2 * len(ARCHITECTURES)
    monkeypatch.chdir(tmp_path)
    for path in CONFIGS:
        assert path.read_text().startswith("#")
        cfg = load_config(path)
        if "problem" in cfg:  # a built-in problem, no architecture (tests/test_problems.py)
            continue
        data, model = cfg["data"], cfg["model"]["name"]
        assert model in path.name
        if path not in SMALL:  # the paper's sizes
            if data["name"] == "cifar10":
                assert (data["classes"], data["n"]) == (4, 1000), path.name
            if data["name"] == "sorting":
                assert data["n"] == (250 if model == "mamba" else 1000), path.name
        else:  # runs without the archive
            assert data["name"] in ("digits", "sorting"), path.name
        # `--dry-run` reads the data and traces the model and the loss: the full-size
        # models would take a minute to initialise op by op on this CPU.
        argv = ["run", str(path), "--dry-run"]
        if cfg["data"]["name"] == "cifar10":  # the full architecture on a few fake images
            argv += ["--set", f"data.path={archive}", "--set", "data.n=4", "--set", "data.n_test=4"]
        assert main(argv) == 0, path.name
        out = capsys.readouterr().out
        count = int(re.search(rf"model: {model}, (\d+) parameters", out)[1])
        assert documented.get(path.stem, count) == count, path.name
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_config_options_come_from_the_declarations():
    cfg = validate_config(
        {"opt": {"lr": 0.1}, "model": {"name": "vit"}, "data": {"name": "digits"}}
    )
    assert cfg["model"] == {
        "name": "vit",
        **{k: o.default for k, o in ARCHITECTURES["vit"].options.items()},
    }
    assert cfg["data"]["classes"] == DATASETS["digits"].options["classes"].default == 10
    moons = validate_config({"opt": {"lr": 0.1}, "data": {"name": "moons"}})
    assert moons["data"]["noise"] == DATASETS["moons"].options["noise"].default == 0.2
    assert "classes" not in moons["data"]  # moons is binary: no such option
    linear = validate_config({"opt": {"lr": 0.1}, "model": {"depth": 0}})  # a linear model
    assert linear["model"]["depth"] == 0
    with pytest.raises(ValueError, match=r"unknown key 'model\.width'"):
        validate_config({"opt": {"lr": 0.1}, "model": {"name": "vit", "width": 3}})
    with pytest.raises(ValueError, match=r"model\.heads = 0 is invalid; expected an integer >= 1"):
        validate_config({"opt": {"lr": 0.1}, "model": {"name": "transformer", "heads": 0}})
    with pytest.raises(ValueError, match=r'data\.classes = "three" is invalid'):
        validate_config({"opt": {"lr": 0.1}, "data": {"name": "cifar10", "classes": "three"}})
    with pytest.raises(ValueError, match=r'model\.name = "lstm" takes tokens, but data\.name'):
        validate_config({"opt": {"lr": 0.1}, "model": {"name": "lstm"}})
    with pytest.raises(
        ValueError, match=r'model\.name = "cnn" takes images.*"moons" gives vectors'
    ):
        validate_config({"opt": {"lr": 0.1}, "model": {"name": "cnn"}, "data": {"name": "moons"}})
    binary = validate_config({"opt": {"lr": 0.1}, "data": {"name": "cifar10", "classes": "binary"}})
    assert binary["data"]["classes"] == "binary"


def test_option_tables_in_the_docs_are_the_declarations():
    for name, architecture in ARCHITECTURES.items():
        rows = "".join(
            f"| `{key}` | `{_format(option.default)}` | {option.expected} |\n"
            for key, option in architecture.options.items()
        )
        assert f"`{name}`\n\n| option | default | valid |\n|---|---|---|\n{rows}\n" in ZOO_DOC


@pytest.mark.parametrize(
    "config, override, message",
    [
        ("gd-transformer-sorting-small", "model.d_model=9", "`heads=2` must divide `d_model=9`"),
        ("gd-vit-digits-small", "model.patch_size=3", "`patch_size=3` must divide the sides"),
        (
            "rmsprop-resnet-digits-small",
            "model.stage_sizes=[]",
            "model.stage_sizes = [] is invalid; expected a non-empty list of integers >= 1",
        ),
        ("gd-mlp-digits-small", "data.n=2000", "exceeds the 1797 digits images"),
        ("gd-lstm-sorting-small", "data.vocab=1", "data.vocab = 1 is invalid"),
        ("gd-mamba-sorting-small", "data.name=moons", '"mamba" takes tokens, but'),
    ],
)
def test_bad_zoo_input_is_a_clear_error_before_anything_runs(
    config, override, message, tmp_path, capsys
):
    argv = ["run", str(ROOT / f"configs/{config}.toml"), "--set", override]
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run file


@pytest.mark.slow
@pytest.mark.parametrize("path", SMALL, ids=[path.stem for path in SMALL])
def test_small_config_runs_discrete_and_central(path, tmp_path):
    # Measured (an earlier session, 2-core CPU at a load of 4 to 5): 68 s (scalar-rmsprop-cnn)
    # to about 10 min (gd-mamba) each, nearly all of it compiling; see docs/zoo.md.
    argv = ["run", str(path), "--steps", "3", "--runs", "discrete", "central"]
    # The RMSProp configs keep their warm start: from step 0 the zero-initialised heads
    # leave most gradients, hence ν, at zero, and the flows are then very stiff.
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 0
    (run_file,) = tmp_path.iterdir()
    result = cf.load_run(run_file)
    for process in ("discrete", "central"):
        losses = np.asarray(result[process]["train_loss"])
        assert losses.shape == (4,) and np.all(np.isfinite(losses)), (process, losses)
        assert np.all(np.isfinite(result[process]["effective_hessian_eigs"][:, 0]))
