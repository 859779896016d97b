"""The names of the processes a run advances, in the order runs and figures list them."""

PROCESS_NAMES = (
    "discrete",
    "midpoint",
    "central",
    "central_no_penalty",
    "central_stationary",
    "stable",
)
