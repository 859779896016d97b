"""Small problems shared by the tests."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import centralflows as cf
from centralflows.models import MLP, accuracy, mse


def small_mlp_objective(
    *, num=40, width=8, depth=1, in_size=5, classes=3, seed=0, chunk_size=None, num_test=0
):
    """A tanh MLP with the squared loss on random data: a few hundred parameters (and
    `num_test` held-out examples, if any)."""
    kx, ky, km = jr.split(jr.key(seed), 3)
    x = jr.normal(kx, (num + num_test, in_size))
    y = jax.nn.one_hot(jr.randint(ky, (num + num_test,), 0, classes), classes)
    model = MLP(in_size, classes, width=width, depth=depth, activation="tanh", key=km)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    objective = cf.Objective.supervised(
        lambda p, x, y: mse(eqx.combine(p, static)(x), y),
        params,
        (x[:num], y[:num]),
        test=(x[num:], y[num:]) if num_test else None,
        example_accuracy=lambda p, x, y: accuracy(eqx.combine(p, static)(x), y),
        chunk_size=chunk_size,
    )
    return objective, jax.flatten_util.ravel_pytree(params)[0]


def leaving_loss(w, k=0.02):
    # Sharpness 1 + y along x; y and z pull on each other through k z y, so that once y
    # is held at the edge, z keeps moving and ends the oscillation's reason to exist.
    x, y, z = w
    return 0.5 * (1 + y) * x**2 - k * (3 - z) * y - 3 * k * z


def dense_hessian(objective, w):
    return jax.hessian(objective.value)(w)


OPTIMIZERS = (
    cf.GD(lr=0.3),
    cf.ScalarRMSProp(lr=0.05, beta2=0.9, eps=1e-8),
    cf.RMSProp(lr=0.01, beta2=0.9, eps=1e-8, bias_correction=True),
)


def advance_state(optimizer, objective, w, steps=3):
    """A non-trivial optimizer state after a few steps from `w`."""
    state = optimizer.init(w, objective.grad(w))
    for _ in range(steps):
        w, state = optimizer.step(w, state, objective.grad(w))
    return w, state


def tree_allclose(a, b, **kwargs):
    return all(
        bool(jnp.allclose(x, y, **kwargs))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )
