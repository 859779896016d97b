from collections.abc import Callable, Sequence

import equinox as eqx
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray

from ..data._dataset import float_dtype
from ._layers import get_activation


class MLP(eqx.Module):
    """A fully connected network: `depth` hidden layers of equal `width`, or hidden
    layers of the given `widths`.

    Acts on a single (flat) example; `jax.vmap` it over a batch. With biases it has
    `(d + 1) w + (depth - 1)(w + 1) w + (w + 1) c` parameters for input dimension `d`,
    width `w` and output dimension `c`.
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        *,
        width: int = 32,
        depth: int = 2,
        widths: Sequence[int] = (),
        bias: bool = True,
        activation: str = "tanh",
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        fn = get_activation(activation)
        if width < 1 or depth < 0 or any(w < 1 for w in widths):
            raise ValueError(
                f"`MLP` needs `width >= 1`, `depth >= 0` and `widths >= 1`, got "
                f"width={width}, depth={depth}, widths={tuple(widths)}."
            )
        hidden = list(widths) if widths else [width] * depth
        sizes = [in_size, *hidden, out_size]
        keys = jr.split(key, len(hidden) + 1)
        self.layers = tuple(
            eqx.nn.Linear(n_in, n_out, use_bias=bias, dtype=float_dtype(dtype), key=k)
            for n_in, n_out, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.activation = fn

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, " c"]:
        """**Arguments:**

        - `x`: one input example.

        **Returns:**

        The network's outputs (logits) for `x`.
        """
        *hidden, last = self.layers
        for layer in hidden:
            x = self.activation(layer(x))
        return last(x)


MLP.__init__.__doc__ = """**Arguments:**

- `in_size`: input dimension `d`.
- `out_size`: output dimension `c`.
- `width`: number of units in each hidden layer.
- `depth`: number of hidden layers; 0 gives a linear model.
- `widths`: the width of each hidden layer; when given, it replaces `width` and `depth`.
- `bias`: whether the layers have biases.
- `activation`: one of `"tanh"`, `"relu"`, `"gelu"`, `"softplus"`, `"silu"`.
- `dtype`: dtype of the parameters. Defaults to float64 if JAX's x64 mode is
    enabled and float32 otherwise.
- `key`: PRNG key for the (deterministic) initialisation.
"""
