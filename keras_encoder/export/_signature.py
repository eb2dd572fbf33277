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


def _symbolic_inputs(model):
    """`model.inputs`, or None where the model has none (a subclassed
    model, a Sequential model never built on `keras.Input`)."""
    try:
        return model.inputs or None
    except AttributeError:  # Keras raises it for both
        return None


def check_model(model) -> None:
    """Refuse what has no export signature.

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: `model` has no symbolic inputs to name and type the
            signature: a subclassed model, or a Sequential model built
            without `keras.Input`.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Expected a keras.Model. Received: model={type(model).__name__}"
        )
    if _symbolic_inputs(model) is not None:
        return
    if isinstance(model, keras.Sequential):
        why = (
            "a Sequential model without `keras.Input` has no input dtype or "
            "sequence axis to export: start it with keras.Input((None,), "
            'dtype="int32")'
        )
    else:
        why = (
            "a subclassed model has no symbolic inputs, so its export "
            "signature (names, dtypes, dynamic axes) cannot be derived: wrap "
            'it, inputs = keras.Input((None,), dtype="int32"); '
            "keras.Model(inputs, model(inputs)), and export that"
        )
    raise ValueError(
        "Received an invalid value for argument `model`: expected a "
        f"Functional or Sequential model with symbolic inputs; {why}. "
        f"Received: model={type(model).__name__}"
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


def _takes_dict(model):
    """Whether `model` takes its inputs as a dict. (`model.input` exists
    only for Functional models; a Sequential model takes one tensor.)"""
    if isinstance(model, keras.Sequential):
        return False
    return isinstance(model.input, dict)


def model_inputs(model: keras.Model) -> dict:
    """{name: symbolic input} in signature order, names as in the signature.

    For dict inputs the names are the dict keys; `model.inputs` may list
    them in another order, so never zip it with the names. Functional and
    Sequential models have them (see `check_model`).
    """
    check_model(model)
    if _takes_dict(model):
        return dict(model.input)
    return {t.name: t for t in model.inputs}


def call_inputs(model: keras.Model, named: dict):
    """`named` ({input name: tensor}) as `model` takes it when called: a
    dict for dict inputs, else the tensors in input order (one bare)."""
    if _takes_dict(model):
        return dict(named)
    values = [named[name] for name in input_names(model)]
    return values if len(values) > 1 else values[0]


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


def check_input_dtype(
    array: np.ndarray, name: str, dtype: str, prefix: str
) -> None:
    """Refuse `array` for input `name` of `dtype` unless its values cast
    without loss of meaning: integers (or booleans) for integer and boolean
    inputs, never floats as ids; any number for float inputs.

    Args:
        array: the values given.
        name: the input's name.
        dtype: the input's dtype, e.g. `"int32"`.
        prefix: what the message starts with, e.g. "Received an invalid
            value for argument `inputs`".

    Raises:
        TypeError: e.g. float ids.
    """
    kind = np.dtype(dtype).kind
    if kind in "iu":
        allowed, expected = "iub", "integer"
    elif kind == "b":
        allowed, expected = "iub", "boolean or integer"
    else:
        allowed, expected = "iuf", "numeric"
    if array.dtype.kind in allowed:
        return
    if kind in "iu" and array.dtype.kind == "f":
        raise TypeError(
            f"{prefix}: expected {expected} values for input {name!r} "
            f"({dtype}); floats are not cast to ids silently. Received: "
            f"dtype={array.dtype}"
        )
    raise TypeError(
        f"{prefix}: expected {expected} values for input {name!r} "
        f"({dtype}). Received: dtype={array.dtype}"
    )


def check_fits_dtype(
    array: np.ndarray, name: str, dtype: str, prefix: str
) -> None:
    """Refuse integer values of `array` (input `name`) that the integer
    `dtype` cannot hold, so a cast never wraps them.

    Raises:
        ValueError: values outside the range of `dtype`.
    """
    if not array.size:
        return
    low, high = int(array.min()), int(array.max())
    info = np.iinfo(dtype)
    if low < info.min or high > info.max:
        raise ValueError(
            f"{prefix}: expected values that fit {dtype} for input "
            f"{name!r}. Received: values from {low} to {high}"
        )


def typed_inputs(model: keras.Model, named: dict, prefix: str) -> dict:
    """`named` ({input name: array}) cast to the dtypes of the model's
    inputs, which its artifacts' signatures keep: NumPy's default int64
    ids become int32, integers become booleans (non-zero is True). Floats
    are never cast to ids.

    Raises:
        TypeError: an array of the wrong kind, e.g. float ids.
        ValueError: integers that the input's dtype cannot hold.
    """
    specs = model_inputs(model)
    typed = {}
    for name, array in named.items():
        dtype = keras.backend.standardize_dtype(specs[name].dtype)
        kind = np.dtype(dtype).kind
        check_input_dtype(array, name, dtype, prefix)
        if kind in "iu" and array.dtype.kind in "iu":
            check_fits_dtype(array, name, dtype, prefix)
        if kind == "b" and array.dtype.kind != "b":
            array = array != 0
        typed[name] = array.astype(dtype, copy=False)
    return typed


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
