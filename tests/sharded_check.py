"""Data-parallel checks, run by tests/test_sharding.py in a process of its own that sees
four CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`, which must be set
before JAX creates its CPU backend, so not in the test process).

`python -m tests.sharded_check CHECK...` computes each check with the examples on one
device and split over four, and prints one JSON line: for each check, the largest
difference of each compared quantity relative to its largest magnitude on one device.
"""

import json
import pathlib
import sys
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402

import centralflows as cf  # noqa: E402

from .helpers import small_mlp_objective  # noqa: E402

DEVICES = 4
# 42 training and 13 test examples (neither divides over 4 devices: padded and masked), in
# chunks of 4 per device; at η = 0.9, GD's effective sharpness crosses 2 near step 43.
NUM, NUM_TEST, CHUNK, LR, WARM_START = 42, 13, 4, 0.9, 38
# RMSProp's effective sharpness crosses 2 near step 24 (its central flow's onset: 5.85
# units after this warm start).
RMSPROP, RMSPROP_WARM_START = cf.RMSProp(0.03, beta2=0.99, eps=1e-8), 18


# Solvers' residuals, themselves of the order of round-off: not compared.
_RESIDUALS = ("eig_residuals", "sdcp_residual")


def _relative(one, many) -> float:
    """max |one − many| / max |one| over the entries finite in `one` (NaN where `many`
    is not finite where `one` is)."""
    one, many = np.asarray(one, float), np.asarray(many, float)
    finite = np.isfinite(one)
    if not np.array_equal(finite, np.isfinite(many)):
        return float("nan")
    if not finite.any():
        return 0.0
    scale = np.max(np.abs(one[finite]))
    return float(np.max(np.abs(one[finite] - many[finite])) / scale)


def _objectives():
    objective, w = small_mlp_objective(num=NUM, num_test=NUM_TEST, chunk_size=CHUNK)
    return objective, objective.sharded(DEVICES), w


@eqx.filter_jit
def _derivatives(objective, w, u, v, vs):
    return {
        "value": objective.value(w),
        "grad": objective.grad(w),
        "hvp": objective.hvp(w, v),
        "hvps": objective.hvps(w, vs),
        "third_order": objective.third_order(w, u, v),
        **objective.metrics(w),
    }


def derivatives() -> dict[str, float]:
    """Loss, gradient, Hessian-vector products, third-order terms and the metrics."""
    one, many, w = _objectives()
    assert many.num_devices == DEVICES and len(many.train[0].sharding.device_set) == DEVICES
    ku, kv, kvs = jax.random.split(jax.random.key(1), 3)
    u, v = jax.random.normal(ku, w.shape), jax.random.normal(kv, w.shape)
    vs = jax.random.normal(kvs, (3, w.size))
    a, b = _derivatives(one, w, u, v, vs), _derivatives(many, w, u, v, vs)
    assert a.keys() == b.keys() >= {"test_loss", "test_acc"}
    return {name: _relative(a[name], b[name]) for name in a}


def _run(objective, w, processes, steps, optimizer, warm_start, **kwargs):
    return cf.run(
        objective,
        w,
        optimizer,
        steps=steps,
        processes=processes,
        warm_start=warm_start,
        save_w_every=1,
        eig=cf.EigConfig(tol=1e-10, max_iters=500),
        progress=False,
        **kwargs,
    )


def _compare_runs(processes, steps, optimizer=cf.GD(LR), warm_start=WARM_START) -> dict[str, float]:
    """`processes` run for `steps` steps on one device and on four, the latter also
    interrupted at half way and resumed, which must give it bit for bit; and resuming it
    on one device must be refused, naming the devices."""
    one, many, w = _objectives()
    setup = dict(processes=processes, optimizer=optimizer, warm_start=warm_start)
    a = _run(one, w, steps=steps, **setup)
    b = _run(many, w, steps=steps, **setup)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "run.h5"
        assert _run(many, w, steps=steps // 2, out=path, **setup).attrs["devices"] == DEVICES
        try:
            _run(one, w, steps=steps, out=path, resume=True, **setup)
        except ValueError as e:
            assert "devices: the file has 4, this call gives 1" in str(e), e
        else:
            raise AssertionError("resumed a 4-device run on one device")
        resumed = _run(many, w, steps=steps, out=path, resume=True, **setup)
        for group in processes:
            for field, series in a[group].items():
                assert np.array_equal(b[group][field], resumed[group][field], equal_nan=True)
                if np.issubdtype(series.dtype, np.floating) and field not in _RESIDUALS:
                    out[f"{group}/{field}"] = _relative(series, b[group][field])
    if "central" in processes:  # the flow passed its EOS onset event
        assert np.isfinite(a["central"]["eos_time"][-1]), a["central"]["eos_time"]
    return out


def discrete() -> dict[str, float]:
    """The discrete GD iterates with eigen tracking, through a checkpoint and resume."""
    return _compare_runs(("discrete",), 6)


def central() -> dict[str, float]:
    """The central flow through its EOS onset event, through a checkpoint and resume."""
    return _compare_runs(("central",), 8)


def stable() -> dict[str, float]:
    """The stable flow (GD's gradient flow) past where its effective sharpness crosses
    2, through a checkpoint and resume."""
    return _compare_runs(("stable",), 8)


def rmsprop() -> dict[str, float]:
    """RMSProp's discrete iterates and its central flow through the flow's EOS onset
    event, through a checkpoint and resume."""
    return _compare_runs(("discrete", "central"), 8, RMSPROP, RMSPROP_WARM_START)


def flow_gradient() -> dict[str, float]:
    """`jax.grad` of the central flow's final loss (past its EOS onset) w.r.t. η."""
    one, many, w = _objectives()
    start = cf.discrete_run(one, w, cf.GD(LR), WARM_START).w
    eig = cf.EigConfig(tol=1e-10, max_iters=500)

    def final_loss(objective, lr):
        sol = cf.central_flow(objective, start, cf.GD(lr), 6, eig=eig)
        assert 0 < float(jax.lax.stop_gradient(sol.eos_onset)) < 6, sol.eos_onset
        return sol.loss[-1]

    grads = [jax.grad(final_loss, argnums=1)(objective, LR) for objective in (one, many)]
    return {"d loss(6) / d lr": _relative(*grads)}


CHECKS = {f.__name__: f for f in (derivatives, discrete, central, stable, rmsprop, flow_gradient)}

if __name__ == "__main__":
    assert jax.device_count() == DEVICES, jax.devices()
    print(json.dumps({name: CHECKS[name]() for name in sys.argv[1:]}))
