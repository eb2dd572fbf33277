"""ONNX export through tf2onnx, and reading ONNX models.

`to_onnx` writes an ONNX model (opset 17, dynamic batch and sequence
axes) through tf2onnx, with TensorFlow's `Erfc` (how it lowers the exact
GELU) rewritten as `1 - Erf`, which tf2onnx lacks. Inputs and outputs keep
the names of the SavedModel signature.
"""

import collections
import logging
import os
import pathlib

import keras
import numpy as np

from keras_encoder.export._signature import call_inputs
from keras_encoder.export._signature import check_model
from keras_encoder.export._signature import check_not_keras_quantized
from keras_encoder.export._signature import flat_outputs
from keras_encoder.export._signature import model_inputs
from keras_encoder.export._staging import staged

ONNX_OPSET = 17


def _erfc_as_erf(ctx, node, name, args):
    """tf2onnx handler: TensorFlow's Erfc (its exact GELU is
    `0.5 x erfc(-x / sqrt(2))`), which tf2onnx cannot convert, as
    `1 - Erf(x)` (ONNX has Erf)."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.ones((), dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    return node


def _tf2onnx():
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "ONNX export converts a TensorFlow graph (tf2onnx): build or "
            "load the model with KERAS_BACKEND=tensorflow (a .keras file "
            "saved under any backend loads there). Received: backend="
            f"{keras.backend.backend()!r}"
        )
    try:
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: "
            'pip install "keras-encoder[onnx]"'
        ) from error
    return tf2onnx


def _serving_function(model):
    """The model as a `tf.function` over its signature: (function, specs)."""
    import tensorflow as tf

    inputs = model_inputs(model)
    specs = [
        tf.TensorSpec(t.shape, t.dtype, name=name) for name, t in inputs.items()
    ]

    @tf.function(input_signature=specs)
    def serve(*args):
        x = call_inputs(model, dict(zip(inputs, args, strict=True)))
        # Output names as in the SavedModel and TFLite signatures.
        return flat_outputs(model(x, training=False))

    return serve, specs


def onnx_bytes(model: keras.Model, opset: int = ONNX_OPSET) -> bytes:
    """The ONNX model of `model`, serialized.

    Args:
        model: a built `keras.Model` (TensorFlow backend).
        opset: the ONNX opset. Defaults to 17.

    Raises:
        ValueError: another backend than TensorFlow, or a model quantized
            by Keras.
        ImportError: tf2onnx is missing.
    """
    tf2onnx = _tf2onnx()
    check_not_keras_quantized(model, "ONNX")
    serve, specs = _serving_function(model)
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        proto, _ = tf2onnx.convert.from_function(
            serve,
            input_signature=specs,
            opset=opset,
            custom_op_handlers={"Erfc": (_erfc_as_erf, [])},
        )
    finally:
        logger.setLevel(level)
    return proto.SerializeToString()


def to_onnx(
    model: keras.Model, path: str | os.PathLike, opset: int = ONNX_OPSET
) -> str:
    """Convert `model` to ONNX, with dynamic batch and sequence axes.

    The route is tf2onnx on the model's TensorFlow graph (so the model
    must live on the TensorFlow backend), with the exact GELU's `Erfc`
    rewritten as `1 - Erf`: Keras's own `export(format="onnx")` fails on
    exact-GELU models there (tf2onnx has no `Erfc`), and its torch route
    fails inside `LayerNormalization`. Inputs and outputs keep the names
    of the SavedModel signature. Run it with onnxruntime; check it with
    `verify`.

    Args:
        model: a built `keras.Model` (TensorFlow backend).
        path: the `.onnx` file to write. An existing ONNX model (or empty
            file) there is replaced; anything else is refused before any
            work (see `check_destination`).
        opset: the ONNX opset. Defaults to 17.

    Returns:
        `path`.
    """
    check_model(model)
    path = os.fspath(path)
    with staged(path, "onnx") as temporary:
        pathlib.Path(temporary).write_bytes(onnx_bytes(model, opset))
    return path


def onnx_ops(path: str | os.PathLike) -> dict:
    """Count the nodes of an ONNX model by op type."""
    import onnx

    graph = onnx.load_model(os.fspath(path), load_external_data=False).graph
    return dict(collections.Counter(node.op_type for node in graph.node))
