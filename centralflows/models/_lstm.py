import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..data._dataset import float_dtype


class _Cell(eqx.Module):
    w_input: Float[Array, "i 4h"]
    w_hidden: Float[Array, "h 4h"]
    bias: Float[Array, " 4h"]

    def __init__(self, in_size, hidden, dtype, key):
        bound = 1 / math.sqrt(hidden)
        draw = lambda k, shape: jr.uniform(k, shape, dtype, -bound, bound)
        k1, k2, k3, k4 = jr.split(key, 4)
        self.w_input = draw(k1, (in_size, 4 * hidden))
        self.w_hidden = draw(k2, (hidden, 4 * hidden))
        self.bias = draw(k3, (4 * hidden,)) + draw(k4, (4 * hidden,))  # b_ih + b_hh

    def __call__(self, state, x):
        h, c = state
        i, f, g, o = jnp.split(x @ self.w_input + h @ self.w_hidden + self.bias, 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h


class LSTM(eqx.Module):
    """A token embedding, `layers` stacked LSTM layers of `hidden_dim` units and a linear
    read-out at every position.

    Acts on one sequence of integer tokens and returns the outputs at every position.
    Initialised as PyTorch's (embedding `N(0, 1)`, cell weights and both biases
    uniform on `±1/√hidden_dim`).
    """

    embedding: Float[Array, "vocab e"]
    cells: tuple[_Cell, ...]
    head: eqx.nn.Linear

    def __init__(
        self,
        vocab: int,
        out_size: int,
        *,
        layers: int = 2,
        embed_dim: int = 48,
        hidden_dim: int = 48,
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        dtype = float_dtype(dtype)
        kembed, khead, *keys = jr.split(key, 2 + layers)
        self.embedding = jr.normal(kembed, (vocab, embed_dim), dtype)
        sizes = [embed_dim] + [hidden_dim] * (layers - 1)
        self.cells = tuple(_Cell(n, hidden_dim, dtype, k) for n, k in zip(sizes, keys))
        self.head = eqx.nn.Linear(hidden_dim, out_size, dtype=dtype, key=khead)

    def __call__(self, tokens: Int[Array, " t"]) -> Float[Array, "t k"]:
        """**Arguments:**

        - `tokens`: one sequence.

        **Returns:**

        The outputs (logits) at each position.
        """
        x = self.embedding[tokens]
        for cell in self.cells:
            zero = jnp.zeros(cell.w_hidden.shape[0], x.dtype)
            _, x = jax.lax.scan(lambda s, x_t: cell(s, x_t), (zero, zero), x)
        return jax.vmap(self.head)(x)


LSTM.__init__.__doc__ = """**Arguments:**

- `vocab`: the number of distinct input tokens.
- `out_size`: outputs per position.
- `layers`: number of stacked LSTM layers.
- `embed_dim`: features of the token embedding.
- `hidden_dim`: units of each LSTM layer.
- `dtype`: dtype of the parameters (float64 under x64, else float32, by default).
- `key`: PRNG key for the initialisation.
"""
