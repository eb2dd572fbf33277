"""SavedModel export, for TF Serving.

The SavedModel's `serving_default` signature has the model's input names
and a dynamic batch axis (and a dynamic sequence length where the model
declares `keras.Input((None, ...))`).
"""

import os

import keras

from keras_encoder.export._signature import check_model
from keras_encoder.export._staging import staged


def write_saved_model(model: keras.Model, directory: str) -> None:
    """Export `model` as a SavedModel into `directory`, a new or empty
    directory (e.g. one from `Staging.add`); no destination checks."""
    model.export(directory, format="tf_saved_model", verbose=False)


def to_saved_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Export `model` as a SavedModel for TF Serving.

    Args:
        model: a built `keras.Model`.
        path: directory to write. An existing SavedModel (or empty
            directory) there is replaced; anything else is refused before
            any work (see `check_destination`).

    Returns:
        `path`.
    """
    check_model(model)
    path = os.fspath(path)
    with staged(path, "saved_model") as directory:
        write_saved_model(model, directory)
    return path
