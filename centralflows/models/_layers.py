"""Building blocks shared by the architectures: activations, normalisations without
batch statistics, initialisers, attention and positional encodings.

The normalisations are written out in `jax.numpy` (centre, mean square, `rsqrt`), so
every derivative JAX takes of them, the third included, is the exact derivative.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    """The activation called `name`; a `ValueError` lists the valid names."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {name!r}; valid activations are "
            f"{', '.join(map(repr, ACTIVATIONS))}."
        )
    return ACTIVATIONS[name]


def normalise(x: Array, axis: int | tuple[int, ...], eps: float) -> Array:
    """`(x - mean) / sqrt(var + eps)` over `axis` (the biased variance)."""
    centred = x - jnp.mean(x, axis=axis, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=axis, keepdims=True) + eps)


class LayerNorm(eqx.Module):
    """Layer normalisation over the last axis, with an optional learned scale and shift."""

    weight: Float[Array, " d"] | None
    bias: Float[Array, " d"] | None
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, *, affine: bool = True, eps: float = 1e-5, dtype: DTypeLike):
        self.weight = jnp.ones(dim, dtype) if affine else None
        self.bias = jnp.zeros(dim, dtype) if affine else None
        self.eps = eps

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x = normalise(x, -1, self.eps)
        return x if self.weight is None else x * self.weight + self.bias


class RMSNorm(eqx.Module):
    """`x / sqrt(mean(x²) + eps)` over the last axis, times a learned scale."""

    weight: Float[Array, " d"]
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, *, eps: float = 1e-5, dtype: DTypeLike):
        self.weight = jnp.ones(dim, dtype)
        self.eps = eps

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps) * self.weight


class GroupNorm(eqx.Module):
    """Group normalisation of a `(channels, height, width)` map, with a learned
    per-channel scale and shift; one group is layer normalisation."""

    weight: Float[Array, " c"]
    bias: Float[Array, " c"]
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self, channels: int, groups: int, *, eps: float = 1e-6, dtype: DTypeLike, zero: bool = False
    ):
        if channels % groups:
            raise ValueError(f"{groups} groups do not divide {channels} channels.")
        self.weight = (jnp.zeros if zero else jnp.ones)(channels, dtype)
        self.bias = jnp.zeros(channels, dtype)
        self.groups = groups
        self.eps = eps

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c h w"]:
        grouped = normalise(x.reshape(self.groups, -1), -1, self.eps).reshape(x.shape)
        return grouped * self.weight[:, None, None] + self.bias[:, None, None]


def reinit(layer: eqx.Module, init: Callable, key: PRNGKeyArray, *, zero_bias: bool = True):
    """`layer` with its weight redrawn by `init(key, shape, dtype)` (and a zero bias)."""
    weight = init(key, layer.weight.shape, layer.weight.dtype)
    layer = eqx.tree_at(lambda m: m.weight, layer, weight)
    if zero_bias and getattr(layer, "bias", None) is not None:
        layer = eqx.tree_at(lambda m: m.bias, layer, jnp.zeros_like(layer.bias))
    return layer


def normal(std: float) -> Callable:
    """The initialiser `N(0, std²)`."""
    return lambda key, shape, dtype: std * jr.normal(key, shape, dtype)


def scale(layer: eqx.Module, factor: float) -> eqx.Module:
    """`layer` with its weight and bias (if any) multiplied by `factor`."""
    return jax.tree.map(lambda p: factor * p, layer)


class SelfAttention(eqx.Module):
    """Multi-head scaled dot-product self-attention over a sequence, optionally causal."""

    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    heads: int = eqx.field(static=True)
    causal: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        dim_head: int | None = None,
        bias: bool = False,
        causal: bool = False,
        dtype: DTypeLike,
        key: PRNGKeyArray,
    ):
        inner = heads * (dim // heads if dim_head is None else dim_head)
        kqkv, kout = jr.split(key)
        self.qkv = eqx.nn.Linear(dim, 3 * inner, use_bias=bias, dtype=dtype, key=kqkv)
        self.out = eqx.nn.Linear(inner, dim, use_bias=bias, dtype=dtype, key=kout)
        self.heads = heads
        self.causal = causal

    def __call__(self, x: Float[Array, "t d"]) -> Float[Array, "t d"]:
        length = x.shape[0]
        q, k, v = jnp.split(jax.vmap(self.qkv)(x), 3, axis=-1)
        q, k, v = (a.reshape(length, self.heads, -1).transpose(1, 0, 2) for a in (q, k, v))
        logits = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        if self.causal:
            mask = jnp.tril(jnp.ones((length, length), bool))
            logits = jnp.where(mask, logits, -1e9)  # exp underflows to exactly 0
        heads = jax.nn.softmax(logits, axis=-1) @ v
        return jax.vmap(self.out)(heads.transpose(1, 0, 2).reshape(length, -1))


def sinusoidal(length: int, dim: int, dtype: DTypeLike) -> Float[Array, "t d"]:
    """The fixed sine/cosine positional encoding of Vaswani et al. (sines at even
    features, cosines at odd ones)."""
    position = jnp.arange(length, dtype=dtype)[:, None]
    frequency = jnp.exp(jnp.arange(0, dim, 2, dtype=dtype) * (-math.log(10000.0) / dim))
    angles = position * frequency
    encoding = jnp.zeros((length, dim), dtype)
    encoding = encoding.at[:, 0::2].set(jnp.sin(angles))
    return encoding.at[:, 1::2].set(jnp.cos(angles[:, : dim // 2]))


def sincos_2d(height: int, width: int, dim: int, dtype: DTypeLike) -> Float[Array, "hw d"]:
    """The fixed 2-d sine/cosine encoding of image patches (Beyer et al., "Better plain
    ViT baselines"); `dim` must be a multiple of 4."""
    y, x = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (jnp.arange(quarter, dtype=dtype) / max(quarter - 1, 1))
    y = y.reshape(-1)[:, None].astype(dtype) * omega
    x = x.reshape(-1)[:, None].astype(dtype) * omega
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
