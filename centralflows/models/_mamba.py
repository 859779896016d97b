import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..data._dataset import float_dtype
from ._layers import RMSNorm, normal, reinit


def _linear(n_in, n_out, dtype, key, *, bias=False) -> eqx.nn.Linear:
    """A linear layer with `N(0, 0.02²)` weights and a zero bias."""
    layer = eqx.nn.Linear(n_in, n_out, use_bias=bias, dtype=dtype, key=key)
    return reinit(layer, normal(0.02), key)


def _combine(earlier, later):
    """Composes the affine maps `h ↦ a h + b` of two spans of time (earlier first)."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


class _Block(eqx.Module):
    norm: RMSNorm
    in_proj: eqx.nn.Linear
    conv_weight: Float[Array, "e k"]
    conv_bias: Float[Array, " e"]
    x_proj: eqx.nn.Linear
    dt_proj: eqx.nn.Linear
    log_a: Float[Array, "e n"]
    skip: Float[Array, " e"]
    out_proj: eqx.nn.Linear
    d_state: int = eqx.field(static=True)

    def __init__(self, d_model, d_state, expand, d_conv, dtype, key):
        inner = expand * d_model
        rank = math.ceil(d_model / 16)
        k1, k2, k3, k4, k5, k6 = jr.split(key, 6)
        self.norm = RMSNorm(d_model, dtype=dtype)
        self.in_proj = _linear(d_model, 2 * inner, dtype, k1)
        bound = 1 / math.sqrt(d_conv)  # PyTorch's default for the depthwise Conv1d
        self.conv_weight = jr.uniform(k2, (inner, d_conv), dtype, -bound, bound)
        self.conv_bias = jr.uniform(k3, (inner,), dtype, -bound, bound)
        self.x_proj = _linear(inner, rank + 2 * d_state, dtype, k4)
        self.dt_proj = _linear(rank, inner, dtype, k5, bias=True)
        self.log_a = jnp.log(jnp.tile(jnp.arange(1, d_state + 1, dtype=dtype), (inner, 1)))
        self.skip = jnp.ones(inner, dtype)
        self.out_proj = _linear(inner, d_model, dtype, k6)
        self.d_state = d_state

    def __call__(self, x: Float[Array, "t d"], parallel: bool) -> Float[Array, "t d"]:
        length = x.shape[0]
        u, z = jnp.split(jax.vmap(self.in_proj)(self.norm(x)), 2, axis=-1)
        # Causal depthwise convolution over time.
        kernel = self.conv_weight.shape[1]
        padded = jnp.pad(u, ((kernel - 1, 0), (0, 0)))
        windows = jnp.stack([padded[k : k + length] for k in range(kernel)], axis=-1)
        u = jax.nn.silu(jnp.sum(windows * self.conv_weight, axis=-1) + self.conv_bias)
        # Selective state-space scan: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t·h_t.
        rank = self.dt_proj.weight.shape[1]
        delta, b, c = jnp.split(jax.vmap(self.x_proj)(u), [rank, rank + self.d_state], axis=-1)
        delta = jax.nn.softplus(jax.vmap(self.dt_proj)(delta))  # (t, e)
        decay = jnp.exp(-delta[:, :, None] * jnp.exp(self.log_a))  # (t, e, n)
        inputs = (delta * u)[:, :, None] * b[:, None, :]  # (t, e, n)
        if parallel:
            _, states = jax.lax.associative_scan(_combine, (decay, inputs))
        else:
            step = lambda h, ab: (ab[0] * h + ab[1],) * 2
            _, states = jax.lax.scan(step, jnp.zeros_like(inputs[0]), (decay, inputs))
        y = jnp.einsum("ten,tn->te", states, c) + self.skip * u
        return x + jax.vmap(self.out_proj)(y * jax.nn.silu(z))


class Mamba(eqx.Module):
    """A selective state-space model (Gu and Dao's Mamba) for sequences: a token
    embedding, `layers` residual Mamba blocks `x + block(RMSNorm(x))`, a final RMSNorm and
    a bias-free linear read-out at every position, its initial weights multiplied by
    `init_scale`.

    A block projects to `2 · expand · d_model` features (a branch `u` and a gate `z`),
    runs `u` through a causal depthwise convolution of width `d_conv` and SiLU, then the
    input-dependent diagonal recurrence with `d_state` states per feature, and multiplies
    by `silu(z)` before projecting back. The scan is sequential (`jax.lax.scan`) or,
    with `parallel_scan`, `jax.lax.associative_scan`: the same function, computed in
    `log₂ t` rounds. Initialised as the reference code: linear weights and the embedding
    `N(0, 0.02²)` with zero biases, `A = -(1, ..., d_state)`, `D = 1`.
    """

    embedding: Float[Array, "vocab d"]
    blocks: tuple[_Block, ...]
    norm: RMSNorm
    head: eqx.nn.Linear
    parallel_scan: bool = eqx.field(static=True)

    def __init__(
        self,
        vocab: int,
        out_size: int,
        *,
        layers: int = 2,
        d_model: int = 64,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        init_scale: float = 0.1,
        parallel_scan: bool = False,
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        dtype = float_dtype(dtype)
        kembed, khead, *keys = jr.split(key, 2 + layers)
        self.embedding = 0.02 * jr.normal(kembed, (vocab, d_model), dtype)
        self.blocks = tuple(_Block(d_model, d_state, expand, d_conv, dtype, k) for k in keys)
        self.norm = RMSNorm(d_model, dtype=dtype)
        head = _linear(d_model, out_size, dtype, khead)
        self.head = eqx.tree_at(lambda h: h.weight, head, init_scale * head.weight)
        self.parallel_scan = parallel_scan

    def __call__(self, tokens: Int[Array, " t"]) -> Float[Array, "t k"]:
        """**Arguments:**

        - `tokens`: one sequence.

        **Returns:**

        The outputs (logits) at each position, each depending only on the tokens up to it.
        """
        x = self.embedding[tokens]
        for block in self.blocks:
            x = block(x, self.parallel_scan)
        return jax.vmap(self.head)(self.norm(x))


Mamba.__init__.__doc__ = """**Arguments:**

- `vocab`: the number of distinct input tokens.
- `out_size`: outputs per position.
- `layers`: number of residual Mamba blocks.
- `d_model`: features per token.
- `d_state`: states per inner feature.
- `expand`: inner features per model feature.
- `d_conv`: width of the causal convolution.
- `init_scale`: factor on the read-out's initial weights.
- `parallel_scan`: use `jax.lax.associative_scan` instead of a sequential scan.
- `dtype`: dtype of the parameters (float64 under x64, else float32, by default).
- `key`: PRNG key for the initialisation.
"""
