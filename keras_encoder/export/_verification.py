"""Parity of an exported artifact with its Keras model.

`verify` runs an artifact (SavedModel, TFLite or ONNX) and the Keras model
on the same inputs and reports their agreement at real (unmasked)
positions, with the artifact's op counts and size; `sample_inputs` makes
such inputs, padded, for any model's signature.
"""

import dataclasses
import os

import keras
import numpy as np

from keras_encoder import _masking
from keras_encoder.export._destination import is_artifact
from keras_encoder.export._signature import call_inputs
from keras_encoder.export._signature import check_model
from keras_encoder.export._signature import flat_outputs
from keras_encoder.export._signature import model_inputs
from keras_encoder.export._signature import named_inputs
from keras_encoder.export._signature import typed_inputs
from keras_encoder.export._signature import vocabularies
from keras_encoder.export.onnx import onnx_ops
from keras_encoder.export.tflite import is_builtin_only
from keras_encoder.export.tflite import litert_runner
from keras_encoder.export.tflite import tflite_ops


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


def sample_inputs(model: keras.Model, length: int, seed: int = 0) -> dict:
    """Two example sequences of `length` for `verify`, the second padded to
    half, as {input name: array}.

    Integer inputs whose name contains "mask" get 1 at real positions; other
    integer inputs get ids in [1, n) with 0 as padding, where n is the size
    of the Embedding they feed (2 if none); boolean inputs True/False; float
    inputs normal noise.
    """
    rng = np.random.default_rng(seed)
    sizes = {name: size for name, (_, size) in vocabularies(model).items()}
    lengths = np.array([[length], [max(1, length // 2)]])
    real = np.arange(length)[None, :] < lengths
    named = {}
    for name, tensor in model_inputs(model).items():
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        shape = (2, length, *tensor.shape[2:])
        if dtype == "bool":
            named[name] = real.copy()
        elif "int" in dtype and "mask" in name:
            named[name] = real.astype(dtype)
        elif "int" in dtype:
            high = max(sizes.get(name, 2), 2)
            ids = rng.integers(1, high, size=shape)
            named[name] = np.where(real, ids, 0).astype(dtype)
        else:
            named[name] = rng.normal(size=shape).astype(dtype)
    return named


def _run_saved_model(path, named):
    import tensorflow as tf

    serving = tf.saved_model.load(path).signatures["serving_default"]
    results = serving(**{k: tf.constant(v) for k, v in named.items()})
    return {k: v.numpy() for k, v in results.items()}


def _run_onnx(path, named):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    results = session.run(None, {k: np.asarray(v) for k, v in named.items()})
    return dict(zip(names, results, strict=True))


def run_artifact(path: str | os.PathLike, inputs: dict) -> dict:
    """Run an exported artifact on CPU: its outputs by name, as arrays.

    Args:
        path: a SavedModel directory (run with `tf.saved_model.load`), a
            `.tflite` file (LiteRT, `litert_runner`) or an `.onnx` file
            (onnxruntime).
        inputs: {input name: array}.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _run_saved_model(path, inputs)
    if is_artifact(path, "tflite"):
        return litert_runner(path)(**inputs)
    return _run_onnx(path, inputs)


def _ops(path):
    """The op counts of a TFLite or ONNX artifact; None for a SavedModel."""
    if os.path.isdir(path):
        return None
    if is_artifact(path, "tflite"):
        with open(path, "rb") as f:
            return tflite_ops(f.read())
    return onnx_ops(path)


def _size(path):
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(path)
            for f in files
        )
    return os.path.getsize(path)


def _keras_outputs(model, named):
    """The model's outputs on `named` inputs, by signature name."""
    return flat_outputs(model(call_inputs(model, named), training=False))


def _agreement(expected, got):
    """(max |difference|, cosine) of `got` against the Keras `expected`
    outputs, at real positions."""
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
    return float(max(diffs)), cosine


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
            by input name. Integers are cast to the dtype of the input
            (NumPy's default int64 ids to int32); floats are never cast
            to ids.

    Only real positions count: where a model output carries a Keras mask
    (e.g. from `Embedding(mask_zero=True)`), masked positions are skipped.

    Returns:
        A `Verification`.

    Raises:
        TypeError: an input of the wrong kind, e.g. float ids.
        ValueError: inputs missing or not one per model input, or
            integers that the input's dtype cannot hold.
    """
    check_model(model)
    artifact_path = os.fspath(artifact_path)
    named = typed_inputs(
        model,
        named_inputs(model, inputs),
        "Received an invalid value for argument `inputs`",
    )
    expected = _keras_outputs(model, named)
    got = run_artifact(artifact_path, named)
    ops = _ops(artifact_path)
    missing = set(expected) - set(got)
    if missing:
        raise ValueError(
            f"The artifact lacks outputs {sorted(missing)}; it has "
            f"{sorted(got)}"
        )
    max_abs_diff, cosine = _agreement(expected, got)
    return Verification(
        artifact=artifact_path,
        max_abs_diff=max_abs_diff,
        cosine=cosine,
        ops=ops,
        builtin_only=(
            is_builtin_only(ops)
            if ops is not None and is_artifact(artifact_path, "tflite")
            else None
        ),
        size_bytes=_size(artifact_path),
    )
