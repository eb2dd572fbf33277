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
- `"int16x8"`: int16 activations and int8 weights, calibrated on
  `representative_data`, through `ai-edge-quantizer` (an optional
  dependency): the model is traced in its integer-friendly formulation
  (`keras_encoder._lowering`), that float graph is checked against the
  Keras model, then quantized.

`tflite_ops`, `tflite_precision`, `is_builtin_only` and `describe_tflite`
read a flatbuffer; `litert_runner` runs one.
"""

import collections
import os
import pathlib
import re
import tempfile
import warnings

import keras
import numpy as np

from keras_encoder import _lowering
from keras_encoder.export import _ai_edge
from keras_encoder.export._calibration import calibration_batches
from keras_encoder.export._signature import call_inputs
from keras_encoder.export._signature import check_model
from keras_encoder.export._signature import check_not_keras_quantized
from keras_encoder.export._signature import flat_outputs
from keras_encoder.export._signature import nested_layers
from keras_encoder.export._staging import staged
from keras_encoder.export.saved_model import write_saved_model

QUANTIZE_MODES = (None, "float16", "dynamic", "int8", "int16x8")
CALIBRATED_MODES = ("int8", "int16x8")
# How far the integer-friendly float graph may be from the Keras model
# before it is quantized: max abs difference over the calibration batches,
# relative to the largest output (at least 1).
LOWERING_TOLERANCE = 1e-5


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
    if quantize in CALIBRATED_MODES and representative_data is None:
        raise ValueError(
            f'quantize="{quantize}" needs `representative_data`: an '
            "iterable of input batches to calibrate activation ranges on"
        )
    if quantize == "int16x8":
        _ai_edge.check_quantizer_installed()


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
        batches: for `"int8"` and `"int16x8"`, the calibration batches,
            checked (see `calibration_batches`).

    Raises:
        FlexOpsError: the model needs ops outside the TFLite builtins.
        ValueError: the model was quantized by Keras.
        AssertionError: for `"int16x8"`, the integer-friendly float graph
            is not the model's function (see `check_lowering`).
    """
    check_not_keras_quantized(model, "builtin-ops TFLite")
    if quantize in CALIBRATED_MODES and keras.backend.backend() == "jax":
        # Measured (ai-edge-litert 2.3, TensorFlow 2.21): the int8 model
        # of the jax2tf graph converts, then aborts the process (SIGABRT)
        # in LiteRT's interpreter at its first run. int16x8 (the same
        # runtime) is not tried there.
        raise ValueError(
            "Received an invalid value for argument `quantize`: integer "
            "TFLite of a model traced under the JAX backend (jax2tf) "
            "converts, but LiteRT's interpreter aborts the process running "
            "it: build or load the model with KERAS_BACKEND=tensorflow for "
            "int8 and int16x8 (a .keras file saved under any backend loads "
            f"there). Received: quantize={quantize!r}, backend='jax'"
        )
    if quantize == "int16x8":
        with _lowering.integer_friendly():
            flatbuffer = _convert(model, None, None)
        check_lowering(model, flatbuffer, batches)
        return _ai_edge.int16x8(flatbuffer, batches)
    return _convert(model, quantize, batches)


def check_lowering(model: keras.Model, flatbuffer: bytes, batches) -> None:
    """Check that `flatbuffer`, the float32 TFLite model of `model` traced
    in its integer-friendly formulation, computes what `model` computes on
    `batches`: max abs difference at most `LOWERING_TOLERANCE` times the
    largest output (at least 1). Raises `AssertionError` if not: a bug in
    a layer's integer-friendly formulation, not in the user's model."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flatbuffer).get_signature_runner()
    for index, batch in enumerate(batches):
        expected = flat_outputs(
            model(call_inputs(model, batch), training=False)
        )
        got = runner(**batch)
        for name, want in expected.items():
            want = keras.ops.convert_to_numpy(want).astype(np.float64)
            scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
            worst = float(np.max(np.abs(got[name] - want), initial=0.0))
            if not worst <= LOWERING_TOLERANCE * scale:
                raise AssertionError(
                    f"The integer-friendly graph differs from the model on "
                    f"calibration batch {index}, output {name!r}: max abs "
                    f"difference {worst:.3g} > {LOWERING_TOLERANCE:g} x "
                    f"{scale:.3g}. Please report this as a bug."
                )


def _convert(model, quantize, batches):
    """The TFLite flatbuffer of `model` with TensorFlow's converter."""
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
        quantize: `None` (float32), `"float16"`, `"dynamic"`, `"int8"` or
            `"int16x8"` (needs `ai-edge-quantizer`). Defaults to `None`.
        representative_data: for `"int8"` and `"int16x8"` (required
            there), one batch (an array for a single-input model, or a dict
            keyed by input name) or an iterable of batches, each an array,
            a list in input order, or a dict; ignored by the other modes.
            Checked before conversion (see `calibration_batches`): integer
            ids within the vocabulary of the Embedding an input feeds,
            sequences no longer than the model's `max_length`. A few
            hundred examples of real data calibrate well. They must cover
            the sequence lengths and padding you will run: every
            activation is calibrated, including, e.g., the token count of
            a masked mean, which saturates at inference if calibration
            never saw it.

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
        if quantize in CALIBRATED_MODES:
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


MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")


def tflite_precision(flatbuffer: bytes) -> dict:
    """Which ops of a TFLite flatbuffer (bytes) compute in float.

    Returns a dict with `float_ops`, {op name: count} of the ops with a
    float (float32 or float16) output, `DEQUANTIZE` included (empty for a
    model where everything between its inputs and outputs is integer), and
    `matmul_inputs`, {dtype name: count} of the activation (first) input
    of each `FULLY_CONNECTED` and `BATCH_MATMUL`.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    builtins = _builtin_operators()
    dtypes = {
        code: name.lower()
        for name, code in vars(schema.TensorType).items()
        if not name.startswith("_")
    }
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    float_ops = collections.Counter()
    matmul_inputs = collections.Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = builtins.get(
                max(code.builtinCode, code.deprecatedBuiltinCode),
                code.customCode.decode() if code.customCode else "CUSTOM",
            )
            outputs = [dtypes[subgraph.tensors[i].type] for i in op.outputs]
            if {"float32", "float16"} & set(outputs):
                float_ops[name] += 1
            if name in MATMUL_OPS:
                matmul_inputs[dtypes[subgraph.tensors[op.inputs[0]].type]] += 1
    return {"float_ops": dict(float_ops), "matmul_inputs": dict(matmul_inputs)}


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
    -1 for dynamic axes, dtype), `ops`, `size_bytes`, `builtin_only`, and
    `float_ops` and `matmul_inputs` (see `tflite_precision`: what an
    integer-only accelerator would have to leave to the CPU).
    """
    with open(path, "rb") as f:
        flatbuffer = f.read()
    ops = tflite_ops(flatbuffer)
    described = {
        "ops": ops,
        **tflite_precision(flatbuffer),
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
