from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
}


class MLP(eqx.Module):
    """A fully connected network with `depth` hidden layers of equal `width`.

    Acts on a single example; `jax.vmap` it over a batch. It has
    `(d + 1) w + (depth - 1)(w + 1) w + (w + 1) c` parameters for input dimension
    `d`, width `w` and output dimension `c`.
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
        activation: str = "tanh",
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}; valid activations are "
                f"{', '.join(map(repr, _ACTIVATIONS))}."
            )
        if width < 1 or depth < 0:
            raise ValueError(
                f"`MLP` needs `width >= 1` and `depth >= 0`, got width={width}, "
                f"depth={depth}."
            )
        if dtype is None:
            dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
        sizes = [in_size, *[width] * depth, out_size]
        keys = jr.split(key, depth + 1)
        self.layers = tuple(
            eqx.nn.Linear(n_in, n_out, dtype=dtype, key=k)
            for n_in, n_out, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.activation = _ACTIVATIONS[activation]

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
- `activation`: one of `"tanh"`, `"relu"`, `"gelu"`, `"softplus"`, `"silu"`.
- `dtype`: dtype of the parameters. Defaults to float64 if JAX's x64 mode is
    enabled and float32 otherwise.
- `key`: PRNG key for the (deterministic) initialisation.
"""


def mse(outputs: Float[Array, " c"], target: Float[Array, " c"]) -> Float[Array, ""]:
    """Squared loss of one example, `0.5 * sum((outputs - target)**2)`.

    **Arguments:**

    - `outputs`: the model's outputs.
    - `target`: the one-hot target.

    **Returns:**

    A scalar; average it over the dataset.
    """
    return 0.5 * jnp.sum((outputs - target) ** 2)


def cross_entropy(
    outputs: Float[Array, " c"], target: Float[Array, " c"]
) -> Float[Array, ""]:
    """Cross-entropy of one example, `-sum(target * log_softmax(outputs))`.

    **Arguments:**

    - `outputs`: the model's outputs (logits).
    - `target`: the target distribution, usually one-hot.

    **Returns:**

    A scalar; average it over the dataset.
    """
    return -jnp.sum(target * jax.nn.log_softmax(outputs))


def accuracy(
    outputs: Float[Array, " c"], target: Float[Array, " c"]
) -> Float[Array, ""]:
    """Whether one example is classified correctly.

    **Arguments:**

    - `outputs`: the model's outputs.
    - `target`: the one-hot target.

    **Returns:**

    `1.0` if `argmax(outputs) == argmax(target)` and `0.0` otherwise, in the dtype
    of `outputs`.
    """
    return (jnp.argmax(outputs) == jnp.argmax(target)).astype(outputs.dtype)
