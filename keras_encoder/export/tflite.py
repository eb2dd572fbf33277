"""TFLite (LiteRT) export with builtin ops only, and reading TFLite models.

`to_tflite` converts with builtin ops only: never SELECT_TF_OPS (Flex),
which the plain LiteRT runtime cannot run. A model that would need a Flex
op is refused with a `FlexOpsError` that names the op, the layer and the
likely fix. Quantization modes:

- `None`: float32.
- `"float16"`: float16 weights, float32 compute.
- `"dynamic"`: int8 weights, activations quantized on the fly.
- `"int8"`: full integer quantization, calibrated on `representative_data`.
  Every op with an int8 kernel runs in int8; the inputs and outputs stay
  as the model declares them (int32 ids, float outputs).

`tflite_ops`, `is_builtin_only` and `describe_tflite` read a flatbuffer;
`litert_runner` runs one.
"""

import collections
import os
import pathlib
import re
import tempfile
import warnings

import keras
import numpy as np

from keras_encoder.export._calibration import calibration_batches
from keras_encoder.export._signature import check_model
from keras_encoder.export._signature import check_not_keras_quantized
from keras_encoder.export._signature import nested_layers
from keras_encoder.export._staging import staged
from keras_encoder.export.saved_model import write_saved_model

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")


class FlexOpsError(ValueError):
    """The model needs TensorFlow (Flex) ops the builtin runtime lacks."""


def flex_hint(model: keras.Model, ops: list[str]) -> str:
    """The likely fix for `model` needing the Flex (TensorFlow) `ops`, as
    one or two sentences: float32 for a half-precision model, `expand_dims`
    for StridedSlice, else the builtin ops list."""
    half = sorted(
        {
            layer.compute_dtype
            for layer in nested_layers(model, include_self=True)
            if layer.compute_dtype in ("float16", "bfloat16")
        }
    )
    if half:
        return (
            f"The model computes in {' and '.join(half)}: export in float32: "
            "build/load the model under the float32 policy (a model saved "
            "in mixed precision keeps its policy when loaded; clone it to "
            "float32 as the README's Deploy section shows)."
        )
    if "StridedSlice" in ops:
        return (
            "StridedSlice usually comes from indexing such as `x[..., None]`"
            " on dynamic shapes: use `ops.expand_dims(x, -1)` (or "
            "`ops.reshape`) instead."
        )
    return (
        "Rewrite that code with ops that TFLite has as builtins "
        "(https://ai.google.dev/edge/litert/models/ops_compatibility)."
    )


def _flex_error(model, message):
    """A readable error from the converter's 'needs Flex ops' message."""
    found = re.search(r"TF Select ops: ([^\n]*)", message)
    ops = found.group(1).strip() if found else "unknown"
    known = {layer.name for layer in nested_layers(model)}
    layers = set()
    for scope in re.findall(r'fused\["\w+:", "([^"@]+)', message):
        for part in scope.split("/"):
            for candidate in (part, re.sub(r"_\d+$", "", part)):
                if candidate in known:
                    layers.add(candidate)
    where = f" in layer(s) {sorted(layers)}" if layers else ""
    return FlexOpsError(
        f"The model needs TensorFlow ops that builtin TFLite lacks: {ops}"
        f"{where}. Flex (SELECT_TF_OPS) is never enabled, since the plain "
        f"LiteRT runtime cannot run it. {flex_hint(model, ops.split(', '))}"
    )


def _check_quantize(quantize, representative_data):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            "Received an invalid value for argument `quantize`: expected one "
            f"of {QUANTIZE_MODES}. Received: quantize={quantize!r}"
        )
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            'quantize="int8" needs `representative_data`: an iterable of '
            "input batches to calibrate activation ranges on"
        )


def _converter(saved_model, quantize, batches):
    """A builtin-ops converter of the SavedModel directory `saved_model`,
    set up for `quantize`."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = lambda: iter(batches)
    return converter


def tflite_bytes(
    model: keras.Model,
    quantize: str | None = None,
    batches: list[dict] | None = None,
) -> bytes:
    """The builtin-ops TFLite flatbuffer of `model`.

    Args:
        model: a built `keras.Model`.
        quantize: one of `QUANTIZE_MODES`. Defaults to `None` (float32).
        batches: for `"int8"`, the calibration batches, checked (see
            `calibration_batches`).

    Raises:
        FlexOpsError: the model needs ops outside the TFLite builtins.
        ValueError: the model was quantized by Keras.
    """
    check_not_keras_quantized(model, "builtin-ops TFLite")
    if quantize == "int8" and keras.backend.backend() == "jax":
        # Measured (ai-edge-litert 2.3, TensorFlow 2.21): the int8 model
        # of the jax2tf graph converts, then aborts the process (SIGABRT)
        # in LiteRT's interpreter at its first run.
        raise ValueError(
            "Received an invalid value for argument `quantize`: int8 TFLite "
            "of a model traced under the JAX backend (jax2tf) converts, but "
            "LiteRT's interpreter aborts the process running it: build or "
            "load the model with KERAS_BACKEND=tensorflow for int8 (a .keras "
            "file saved under any backend loads there). Received: "
            "quantize='int8', backend='jax'"
        )
    with tempfile.TemporaryDirectory(prefix="keras_encoder.") as tmp:
        saved_model = os.path.join(tmp, "saved_model")
        write_saved_model(model, saved_model)
        converter = _converter(saved_model, quantize, batches)
        try:
            with warnings.catch_warnings():
                # int8 calibration runs TF's own deprecated interpreter.
                warnings.filterwarnings(
                    "ignore",
                    message=r"(?s).*tf\.lite\.Interpreter is deprecated",
                )
                return converter.convert()
        except Exception as error:
            if "TF Select ops" in str(error):
                raise _flex_error(model, str(error)) from None
            raise


def to_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    quantize: str | None = None,
    representative_data=None,
) -> str:
    """Convert `model` to a builtin-ops TFLite flatbuffer.

    Args:
        model: a built `keras.Model`.
        path: the `.tflite` file to write. An existing TFLite model (or
            empty file) there is replaced; anything else is refused before
            any work (see `check_destination`).
        quantize: `None` (float32), `"float16"`, `"dynamic"` or `"int8"`.
            Defaults to `None`.
        representative_data: for `"int8"` (required there), one batch (an
            array for a single-input model, or a dict keyed by input name)
            or an iterable of batches, each an array, a list in input
            order, or a dict; ignored by the other modes. Checked before
            conversion (see `calibration_batches`): integer ids within the
            vocabulary of the Embedding an input feeds, sequences no longer
            than the model's `max_length`. A few hundred examples of real
            data calibrate well. They must cover the sequence lengths and
            padding you will run: every activation is calibrated,
            including, e.g., the token count of a masked mean, which
            saturates at inference if calibration never saw it.

    Returns:
        `path`.

    Raises:
        FlexOpsError: the model needs ops outside the TFLite builtins.
        FileExistsError: something other than a TFLite model is at `path`.
        TypeError, ValueError: bad `representative_data`.
    """
    check_model(model)
    _check_quantize(quantize, representative_data)
    path = os.fspath(path)
    with staged(path, "tflite") as temporary:
        batches = None
        if quantize == "int8":
            batches = calibration_batches(model, representative_data)
        flatbuffer = tflite_bytes(model, quantize, batches)
        pathlib.Path(temporary).write_bytes(flatbuffer)
    return path


def _builtin_operators():
    """{code: name} of the TFLite builtin operators."""
    from tensorflow.lite.python import schema_py_generated as schema

    return {
        code: name
        for name, code in vars(schema.BuiltinOperator).items()
        if not name.startswith("_") and name != "CUSTOM"
    }


def tflite_ops(flatbuffer: bytes) -> dict:
    """Count the ops of a TFLite flatbuffer (bytes) by name.

    Builtins appear by their schema name (`FULLY_CONNECTED`), Flex ops as
    `Flex<Op>`, other custom ops by their custom name.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    builtins = _builtin_operators()
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    counts = collections.Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            if builtin in builtins:
                counts[builtins[builtin]] += 1
            else:
                counts[code.customCode.decode()] += 1
    return dict(counts)


def is_builtin_only(ops) -> bool:
    """Whether every op named in `ops` is a TFLite builtin."""
    return set(ops) <= set(_builtin_operators().values())


def litert_runner(path: str | os.PathLike, num_threads: int | None = None):
    """The LiteRT signature runner of the `.tflite` file at `path`: call it
    with the inputs by name (`runner(input_ids=ids)`) for a dict of the
    outputs by name; `get_input_details()` and `get_output_details()`
    describe them.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads of the interpreter. Defaults to LiteRT's
            choice.

    Raises:
        ImportError: the LiteRT runtime (`ai-edge-litert`) is missing.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:  # pragma: no cover - platform without it
        raise ImportError(
            "Running TFLite models needs the LiteRT runtime: "
            "pip install ai-edge-litert"
        ) from error
    interpreter = Interpreter(
        model_path=os.fspath(path), num_threads=num_threads
    )
    return interpreter.get_signature_runner()


def describe_tflite(path: str | os.PathLike) -> dict:
    """Inputs, outputs, op counts, size and builtin-only flag of a model.

    Returns a dict with `inputs` and `outputs` (lists of name, shape with
    -1 for dynamic axes, dtype), `ops`, `size_bytes` and `builtin_only`.
    """
    with open(path, "rb") as f:
        flatbuffer = f.read()
    ops = tflite_ops(flatbuffer)
    described = {
        "ops": ops,
        "size_bytes": len(flatbuffer),
        "builtin_only": is_builtin_only(ops),
        "inputs": [],
        "outputs": [],
    }
    if not described["builtin_only"]:
        return described  # The plain runtime cannot even load it.
    signature = litert_runner(path)
    for key, details in (
        ("inputs", signature.get_input_details()),
        ("outputs", signature.get_output_details()),
    ):
        for name, d in details.items():
            described[key].append(
                {
                    "name": name,
                    "shape": [int(s) for s in d["shape_signature"]],
                    "dtype": np.dtype(d["dtype"]).name,
                }
            )
    return described
