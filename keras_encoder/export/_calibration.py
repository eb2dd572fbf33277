"""Calibration data for full-integer (int8) TFLite quantization, checked.

Every batch is checked against the model before conversion: integer ids
for integer inputs (floats are never cast to ids silently), the rank and
fixed axes of each input, ids within the vocabulary of the Embedding an
input feeds, sequences no longer than the model's `max_length`. A bad
batch is a `TypeError` or `ValueError` that names the batch and input,
not a converter crash or a silently wrong calibration.
"""

import keras
import numpy as np

from keras_encoder.export._signature import check_fits_dtype
from keras_encoder.export._signature import check_input_dtype
from keras_encoder.export._signature import check_model
from keras_encoder.export._signature import max_length
from keras_encoder.export._signature import model_inputs
from keras_encoder.export._signature import named_inputs
from keras_encoder.export._signature import vocabularies

_ARGUMENT = "Received an invalid value for argument `representative_data`"
_ROWS_HINT = (
    ". Each item is one batch: pass a 2-D array of ids (batch, sequence) "
    "as it is, or a list of such arrays, not single rows"
)


def _layout(rank):
    axes = ["batch", "sequence", "features"][:rank]
    axes += ["..."] * (rank - len(axes))
    return "(" + ", ".join(axes) + ")"


def _check_shape(array, name, shape, longest, prefix, batch_hint):
    rank = len(shape)
    if array.ndim != rank:
        raise ValueError(
            f"{prefix}: expected input {name!r} of rank {rank}, "
            f"{_layout(rank)}. Received: shape={array.shape}{batch_hint}"
        )
    for axis, size in enumerate(shape[1:], start=1):
        if size is not None and array.shape[axis] != size:
            raise ValueError(
                f"{prefix}: expected input {name!r} of shape "
                f"{tuple(shape)}. Received: shape={array.shape}"
            )
    if array.shape[0] == 0:
        raise ValueError(
            f"{prefix}: expected at least one example for input "
            f"{name!r}. Received: shape={array.shape}"
        )
    if longest is not None and rank >= 2 and array.shape[1] > longest:
        raise ValueError(
            f"{prefix}: expected sequences of at most max_length="
            f"{longest} (the model's PositionalEncoding) for input "
            f"{name!r}. Received: length {array.shape[1]}"
        )


def _check_ids(array, name, dtype, vocabulary, prefix):
    """Integer values: within `vocabulary`, (Embedding name, input_dim) or
    None, and within `dtype`."""
    low, high = int(array.min()), int(array.max())
    if vocabulary is not None:
        layer, size = vocabulary
        if low < 0 or high >= size:
            raise ValueError(
                f"{prefix}: expected token ids in [0, {size}) for "
                f"input {name!r}, which feeds Embedding {layer!r} "
                f"(input_dim={size}). Received: ids from {low} to "
                f"{high}"
            )
    check_fits_dtype(array, name, dtype, prefix)


def check_calibration_batch(
    model: keras.Model, named: dict, prefix: str, batch_hint: str = ""
) -> dict:
    """Check one calibration batch against the model's inputs.

    Args:
        model: the model to calibrate.
        named: the batch, {input name: array}, every input present.
        prefix: what each error message starts with, e.g. the argument or
            file the batch came from.
        batch_hint: appended to the message of a batch of the wrong rank.
            Defaults to none.

    Returns:
        The batch, each array cast to its input's dtype.

    Raises:
        TypeError: an array of the wrong dtype, e.g. float ids.
        ValueError: an array of the wrong rank or shape, without examples,
            with sequences longer than the model's `max_length`, ids
            outside the vocabulary of the Embedding its input feeds, or
            inputs with different numbers of examples.
    """
    specs = model_inputs(model)
    embeddings = vocabularies(model)
    longest = max_length(model)
    checked = {}
    for name, array in named.items():
        spec = specs[name]
        dtype = keras.backend.standardize_dtype(spec.dtype)
        kind = np.dtype(dtype).kind
        check_input_dtype(array, name, dtype, prefix)
        _check_shape(array, name, spec.shape, longest, prefix, batch_hint)
        if kind in "iu" and array.size:
            _check_ids(array, name, dtype, embeddings.get(name), prefix)
        if kind == "b" and array.dtype.kind != "b":
            array = array != 0
        checked[name] = array.astype(dtype)
    batch_sizes = {n: a.shape[0] for n, a in checked.items()}
    if len(set(batch_sizes.values())) > 1:
        raise ValueError(
            f"{prefix}: expected the same number of examples for every "
            f"input. Received: {batch_sizes}"
        )
    return checked


def _batches(representative_data):
    """`representative_data` as a list: one array or dict is one batch,
    else each item of the iterable is one."""
    if isinstance(representative_data, dict) or hasattr(
        representative_data, "shape"
    ):
        return [representative_data]
    if isinstance(representative_data, str | bytes) or not hasattr(
        representative_data, "__iter__"
    ):
        raise TypeError(
            f"{_ARGUMENT}: expected an array (one batch) or an iterable of "
            "input batches. Received: representative_data of type "
            f"{type(representative_data).__name__}"
        )
    return list(representative_data)


def calibration_batches(model: keras.Model, representative_data) -> list:
    """`representative_data` as a list of checked batches, each a dict of
    arrays by input name in the input dtypes.

    One array (or one dict of arrays) is one batch; otherwise each item of
    the iterable is a batch.

    Raises:
        TypeError: a batch of the wrong dtype, e.g. float ids.
        ValueError: a batch of the wrong rank or shape, ids outside the
            vocabulary of the Embedding an input feeds, sequences longer
            than the model's `max_length`, or no batch at all.
    """
    check_model(model)
    batches = _batches(representative_data)
    if not batches:
        raise ValueError(
            f"{_ARGUMENT}: expected at least one input batch. Received: an "
            "empty iterable"
        )
    checked = []
    for i, batch in enumerate(batches):
        prefix = f"{_ARGUMENT} (batch {i} of {len(batches)})"
        try:
            named = named_inputs(model, batch)
        except ValueError as error:
            raise ValueError(f"{prefix}: {error}") from None
        checked.append(
            check_calibration_batch(model, named, prefix, _ROWS_HINT)
        )
    return checked
