import numpy as np

from .._options import at_least, declare
from ._dataset import IGNORE, Dataset, split


def _next_token(prompts: np.ndarray, answers: np.ndarray, n: int, vocab: int) -> Dataset:
    """Next-token prediction on `prompt + answer`, scored on the answer only.

    The input is the sequence without its last token and the labels the sequence
    without its first, so position `t` predicts token `t + 1`; the labels of the first
    `length - 1` positions (predicting the rest of the prompt) are `IGNORE`.
    """
    length = prompts.shape[1]
    sequences = np.concatenate([prompts, answers], axis=1)
    inputs, labels = sequences[:, :-1], sequences[:, 1:].copy()
    labels[:, : length - 1] = IGNORE
    return split(inputs, labels, n, input_dtype=np.int32, num_classes=vocab, vocab=vocab)


def make_sorting(
    *, vocab: int = 4, length: int = 8, n: int = 1000, n_test: int = 1000, seed: int = 0
) -> Dataset:
    """The sorting task (after Karpathy's minGPT demo): read `length` random tokens from
    `0, ..., vocab - 1`, then write them in sorted order, one token at a time.

    **Arguments:**

    - `vocab`: number of distinct tokens.
    - `length`: tokens to sort.
    - `n`: number of training sequences.
    - `n_test`: number of test sequences; 0 gives no test split.
    - `seed`: seed of the random tokens.

    **Returns:**

    A [`centralflows.data.Dataset`][] with inputs of `2 length - 1` tokens and labels
    whose last `length` entries are the sorted tokens (the others `IGNORE`).
    """
    prompts = np.random.default_rng(seed).integers(0, vocab, size=(n + n_test, length))
    return _next_token(prompts, np.sort(prompts, axis=1), n, vocab)


def make_copying(
    *, vocab: int = 4, length: int = 8, n: int = 1000, n_test: int = 1000, seed: int = 0
) -> Dataset:
    """The copying task: read `length` random tokens from `0, ..., vocab - 1`, then
    write them again in the same order.

    **Arguments:**

    - `vocab`: number of distinct tokens.
    - `length`: tokens to copy.
    - `n`: number of training sequences.
    - `n_test`: number of test sequences; 0 gives no test split.
    - `seed`: seed of the random tokens.

    **Returns:**

    A [`centralflows.data.Dataset`][] with inputs of `2 length - 1` tokens and labels
    whose last `length` entries are the prompt (the others `IGNORE`).
    """
    prompts = np.random.default_rng(seed).integers(0, vocab, size=(n + n_test, length))
    return _next_token(prompts, prompts, n, vocab)


SORTING_OPTIONS = declare(
    make_sorting, vocab=at_least(2), length=at_least(1), n=at_least(1), n_test=at_least(0)
)
COPYING_OPTIONS = declare(
    make_copying, vocab=at_least(2), length=at_least(1), n=at_least(1), n_test=at_least(0)
)
