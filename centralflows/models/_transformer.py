import math

import equinox as eqx
import jax
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..data._dataset import float_dtype
from ._layers import LayerNorm, SelfAttention, reinit, sinusoidal

_NORMS = ("layer", "none")


def _xavier(layer: eqx.Module, key, zero_bias: bool = False) -> eqx.Module:
    """`layer` with Xavier-uniform weights (as PyTorch's reference initialisation)."""
    return reinit(layer, jax.nn.initializers.glorot_uniform(), key, zero_bias=zero_bias)


class _Layer(eqx.Module):
    attention: SelfAttention
    norm1: LayerNorm | None
    up: eqx.nn.Linear
    down: eqx.nn.Linear
    norm2: LayerNorm | None

    def __init__(self, d_model, heads, norm, dtype, key):
        ka, kq, ko, ku, kd, kxu, kxd = jr.split(key, 7)
        attention = SelfAttention(d_model, heads, bias=True, causal=True, dtype=dtype, key=ka)
        self.attention = eqx.tree_at(
            lambda a: (a.qkv, a.out),
            attention,
            (_xavier(attention.qkv, kq, True), _xavier(attention.out, ko, True)),
        )
        layer_norm = lambda: LayerNorm(d_model, dtype=dtype) if norm == "layer" else None
        self.norm1 = layer_norm()
        self.up = _xavier(eqx.nn.Linear(d_model, 4 * d_model, dtype=dtype, key=ku), kxu)
        self.down = _xavier(eqx.nn.Linear(4 * d_model, d_model, dtype=dtype, key=kd), kxd)
        self.norm2 = layer_norm()

    def __call__(self, x):
        apply = lambda norm, y: y if norm is None else norm(y)
        x = apply(self.norm1, x + self.attention(x))
        hidden = jax.nn.gelu(jax.vmap(self.up)(x))
        return apply(self.norm2, x + jax.vmap(self.down)(hidden))


class Transformer(eqx.Module):
    """A causal (decoder-only) transformer for next-token prediction: a token embedding
    scaled by `√d_model` plus the sinusoidal position code, `layers` post-norm layers
    (causal `heads`-head self-attention, then a GELU MLP of `4 d_model` units, each added
    to its input and layer-normalised, or not normalised with `norm="none"`) and a
    linear read-out whose initial weights are multiplied by `weight_multiplier`.

    The layers are those of PyTorch's `TransformerDecoderLayer` without the
    cross-attention (the reference code attends to the unmasked input as "memory", which
    lets a position see the tokens after it); the matrices are Xavier-uniform. Acts on
    one sequence of integer tokens and returns the outputs at every position.
    """

    embedding: Float[Array, "vocab d"]
    layers: tuple[_Layer, ...]
    head: eqx.nn.Linear

    def __init__(
        self,
        vocab: int,
        out_size: int,
        *,
        layers: int = 4,
        d_model: int = 32,
        heads: int = 4,
        norm: str = "layer",
        weight_multiplier: float = 0.0,
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        if d_model % heads:
            raise ValueError(f"`heads={heads}` must divide `d_model={d_model}`.")
        if norm not in _NORMS:
            raise ValueError(f"Unknown norm {norm!r}; valid norms are {_NORMS}.")
        dtype = float_dtype(dtype)
        kembed, khead, kxhead, *keys = jr.split(key, 3 + layers)
        self.embedding = jax.nn.initializers.glorot_uniform()(kembed, (vocab, d_model), dtype)
        self.layers = tuple(_Layer(d_model, heads, norm, dtype, k) for k in keys)
        head = _xavier(eqx.nn.Linear(d_model, out_size, dtype=dtype, key=khead), kxhead)
        self.head = eqx.tree_at(lambda h: h.weight, head, weight_multiplier * head.weight)

    def __call__(self, tokens: Int[Array, " t"]) -> Float[Array, "t k"]:
        """**Arguments:**

        - `tokens`: one sequence.

        **Returns:**

        The outputs (logits) at each position, each depending only on the tokens up to it.
        """
        d_model = self.embedding.shape[1]
        x = self.embedding[tokens] * math.sqrt(d_model)
        x = x + sinusoidal(len(tokens), d_model, x.dtype)
        for layer in self.layers:
            x = layer(x)
        return jax.vmap(self.head)(x)


Transformer.__init__.__doc__ = """**Arguments:**

- `vocab`: the number of distinct input tokens.
- `out_size`: outputs per position.
- `layers`: number of decoder layers.
- `d_model`: features per token.
- `heads`: attention heads (dividing `d_model`).
- `norm`: `"layer"` or `"none"`.
- `weight_multiplier`: factor on the read-out's initial weights (its bias is kept).
- `dtype`: dtype of the parameters (float64 under x64, else float32, by default).
- `key`: PRNG key for the initialisation.
"""
