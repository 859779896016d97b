import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray

from ..data._dataset import float_dtype
from ._layers import GroupNorm, get_activation, normal, reinit

_NORMS = ("group", "layer", "none")


def _conv(c_in, c_out, size, stride, dtype, key) -> eqx.nn.Conv2d:
    """A bias-free convolution with Kaiming-normal (fan-out) weights."""
    layer = eqx.nn.Conv2d(
        c_in, c_out, size, stride, padding=size // 2, use_bias=False, dtype=dtype, key=key
    )
    return reinit(layer, normal(math.sqrt(2 / (c_out * size * size))), key)


class _Block(eqx.Module):
    conv1: eqx.nn.Conv2d
    norm1: GroupNorm | None
    conv2: eqx.nn.Conv2d
    norm2: GroupNorm | None
    shortcut: eqx.nn.Conv2d | None
    norm_shortcut: GroupNorm | None
    scale: float = eqx.field(static=True)

    def __init__(self, c_in, c_out, stride, groups, scale, dtype, key):
        k1, k2, k3 = jr.split(key, 3)
        norm = lambda zero=False: (
            None if groups is None else GroupNorm(c_out, groups, dtype=dtype, zero=zero)
        )
        self.conv1 = _conv(c_in, c_out, 3, stride, dtype, k1)
        self.norm1 = norm()
        self.conv2 = _conv(c_out, c_out, 3, 1, dtype, k2)
        self.norm2 = norm(zero=True)  # each block starts as the identity
        projected = stride != 1 or c_in != c_out
        self.shortcut = _conv(c_in, c_out, 1, stride, dtype, k3) if projected else None
        self.norm_shortcut = norm() if projected else None
        self.scale = scale

    def __call__(self, x, activation):
        apply = lambda norm, y: y if norm is None else norm(y)
        shortcut = x if self.shortcut is None else apply(self.norm_shortcut, self.shortcut(x))
        y = activation(apply(self.norm1, self.conv1(x)))
        return shortcut + self.scale * apply(self.norm2, self.conv2(y))


class ResNet(eqx.Module):
    """A residual network without batch statistics, as in the central-flows paper: a
    3x3 convolution to `width` channels, stages of residual blocks (the first stage at
    `width` channels, each later one halving the resolution and doubling the channels),
    average pooling by 4 (or the whole map, if smaller) and a zero-initialised linear head.

    A block is `x + s · norm(conv(act(norm(conv(x)))))` with `s = (Σ stage_sizes)^(-1/2)`,
    its second normalisation's scale initialised to zero; where the shape changes the
    shortcut is a strided 1x1 convolution and a normalisation. The normalisation is group
    normalisation with `width` groups, layer normalisation (one group) or none. Acts on
    one image of shape `(channels, height, width)`.
    """

    stem: eqx.nn.Conv2d
    blocks: tuple[_Block, ...]
    head: eqx.nn.Linear
    activation: Callable[[Array], Array] = eqx.field(static=True)
    pool: int = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        out_size: int,
        *,
        width: int = 16,
        stage_sizes: Sequence[int] = (3, 3, 3),
        norm: str = "group",
        activation: str = "gelu",
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        if norm not in _NORMS:
            raise ValueError(f"Unknown norm {norm!r}; valid norms are {_NORMS}.")
        if not stage_sizes or min(stage_sizes) < 1:
            raise ValueError(
                "`stage_sizes` must be a non-empty list of integers >= 1, "
                f"got {tuple(stage_sizes)}."
            )
        channels, height, breadth = image_shape
        dtype = float_dtype(dtype)
        groups = {"group": width, "layer": 1, "none": None}[norm]
        scale = sum(stage_sizes) ** -0.5
        kstem, khead, *keys = jr.split(key, 2 + sum(stage_sizes))
        self.stem = _conv(channels, width, 3, 1, dtype, kstem)
        blocks, c_in, keys = [], width, iter(keys)
        for stage, size in enumerate(stage_sizes):
            c_out = width * 2**stage
            for index in range(size):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(_Block(c_in, c_out, stride, groups, scale, dtype, next(keys)))
                c_in = c_out
        self.blocks = tuple(blocks)
        side = lambda n: -(-n // 2 ** (len(stage_sizes) - 1))
        self.pool = min(4, side(height), side(breadth))
        flat = c_in * (side(height) // self.pool) * (side(breadth) // self.pool)
        head = eqx.nn.Linear(flat, out_size, dtype=dtype, key=khead)
        self.head = jax.tree.map(jnp.zeros_like, head)
        self.activation = get_activation(activation)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " k"]:
        """**Arguments:**

        - `x`: one image, channels first.

        **Returns:**

        The network's outputs (logits).
        """
        x = self.activation(self.stem(x))
        for block in self.blocks:
            x = block(x, self.activation)
        x = eqx.nn.AvgPool2d(self.pool, stride=self.pool)(x)
        return self.head(jnp.ravel(x))


ResNet.__init__.__doc__ = """**Arguments:**

- `image_shape`: `(channels, height, width)` of the input images.
- `out_size`: number of outputs.
- `width`: channels of the first stage.
- `stage_sizes`: the number of residual blocks of each stage.
- `norm`: `"group"` (`width` groups), `"layer"` or `"none"`.
- `activation`: one of `"tanh"`, `"relu"`, `"gelu"`, `"softplus"`, `"silu"`.
- `dtype`: dtype of the parameters (float64 under x64, else float32, by default).
- `key`: PRNG key for the initialisation.
"""
