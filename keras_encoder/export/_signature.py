"""What an export reads off a model: its serving signature and limits.

The inputs are named as in the serving signature (dict keys for dict
inputs, else the input tensors' names) and the outputs as the SavedModel,
TFLite and ONNX signatures name them (dict keys, else `output_0`,
`output_1`, ...). `vocabularies` and `max_length` bound the ids and the
sequence length a model accepts. `check_model` and
`check_not_keras_quantized` refuse what no format exports.
"""

import keras
import numpy as np

from keras_encoder.positional_encoding import PositionalEncoding

# The scale that every Keras quantization mode (int8, int4, float8) adds
# to the layers it quantizes.
_QUANTIZATION_SCALES = ("kernel_scale", "embeddings_scale")


def check_model(model) -> None:
    """Raise `TypeError` unless `model` is a `keras.Model`."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Expected a keras.Model. Received: model={type(model).__name__}"
        )


def check_not_keras_quantized(model: keras.Model, target: str) -> None:
    """Refuse a model quantized by Keras (`model.quantize(mode)`): its
    int8 x int8 matmuls and float8 casts have no TFLite builtin (and
    tf2onnx fails on them too).

    Args:
        model: the model to export.
        target: what it is exported to, for the message:
            `"builtin-ops TFLite"` or `"ONNX"`.

    Raises:
        ValueError: the model holds layers quantized by Keras.
    """
    layers = sorted(
        {
            w.path.rsplit("/", 1)[0]
            for w in model.weights
            if w.path.endswith(_QUANTIZATION_SCALES)
        }
    )
    if layers:
        shown = ", ".join(layers[:3]) + (", ..." if len(layers) > 3 else "")
        raise ValueError(
            f"The model was quantized by Keras (model.quantize; quantized "
            f"layers: {shown}), which does not convert to {target}: export "
            "the float model instead"
            + (
                ' and let the converter quantize it (quantize="dynamic" or '
                '"int8")'
                if target == "builtin-ops TFLite"
                else ""
            )
        )


def model_inputs(model: keras.Model) -> dict:
    """{name: symbolic input} in signature order, names as in the signature.

    For dict inputs the names are the dict keys; `model.inputs` may list
    them in another order, so never zip it with the names.
    """
    if isinstance(model.input, dict):
        return dict(model.input)
    return {t.name: t for t in model.inputs}


def input_names(model: keras.Model) -> list:
    """The model's input names, as in its serving signature."""
    return list(model_inputs(model))


def named_inputs(model: keras.Model, inputs) -> dict:
    """`inputs` (an array, a list in input order, or a dict) by input name,
    as NumPy arrays.

    Raises:
        ValueError: inputs missing, or not one per model input.
    """
    names = input_names(model)
    if isinstance(inputs, dict):
        missing = set(names) - set(inputs)
        if missing:
            raise ValueError(
                f"Missing model inputs {sorted(missing)}; the model takes "
                f"{names}. Received keys: {sorted(inputs)}"
            )
        return {n: np.asarray(inputs[n]) for n in names}
    if not isinstance(inputs, list | tuple):
        inputs = [inputs]
    if len(inputs) != len(names):
        raise ValueError(
            f"The model takes {len(names)} inputs {names}; received "
            f"{len(inputs)}. Pass a dict keyed by input name."
        )
    return {n: np.asarray(x) for n, x in zip(names, inputs, strict=True)}


def flat_outputs(outputs) -> dict:
    """Outputs by signature name: dict keys, else output_0, output_1, ..."""
    if isinstance(outputs, dict):
        return dict(outputs)
    if not isinstance(outputs, list | tuple):
        outputs = [outputs]
    return {f"output_{i}": o for i, o in enumerate(outputs)}


def vocabularies(model: keras.Model) -> dict[str, tuple[str, int]]:
    """{input name: (Embedding name, input_dim)} for the inputs that feed
    an Embedding directly."""
    by_tensor = {id(t): name for name, t in model_inputs(model).items()}
    sizes = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Embedding):
            continue
        # Every call of the layer (no public accessor in Keras 3).
        for node in layer._inbound_nodes:  # noqa: SLF001
            for tensor in node.input_tensors:
                if id(tensor) in by_tensor:
                    sizes[by_tensor[id(tensor)]] = (layer.name, layer.input_dim)
    return sizes


def nested_layers(model: keras.Model, include_self: bool = False) -> list:
    """Every layer of `model`, those nested in other layers included."""
    # Keras 3 has no public recursive listing of layers.
    layers = model._flatten_layers(include_self=include_self)  # noqa: SLF001
    return list(layers)


def max_length(model: keras.Model) -> int | None:
    """The longest sequence `model` accepts: the smallest `max_length` of
    its `PositionalEncoding` layers, or None without one."""
    limits = [
        layer.max_length
        for layer in nested_layers(model)
        if isinstance(layer, PositionalEncoding)
    ]
    return min(limits) if limits else None
