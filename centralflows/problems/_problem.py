"""The base class of the built-in problems."""

import abc

import equinox as eqx
import jax.numpy as jnp
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Float, PyTree, Scalar


def default_float(value: ArrayLike) -> Float[Array, "..."]:
    """`value` as an array of JAX's default float precision (float64 where x64 is on)."""
    return jnp.asarray(value, jnp.result_type(float))


class AbstractProblem(eqx.Module):
    """A loss with a known answer: a function of a parameter pytree, and where it starts.

    A problem is the `loss` argument of [`centralflows.run`][],
    [`centralflows.central_flow`][] and the other solves: call them as
    `cf.run(problem, problem.w0, optimizer, ...)`. Its float fields become arrays of the
    parameters' precision there, so a gradient with respect to them is available.
    """

    w0: AbstractVar[PyTree]

    @abc.abstractmethod
    def __call__(self, params: PyTree) -> Scalar:
        """The loss at `params` (a pytree shaped like `w0`)."""
