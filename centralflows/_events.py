"""The events that end a flow's segments: what they are, and as the data a segment takes."""

import enum

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int, Scalar


class EventKind(enum.Enum):
    """What happens at an event of a flow.

    - `onset`: the stability constraint first becomes active (the EOS onset).
    - `activate`, `deactivate`: the SDCP's active rank (the rank of X) rises or falls.
    - `enter`: the Ritz value just past the critical set rises through the SDCP's
      threshold (the critical set grows).
    - `eos`, `ceiling`: the stable flow's sharpness rises through 2 (its EOS onset) or
      through its ceiling (where it stops).
    - `track`: the smallest tracked eigenvalue rises through `eig.track_threshold`
      (the tracked set grows).
    """

    onset = "onset"
    activate = "activate"
    deactivate = "deactivate"
    enter = "enter"
    eos = "eos"
    ceiling = "ceiling"
    track = "track"

    @property
    def slot(self) -> str:
        """The condition slot a segment watches this kind in: `"activate"` and
        `"deactivate"` (margins of the SDCP's rank branch; the onset is the first
        activation), `"ritz"` (a Ritz value of the basis against a threshold) or
        `"track"`."""
        return _SLOTS[self]

    @property
    def changes_rank(self) -> bool:
        """Whether the SDCP's active rank changes at this event."""
        return self in (EventKind.onset, EventKind.activate, EventKind.deactivate)

    @property
    def continuous(self) -> bool:
        """Whether the vector field is continuous across this event but for a refreshed
        basis (an onset's time is an output, and a stop ends the flow)."""
        return self in (EventKind.track, EventKind.activate, EventKind.deactivate)


_SLOTS = {
    EventKind.onset: "activate",
    EventKind.activate: "activate",
    EventKind.deactivate: "deactivate",
    EventKind.enter: "ritz",
    EventKind.eos: "ritz",
    EventKind.ceiling: "ritz",
    EventKind.track: "track",
}


class Event(eqx.Module):
    """An event planned for the next segment: of `kind`, leaving active `rank` (rank
    events), at `threshold` (Ritz and track events), for the Rayleigh quotient of the
    frozen `vectors` (the smallest tracked eigenvector: track events)."""

    kind: EventKind = eqx.field(static=True)
    rank: int = eqx.field(static=True, default=0)
    threshold: float | Scalar | None = None
    vectors: Float[Array, "1 n"] | None = None


class ArmedEvents(eqx.Module):
    """The events a segment watches, as data, so that one compiled program serves every
    combination of them: the slots (`AbstractFlowProcess.slots`) that are `armed`, the
    SDCP's active `rank` (the rank slots), the Ritz slot's `threshold`, and the track
    slot's `track_threshold` and frozen `track_vectors`."""

    armed: Bool[Array, " s"]
    rank: Int[Array, ""]
    threshold: Scalar
    track_threshold: Scalar
    track_vectors: Float[Array, "1 n"]
