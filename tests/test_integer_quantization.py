"""Integer TFLite (issue 18): the integer-friendly lowering, int16x8
through ai-edge-quantizer, the precision report, and real all-MiniLM-L6-v2
on held-out real sentences (tests/fixtures/sentences.json)."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from keras_encoder import SentencePooling
from keras_encoder import _lowering
from keras_encoder import convert
from keras_encoder import export
from tests.conftest import load_example
from tests.helpers import padding_mask
from tests.helpers import to_numpy
from tests.test_export import MAX_LENGTH
from tests.test_export import encoder
from tests.test_export import token_batch

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
MINILM_DIR = os.environ.get("KERAS_ENCODER_MINILM_DIR")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("normalize", [False, True])
def test_integer_friendly_pooling_computes_the_same(pooling, normalize):
    """The weighted-sum mean and rsqrt normalisation equal the plain ones,
    with NaN and inf in padded states and a zero-length row."""
    x = np.random.default_rng(0).normal(size=(4, 6, 8)).astype("float32")
    x[1, 3:] = np.nan
    x[2, 1:] = np.inf
    mask = padding_mask([6, 3, 1, 0], 6)
    layer = SentencePooling(pooling, normalize=normalize)
    plain = to_numpy(layer(x, mask=mask))
    with _lowering.integer_friendly():
        assert _lowering.is_integer_friendly()
        lowered = to_numpy(layer(x, mask=mask))
    assert not _lowering.is_integer_friendly()
    assert np.isfinite(lowered).all() and (lowered[3] == 0).all()
    np.testing.assert_allclose(lowered, plain, rtol=1e-6, atol=1e-6)


def _calibration(batch=64):
    ids = token_batch(batch, MAX_LENGTH, seed=7)
    return [ids[i : i + 8] for i in range(0, batch, 8)]


def test_int16x8_needs_calibration_data(tmp_path):
    with pytest.raises(ValueError, match=r'quantize="int16x8" needs'):
        export.to_tflite(encoder(), tmp_path / "m.tflite", quantize="int16x8")
    assert not (tmp_path / "m.tflite").exists()


def test_int16x8_without_the_quantizer_says_what_to_install(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)
    with pytest.raises(ImportError, match=r"pip install ai-edge-quantizer"):
        export.to_tflite(
            encoder(),
            tmp_path / "m.tflite",
            quantize="int16x8",
            representative_data=_calibration(),
        )
    assert not (tmp_path / "m.tflite").exists()


def test_check_lowering_refuses_a_graph_that_computes_otherwise():
    model = encoder(seed=0)
    other = encoder(seed=1)
    batches = export.calibration_batches(model, _calibration(16))
    export.tflite.check_lowering(
        model, export.tflite_bytes(model), batches
    )  # its own graph passes
    with pytest.raises(AssertionError, match=r"integer-friendly graph"):
        export.tflite.check_lowering(model, export.tflite_bytes(other), batches)


def test_precision_report_reads_float_and_integer_models(tmp_path):
    model = encoder(width=64, seed=5)
    float_path = export.to_tflite(model, tmp_path / "float.tflite")
    described = export.describe_tflite(float_path)
    assert described["matmul_inputs"] == {"float32": 6 * 2 + 2 * 2}
    assert "FULLY_CONNECTED" in described["float_ops"]
    path = export.to_tflite(
        model,
        tmp_path / "int16x8.tflite",
        quantize="int16x8",
        representative_data=_calibration(),
    )
    described = export.describe_tflite(path)
    assert described["builtin_only"]
    assert described["matmul_inputs"] == {"int16": 6 * 2 + 2 * 2}
    assert "FULLY_CONNECTED" not in described["float_ops"]
    assert described["inputs"] == [
        {"name": "input_ids", "shape": [-1, -1], "dtype": "int32"}
    ]
    ids = token_batch(16, MAX_LENGTH, seed=3, empty_row=True)
    assert export.verify(model, path, ids).cosine >= 0.999


def _cosines(a, b):
    return (
        (a * b).sum(-1)
        / np.linalg.norm(a, axis=-1)
        / np.linalg.norm(b, axis=-1)
    )


def _nearest(embeddings):
    unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(-1)


@pytest.fixture(scope="module")
def minilm_sentences():
    """MiniLM, 128 calibration texts as padded batches of 8, and 200
    held-out evaluation texts one by one (unpadded), at most 128 tokens."""
    if not MINILM_DIR:
        pytest.skip("KERAS_ENCODER_MINILM_DIR is not set (.ci/run sets it)")
    search = load_example("semantic_search")
    tokenizer = search.load_tokenizer(MINILM_DIR)
    tokenizer.enable_truncation(max_length=128)
    texts = json.loads((FIXTURES / "sentences.json").read_text())
    assert not set(texts["calibration"]) & set(texts["evaluation"])
    calibration = [
        search.encode(tokenizer, texts["calibration"][i : i + 8])
        for i in range(0, 128, 8)
    ]
    evaluation = [search.encode(tokenizer, [t]) for t in texts["evaluation"]]
    return convert.load_hf_bert(MINILM_DIR), calibration, evaluation[:200]


@pytest.mark.slow
def test_minilm_int16x8_keeps_sentence_embeddings(minilm_sentences, tmp_path):
    """Issue 18's accuracy bar on held-out real sentences: cosine >= 0.99
    min and >= 0.995 mean vs float Keras, nearest neighbour kept >= 0.90.
    Measured: 0.9939 / 0.9983 / 0.93 (full int8 through TensorFlow's
    converter: 0.52 / 0.75 / 0.39)."""
    model, calibration, evaluation = minilm_sentences
    lengths = [x["input_ids"].shape[1] for x in evaluation]
    assert min(lengths) <= 8 and max(lengths) == 128
    path = export.to_tflite(
        model,
        tmp_path / "minilm.tflite",
        quantize="int16x8",
        representative_data=calibration,
    )
    described = export.describe_tflite(path)
    assert described["builtin_only"]
    assert described["matmul_inputs"] == {"int16": 36 + 12}
    assert {x["name"]: x["shape"] for x in described["inputs"]} == {
        name: [-1, -1]
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    runner = export.litert_runner(path, num_threads=2)
    got = np.concatenate(
        [runner(**x)["sentence_embedding"] for x in evaluation]
    )
    want = np.concatenate(
        [to_numpy(model(x)["sentence_embedding"]) for x in evaluation]
    )
    cosines = _cosines(got, want)
    kept = np.mean(_nearest(got) == _nearest(want))
    assert cosines.min() >= 0.99 and cosines.mean() >= 0.995, (
        cosines.min(),
        cosines.mean(),
    )
    assert kept >= 0.90, kept


def test_keras_model_is_left_as_it_was(tmp_path):
    model = encoder(width=64, seed=5)
    before = [w.copy() for w in model.get_weights()]
    ids = token_batch(4, MAX_LENGTH, seed=3)
    outputs = to_numpy(model(ids))
    export.to_tflite(
        model,
        tmp_path / "m.tflite",
        quantize="int16x8",
        representative_data=_calibration(),
    )
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(to_numpy(model(ids)), outputs)
    assert not _lowering.is_integer_friendly()
