"""SavedModel and TFLite export: parity, builtin ops, dynamic shapes,
quantization bars, and clear failures."""

import os
import re
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_encoder import AlibiBias
from keras_encoder import EncoderBlock
from keras_encoder import MultiHeadSelfAttention
from keras_encoder import PositionalEncoding
from keras_encoder import export
from keras_encoder.testing import padded_ids
from tests.conftest import load_example
from tests.helpers import to_numpy

pytestmark = pytest.mark.slow

VOCAB, MAX_LENGTH, WIDTH = 40, 16, 16


def encoder(
    mode="sinusoidal",
    causal=False,
    peak=1.0,
    seed=0,
    width=WIDTH,
    block_class=EncoderBlock,
):
    """ids -> Embedding(mask_zero) -> positions -> 2 blocks -> states."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(VOCAB, width, mask_zero=True)(ids)
    x = PositionalEncoding(MAX_LENGTH, mode=mode)(x)
    for i, norm_first in enumerate((False, True)):
        block = block_class(
            4,
            2 * width,
            norm_first=norm_first,
            activation="gelu",
            name=f"block_{i}",
        )
        x = block(x, use_causal_mask=causal)
        attention = block.attention
        for dense in (attention.query_dense, attention.key_dense):
            dense.kernel.assign(dense.kernel * peak)  # peaked attention
    return keras.Model(ids, x)


def two_input_encoder():
    """ids + an explicit int32 mask (the Hugging Face convention)."""
    keras.utils.set_random_seed(1)
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    mask = keras.Input((None,), dtype="int32", name="attention_mask")
    x = keras.layers.Embedding(VOCAB, WIDTH)(ids)
    x = PositionalEncoding(MAX_LENGTH, mode="learned")(x)
    x = EncoderBlock(2, 32)(x, mask=mask)
    pooled = keras.layers.GlobalAveragePooling1D()(x, mask=mask)
    return keras.Model(
        {"input_ids": ids, "attention_mask": mask},
        {"states": x, "pooled": pooled},
    )


def token_batch(batch, length, seed=0, empty_row=False):
    """Padded ids, the first row full, the last one empty if asked."""
    return padded_ids(
        batch,
        length,
        VOCAB,
        seed=seed,
        full_rows=[0],
        empty_rows=[-1] if empty_row else None,
    )


def run_tflite(path, named):
    return export.litert_runner(path)(**named)


SHAPES = [(1, 1), (2, 5), (3, MAX_LENGTH), (4, 9)]


@pytest.fixture(scope="module")
def models():
    return {
        "sinusoidal": encoder("sinusoidal"),
        "learned": encoder("learned"),
        "causal": encoder("sinusoidal", causal=True),
    }


@pytest.mark.parametrize("kind", ["sinusoidal", "learned", "causal"])
def test_tflite_float32_parity_builtin_ops_dynamic_shapes(
    kind, models, tmp_path
):
    model = models[kind]
    path = export.to_tflite(model, tmp_path / "model.tflite")
    described = export.describe_tflite(path)
    assert described["builtin_only"], described["ops"]
    assert described["inputs"] == [
        {"name": "input_ids", "shape": [-1, -1], "dtype": "int32"}
    ]
    assert described["outputs"][0]["shape"] == [-1, -1, WIDTH]
    for batch, length in SHAPES:
        ids = token_batch(batch, length, seed=length, empty_row=batch == 4)
        result = export.verify(model, path, ids)
        assert result.max_abs_diff <= 1e-4, (batch, length)
        assert result.cosine > 0.999999
        assert result.builtin_only
        # Fully padded rows stay finite in TFLite too.
        out = run_tflite(path, {"input_ids": ids})["output_0"]
        assert out.shape == (batch, length, WIDTH)
        assert np.isfinite(out).all()


def test_two_input_model_parity(tmp_path):
    model = two_input_encoder()
    path = export.to_tflite(model, tmp_path / "model.tflite")
    described = export.describe_tflite(path)
    assert {t["name"] for t in described["inputs"]} == {
        "input_ids",
        "attention_mask",
    }
    assert all(t["shape"] == [-1, -1] for t in described["inputs"])
    saved = export.to_saved_model(model, tmp_path / "saved_model")
    for batch, length in SHAPES:
        ids = token_batch(batch, length, seed=length, empty_row=batch == 4)
        inputs = {
            "input_ids": ids,
            "attention_mask": (ids != 0).astype("int32"),
        }
        assert export.verify(model, path, inputs).max_abs_diff <= 1e-4
        assert export.verify(model, saved, inputs).max_abs_diff <= 1e-5


def test_saved_model_round_trip(models, tmp_path):
    model = models["learned"]
    path = export.to_saved_model(model, tmp_path / "saved_model")
    ids = token_batch(4, 11, empty_row=True)
    expected = model.predict(ids, verbose=0)
    real = ids != 0

    serving = tf.saved_model.load(path).signatures["serving_default"]
    args, kwargs = serving.structured_input_signature
    assert not args
    assert kwargs["input_ids"].shape.as_list() == [None, None]
    got = serving(input_ids=tf.constant(ids))["output_0"].numpy()
    np.testing.assert_allclose(got[real], expected[real], atol=1e-5)
    assert np.isfinite(got).all()

    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(ids))[real], expected[real], atol=1e-5
    )
    result = export.verify(model, path, ids)
    assert result.max_abs_diff <= 1e-5 and result.ops is None


SAVED_MODEL_ENTRIES = [
    "assets",
    "fingerprint.pb",
    "saved_model.pb",
    "variables",
]


def test_exports_replace_their_own_artifacts(models, tmp_path):
    model = models["sinusoidal"]
    saved = tmp_path / "saved_model"
    export.to_saved_model(model, saved)
    first = (saved / "saved_model.pb").stat().st_mtime_ns
    # A trailing slash names the same directory: replaced, nothing left in it.
    assert export.to_saved_model(model, f"{saved}/") == f"{saved}/"
    assert (saved / "saved_model.pb").stat().st_mtime_ns > first
    assert sorted(os.listdir(saved)) == SAVED_MODEL_ENTRIES
    (tmp_path / "empty").mkdir()  # an empty directory holds nothing to lose
    export.to_saved_model(model, tmp_path / "empty")
    assert sorted(os.listdir(tmp_path / "empty")) == SAVED_MODEL_ENTRIES
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"")  # e.g. made by NamedTemporaryFile
    export.to_tflite(model, tflite)
    first = tflite.stat().st_mtime_ns
    export.to_tflite(model, tflite)
    assert tflite.stat().st_mtime_ns > first
    assert export.describe_tflite(tflite)["builtin_only"]
    assert sorted(os.listdir(tmp_path)) == [
        "empty",
        "model.tflite",
        "saved_model",
    ]


def _tree(root):
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def _users_files(root):
    (root / "project" / "src").mkdir(parents=True)
    (root / "project" / "src" / "notes.txt").write_text("my notes")
    (root / "notes.txt").write_text("more notes")
    (root / "polluted").mkdir()  # a SavedModel with a file of the user's
    (root / "polluted" / "saved_model.pb").write_bytes(b"")
    (root / "polluted" / "stale.txt").write_text("keep me")


# case: (function, path, error, message)
REFUSED = {
    "saved model onto a project": (
        "to_saved_model",
        "project",
        FileExistsError,
        r"Cannot write a SavedModel to '.*project': exists and is not a "
        r"SavedModel \(it holds src\); refusing to replace it: remove it or "
        r"choose another path",
    ),
    "saved model onto a SavedModel with a foreign file": (
        "to_saved_model",
        "polluted",
        FileExistsError,
        r"exists and is not a SavedModel \(it holds saved_model.pb, "
        r"stale.txt\)",
    ),
    "saved model onto a file": (
        "to_saved_model",
        "notes.txt",
        FileExistsError,
        r"'.*notes.txt': is a file, where a SavedModel goes; refusing to "
        r"replace it",
    ),
    "tflite onto a directory": (
        "to_tflite",
        "project",
        FileExistsError,
        r"'.*project': is a directory, where a TFLite model goes",
    ),
    "tflite onto a file of the user's": (
        "to_tflite",
        "notes.txt",
        FileExistsError,
        r"'.*notes.txt': exists and is not a TFLite model; refusing to "
        r"replace it",
    ),
    "tflite onto a directory path": (
        "to_tflite",
        "new/",
        ValueError,
        r"'.*new/': a TFLite model is a file, not a directory path",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refuses_what_it_did_not_write(case, models, tmp_path, monkeypatch):
    function, name, error, message = REFUSED[case]
    work = tmp_path / "work"
    work.mkdir()
    _users_files(work)
    before = _tree(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(error, match=message):
        getattr(export, function)(models["sinusoidal"], f"{work}/{name}")
    assert _tree(work) == before
    assert os.listdir(tmp_path) == ["work"]


def test_interrupted_export_leaves_nothing(models, tmp_path, monkeypatch):
    """Ctrl-C during an export: no artifact, no temporary file."""
    model = models["sinusoidal"]
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    original = model.export

    def interrupted(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.to_saved_model(model, out / "saved_model")
    with pytest.raises(KeyboardInterrupt):
        export.to_tflite(model, out / "model.tflite")
    assert os.listdir(out) == [] and os.listdir(tmp_path / "tmp") == []


class NeedsFlex(keras.layers.Layer):
    def call(self, x):
        return x * keras.ops.sum(x, axis=-1)[..., None]  # Flex StridedSlice


def test_flex_op_is_a_clear_error_and_writes_nothing(tmp_path):
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, WIDTH)(ids)
    x = NeedsFlex(name="needs_flex")(x)
    model = keras.Model(ids, EncoderBlock(2, 8)(x))
    with pytest.raises(
        export.FlexOpsError,
        match=r"builtin TFLite lacks: StridedSlice in layer\(s\) "
        r"\['needs_flex'\]\. .* StridedSlice usually comes from indexing "
        r"such as `x\[\.\.\., None\]` on dynamic shapes: use "
        r"`ops\.expand_dims\(x, -1\)`",
    ):
        export.to_tflite(model, tmp_path / "model.tflite")
    assert os.listdir(tmp_path) == []


def test_float16_model_is_told_to_export_in_float32(tmp_path, monkeypatch):
    """A mixed_float16 model needs Flex ops; the error says why and the
    README's recipe (clone it under float32) converts."""
    keras.config.set_dtype_policy("mixed_float16")
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(VOCAB, WIDTH)(ids)
    half = keras.Model(ids, EncoderBlock(2, 32)(x))
    keras.config.set_dtype_policy("float32")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with pytest.raises(
        export.FlexOpsError,
        match=r"lacks: .*MatMul.* The model computes in float16: export in "
        r"float32: build/load the model under the float32 policy",
    ):
        export.to_tflite(half, tmp_path / "model.tflite")
    assert os.listdir(tmp_path) == ["tmp"] and not os.listdir(tmp_path / "tmp")

    float32 = keras.models.clone_model(
        half,
        clone_function=lambda layer: (
            layer.__class__.from_config(
                {**layer.get_config(), "dtype": "float32"}
            )
            if isinstance(layer, keras.layers.Layer)
            else layer
        ),
    )
    float32.set_weights(half.get_weights())
    path = export.to_tflite(float32, tmp_path / "model.tflite")
    result = export.verify(half, path, token_batch(2, 7))
    assert result.builtin_only and result.max_abs_diff < 1e-2


@pytest.mark.parametrize(
    "policy, ops, hint",
    [
        ("mixed_bfloat16", ["MatMul"], r"computes in bfloat16: export in "),
        ("float32", ["StridedSlice"], r"use `ops\.expand_dims\(x, -1\)`"),
        ("float32", ["Erfinv"], r"Rewrite that code with ops that TFLite "),
    ],
)
def test_flex_hint_names_the_likely_cause(policy, ops, hint):
    layer = keras.layers.Dense(2, dtype=policy)
    inputs = keras.Input((3,))
    hinted = export.flex_hint(keras.Model(inputs, layer(inputs)), ops)
    assert re.search(hint, hinted), hinted


def test_bad_arguments(models, tmp_path):
    model = models["sinusoidal"]
    with pytest.raises(
        ValueError, match=r"argument `quantize`.*quantize='int4'"
    ):
        export.to_tflite(model, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match=r'quantize="int8" needs'):
        export.to_tflite(model, tmp_path / "m.tflite", quantize="int8")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        export.to_tflite(model, tmp_path / "missing" / "m.tflite")
    with pytest.raises(TypeError, match=r"Expected a keras.Model"):
        export.to_saved_model("model.keras", tmp_path / "sm")
    assert os.listdir(tmp_path) == []


CALIBRATION = token_batch(8, MAX_LENGTH, seed=4)
INVALID = r"Received an invalid value for argument `representative_data`"

# case: (representative_data, error, message)
BAD_CALIBRATION = {
    "rows one by one": (
        iter(CALIBRATION),
        ValueError,
        rf"{INVALID} \(batch 0 of 8\): expected input 'input_ids' of rank 2, "
        r"\(batch, sequence\)\. Received: shape=\(16,\)\. Each item is one "
        r"batch: pass a 2-D array of ids \(batch, sequence\) as it is, or a "
        r"list of such arrays, not single rows",
    ),
    "a stack of batches": (
        CALIBRATION.reshape(2, 4, MAX_LENGTH),
        ValueError,
        rf"{INVALID} \(batch 0 of 1\): expected input 'input_ids' of rank 2, "
        r"\(batch, sequence\)\. Received: shape=\(2, 4, 16\)",
    ),
    "float ids": (
        [CALIBRATION.astype("float32")],
        TypeError,
        rf"{INVALID} \(batch 0 of 1\): expected integer values for input "
        r"'input_ids' \(int32\); floats are not cast to ids silently\. "
        r"Received: dtype=float32",
    ),
    "ids outside the vocabulary": (
        [CALIBRATION, CALIBRATION + VOCAB],
        ValueError,
        rf"{INVALID} \(batch 1 of 2\): expected token ids in \[0, 40\) for "
        r"input 'input_ids', which feeds Embedding '\w+' \(input_dim=40\)\. "
        rf"Received: ids from {VOCAB} to \d+",
    ),
    "negative ids": (
        [-CALIBRATION],
        ValueError,
        r"expected token ids in \[0, 40\) .* Received: ids from -\d+ to 0",
    ),
    "sequences longer than max_length": (
        [np.ones((2, MAX_LENGTH + 1), "int32")],
        ValueError,
        rf"{INVALID} \(batch 0 of 1\): expected sequences of at most "
        r"max_length=16 \(the model's PositionalEncoding\) for input "
        r"'input_ids'\. Received: length 17",
    ),
    "an empty batch": (
        [CALIBRATION[:0]],
        ValueError,
        r"expected at least one example for input 'input_ids'\. Received: "
        r"shape=\(0, 16\)",
    ),
    "no batch": (
        [],
        ValueError,
        rf"{INVALID}: expected at least one input batch\. Received: an empty "
        r"iterable",
    ),
    "not a batch": (
        3,
        TypeError,
        rf"{INVALID}: expected an array \(one batch\) or an iterable of input "
        r"batches\. Received: representative_data of type int",
    ),
    "a wrong input name": (
        [{"tokens": CALIBRATION}],
        ValueError,
        r"\(batch 0 of 1\): Missing model inputs \['input_ids'\]",
    ),
}


@pytest.mark.parametrize("case", BAD_CALIBRATION)
def test_bad_calibration_data_is_refused_before_conversion(
    case, models, tmp_path
):
    data, error, message = BAD_CALIBRATION[case]
    with pytest.raises(error, match=message):
        export.to_tflite(
            models["sinusoidal"],
            tmp_path / "int8.tflite",
            quantize="int8",
            representative_data=data,
        )
    assert os.listdir(tmp_path) == []


def test_one_array_of_ids_is_one_calibration_batch(models, tmp_path):
    model = models["sinusoidal"]
    ids = token_batch(64, MAX_LENGTH, seed=6)
    batches = export.calibration_batches(model, ids.astype("int64"))
    assert len(batches) == 1 and batches[0]["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(batches[0]["input_ids"], ids)
    path = export.to_tflite(
        model,
        tmp_path / "int8.tflite",
        quantize="int8",
        representative_data=ids,
    )
    result = export.verify(model, path, token_batch(4, 9, seed=3))
    assert result.builtin_only and result.cosine > 0.95, result


# The 2024-style options (ModernBERT's set, and the others) export to
# builtin ops with dynamic shapes, and quantize within the bars.
MODERN_OPTIONS = {
    "rotary+window+geglu, bias-free pre-LN": {
        "norm_first": True,
        "use_bias": False,
        "feedforward": "geglu",
        "rotary_max_wavelength": 10000.0,
        "rotary_fraction": 0.5,
        "sliding_window": 5,
    },
    "swiglu+rms_norm": {
        "feedforward": "swiglu",
        "normalization": "rms_norm",
        "norm_first": True,
    },
    "alibi": "alibi",
}


def modern_encoder(options, width=64, seed=4):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(VOCAB, width, mask_zero=True)(ids)
    kwargs = {}
    if options == "alibi":
        kwargs["attention_bias"] = AlibiBias(4)(x)
        options = {}
    for i in range(2):
        block = EncoderBlock(4, 2 * width, name=f"block_{i}", **options)
        x = block(x, **kwargs)
    return keras.Model(ids, x)


@pytest.mark.slow
@pytest.mark.parametrize("case", MODERN_OPTIONS)
def test_modern_options_export_and_quantize(case, tmp_path):
    model = modern_encoder(MODERN_OPTIONS[case])
    path = export.to_tflite(model, tmp_path / "float.tflite")
    assert export.describe_tflite(path)["inputs"][0]["shape"] == [-1, -1]
    for batch, length in [(1, 1), (3, 12), (4, 9)]:
        ids = token_batch(batch, length, seed=length, empty_row=batch == 4)
        result = export.verify(model, path, ids)
        assert result.builtin_only, result.ops
        assert result.max_abs_diff <= 1e-4, (batch, length)
    calibration = token_batch(128, MAX_LENGTH, seed=7)
    ids = token_batch(16, MAX_LENGTH, seed=3, empty_row=True)
    for mode in MODERN_BARS:
        quantized = _quantize(
            model, mode, tmp_path / f"{mode}.tflite", calibration
        )
        result = export.verify(model, quantized, ids)
        assert result.builtin_only, (mode, result.ops)
        assert result.cosine >= MODERN_BARS[mode], (mode, result.cosine)


# Full int8 has no bar for these (issue 11: measured and reported). Here it
# measured 0.966 (rotary+window+geglu), 0.963 (swiglu+rms_norm), 0.988
# (alibi); the 2017 block in this same harness gives 0.971 pre-LN and
# 0.989 post-LN: the random pre-LN stack, not the new options, is what int8
# finds hard. The floor guards against a regression. int16x8 (issue 18)
# measured 0.9914, 0.9897, 0.9998 (post-LN then pre-LN: 0.99993).
MODERN_BARS = {
    "float16": 0.999,
    "dynamic": 0.99,
    "int8": 0.95,
    "int16x8": 0.985,
}


# Quantization: each mode against its bar, at real tokens vs float Keras.
# Widths of 64 and more, so that every kernel has the 1024 elements the
# converter needs before it quantizes a weight at all.
BARS = {"float16": 0.999, "dynamic": 0.99, "int8": 0.99}
SIZE_RATIO = {"float16": 0.6, "dynamic": 0.4, "int8": 0.45}


def _quantize(model, mode, path, calibration):
    data = None
    if mode in export.CALIBRATED_MODES:
        data = [calibration[i : i + 8] for i in range(0, len(calibration), 8)]
    return export.to_tflite(
        model, path, quantize=mode, representative_data=data
    )


@pytest.fixture(scope="module")
def wide_encoder(tmp_path_factory):
    model = encoder("learned", width=64, seed=5)
    path = tmp_path_factory.mktemp("float") / "float.tflite"
    return model, os.path.getsize(export.to_tflite(model, path))


@pytest.mark.parametrize("mode", list(BARS))
def test_quantized_random_encoder_meets_bar(mode, wide_encoder, tmp_path):
    model, float_size = wide_encoder
    calibration = token_batch(256, MAX_LENGTH, seed=7)
    path = _quantize(model, mode, tmp_path / f"{mode}.tflite", calibration)
    assert os.path.getsize(path) < SIZE_RATIO[mode] * float_size
    for batch, length in [(8, MAX_LENGTH), (4, 9)]:
        ids = token_batch(batch, length, seed=3, empty_row=True)
        result = export.verify(model, path, ids)
        assert result.cosine >= BARS[mode], (mode, length, result.cosine)
        assert result.builtin_only


class _NaiveFillAttention(MultiHeadSelfAttention):
    fill_margin = 1e9  # masked scores at about -1e9, a constant-like fill


class _NaiveFillBlock(EncoderBlock):
    attention_class = _NaiveFillAttention


def test_int8_keeps_peaked_attention_where_a_naive_fill_fails(tmp_path):
    model = encoder(peak=6.0, seed=2, width=64)
    calibration = token_batch(256, MAX_LENGTH, seed=8)
    ids = token_batch(32, MAX_LENGTH, seed=9, empty_row=True)
    path = _quantize(model, "int8", tmp_path / "int8.tflite", calibration)
    assert export.verify(model, path, ids).cosine >= BARS["int8"]
    # The same model with a constant -1e9-like fill drifts far off: this is
    # what the row-minimum fill fixes (float outputs are identical).
    naive_model = encoder(width=64, block_class=_NaiveFillBlock)
    naive_model.set_weights(model.get_weights())
    np.testing.assert_array_equal(
        to_numpy(naive_model(ids)), to_numpy(model(ids))
    )
    naive = _quantize(
        naive_model, "int8", tmp_path / "naive.tflite", calibration
    )
    assert export.verify(model, naive, ids).cosine < 0.97


@pytest.fixture(scope="module")
def quickstart_model(quickstart_run):
    code, out_dir = quickstart_run
    assert code == 0
    return keras.saving.load_model(out_dir / "a_before_b.keras")


@pytest.mark.parametrize("mode", list(BARS))
def test_quantized_quickstart_keeps_accuracy(mode, quickstart_model, tmp_path):
    quickstart = load_example("quickstart")
    x_val, y_val = quickstart.make_dataset(512, seed=101)
    x_cal, _ = quickstart.make_dataset(256, seed=102)
    path = _quantize(quickstart_model, mode, tmp_path / "q.tflite", x_cal)
    result = export.verify(quickstart_model, path, x_val)
    assert result.cosine >= BARS[mode]
    float_accuracy = np.mean(
        (quickstart_model.predict(x_val, verbose=0)[:, 0] > 0.5) == y_val
    )
    probs = run_tflite(path, {"tokens": x_val})["output_0"]
    accuracy = np.mean((probs[:, 0] > 0.5) == y_val)
    assert accuracy >= float_accuracy - 0.01, (accuracy, float_accuracy)


def test_quickstart_float32_tflite_stays_lean(tmp_path):
    """The quickstart model's float32 TFLite graph keeps at most 124 ops,
    all builtin: 122 after the attention seam and the fused path, +1 per
    block for the fill's saturation at float32's lowest (a row minimum
    below -1.7e38 made the fill -inf and the gradients NaN)."""
    model = load_example("quickstart").build_model()
    described = export.describe_tflite(
        export.to_tflite(model, tmp_path / "quickstart.tflite")
    )
    assert described["builtin_only"], described["ops"]
    assert sum(described["ops"].values()) <= 124, described["ops"]


# ONNX: tf2onnx with the exact GELU's Erfc rewritten, run in onnxruntime.
ONNX_MODELS = {
    "sinusoidal": lambda: encoder("sinusoidal"),
    "learned, causal": lambda: encoder("learned", causal=True),
    "two inputs": two_input_encoder,
    "modern options": lambda: modern_encoder(
        MODERN_OPTIONS["rotary+window+geglu, bias-free pre-LN"], width=32
    ),
    "alibi": lambda: modern_encoder("alibi", width=32),
}


@pytest.mark.parametrize("case", ONNX_MODELS)
def test_onnx_matches_keras_with_dynamic_axes(case, tmp_path):
    import onnxruntime

    model = ONNX_MODELS[case]()
    path = export.to_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    names = export.input_names(model)
    assert [i.name for i in session.get_inputs()] == names
    for tensor in session.get_inputs():
        assert all(isinstance(d, str) for d in tensor.shape)  # dynamic
    for batch, length in SHAPES:
        ids = token_batch(batch, length, seed=length, empty_row=batch == 4)
        inputs = ids
        if "attention_mask" in names:
            mask = (ids != 0).astype("int32")
            mask[:, 0] = 1
            inputs = {"input_ids": ids, "attention_mask": mask}
        result = export.verify(model, path, inputs)
        assert result.max_abs_diff <= 1e-4, (batch, length, result)
        assert result.ops and result.builtin_only is None
        # Exact GELU (the encoder() blocks, GeGLU) went through Erf.
        assert ("Erf" in result.ops) == (case not in ("two inputs", "alibi"))


def test_onnx_replaces_onnx_and_refuses_other_files(tmp_path):
    model = encoder("sinusoidal")
    path = tmp_path / "model.onnx"
    export.to_onnx(model, path)
    export.to_onnx(model, path)  # an ONNX model there is replaced
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    with pytest.raises(FileExistsError, match=r"is not an ONNX model"):
        export.to_onnx(model, notes)
    assert notes.read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "notes.onnx"]


@pytest.mark.slow
def test_onnx_needs_the_tensorflow_backend(tmp_path):
    """Under JAX, a clear error saying how to get there."""
    code = (
        "import keras, numpy as np\n"
        "from keras_encoder import EncoderBlock, export\n"
        "x = keras.Input((None, 8))\n"
        "model = keras.Model(x, EncoderBlock(2, 8)(x))\n"
        "try:\n"
        "    export.to_onnx(model, 'm.onnx')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=dict(os.environ, KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "build or load the model with KERAS_BACKEND=tensorflow" in (
        result.stdout
    ), result.stderr
    assert not (tmp_path / "m.onnx").exists()
