from collections.abc import Callable
from typing import Literal

import numpy as np

from ._dataset import IGNORE, Dataset, split

_ANSWERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sorting": lambda prompts: np.sort(prompts, axis=1),
    "copying": lambda prompts: prompts,
}


def make_sequence_task(
    task: Literal["sorting", "copying"],
    *,
    vocab: int = 4,
    length: int = 8,
    n: int = 1000,
    n_test: int = 1000,
    seed: int = 0,
) -> Dataset:
    """A synthetic next-token task: read `length` random tokens from `0, ..., vocab - 1`,
    then write them again, one token at a time: in sorted order (`"sorting"`, after
    Karpathy's minGPT demo) or in the same order (`"copying"`).

    The input is the sequence `prompt + answer` without its last token and the labels
    the sequence without its first, so position `t` predicts token `t + 1`; the labels
    of the first `length - 1` positions (predicting the rest of the prompt) are
    [`centralflows.data.IGNORE`][], so only the answer is scored.

    **Arguments:**

    - `task`: `"sorting"` or `"copying"`.
    - `vocab`: number of distinct tokens.
    - `length`: tokens in the prompt.
    - `n`: number of training sequences.
    - `n_test`: number of test sequences; 0 gives no test split.
    - `seed`: seed of the random tokens.

    **Returns:**

    A [`centralflows.data.Dataset`][] with inputs of `2 length - 1` tokens and labels
    whose last `length` entries are the answer (the others `IGNORE`).
    """
    if task not in _ANSWERS:
        raise ValueError(f"Unknown task {task!r}; the tasks are {', '.join(map(repr, _ANSWERS))}.")
    prompts = np.random.default_rng(seed).integers(0, vocab, size=(n + n_test, length))
    sequences = np.concatenate([prompts, _ANSWERS[task](prompts)], axis=1)
    inputs, labels = sequences[:, :-1], sequences[:, 1:].copy()
    labels[:, : length - 1] = IGNORE
    return split(inputs, labels, n, input_dtype=np.int32, num_classes=vocab, vocab=vocab)
