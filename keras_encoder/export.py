"""Export Keras models to SavedModel (TF Serving), TFLite (LiteRT) and ONNX.

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

`to_onnx` writes an ONNX model (opset 17, dynamic batch and sequence
axes) through tf2onnx, with TensorFlow's `Erfc` (how it lowers the exact
GELU) rewritten as `1 - Erf`, which tf2onnx lacks.

`verify` runs an artifact and the Keras model on the same inputs and
reports their agreement at real (unmasked) positions.

Destinations are checked before any work. An existing artifact of the same
kind is replaced (a SavedModel directory: `saved_model.pb` and nothing else
than what a SavedModel holds; a `.tflite` file: a TFLite flatbuffer), as
is an empty directory or file; anything else is refused with a
`FileExistsError`, so an export never deletes what it did not write.
Artifacts are written under a temporary name beside the target and renamed
into place, so a failure (or Ctrl-C) never leaves a half-written artifact
or a temporary file behind.
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
from keras_encoder.positional_encoding import PositionalEncoding

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
        ops: for TFLite and ONNX, the count of each op in the model; else
            None.
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


# What `model.export(..., format="tf_saved_model")` and `tf.saved_model.save`
# write at the top of a SavedModel directory, and in its variables/.
_SAVED_MODEL_ENTRIES = {
    "saved_model.pb",
    "saved_model.pbtxt",
    "fingerprint.pb",
    "keras_metadata.pb",
    "variables",
    "assets",
    "assets.extra",
}
_VARIABLES_FILE = re.compile(r"variables\.(index|data-\d+-of-\d+)$")
_KINDS = {
    "saved_model": "a SavedModel",
    "tflite": "a TFLite model",
    "onnx": "an ONNX model",
}
_FILE_KINDS = ("tflite", "onnx")
ONNX_OPSET = 17


def _is_saved_model(path):
    """Whether directory `path` holds a SavedModel and nothing foreign."""
    names = set(os.listdir(path))
    if not names & {"saved_model.pb", "saved_model.pbtxt"}:
        return False
    if names - _SAVED_MODEL_ENTRIES:
        return False
    variables = os.path.join(path, "variables")
    if "variables" in names:
        if not os.path.isdir(variables):
            return False
        if not all(_VARIABLES_FILE.match(n) for n in os.listdir(variables)):
            return False
    return True


def _is_tflite(path):
    """Whether file `path` is a TFLite flatbuffer (file identifier TFL3)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[4:] == b"TFL3"


def _is_onnx(path):
    """Whether file `path` parses as an ONNX model with a graph."""
    try:
        import onnx
    except ImportError:
        return False
    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception:  # any parse failure: not ONNX
        return False
    return bool(model.ir_version) and len(model.graph.node) > 0


_IS_KIND = {"tflite": _is_tflite, "onnx": _is_onnx}


def _listing(path, limit=3):
    names = sorted(os.listdir(path))
    shown = ", ".join(names[:limit])
    return shown + (
        f", ... ({len(names)} entries)" if len(names) > limit else ""
    )


def _destination_problem(path, kind):
    """Why `path` cannot receive an artifact of `kind`: (error class,
    reason), or None when it can (absent, empty, or the same kind)."""
    try:
        return _inspect_destination(os.fspath(path), kind)
    except OSError as error:
        return type(error), f"cannot be inspected ({error.strerror})"


def _inspect_destination(path, kind):
    what = _KINDS[kind]
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if kind in _FILE_KINDS and path.endswith((os.sep, "/")):
        return ValueError, f"{what} is a file, not a directory path"
    if target == parent:
        return ValueError, "the root directory cannot be replaced"
    if not os.path.isdir(parent):
        return FileNotFoundError, f"directory {parent!r} does not exist"
    if os.path.islink(target):
        return FileExistsError, (
            "is a symbolic link; refusing to replace it (give the path it "
            "points to, or another path)"
        )
    if not os.path.exists(target):
        return None
    cwd = os.path.realpath(os.getcwd())
    if kind == "saved_model" and os.path.isdir(target):
        if os.path.commonpath([cwd, os.path.realpath(target)]) == (
            os.path.realpath(target)
        ):
            return FileExistsError, "contains the current directory"
        if not os.listdir(target) or _is_saved_model(target):
            return None
        return FileExistsError, (
            f"exists and is not a SavedModel (it holds {_listing(target)}); "
            "refusing to replace it: remove it or choose another path"
        )
    if kind in _FILE_KINDS and os.path.isfile(target):
        if os.path.getsize(target) == 0 or _IS_KIND[kind](target):
            return None
        return FileExistsError, (
            f"exists and is not {what}; refusing to replace it: "
            "remove it or choose another path"
        )
    found = "a directory" if os.path.isdir(target) else "a file"
    return FileExistsError, (
        f"is {found}, where {what} goes; refusing to replace it"
    )


def check_destination(path: str | os.PathLike, kind: str) -> str:
    """Check that an artifact of `kind` may be written at `path`.

    An absent path, an empty file or directory, or an artifact of the same
    kind may be (and is then replaced); anything else may not.

    Args:
        path: where the artifact goes.
        kind: `"saved_model"` (a directory), `"tflite"` or `"onnx"` (a
            file).

    Returns:
        The absolute path.

    Raises:
        FileExistsError: something else is there.
        FileNotFoundError: the parent directory does not exist.
        ValueError: `path` cannot name such an artifact (a `.tflite` path
            ending in a separator).
    """
    if kind not in _KINDS:
        raise ValueError(
            "Received an invalid value for argument `kind`: expected one of "
            f"{sorted(_KINDS)}. Received: kind={kind!r}"
        )
    problem = _destination_problem(path, kind)
    if problem:
        error, reason = problem
        raise error(
            f"Cannot write {_KINDS[kind]} to {os.fspath(path)!r}: {reason}"
        )
    return os.path.abspath(path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _install(staged, path, kind):
    """Move the staged artifact `staged` to `path`, replacing what
    `check_destination` allows there (checked again now)."""
    target = check_destination(path, kind)
    if kind in _FILE_KINDS or not os.path.exists(target):
        os.replace(staged, target)
        return
    # A directory cannot be replaced in one rename: move the old one aside,
    # put the new one in place (or the old one back), then delete the old.
    parent, name = os.path.split(target)
    aside = tempfile.mkdtemp(prefix=f".{name}.old.", dir=parent)
    try:
        old = os.path.join(aside, name)
        os.rename(target, old)
        try:
            os.rename(staged, target)
        except BaseException:
            os.rename(old, target)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _stage_saved_model(model, target):
    """Export to a temporary directory beside `target`; returns its path."""
    parent, name = os.path.split(target)
    staged = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    try:
        model.export(staged, format="tf_saved_model", verbose=False)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _stage_bytes(data, target):
    """Write `data` to a temporary file beside `target`; returns its path."""
    parent, name = os.path.split(target)
    fd, staged = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.remove(staged)
        raise
    return staged


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
    _check_model(model)
    path = os.fspath(path)
    target = check_destination(path, "saved_model")
    staged = _stage_saved_model(model, target)
    try:
        _install(staged, target, "saved_model")
    finally:
        _remove(staged)
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


def _vocabularies(model):
    """{input name: (Embedding name, input_dim)} for the inputs that feed
    an Embedding directly."""
    by_tensor = {id(t): name for name, t in model_inputs(model).items()}
    sizes = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Embedding):
            continue
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                if id(tensor) in by_tensor:
                    sizes[by_tensor[id(tensor)]] = (layer.name, layer.input_dim)
    return sizes


def max_length(model: keras.Model) -> int | None:
    """The longest sequence `model` accepts: the smallest `max_length` of
    its `PositionalEncoding` layers, or None without one."""
    limits = [
        layer.max_length
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, PositionalEncoding)
    ]
    return min(limits) if limits else None


def _layout(rank):
    axes = ["batch", "sequence", "features"][:rank]
    axes += ["..."] * (rank - len(axes))
    return "(" + ", ".join(axes) + ")"


def _check_calibration(model, named, prefix, batch_hint=""):
    """Check one calibration batch, {input name: array}; returns it cast to
    the input dtypes. Errors start with `prefix`."""
    specs = model_inputs(model)
    vocabularies = _vocabularies(model)
    longest = max_length(model)
    checked = {}
    for name, array in named.items():
        spec = specs[name]
        dtype = keras.backend.standardize_dtype(spec.dtype)
        kind = np.dtype(dtype).kind
        if kind in "iu":
            allowed, expected = "iub", "integer"
        elif kind == "b":
            allowed, expected = "iub", "boolean or integer"
        else:
            allowed, expected = "iuf", "numeric"
        if array.dtype.kind not in allowed:
            raise TypeError(
                f"{prefix}: expected {expected} values for input {name!r} "
                f"({dtype}); floats are not cast to ids silently. Received: "
                f"dtype={array.dtype}"
                if kind in "iu" and array.dtype.kind == "f"
                else f"{prefix}: expected {expected} values for input "
                f"{name!r} ({dtype}). Received: dtype={array.dtype}"
            )
        rank = len(spec.shape)
        if array.ndim != rank:
            raise ValueError(
                f"{prefix}: expected input {name!r} of rank {rank}, "
                f"{_layout(rank)}. Received: shape={array.shape}{batch_hint}"
            )
        for axis, size in enumerate(spec.shape[1:], start=1):
            if size is not None and array.shape[axis] != size:
                raise ValueError(
                    f"{prefix}: expected input {name!r} of shape "
                    f"{tuple(spec.shape)}. Received: shape={array.shape}"
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
        if kind in "iu" and array.size:
            low, high = int(array.min()), int(array.max())
            if name in vocabularies:
                layer, size = vocabularies[name]
                if low < 0 or high >= size:
                    raise ValueError(
                        f"{prefix}: expected token ids in [0, {size}) for "
                        f"input {name!r}, which feeds Embedding {layer!r} "
                        f"(input_dim={size}). Received: ids from {low} to "
                        f"{high}"
                    )
            info = np.iinfo(dtype)
            if low < info.min or high > info.max:
                raise ValueError(
                    f"{prefix}: expected values that fit {dtype} for input "
                    f"{name!r}. Received: values from {low} to {high}"
                )
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
    _check_model(model)
    argument = "Received an invalid value for argument `representative_data`"
    if isinstance(representative_data, dict) or hasattr(
        representative_data, "shape"
    ):
        batches = [representative_data]
    elif isinstance(representative_data, str | bytes) or not hasattr(
        representative_data, "__iter__"
    ):
        raise TypeError(
            f"{argument}: expected an array (one batch) or an iterable of "
            "input batches. Received: representative_data of type "
            f"{type(representative_data).__name__}"
        )
    else:
        batches = list(representative_data)
    if not batches:
        raise ValueError(
            f"{argument}: expected at least one input batch. Received: an "
            "empty iterable"
        )
    checked = []
    for i, batch in enumerate(batches):
        prefix = f"{argument} (batch {i} of {len(batches)})"
        try:
            named = _named_inputs(model, batch)
        except ValueError as error:
            raise ValueError(f"{prefix}: {error}") from None
        checked.append(
            _check_calibration(
                model,
                named,
                prefix,
                batch_hint=". Each item is one batch: pass a 2-D array of "
                "ids (batch, sequence) as it is, or a list of such arrays, "
                "not single rows",
            )
        )
    return checked


def _flex_hint(model, ops):
    """The likely fix for a model that needs Flex `ops`."""
    half = sorted(
        {
            layer.compute_dtype
            for layer in model._flatten_layers(include_self=True)
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
        f"LiteRT runtime cannot run it. {_flex_hint(model, ops.split(', '))}"
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


# The scale that every Keras quantization mode (int8, int4, float8) adds
# to the layers it quantizes.
_QUANTIZATION_SCALES = ("kernel_scale", "embeddings_scale")


def _check_not_keras_quantized(model, target):
    """Refuse a model quantized by Keras (`model.quantize(mode)`): its
    int8 x int8 matmuls and float8 casts have no TFLite builtin (and
    tf2onnx fails on them too)."""
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


def _convert(model, quantize=None, batches=None):
    """The TFLite flatbuffer of `model`, as bytes; `batches` are checked
    calibration batches (for int8)."""
    _check_not_keras_quantized(model, "builtin-ops TFLite")
    tf = _tf()
    with tempfile.TemporaryDirectory(prefix="keras_encoder.") as tmp:
        saved_model = os.path.join(tmp, "saved_model")
        model.export(saved_model, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.representative_dataset = lambda: iter(batches)
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
    _check_model(model)
    _check_quantize(quantize, representative_data)
    path = os.fspath(path)
    target = check_destination(path, "tflite")
    batches = None
    if quantize == "int8":
        batches = calibration_batches(model, representative_data)
    staged = _stage_bytes(_convert(model, quantize, batches), target)
    try:
        _install(staged, target, "tflite")
    finally:
        _remove(staged)
    return path


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


def _onnx_bytes(model, opset=ONNX_OPSET):
    """The ONNX model of `model` (TensorFlow backend), as bytes."""
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
    import logging

    _check_not_keras_quantized(model, "ONNX")
    tf = _tf()
    inputs = model_inputs(model)
    specs = [
        tf.TensorSpec(t.shape, t.dtype, name=name) for name, t in inputs.items()
    ]
    dict_input = isinstance(model.input, dict)

    @tf.function(input_signature=specs)
    def serve(*args):
        if dict_input:
            x = dict(zip(inputs, args, strict=True))
        else:
            x = list(args) if len(args) > 1 else args[0]
        # Output names as in the SavedModel and TFLite signatures.
        return _flat_outputs(model(x, training=False))

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
    _check_model(model)
    path = os.fspath(path)
    target = check_destination(path, "onnx")
    staged = _stage_bytes(_onnx_bytes(model, opset), target)
    try:
        _install(staged, target, "onnx")
    finally:
        _remove(staged)
    return path


def onnx_ops(path) -> dict:
    """Count the nodes of an ONNX model by op type."""
    import onnx

    graph = onnx.load_model(os.fspath(path), load_external_data=False).graph
    return dict(collections.Counter(node.op_type for node in graph.node))


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
    if not _is_tflite(path):  # ONNX
        import onnxruntime

        session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        results = session.run(
            None, {k: np.asarray(v) for k, v in named.items()}
        )
        return dict(zip(names, results, strict=True)), onnx_ops(path)
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
            `tf.saved_model.load`), a `.tflite` file (run with
            `ai_edge_litert.interpreter.Interpreter`) or an ONNX file (run
            with `onnxruntime` on CPU).
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
        mask = _masking.keras_mask(tensor)
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
        builtin_only=(
            is_builtin_only(ops)
            if ops is not None and _is_tflite(artifact_path)
            else None
        ),
        size_bytes=_size(artifact_path),
    )
