"""The config options of every architecture, as plain data: read by the config validation
without importing jax. `tests/test_cli_fast.py` checks them against the Modules' signatures.
"""

from .._options import Declared, Range, at_least, flag, integers, one_of, option

ACTIVATION_NAMES = ("tanh", "relu", "gelu", "softplus", "silu")  # `_layers.ACTIVATIONS`
_activation = one_of(*ACTIVATION_NAMES)

DECLARED: dict[str, Declared] = {
    "mlp": Declared(
        {
            "width": option(32, at_least(1)),
            "depth": option(2, at_least(0)),
            "widths": option([], integers(1)),
            "bias": option(True, flag()),
            "activation": option("tanh", _activation),
        },
        "vectors",
    ),
    "cnn": Declared(
        {"width": option(32, at_least(1)), "activation": option("gelu", _activation)},
        "images",
    ),
    "resnet": Declared(
        {
            "width": option(16, at_least(1)),
            "stage_sizes": option([3, 3, 3], integers(1, empty=False)),
            "norm": option("group", one_of("group", "layer", "none")),
            "activation": option("gelu", _activation),
        },
        "images",
    ),
    "vit": Declared(
        {
            "patch_size": option(4, at_least(1, "dividing the image sides")),
            "dim": option(
                64, Range("a multiple of 4, at least 4", lambda v: v >= 4 and v % 4 == 0)
            ),
            "depth": option(4, at_least(1)),
            "heads": option(8, at_least(1)),
            "dim_head": option(64, at_least(1)),
            "mlp_dim": option(256, at_least(1)),
            "pool": option("mean", one_of("mean", "cls")),
            "norm": option("layer", one_of("layer", "frozen", "none")),
            "init_scale": option(0.0, at_least(0.0)),
        },
        "images",
    ),
    "lstm": Declared(
        {
            "layers": option(2, at_least(1)),
            "embed_dim": option(48, at_least(1)),
            "hidden_dim": option(48, at_least(1)),
        },
        "tokens",
    ),
    "transformer": Declared(
        {
            "layers": option(4, at_least(1)),
            "d_model": option(32, at_least(1, "a multiple of `heads`")),
            "heads": option(4, at_least(1)),
            "norm": option("layer", one_of("layer", "none")),
            "weight_multiplier": option(0.0, at_least(0.0)),
        },
        "tokens",
    ),
    "mamba": Declared(
        {
            "layers": option(2, at_least(1)),
            "d_model": option(64, at_least(1)),
            "d_state": option(16, at_least(1)),
            "expand": option(2, at_least(1)),
            "d_conv": option(4, at_least(1)),
            "init_scale": option(0.1, at_least(0.0)),
            "parallel_scan": option(False, flag()),
        },
        "tokens",
    ),
}
