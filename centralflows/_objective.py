"""The training objective: a full-batch loss over a flat parameter vector."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, PyTree, Scalar

Vector = Float[Array, " n"]
Vectors = Float[Array, "k n"]


_AXIS = "examples"  # the mesh axis that the examples are split over


def _pad(x: Array, rows: int) -> Array:
    """`x` extended to `rows` rows with copies of its last (a real input, so that nothing
    computed on it is NaN; the caller masks these rows out)."""
    return jnp.concatenate([x, jnp.repeat(x[-1:], rows - x.shape[0], axis=0)])


def _chunked_sum(
    per_example: Callable[..., Any],
    data: PyTree[Array],
    chunk_size: int | None,
    valid: Bool[Array, " rows"] | None = None,
) -> Any:
    """Sum over the leading axis of `data` of `per_example(example)`, chunk by chunk.

    Rows where `valid` is False (padding) are left out, as are the rows padding the last
    chunk when the chunk size does not divide the data.
    """
    num = jtu.tree_leaves(data)[0].shape[0]
    batched = jax.vmap(per_example)

    def masked_sum(values, mask):
        expand = lambda v: mask.reshape((-1,) + (1,) * (v.ndim - 1))
        return jtu.tree_map(lambda v: jnp.sum(jnp.where(expand(v), v, 0), axis=0), values)

    if chunk_size is None or chunk_size >= num:
        values = batched(data)
        if valid is None:
            return jtu.tree_map(lambda x: jnp.sum(x, axis=0), values)
        return masked_sum(values, valid)
    num_chunks = -(-num // chunk_size)
    pad = num_chunks * chunk_size - num

    def _split(x):
        return _pad(x, num + pad).reshape((num_chunks, chunk_size) + x.shape[1:])

    mask = jnp.arange(num + pad) < num
    if valid is not None:
        mask = mask & _pad(valid, num + pad)
    mask = mask.reshape(num_chunks, chunk_size)
    chunks = jtu.tree_map(_split, data)

    def _body(total, chunk):
        chunk_data, chunk_mask = chunk
        return jtu.tree_map(jnp.add, total, masked_sum(batched(chunk_data), chunk_mask)), None

    # Start from the first chunk's sum (not from zeros, which would not vary over the
    # devices that a sum inside `jax.shard_map` runs on). Each chunk is rematerialised
    # when differentiated: reverse mode through the scan keeps only the running sums, not
    # every chunk's intermediates, so derivatives too hold one chunk's at a time.
    first = masked_sum(batched(jtu.tree_map(lambda x: x[0], chunks)), mask[0])
    rest = jtu.tree_map(lambda x: x[1:], (chunks, mask))
    total, _ = jax.lax.scan(jax.checkpoint(_body), first, rest)
    return total


def _mean(
    per_example: Callable[..., Any],
    params: PyTree,
    data: PyTree[Array],
    num: int,
    chunk_size: int | None,
    mesh: Mesh | None,
) -> Any:
    """Mean of `per_example(params, *example)` over the first `num` examples of `data`.

    Without a `mesh`, `data` holds exactly `num` examples. With one, `data` is split over
    its devices (padded to a multiple of their number): each device sums over its own
    examples, chunk by chunk, and the sums are added across devices (an all-reduce);
    `params` are replicated.
    """
    if mesh is None:
        total = _chunked_sum(lambda xy: per_example(params, *xy), data, chunk_size)
    else:

        def local(params, data):
            rows = jtu.tree_leaves(data)[0].shape[0]
            valid = jax.lax.axis_index(_AXIS) * rows + jnp.arange(rows) < num
            fn = lambda xy: per_example(params, *xy)
            return jax.lax.psum(_chunked_sum(fn, data, chunk_size, valid), _AXIS)

        total = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(_AXIS)), out_specs=P())(
            params, data
        )
    return jtu.tree_map(lambda t: t / num, total)


class Objective(eqx.Module):
    r"""A training loss $L(w)$ over a flat parameter vector, with its derivatives.

    Parameters may be any pytree; internally they are raveled into one vector
    `w` of length `n` and `unravel` maps back. For a supervised loss the data is held
    as fields (so it lives on the device and can be differentiated), and the mean over
    examples is accumulated in chunks of `chunk_size` examples (memory is bounded by
    one chunk; results do not depend on the chunk size beyond round-off). The examples
    may be split over several devices (see `sharded`).

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
    num_train: int = eqx.field(default=0, static=True)
    num_test: int = eqx.field(default=0, static=True)
    mesh: Mesh | None = eqx.field(default=None, static=True)

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
            num,
            0 if test is None else jtu.tree_leaves(test)[0].shape[0],
        )

    @property
    def num_devices(self) -> int:
        """How many devices the examples are split over (1: not split)."""
        return 1 if self.mesh is None else self.mesh.size

    def sharded(self, devices: int | Sequence[jax.Device]) -> "Objective":
        """This objective with its examples split over several devices (data parallel).

        Each split is padded to a multiple of the number of devices with copies of its
        last example (masked out: no example is dropped or counted twice) and placed with
        its leading axis sharded over a one-dimensional `jax.sharding.Mesh`. Each device
        then sums over its own examples, in chunks of `chunk_size`, and the sums are added
        across devices; parameters, and every vector computed from them, are replicated.
        Values and derivatives equal those on one device up to round-off.

        **Arguments:**

        - `devices`: how many devices (the first of `jax.devices()`), or which ones. One
          device (an integer 1) returns the objective unchanged.

        **Returns:** an `Objective`.
        """
        if isinstance(devices, int) and not isinstance(devices, bool):
            available = jax.device_count()
            if not 1 <= devices <= available:
                raise ValueError(
                    f"Cannot split the examples over {devices} devices: JAX sees "
                    f"{available} ({jax.default_backend()}); give between 1 and {available}."
                )
            if devices == 1 and self.mesh is None:
                return self
            devices = jax.devices()[:devices]
        devices = list(devices)
        if self.function is not None:
            raise ValueError(
                "This objective is a plain function of the parameters, without examples to "
                "split over devices; build it with `Objective.supervised`."
            )
        if self.mesh is not None:
            raise ValueError(f"The examples are already split over {self.mesh.size} devices.")
        mesh = Mesh(np.array(devices), (_AXIS,))
        sharding = NamedSharding(mesh, P(_AXIS))

        def place(split, num):
            if split is None:
                return None
            rows = -(-num // mesh.size) * mesh.size
            return jtu.tree_map(lambda x: jax.device_put(_pad(x, rows), sharding), split)

        train, test = place(self.train, self.num_train), place(self.test, self.num_test)
        return dataclasses.replace(self, train=train, test=test, mesh=mesh)

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

    def _mean(self, fn: Callable, w: Vector, data: PyTree[Array], num: int) -> Any:
        return _mean(fn, self.unravel(w), data, num, self.chunk_size, self.mesh)

    def value(self, w: Vector) -> Scalar:
        """The training loss $L(w)$."""
        if self.function is not None:
            return self.function(self.unravel(w))
        return self._mean(self.example_loss, w, self.train, self.num_train)

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
        splits = (("train", self.train, self.num_train), ("test", self.test, self.num_test))
        for name, split, num in splits:
            if split is None:
                continue
            if self.example_accuracy is None:
                out[f"{name}_loss"] = self._mean(self.example_loss, w, split, num)
            else:
                both = lambda p, x, y: (
                    self.example_loss(p, x, y),
                    self.example_accuracy(p, x, y),
                )
                out[f"{name}_loss"], out[f"{name}_acc"] = self._mean(both, w, split, num)
            if self.num_outputs:
                inputs = jtu.tree_map(lambda x: x[: min(self.num_outputs, num)], split[0])
                params = self.unravel(w)
                out[f"{name}_outputs"] = jax.vmap(lambda x: self.example_outputs(params, x))(inputs)
        return out


def objective_and_start(
    loss: Objective | Callable[[PyTree], Scalar], w0: PyTree
) -> tuple[Objective, Vector, Callable[[Vector], PyTree]]:
    """The `Objective` of `loss` (as given, or built from a function of the parameter
    pytree) and the flat start `w0` with its unravelling, checked against it (parameter
    count, dtype). The flat start is strongly typed: one from weak-typed scalars (such as
    `jnp.array(0.0)`) would make every program compile twice, once for it and once for
    the strongly typed states after it.
    """
    objective = loss if isinstance(loss, Objective) else Objective.from_function(loss, w0)
    w, unravel = jfu.ravel_pytree(w0)
    w = w.astype(w.dtype)
    objective.check_params(w)
    return objective, w, unravel
