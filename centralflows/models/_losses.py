import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..data import IGNORE


def mse(outputs: Float[Array, " c"], target: Float[Array, " c"]) -> Float[Array, ""]:
    """Squared loss of one example, `0.5 * sum((outputs - target)**2)`.

    **Arguments:**

    - `outputs`: the model's outputs.
    - `target`: the one-hot (or, for a binary task, `±1`) target.

    **Returns:**

    A scalar; average it over the dataset.
    """
    return 0.5 * jnp.sum((outputs - target) ** 2)


def cross_entropy(outputs: Float[Array, " c"], target: Float[Array, " c"]) -> Float[Array, ""]:
    """Cross-entropy of one example, `-sum(target * log_softmax(outputs))`.

    **Arguments:**

    - `outputs`: the model's outputs (logits).
    - `target`: the target distribution, usually one-hot.

    **Returns:**

    A scalar; average it over the dataset.
    """
    return -jnp.sum(target * jax.nn.log_softmax(outputs))


def accuracy(outputs: Float[Array, " c"], target: Float[Array, " c"]) -> Float[Array, ""]:
    """Whether one example is classified correctly.

    **Arguments:**

    - `outputs`: the model's outputs.
    - `target`: the one-hot target.

    **Returns:**

    `1.0` if `argmax(outputs) == argmax(target)` and `0.0` otherwise, in the dtype
    of `outputs`.
    """
    return (jnp.argmax(outputs) == jnp.argmax(target)).astype(outputs.dtype)


class AbstractLoss(eqx.Module):
    """A loss of a model's outputs against integer labels, and the matching accuracy.

    Acts on one example: outputs of shape `(*positions, c)` against labels of shape
    `(*positions)`, averaged over the positions whose label is not
    [`centralflows.data.IGNORE`][] (a scalar label, one position, is not masked). For a
    binary task (`binary=True`) the model has one output `f`, labels are `0` or `1`,
    and the prediction is the sign of `f`.
    """

    binary: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def _one(self, outputs: Float[Array, " c"], label: Int[Array, ""]) -> Float[Array, ""]:
        """The loss at one labelled position."""

    def _correct(self, outputs: Float[Array, " c"], label: Int[Array, ""]) -> Float[Array, ""]:
        if self.binary:
            right = (outputs[0] > 0) == (label == 1)
        else:
            right = jnp.argmax(outputs) == label
        return right.astype(outputs.dtype)

    def _mean(self, fn, outputs, labels) -> Float[Array, ""]:
        if labels.ndim == 0:  # one position: no mask, the loss as it is
            return fn(outputs, labels)
        outputs = outputs.reshape(-1, outputs.shape[-1])
        labels = labels.reshape(-1)
        values = jax.vmap(fn)(outputs, labels)
        keep = labels != IGNORE
        total = jnp.sum(jnp.where(keep, values, 0))
        return total / jnp.maximum(jnp.sum(keep), 1).astype(values.dtype)

    def __call__(
        self, outputs: Float[Array, "*positions c"], labels: Int[Array, "*positions"]
    ) -> Float[Array, ""]:
        """**Arguments:**

        - `outputs`: the model's outputs on one example.
        - `labels`: its labels.

        **Returns:**

        The mean loss over the labelled positions (0 if there are none).
        """
        return self._mean(self._one, outputs, labels)

    def accuracy(
        self, outputs: Float[Array, "*positions c"], labels: Int[Array, "*positions"]
    ) -> Float[Array, ""]:
        """**Arguments:**

        - `outputs`: the model's outputs on one example.
        - `labels`: its labels.

        **Returns:**

        The fraction of labelled positions predicted right, in the dtype of `outputs`.
        """
        return self._mean(self._correct, outputs, labels)


def _sign(label: Int[Array, ""], dtype) -> Float[Array, ""]:
    return (2 * label - 1).astype(dtype)


class MSE(AbstractLoss):
    """The squared loss [`centralflows.models.mse`][] against one-hot targets, or for a
    binary task against the targets `±1`."""

    binary: bool = False

    def _one(self, outputs, label):
        if self.binary:
            return mse(outputs, _sign(label, outputs.dtype)[None])
        return mse(outputs, jax.nn.one_hot(label, outputs.shape[-1], dtype=outputs.dtype))


class CrossEntropy(AbstractLoss):
    """Cross-entropy [`centralflows.models.cross_entropy`][] against one-hot targets, or
    for a binary task the logistic loss `log(1 + exp(-y f))` with `y = ±1`."""

    binary: bool = False

    def _one(self, outputs, label):
        if self.binary:
            return jax.nn.softplus(-_sign(label, outputs.dtype) * outputs[0])
        return cross_entropy(outputs, jax.nn.one_hot(label, outputs.shape[-1], dtype=outputs.dtype))


MSE.__init__.__doc__ = CrossEntropy.__init__.__doc__ = """**Arguments:**

- `binary`: whether the task is binary (one output, labels `0`/`1`).
"""
