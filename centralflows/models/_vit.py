import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray

from ..data._dataset import float_dtype
from ._layers import LayerNorm, SelfAttention, scale, sincos_2d

_NORMS = ("layer", "frozen", "none")


def _norm(kind: str, dim: int, dtype) -> LayerNorm | None:
    return None if kind == "none" else LayerNorm(dim, affine=kind == "layer", dtype=dtype)


def _apply(norm: LayerNorm | None, x: Array) -> Array:
    return x if norm is None else norm(x)


class _Layer(eqx.Module):
    norm1: LayerNorm | None
    attention: SelfAttention
    norm2: LayerNorm | None
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __init__(self, dim, heads, dim_head, mlp_dim, norm, dtype, key):
        ka, ku, kd = jr.split(key, 3)
        self.norm1 = _norm(norm, dim, dtype)
        self.attention = SelfAttention(dim, heads, dim_head=dim_head, dtype=dtype, key=ka)
        self.norm2 = _norm(norm, dim, dtype)
        self.up = eqx.nn.Linear(dim, mlp_dim, dtype=dtype, key=ku)
        self.down = eqx.nn.Linear(mlp_dim, dim, dtype=dtype, key=kd)

    def __call__(self, x):
        x = x + self.attention(_apply(self.norm1, x))
        hidden = jax.nn.gelu(jax.vmap(self.up)(_apply(self.norm2, x)))
        return x + jax.vmap(self.down)(hidden)


class ViT(eqx.Module):
    """A vision transformer in the form of Beyer et al.'s "simple ViT" (the paper's
    default): non-overlapping `patch_size` patches, each normalised, embedded in `dim`
    features and normalised again, plus a fixed 2-d sine/cosine position encoding; then
    `depth` pre-norm layers of `heads`-head self-attention (`dim_head` features per
    head, no biases) and a GELU MLP of `mlp_dim` units; a final normalisation; mean
    pooling over patches (or a learned class token, `pool="cls"`); a linear head whose
    initial weights are multiplied by `init_scale` (0 by default: a zero head).

    Every normalisation is a layer normalisation with a learned scale and shift
    (`norm="layer"`), without parameters (`"frozen"`) or absent (`"none"`). Acts on one
    image of shape `(channels, height, width)`, sides divisible by `patch_size`.
    """

    embed_norm1: LayerNorm | None
    embed: eqx.nn.Linear
    embed_norm2: LayerNorm | None
    cls: Float[Array, " dim"] | None
    layers: tuple[_Layer, ...]
    final_norm: LayerNorm | None
    head: eqx.nn.Linear
    patch_size: int = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        out_size: int,
        *,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int = 256,
        pool: str = "mean",
        norm: str = "layer",
        init_scale: float = 0.0,
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        channels, height, breadth = image_shape
        if height % patch_size or breadth % patch_size:
            raise ValueError(f"`patch_size={patch_size}` must divide the sides of {image_shape}.")
        if dim % 4:
            raise ValueError(f"`dim` must be a multiple of 4 (the position code), got {dim}.")
        if pool not in ("mean", "cls"):
            raise ValueError(f"Unknown pool {pool!r}; valid pools are ('mean', 'cls').")
        if norm not in _NORMS:
            raise ValueError(f"Unknown norm {norm!r}; valid norms are {_NORMS}.")
        dtype = float_dtype(dtype)
        kembed, kcls, khead, *keys = jr.split(key, 3 + depth)
        patch_dim = channels * patch_size**2
        self.embed_norm1 = _norm(norm, patch_dim, dtype)
        self.embed = eqx.nn.Linear(patch_dim, dim, dtype=dtype, key=kembed)
        self.embed_norm2 = _norm(norm, dim, dtype)
        self.cls = jr.normal(kcls, (dim,), dtype) if pool == "cls" else None
        self.layers = tuple(_Layer(dim, heads, dim_head, mlp_dim, norm, dtype, k) for k in keys)
        self.final_norm = _norm(norm, dim, dtype)
        self.head = scale(eqx.nn.Linear(dim, out_size, dtype=dtype, key=khead), init_scale)
        self.patch_size = patch_size

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " k"]:
        """**Arguments:**

        - `x`: one image, channels first.

        **Returns:**

        The network's outputs (logits).
        """
        channels, height, breadth = x.shape
        p = self.patch_size
        rows, cols = height // p, breadth // p
        patches = x.reshape(channels, rows, p, cols, p).transpose(1, 3, 2, 4, 0)
        patches = patches.reshape(rows * cols, p * p * channels)
        tokens = jax.vmap(self.embed)(_apply(self.embed_norm1, patches))
        tokens = _apply(self.embed_norm2, tokens) + sincos_2d(rows, cols, tokens.shape[-1], x.dtype)
        if self.cls is not None:
            tokens = jnp.concatenate([self.cls[None], tokens])
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = _apply(self.final_norm, tokens)
        pooled = tokens.mean(axis=0) if self.cls is None else tokens[0]
        return self.head(pooled)


ViT.__init__.__doc__ = """**Arguments:**

- `image_shape`: `(channels, height, width)` of the input images.
- `out_size`: number of outputs.
- `patch_size`: side of the square patches.
- `dim`: features per token (a multiple of 4).
- `depth`: number of transformer layers.
- `heads`: attention heads per layer.
- `dim_head`: features per attention head.
- `mlp_dim`: hidden units of each layer's MLP.
- `pool`: `"mean"` over patches or `"cls"` (a learned class token).
- `norm`: `"layer"` (learned scale and shift), `"frozen"` (no parameters) or `"none"`.
- `init_scale`: factor on the head's initial weights and bias.
- `dtype`: dtype of the parameters (float64 under x64, else float32, by default).
- `key`: PRNG key for the initialisation (PyTorch's defaults for the linear layers).
"""
