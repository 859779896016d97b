"""Why a process stopped: an enumeration, as diffrax's `RESULTS` are."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


class StopReason(eqx.Enumeration):
    """Why a process stopped; `running` while it has not.

    Compare items with `==` (`sol.stop_reason == cf.StopReason.diverged`). A run file's
    `stop_reason` series holds the item's index (NaN while running) and its `stop_reasons`
    attribute maps each index to its message; `stop_reason_of(code)` reads one back.
    """

    running = "running"
    diverged = "non-finite loss or parameters, or a loss past `divergence_factor` (diverged)"
    solver_failed = "the flow's ODE solver failed"
    sharpness_ceiling = "the stable flow's effective sharpness passed stable.max_Seff"
    chatter = "too many events in one unit of time (the flow's events chatter)"


FAILURES = (StopReason.diverged, StopReason.solver_failed)
"""The stop reasons that are failures (warned about; the CLI exits with status 3)."""

_ITEMS = tuple(StopReason._name_to_item.values())  # in index order


def stop_code(reason: StopReason) -> Float[Array, ""]:
    """The index of `reason` as a run file's `stop_reason` series holds it (NaN while
    running)."""
    code = reason._value
    return jnp.where(code == StopReason.running._value, jnp.nan, code.astype(float))


def stop_reason_of(code: int) -> StopReason:
    """The `StopReason` whose index is `code` (an entry of a `stop_reason` series)."""
    if not 0 < code < len(_ITEMS):
        raise ValueError(f"{code!r} is not the code of a stop reason (1 to {len(_ITEMS) - 1}).")
    return _ITEMS[code]


def stop_messages() -> dict[str, str]:
    """`{index: message}` for every reason but `running`: a run file's `stop_reasons`."""
    return {str(code): StopReason[item] for code, item in enumerate(_ITEMS) if code}


def is_failure(reason: StopReason) -> Bool[Array, ""]:
    """Whether `reason` is one of `FAILURES`."""
    return jnp.any(jnp.stack([reason == failure for failure in FAILURES]))


def describe_stop(step: float, reason: StopReason) -> str:
    """`"stopped at step <step>: <reason>"`, for warnings and the CLI."""
    return f"stopped at step {step:g}: {StopReason[reason]}"
