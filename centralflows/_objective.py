"""The training objective: a full-batch loss over a flat parameter vector."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree, Scalar

Vector = Float[Array, " n"]
Vectors = Float[Array, "k n"]


def _chunked_mean(
    per_example: Callable[..., Any],
    data: PyTree[Array],
    chunk_size: int | None,
) -> Any:
    """Mean over the leading axis of `data` of `per_example(example)`, summed chunk by chunk.

    Padding rows (when the chunk size does not divide the data) are masked out.
    """
    num = jtu.tree_leaves(data)[0].shape[0]
    batched = jax.vmap(per_example)
    if chunk_size is None or chunk_size >= num:
        return jtu.tree_map(lambda x: jnp.mean(x, axis=0), batched(data))
    num_chunks = -(-num // chunk_size)
    pad = num_chunks * chunk_size - num

    def _split(x):
        # Pad with copies of the last example (a real input), masked out below.
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        return x.reshape((num_chunks, chunk_size) + x.shape[1:])

    mask = (jnp.arange(num_chunks * chunk_size) < num).reshape(num_chunks, chunk_size)
    chunks = jtu.tree_map(_split, data)

    def _body(total, chunk):
        chunk_data, chunk_mask = chunk
        values = batched(chunk_data)
        partial = jtu.tree_map(
            lambda v: jnp.sum(
                jnp.where(chunk_mask.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0), axis=0
            ),
            values,
        )
        return jtu.tree_map(jnp.add, total, partial), None

    first = jtu.tree_map(lambda x: x[0], chunks)
    shapes = jax.eval_shape(batched, first)
    zero = jtu.tree_map(lambda s: jnp.zeros(s.shape[1:], s.dtype), shapes)
    total, _ = jax.lax.scan(_body, zero, (chunks, mask))
    return jtu.tree_map(lambda t: t / num, total)


class Objective(eqx.Module):
    r"""A training loss $L(w)$ over a flat parameter vector, with its derivatives.

    Parameters may be any pytree; internally they are raveled into one vector
    `w` of length `n` and `unravel` maps back. For a supervised loss the data is held
    as fields (so it lives on the device and can be differentiated), and the mean over
    examples is accumulated in chunks of `chunk_size` examples (memory is bounded by
    one chunk; results do not depend on the chunk size beyond round-off).

    All derivatives are matrix-free: Hessian-vector products by forward-over-reverse,
    third-order terms $\nabla_w(u^\top H(w) v)$ by reverse over that.
    """

    example_loss: Callable[..., Scalar] | None
    example_accuracy: Callable[..., Scalar] | None
    function: Callable[[PyTree], Scalar] | None
    unravel: Callable[[Vector], PyTree]
    train: PyTree[Array] | None
    test: PyTree[Array] | None
    chunk_size: int | None = eqx.field(static=True)
    num_params: int = eqx.field(static=True)
    example_outputs: Callable[[PyTree, Array], Array] | None = None
    num_outputs: int = eqx.field(default=0, static=True)

    @classmethod
    def from_function(cls, loss: Callable[[PyTree], Scalar], params: PyTree) -> "Objective":
        """Wrap a loss that is a plain function of the parameter pytree.

        **Arguments:**

        - `loss`: `params -> scalar`.
        - `params`: example parameters, fixing the structure that `w` unravels to.

        **Returns:** an `Objective` without data (no accuracy, no test split).
        """
        flat, unravel = jfu.ravel_pytree(params)
        return cls(None, None, loss, unravel, None, None, None, flat.size)

    @classmethod
    def supervised(
        cls,
        example_loss: Callable[[PyTree, Array, Array], Scalar],
        params: PyTree,
        train: tuple[Array, Array],
        *,
        test: tuple[Array, Array] | None = None,
        example_accuracy: Callable[[PyTree, Array, Array], Scalar] | None = None,
        chunk_size: int | None = None,
        example_outputs: Callable[[PyTree, Array], Array] | None = None,
        num_outputs: int = 8,
    ) -> "Objective":
        """A mean over examples of a per-example loss.

        **Arguments:**

        - `example_loss`: `(params, x, y) -> scalar` for one example.
        - `params`: example parameters, fixing the structure that `w` unravels to.
        - `train`: `(inputs, targets)` with the examples on the leading axis.
        - `test`: optional held-out `(inputs, targets)`, used only for logging.
        - `example_accuracy`: optional `(params, x, y) -> 0. or 1.` for logging.
        - `chunk_size`: examples per chunk (`None`: all at once).
        - `example_outputs`: optional `(params, x) -> outputs` (the network's), logged on
          the first `num_outputs` examples of each split as `train_outputs` and
          `test_outputs`, so that outputs under the optimizer and under a flow can be
          compared.
        - `num_outputs`: how many examples of each split (0: none).

        **Returns:** an `Objective`.
        """
        num = jtu.tree_leaves(train)[0].shape[0]
        for name, split in (("train", train), ("test", test)):
            if split is None:
                continue
            sizes = {leaf.shape[0] for leaf in jtu.tree_leaves(split)}
            if len(sizes) != 1:
                raise ValueError(
                    f"{name} inputs and targets have different numbers of examples: "
                    f"{sorted(sizes)}."
                )
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}.")
        if chunk_size is not None and chunk_size >= num:
            chunk_size = None
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 0:
            raise ValueError(f"num_outputs must be an integer >= 0, got {num_outputs!r}.")
        flat, unravel = jfu.ravel_pytree(params)
        return cls(
            example_loss,
            example_accuracy,
            None,
            unravel,
            train,
            test,
            chunk_size,
            flat.size,
            example_outputs,
            num_outputs if example_outputs is not None else 0,
        )

    def check_params(self, w: Vector) -> None:
        """Raise `ValueError` unless `w` is a flat parameter vector for this objective:
        `num_params` entries, of the floating dtype of its data (if it holds data).

        **Arguments:**

        - `w`: the raveled parameters.

        **Returns:** nothing.
        """
        if w.shape != (self.num_params,):
            raise ValueError(f"`w0` has {w.size} parameters; the objective has {self.num_params}.")
        data = jtu.tree_leaves((self.train, self.test))
        dtypes = sorted({str(x.dtype) for x in data if eqx.is_inexact_array(x)})
        if dtypes and dtypes != [str(w.dtype)]:
            raise ValueError(
                f"`w0` is {w.dtype} but the objective's data is {', '.join(dtypes)}: give "
                "both one precision (cast `w0`, or build the data under the same "
                "`jax_enable_x64` setting)."
            )

    def _mean(self, fn: Callable, w: Vector, data: PyTree[Array]) -> Any:
        params = self.unravel(w)
        return _chunked_mean(lambda xy: fn(params, *xy), data, self.chunk_size)

    def value(self, w: Vector) -> Scalar:
        """The training loss $L(w)$."""
        if self.function is not None:
            return self.function(self.unravel(w))
        return self._mean(self.example_loss, w, self.train)

    def value_and_grad(self, w: Vector) -> tuple[Scalar, Vector]:
        """$L(w)$ and $\\nabla L(w)$."""
        return jax.value_and_grad(self.value)(w)

    def grad(self, w: Vector) -> Vector:
        """$\\nabla L(w)$."""
        return jax.grad(self.value)(w)

    def hvp(self, w: Vector, v: Vector) -> Vector:
        """The Hessian-vector product $H(w)v$, by forward-over-reverse."""
        return jax.jvp(self.grad, (w,), (v,))[1]

    def hvps(self, w: Vector, vs: Vectors) -> Vectors:
        """$H(w)v_i$ for each row $v_i$, linearising the gradient once."""
        _, hvp = jax.linearize(self.grad, w)
        return jax.vmap(hvp)(vs)

    def third_order(self, w: Vector, u: Vector, v: Vector) -> Vector:
        """$\\nabla_w (u^\\top H(w) v)$, with `u`, `v` held fixed."""
        return jax.grad(lambda x: jnp.vdot(u, self.hvp(x, v)))(w)

    def metrics(self, w: Vector) -> dict[str, Array]:
        """Loss and (where defined) accuracy on the train and test splits, and the
        network's outputs on the first `num_outputs` examples of each."""
        out = {}
        if self.function is not None:
            out["train_loss"] = self.value(w)
            return out
        for name, split in (("train", self.train), ("test", self.test)):
            if split is None:
                continue
            if self.example_accuracy is None:
                out[f"{name}_loss"] = self._mean(self.example_loss, w, split)
            else:
                both = lambda p, x, y: (
                    self.example_loss(p, x, y),
                    self.example_accuracy(p, x, y),
                )
                out[f"{name}_loss"], out[f"{name}_acc"] = self._mean(both, w, split)
            if self.num_outputs:
                inputs = jtu.tree_map(lambda x: x[: self.num_outputs], split[0])
                params = self.unravel(w)
                out[f"{name}_outputs"] = jax.vmap(lambda x: self.example_outputs(params, x))(inputs)
        return out
