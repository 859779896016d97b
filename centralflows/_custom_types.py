"""Type aliases shared by every module."""

from jaxtyping import Array, Float

Vector = Float[Array, " n"]
Record = dict[str, Array]  # one logged row: series name -> value
