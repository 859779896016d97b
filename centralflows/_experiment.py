"""Build a run's ingredients (objective, initial parameters, optimizer) from a config."""

from collections.abc import Mapping
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax.flatten_util as jfu
import jax.random as jr
from jaxtyping import Array, Float

from ._eigen import EigConfig
from ._integrate import FlowOptions
from ._objective import Objective
from ._optimizers import GD, AbstractOptimizer, RMSProp, ScalarRMSProp
from .data import load_digits
from .models import MLP, accuracy, cross_entropy, mse

_CRITERIA = {"mse": mse, "ce": cross_entropy}


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
    `tau` is ignored); `"tsit5"` is adaptive with `rtol`/`atol` and relaxation `tau`.
    The stable flow uses the same solver.
    """
    central = cfg["central"]
    limits = dict(
        sdcp_threshold=central["sdcp_threshold"],
        max_seff=cfg["stable"]["max_Seff"],
        guard=central["guard"],
    )
    if central["solver"] == "euler":
        options = FlowOptions.euler(central["nsubsteps"], **limits)
        return options, options
    controller = dfx.PIDController(rtol=central["rtol"], atol=central["atol"])
    options = FlowOptions(dfx.Tsit5(), controller, tau=central["tau"], **limits)
    return options, options


def make_problem(cfg: Mapping[str, Mapping[str, Any]]) -> tuple[Objective, Float[Array, " n"]]:
    """The objective and initial flat parameters of a validated config.

    **Arguments:**

    - `cfg`: a complete config, as returned by `load_config`.

    **Returns:** `(objective, w0)`: the full-batch training loss of the `[model]` on the
    `[data]` (with the test split for logging) and the model's initial parameters,
    drawn from `run.seed`.
    """
    data, model_cfg = cfg["data"], cfg["model"]
    seed = cfg["run"]["seed"]
    dataset = load_digits(
        n_train=data["n"], n_test=data["n_test"], classes=data["classes"], seed=seed
    )
    model = MLP(
        dataset.x_train.shape[1],
        dataset.num_classes,
        width=model_cfg["width"],
        depth=model_cfg["depth"],
        activation=model_cfg["activation"],
        dtype=dataset.x_train.dtype,
        key=jr.key(seed),
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    criterion = _CRITERIA[data["criterion"]]
    example_loss = lambda p, x, y: criterion(eqx.combine(p, static)(x), y)
    example_accuracy = lambda p, x, y: accuracy(eqx.combine(p, static)(x), y)
    test = None if dataset.x_test is None else (dataset.x_test, dataset.y_test)
    objective = Objective.supervised(
        example_loss,
        params,
        (dataset.x_train, dataset.y_train),
        test=test,
        example_accuracy=example_accuracy,
        chunk_size=data["chunk_size"] or None,
    )
    return objective, jfu.ravel_pytree(params)[0]
