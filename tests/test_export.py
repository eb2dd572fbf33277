"""SavedModel and TFLite export: parity, builtin ops, dynamic shapes,
quantization bars, and clear failures."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_encoder import EncoderBlock
from keras_encoder import PositionalEncoding
from keras_encoder import _masking
from keras_encoder import export
from tests.conftest import load_example

pytestmark = pytest.mark.slow

VOCAB, MAX_LENGTH, WIDTH = 40, 16, 16


def encoder(mode="sinusoidal", causal=False, peak=1.0, seed=0, width=WIDTH):
    """ids -> Embedding(mask_zero) -> positions -> 2 blocks -> states."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(VOCAB, width, mask_zero=True)(ids)
    x = PositionalEncoding(MAX_LENGTH, mode=mode)(x)
    for i, norm_first in enumerate((False, True)):
        block = EncoderBlock(
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
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(batch, length)).astype("int32")
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0] = length
    if empty_row:
        lengths[-1] = 0
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return ids


def run_tflite(path, named):
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return runner(**named)


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


def test_exports_replace_existing_artifacts(models, tmp_path):
    model = models["sinusoidal"]
    saved = tmp_path / "saved_model"
    saved.mkdir()
    (saved / "stale.txt").write_text("old")
    export.to_saved_model(model, saved)
    assert not (saved / "stale.txt").exists()
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"old")
    export.to_tflite(model, tflite)
    assert export.describe_tflite(tflite)["builtin_only"]
    assert sorted(os.listdir(tmp_path)) == ["model.tflite", "saved_model"]


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
        r"\['needs_flex'\]",
    ):
        export.to_tflite(model, tmp_path / "model.tflite")
    assert os.listdir(tmp_path) == []


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


# Quantization: each mode against its bar, at real tokens vs float Keras.
# Widths of 64 and more, so that every kernel has the 1024 elements the
# converter needs before it quantizes a weight at all.
BARS = {"float16": 0.999, "dynamic": 0.99, "int8": 0.99}
SIZE_RATIO = {"float16": 0.6, "dynamic": 0.4, "int8": 0.45}


def _quantize(model, mode, path, calibration):
    data = None
    if mode == "int8":
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


def test_int8_keeps_peaked_attention_where_a_naive_fill_fails(
    tmp_path, monkeypatch
):
    model = encoder(peak=6.0, seed=2, width=64)
    calibration = token_batch(256, MAX_LENGTH, seed=8)
    ids = token_batch(32, MAX_LENGTH, seed=9, empty_row=True)
    path = _quantize(model, "int8", tmp_path / "int8.tflite", calibration)
    assert export.verify(model, path, ids).cosine >= BARS["int8"]
    # The same model with a constant -1e9-like fill drifts far off: this is
    # what the row-minimum fill fixes (float outputs are identical).
    monkeypatch.setattr(_masking, "_FILL_MARGIN", 1e9)
    naive = _quantize(model, "int8", tmp_path / "naive.tflite", calibration)
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
    """The quickstart model's float32 TFLite graph keeps at most 122 ops
    (its count before the attention seam and the fused path), all builtin."""
    model = load_example("quickstart").build_model()
    described = export.describe_tflite(
        export.to_tflite(model, tmp_path / "quickstart.tflite")
    )
    assert described["builtin_only"], described["ops"]
    assert sum(described["ops"].values()) <= 122, described["ops"]
