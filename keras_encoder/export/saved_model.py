"""SavedModel export, for TF Serving.

The SavedModel's `serving_default` signature has the model's input names
and a dynamic batch axis (and a dynamic sequence length where the model
declares `keras.Input((None, ...))`).
"""

import os
import re

import keras

from keras_encoder.export._signature import check_model
from keras_encoder.export._staging import staged


def _symbolic_shape_error(error):
    """JAX's failure to trace the model with symbolic sizes, as a
    `ValueError` naming the layer and the way out; None for other errors.

    Under JAX, Keras exports through jax2tf with a symbolic batch and
    sequence size; a layer that compares one with a number (a length
    check against `max_length`, a slice of a table) cannot be traced.
    """
    # jax._src.export.shape_poly.InconclusiveDimensionOperation: JAX has
    # no public name for it.
    if type(error).__name__ != "InconclusiveDimensionOperation":
        return None
    text = str(error)
    layer = re.search(r"calling (\w+)\.call\(\)", text)
    comparison = re.search(r"comparison (.+?) is inconclusive", text)
    return ValueError(
        "Export under the JAX backend traces the model (jax2tf) with "
        "symbolic batch and sequence sizes, and "
        + (f"layer {layer.group(1)}" if layer else "a layer")
        + " compares one with a number"
        + (f" ({comparison.group(1)})" if comparison else "")
        + ", which JAX cannot decide for every size. Export under the "
        "TensorFlow backend: KERAS_BACKEND=tensorflow (a .keras file saved "
        "under any backend loads there). Received: backend='jax'"
    )


def write_saved_model(model: keras.Model, directory: str) -> None:
    """Export `model` as a SavedModel into `directory`, a new or empty
    directory (e.g. one from `Staging.add`); no destination checks.

    Raises:
        ValueError: under torch; under JAX, a layer that cannot be traced
            with a symbolic sequence length (see `_symbolic_shape_error`).
    """
    if keras.backend.backend() == "torch":
        raise ValueError(
            "SavedModel and TFLite export trace the model into a TensorFlow "
            "graph, which Keras cannot do from the torch backend for these "
            "models (torch.export refuses their dynamic batch and sequence "
            "axes): build or load the model with KERAS_BACKEND=tensorflow "
            "(a .keras file saved under any backend loads there). Received: "
            "backend='torch'"
        )
    try:
        model.export(directory, format="tf_saved_model", verbose=False)
    except Exception as error:
        clear = _symbolic_shape_error(error)
        if clear is None:
            raise
        raise clear from None


def to_saved_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Export `model` as a SavedModel for TF Serving.

    Args:
        model: a built `keras.Model`.
        path: directory to write. An existing SavedModel (or empty
            directory) there is replaced; anything else is refused before
            any work (see `check_destination`).

    Returns:
        `path`.

    Raises:
        ValueError: the model has no export signature (see `check_model`),
            or, under JAX, cannot be traced with a symbolic sequence
            length (export it under TensorFlow then).
    """
    check_model(model)
    path = os.fspath(path)
    with staged(path, "saved_model") as directory:
        write_saved_model(model, directory)
    return path
