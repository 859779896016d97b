"""Build a run's ingredients (objective, initial parameters, optimizer) from a config."""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.random as jr
from jaxtyping import Array, Float

from ._config import config_error
from ._eigen import EigConfig
from ._integrate import FlowOptions
from ._objective import Objective
from ._optimizers import GD, AbstractOptimizer, RMSProp, ScalarRMSProp
from .data import DATASETS
from .data._dataset import float_dtype
from .models import ARCHITECTURES, MSE, CrossEntropy
from .problems import PROBLEMS


def make_optimizer(opt: Mapping[str, Any]) -> AbstractOptimizer:
    """The optimizer described by a config's `[opt]` section."""
    if opt["name"] == "gd":
        return GD(lr=opt["lr"])
    cls = {"scalar_rmsprop": ScalarRMSProp, "rmsprop": RMSProp}[opt["name"]]
    return cls(
        lr=opt["lr"], beta2=opt["beta2"], eps=opt["eps"], bias_correction=opt["bias_correction"]
    )


def make_eig_config(eig: Mapping[str, Any]) -> EigConfig:
    """The eigen-tracking settings of a config's `[eig]` section."""
    return EigConfig(**eig)


def make_flow_options(cfg: Mapping[str, Mapping[str, Any]]) -> tuple[FlowOptions, FlowOptions]:
    """The central and stable flows' integration settings (`[central]`, `[stable]`).

    `solver = "euler"` is the reference scheme: Euler with `dt = τ = 1/nsubsteps` (so
    `tau` is ignored); `"bosh3"` and `"tsit5"` are adaptive with `rtol`/`atol` and
    relaxation `tau`.
    The stable flow uses the same solver; each flow takes its own `modified`.
    """
    central = cfg["central"]
    limits = dict(
        sdcp_threshold=central["sdcp_threshold"],
        max_seff=cfg["stable"]["max_Seff"],
        guard=central["guard"],
    )
    if central["solver"] == "euler":
        options = FlowOptions.euler(central["nsubsteps"], **limits)
    else:
        controller = dfx.PIDController(rtol=central["rtol"], atol=central["atol"])
        solver = {"bosh3": dfx.Bosh3, "tsit5": dfx.Tsit5}[central["solver"]]()
        options = FlowOptions(solver, controller, tau=central["tau"], **limits)
    flow = lambda section: dataclasses.replace(options, modified=cfg[section]["modified"])
    central_options = dataclasses.replace(flow("central"), stationary_nu=central["stationary_nu"])
    return central_options, flow("stable")


_CPU_DEVICES_HINT = (
    " (or split the CPU into {} devices: set XLA_FLAGS=--xla_force_host_platform_device_count={}"
    " before JAX starts)"
)


def _check_devices(devices: int) -> None:
    """Raise a `ConfigError` naming `run.devices` where it exceeds the devices JAX sees."""
    available, backend = jax.device_count(), jax.default_backend()
    if devices > available:
        raise config_error(
            [
                f"run.devices = {devices} exceeds the {available} {backend} "
                f"device{'s' if available > 1 else ''} that JAX sees; use at most {available}"
                + (_CPU_DEVICES_HINT.format(devices, devices) if backend == "cpu" else "")
            ],
            "given",
        )


@eqx.filter_jit
def _init_model(make: Callable[..., eqx.Module], sizes: tuple, options: dict, seed) -> eqx.Module:
    """`make(*sizes, **options)` with its parameters drawn from `seed`, in one program."""
    return make(*sizes, **options, dtype=float_dtype(None), key=jr.key(seed))


def make_problem(cfg: Mapping[str, Mapping[str, Any]]) -> tuple[Objective, Float[Array, " n"]]:
    """The objective and initial flat parameters of a validated config.

    **Arguments:**

    - `cfg`: a complete config, as returned by `load_config`.

    **Returns:** `(objective, w0)`: the built-in `[problem]`'s loss and start (its
    random draws from `run.seed`), or else the full-batch training loss of the `[model]`
    on the `[data]` (with the test split for logging) and the model's initial
    parameters, drawn from `run.seed`, with the examples split over `run.devices`
    devices. The device count is checked first, then the dataset loaded, so a missing
    file is reported before anything is computed.
    """
    _check_devices(cfg["run"]["devices"])
    if "problem" in cfg:
        options = dict(cfg["problem"])
        spec = PROBLEMS[options.pop("name")]
        problem = spec.make(**options, key=jr.key(cfg["run"]["seed"]))
        return Objective.from_function(problem, problem.w0), jfu.ravel_pytree(problem.w0)[0]
    data_cfg, model_cfg = dict(cfg["data"]), dict(cfg["model"])
    seed = cfg["run"]["seed"]
    spec = DATASETS[data_cfg.pop("name")]
    criterion, chunk_size = data_cfg.pop("criterion"), data_cfg.pop("chunk_size")
    if spec.inputs != "tokens":
        data_cfg["dtype"] = float_dtype(None)
    dataset = spec.load(**data_cfg, seed=seed)
    architecture = ARCHITECTURES[model_cfg.pop("name")]
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in model_cfg.items()}
    shape = dataset.x_train.shape[1:]
    if architecture.inputs == "vectors":
        first, shape = math.prod(shape), (math.prod(shape),)
    elif architecture.inputs == "images":
        first = shape = dataset.image_shape
    else:
        first = dataset.vocab
    model = _init_model(architecture.model, (first, dataset.out_size), options, seed)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    loss = {"mse": MSE, "ce": CrossEntropy}[criterion](binary=dataset.binary)
    reshape = lambda x: x.reshape(x.shape[:1] + shape)
    example_loss = lambda p, x, y: loss(eqx.combine(p, static)(x), y)
    example_accuracy = lambda p, x, y: loss.accuracy(eqx.combine(p, static)(x), y)
    test = None if dataset.x_test is None else (reshape(dataset.x_test), dataset.y_test)
    objective = Objective.supervised(
        example_loss,
        params,
        (reshape(dataset.x_train), dataset.y_train),
        test=test,
        example_accuracy=example_accuracy,
        chunk_size=chunk_size or None,
        example_outputs=lambda p, x: eqx.combine(p, static)(x),
        num_outputs=cfg["run"]["outputs"],
    )
    return objective.sharded(cfg["run"]["devices"]), jfu.ravel_pytree(params)[0]
