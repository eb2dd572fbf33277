"""Random inputs for tests, benchmarks and examples.

`padded_ids` is the one maker of padded token-id batches that the
package's tests and benchmarks share (models trained or exported with the
package take such batches: 0 is padding, as with
`keras.layers.Embedding(mask_zero=True)`). To run a `.tflite` file, see
`keras_encoder.export.litert_runner`.
"""

import numpy as np


def padded_ids(
    batch: int,
    length: int,
    vocab: int,
    *,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    min_length: int = 1,
    max_length: int | None = None,
    full_rows=None,
    empty_rows=None,
) -> np.ndarray:
    """A (batch, length) int32 batch of random ids, zero-padded at the end.

    Ids are uniform in [1, vocab). Each row's real length is uniform in
    [min_length, max_length], drawn after the ids from the same generator;
    then the rows `full_rows` get every position and the rows `empty_rows`
    none (all padding).

    Args:
        batch, length: the shape.
        vocab: ids are below it (0 is padding).
        seed: seeds a new generator when `rng` is not given. Defaults to 0.
        rng: a `numpy.random.Generator` to draw from instead (the caller
            may draw more from it, e.g. labels).
        min_length, max_length: the range of real lengths. Default to 1
            and `length`.
        full_rows, empty_rows: optional row index (a list of rows or a
            slice) of rows with no padding, or only padding.

    Returns:
        An int32 array of shape (batch, length).

    Example:

    >>> ids = padded_ids(3, 6, vocab=50, seed=0, full_rows=[0], empty_rows=[2])
    >>> ids.shape, ids.dtype.name
    ((3, 6), 'int32')
    >>> (ids != 0).sum(axis=1).tolist()[::2]  # the full and the empty row
    [6, 0]
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    ids = rng.integers(1, vocab, size=(batch, length))
    high = length if max_length is None else max_length
    lengths = rng.integers(min_length, high + 1, size=batch)
    if full_rows is not None:
        lengths[full_rows] = length
    if empty_rows is not None:
        lengths[empty_rows] = 0
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return ids.astype("int32")
