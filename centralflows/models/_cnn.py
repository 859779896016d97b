from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray

from ..data._dataset import float_dtype
from ._layers import get_activation


class CNN(eqx.Module):
    """A small convolutional network: two 3x3 convolutions (`width` then `2 width`
    channels, no bias), each followed by the activation and 2x2 average pooling, then a
    hidden linear layer of `4 width` units (no bias) and a linear output layer.

    Acts on one image of shape `(channels, height, width)` (height and width multiples
    of 4). It has `9 c w + 18 w² + (h w / 16)(2 w)(4 w) + (4 w + 1) k` parameters for
    `c` input channels, an `h × w` image and `k` outputs.
    """

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    hidden: eqx.nn.Linear
    head: eqx.nn.Linear
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        out_size: int,
        *,
        width: int = 32,
        activation: str = "gelu",
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        channels, height, breadth = image_shape
        if height % 4 or breadth % 4:
            raise ValueError(f"`CNN` needs image sides divisible by 4, got {image_shape}.")
        dtype = float_dtype(dtype)
        k1, k2, k3, k4 = jr.split(key, 4)
        conv = dict(kernel_size=3, padding=1, use_bias=False, dtype=dtype)
        self.conv1 = eqx.nn.Conv2d(channels, width, **conv, key=k1)
        self.conv2 = eqx.nn.Conv2d(width, 2 * width, **conv, key=k2)
        flat = (height // 4) * (breadth // 4) * 2 * width
        self.hidden = eqx.nn.Linear(flat, 4 * width, use_bias=False, dtype=dtype, key=k3)
        self.head = eqx.nn.Linear(4 * width, out_size, dtype=dtype, key=k4)
        self.activation = get_activation(activation)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " k"]:
        """**Arguments:**

        - `x`: one image, channels first.

        **Returns:**

        The network's outputs (logits).
        """
        pool = eqx.nn.AvgPool2d(2, stride=2)
        x = pool(self.activation(self.conv1(x)))
        x = pool(self.activation(self.conv2(x)))
        return self.head(self.activation(self.hidden(jnp.ravel(x))))


CNN.__init__.__doc__ = """**Arguments:**

- `image_shape`: `(channels, height, width)` of the input images.
- `out_size`: number of outputs.
- `width`: channels of the first convolution.
- `activation`: one of `"tanh"`, `"relu"`, `"gelu"`, `"softplus"`, `"silu"`.
- `dtype`: dtype of the parameters (float64 under x64, else float32, by default).
- `key`: PRNG key for the initialisation (PyTorch's defaults).
"""
