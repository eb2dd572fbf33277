"""Export Keras models to SavedModel (TF Serving) and TFLite (LiteRT).

`to_saved_model` writes a SavedModel whose `serving_default` signature has
the model's input names and a dynamic batch axis (and dynamic sequence
length where the model declares `keras.Input((None, ...))`).

`to_tflite` converts to TFLite with builtin ops only: never SELECT_TF_OPS
(Flex), which the plain LiteRT runtime cannot run. A model that would need
a Flex op is refused with an error that names the op and the layer.
Quantization modes:

- `None`: float32.
- `"float16"`: float16 weights, float32 compute.
- `"dynamic"`: int8 weights, activations quantized on the fly.
- `"int8"`: full integer quantization, calibrated on `representative_data`.
  Every op with an int8 kernel runs in int8; the inputs and outputs stay
  as the model declares them (int32 ids, float outputs).

`verify` runs an artifact and the Keras model on the same inputs and
reports their agreement at real (unmasked) positions.

Files are written to a temporary name beside the target and renamed into
place, so a failure never leaves a half-written artifact.
"""

import collections
import dataclasses
import os
import re
import shutil
import tempfile
import warnings

import keras
import numpy as np

from keras_encoder import _masking

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")


class FlexOpsError(ValueError):
    """The model needs TensorFlow (Flex) ops the builtin runtime lacks."""


@dataclasses.dataclass
class Verification:
    """Agreement between an exported artifact and its Keras model.

    Attributes:
        artifact: path of the artifact.
        max_abs_diff: largest absolute difference at real positions.
        cosine: cosine similarity of all outputs at real positions,
            flattened together.
        ops: for TFLite, the count of each op in the model; else None.
        builtin_only: for TFLite, whether every op is a builtin; else None.
        size_bytes: size of the artifact on disk.
    """

    artifact: str
    max_abs_diff: float
    cosine: float
    ops: dict | None
    builtin_only: bool | None
    size_bytes: int


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Expected a keras.Model. Received: model={type(model).__name__}"
        )


def _tf():
    import tensorflow as tf

    return tf


def _replace(tmp, path):
    """Move `tmp` to `path`, replacing a file or directory there."""
    if os.path.isdir(path) and not os.path.islink(path):
        old = tempfile.mkdtemp(dir=os.path.dirname(path) or ".")
        os.rename(path, os.path.join(old, "old"))
        os.rename(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def _parent(path):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"Cannot write {path!r}: directory {parent!r} does not exist"
        )
    return parent


def to_saved_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Export `model` as a SavedModel for TF Serving.

    Args:
        model: a built `keras.Model`.
        path: directory to write; replaced if it exists.

    Returns:
        `path`.
    """
    _check_model(model)
    path = os.fspath(path)
    tmp = tempfile.mkdtemp(
        prefix=f".{os.path.basename(path)}.", dir=_parent(path)
    )
    try:
        model.export(tmp, format="tf_saved_model", verbose=False)
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def model_inputs(model):
    """{name: symbolic input} in signature order, names as in the signature.

    For dict inputs the names are the dict keys; `model.inputs` may list
    them in another order, so never zip it with the names.
    """
    if isinstance(model.input, dict):
        return dict(model.input)
    return {t.name: t for t in model.inputs}


def input_names(model):
    """The model's input names, as in its serving signature."""
    return list(model_inputs(model))


def _named_inputs(model, inputs):
    """`inputs` (an array, a list in input order, or a dict) by input name."""
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


def _representative_dataset(model, representative_data):
    dtypes = {n: t.dtype for n, t in model_inputs(model).items()}
    names = list(dtypes)

    def generate():
        count = 0
        for batch in representative_data:
            named = _named_inputs(model, batch)
            yield {n: named[n].astype(dtypes[n]) for n in names}
            count += 1
        if not count:
            raise ValueError("`representative_data` yielded no batch")

    return generate


def _flex_error(model, message):
    """A readable error from the converter's 'needs Flex ops' message."""
    ops = re.search(r"TF Select ops: ([^\n]*)", message)
    ops = ops.group(1).strip() if ops else "unknown"
    known = {layer.name for layer in model._flatten_layers(include_self=False)}
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
        "LiteRT runtime cannot run it. Rewrite that code with ops that "
        "convert, e.g. `ops.expand_dims(x, -1)` instead of `x[..., None]`."
    )


def to_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    quantize: str | None = None,
    representative_data=None,
) -> str:
    """Convert `model` to a builtin-ops TFLite flatbuffer.

    Args:
        model: a built `keras.Model`.
        path: the `.tflite` file to write; replaced if it exists.
        quantize: `None` (float32), `"float16"`, `"dynamic"` or `"int8"`.
            Defaults to `None`.
        representative_data: for `"int8"` (required there), an iterable of
            input batches, each an array (single-input models), a list in
            input order, or a dict keyed by input name; ignored by the
            other modes. A few hundred examples of real data calibrate
            well. They must cover the sequence lengths and padding you will
            run: every activation is calibrated, including, e.g., the token
            count of a masked mean, which saturates at inference if
            calibration never saw it.

    Returns:
        `path`.

    Raises:
        FlexOpsError: the model needs ops outside the TFLite builtins.
    """
    _check_model(model)
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
    path = os.fspath(path)
    parent = _parent(path)
    tf = _tf()
    with tempfile.TemporaryDirectory(dir=parent, prefix=".export.") as tmp:
        saved_model = os.path.join(tmp, "saved_model")
        model.export(saved_model, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.representative_dataset = _representative_dataset(
                model, representative_data
            )
        try:
            with warnings.catch_warnings():
                # int8 calibration runs TF's own deprecated interpreter.
                warnings.filterwarnings(
                    "ignore",
                    message=r"(?s).*tf\.lite\.Interpreter is deprecated",
                )
                flatbuffer = converter.convert()
        except Exception as error:
            if "TF Select ops" in str(error):
                raise _flex_error(model, str(error)) from None
            raise
        tmp_file = os.path.join(tmp, "model.tflite")
        with open(tmp_file, "wb") as f:
            f.write(flatbuffer)
        os.replace(tmp_file, path)
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


def _interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:  # pragma: no cover - platform without it
        raise ImportError(
            "Running TFLite models needs the LiteRT runtime: "
            "pip install ai-edge-litert"
        ) from error
    return Interpreter(model_path=path)


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
    interpreter = _interpreter(path)
    signature = interpreter.get_signature_runner()
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


def _flat_outputs(outputs):
    """Outputs by signature name: dict keys, else output_0, output_1, ..."""
    if isinstance(outputs, dict):
        return dict(outputs)
    if not isinstance(outputs, list | tuple):
        outputs = [outputs]
    return {f"output_{i}": o for i, o in enumerate(outputs)}


def _run_artifact(path, named):
    if os.path.isdir(path):
        tf = _tf()
        serving = tf.saved_model.load(path).signatures["serving_default"]
        results = serving(**{k: tf.constant(v) for k, v in named.items()})
        return {k: v.numpy() for k, v in results.items()}, None
    interpreter = _interpreter(path)
    results = interpreter.get_signature_runner()(**named)
    with open(path, "rb") as f:
        ops = tflite_ops(f.read())
    return results, ops


def _size(path):
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(path)
            for f in files
        )
    return os.path.getsize(path)


def verify(
    model: keras.Model, artifact_path: str | os.PathLike, inputs
) -> Verification:
    """Run an artifact and `model` on `inputs` and compare the outputs.

    Args:
        model: the `keras.Model` the artifact was exported from.
        artifact_path: a SavedModel directory (run with
            `tf.saved_model.load`) or a `.tflite` file (run with
            `ai_edge_litert.interpreter.Interpreter`).
        inputs: one batch: an array, a list in input order, or a dict keyed
            by input name.

    Only real positions count: where a model output carries a Keras mask
    (e.g. from `Embedding(mask_zero=True)`), masked positions are skipped.

    Returns:
        A `Verification`.
    """
    _check_model(model)
    artifact_path = os.fspath(artifact_path)
    named = _named_inputs(model, inputs)
    if isinstance(model.input, dict):
        keras_inputs = named
    else:
        keras_inputs = list(named.values())
        if len(keras_inputs) == 1:
            keras_inputs = keras_inputs[0]
    expected = _flat_outputs(model(keras_inputs, training=False))
    got, ops = _run_artifact(artifact_path, named)
    missing = set(expected) - set(got)
    if missing:
        raise ValueError(
            f"The artifact lacks outputs {sorted(missing)}; it has "
            f"{sorted(got)}"
        )
    diffs, a_parts, b_parts = [], [], []
    for name, tensor in expected.items():
        want = keras.ops.convert_to_numpy(tensor).astype("float64")
        have = np.asarray(got[name], dtype="float64")
        mask = _masking._get_keras_mask(tensor)
        if mask is not None and want.ndim >= 2:
            real = keras.ops.convert_to_numpy(mask).astype(bool)
            want, have = want[real], have[real]
        diffs.append(np.abs(want - have).max(initial=0.0))
        a_parts.append(want.ravel())
        b_parts.append(have.ravel())
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / norm) if norm else float(np.allclose(a, b))
    return Verification(
        artifact=artifact_path,
        max_abs_diff=float(max(diffs)),
        cosine=cosine,
        ops=ops,
        builtin_only=None if ops is None else is_builtin_only(ops),
        size_bytes=_size(artifact_path),
    )
