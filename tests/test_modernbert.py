"""ModernBERT: rotary positions, local and global layers, GeGLU, bias-free
pre-LN, against outputs that transformers' ModernBertModel computed on a
small random checkpoint (tests/fixtures/make_fixtures.py), in Keras on
every backend and, under TensorFlow, in builtin-ops TFLite."""

import json
import pathlib
import shutil
import warnings

import keras
import numpy as np
import pytest

from keras_encoder import _rotary
from keras_encoder import convert
from keras_encoder import export
from keras_encoder.convert import modernbert
from tests import numpy_reference as ref
from tests.helpers import check_dynamic_builtin_tflite
from tests.helpers import checkpoint_copy
from tests.helpers import to_numpy

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "tiny_modernbert"
needs_tensorflow = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TFLite export runs on the TensorFlow backend",
)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "tiny_modernbert_outputs.npz"))


def _inputs(reference):
    return {k: reference[k] for k in ("input_ids", "attention_mask")}


def _cosines(a, b):
    return (a * b).sum(-1) / (
        np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    )


def _check_parity(outputs, reference, pooling="mean"):
    """Token states at 1e-5 and embedding cosines >= 0.99999 at real
    tokens and rows (the last row is all padding), from a loaded model's
    (or its artifact's) outputs by name."""
    states = to_numpy(outputs["last_hidden_state"])
    embedding = to_numpy(outputs["sentence_embedding"])
    real = reference["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        states[real], reference["last_hidden_state"][real], atol=1e-5
    )
    expected = reference[f"{pooling}_embedding"]
    rows = real.any(-1)
    assert _cosines(embedding[rows], expected[rows]).min() >= 0.99999
    assert np.isfinite(states).all() and np.isfinite(embedding).all()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_matches_transformers(reference, pooling):
    model = convert.load_hf_modernbert(CHECKPOINT, pooling=pooling)
    out = model(_inputs(reference))
    _check_parity(out, reference, pooling)


def test_layers_are_local_and_global_as_configured():
    model = convert.load_hf_modernbert(CHECKPOINT)
    blocks = [model.get_layer(f"encoder_layer_{i}") for i in range(4)]
    # global_attn_every_n_layers=3: layers 0 and 3 global; local_attention=8
    # is 4 tokens each side: |i - j| < 5.
    assert [b.sliding_window for b in blocks] == [None, 5, 5, None]
    assert [b.rotary_max_wavelength for b in blocks] == [
        160000.0,
        10000.0,
        10000.0,
        160000.0,
    ]
    assert [b.attention_norm for b in blocks] == [False, True, True, True]
    assert all(not b.use_bias and not b.norm_bias for b in blocks)


def test_both_config_forms_give_the_same_layer_arguments(reference):
    """config.json -> layer arguments is a pure function: the Hub's form
    and transformers 5's give the same, without building a model."""
    hub = json.loads((CHECKPOINT / "config.json").read_text())
    transformers5 = json.loads(str(reference["transformers_config"]))
    arguments = modernbert.convert_backbone_config(hub)
    assert modernbert.convert_backbone_config(transformers5) == arguments
    blocks = arguments["blocks"]
    assert [b["sliding_window"] for b in blocks] == [None, 5, 5, None]
    assert [b["rotary_max_wavelength"] for b in blocks] == [
        160000.0,
        10000.0,
        10000.0,
        160000.0,
    ]


def _checkpoint_copy(tmp_path, config):
    return checkpoint_copy(CHECKPOINT, tmp_path, config=lambda _: config)


def test_transformers5_config_form_gives_the_same_model(reference, tmp_path):
    """config.json as transformers 5 saves it (`layer_types`,
    `rope_parameters`), not the Hub's form, and the load_hf dispatch."""
    config = json.loads(str(reference["transformers_config"]))
    assert "layer_types" in config and "global_rope_theta" not in config
    model = convert.load_hf(_checkpoint_copy(tmp_path, config))
    out = model(_inputs(reference))
    _check_parity(out, reference)


def test_a_masked_lm_checkpoint_loads_its_encoder(reference, tmp_path):
    """ModernBertForMaskedLM keeps the encoder under `model.` beside its
    head; the head is not loaded, nor reported as unused."""

    def with_head(weights):
        weights = {f"model.{k}": v for k, v in weights.items()}
        weights["head.dense.weight"] = np.zeros((32, 32), "float32")
        weights["head.norm.weight"] = np.ones(32, "float32")
        weights["decoder.bias"] = np.zeros(99, "float32")
        return weights

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = convert.load_hf_modernbert(
            checkpoint_copy(CHECKPOINT, tmp_path, with_head)
        )
    out = model(_inputs(reference))
    _check_parity(out, reference)


def test_a_bias_the_model_lacks_is_reported(tmp_path):
    """norm_bias=false, yet the checkpoint has a norm bias: the model has
    no place for it, and the loader says so."""
    target = checkpoint_copy(
        CHECKPOINT,
        tmp_path,
        lambda w: {**w, "layers.1.mlp_norm.bias": np.zeros(32, "float32")},
    )
    with pytest.warns(UserWarning, match=r"'layers.1.mlp_norm.bias'"):
        convert.load_hf_modernbert(target)
    with pytest.raises(ValueError, match=r"'layers.1.mlp_norm.bias'"):
        convert.load_hf_modernbert(target, unused="error")


@pytest.mark.parametrize("base", ["global", "local"])
def test_rotation_matches_hugging_face(reference, base):
    """The rotate-half convention: Hugging Face's apply_rotary_pos_emb with
    ModernBERT's own rotary module, 300 positions, at 1e-6."""
    theta = {"global": 160000.0, "local": 10000.0}[base]
    inv_freq = _rotary.inverse_frequencies(8, theta)
    cos, sin = _rotary.tables(300, inv_freq)
    for name in ("query", "key"):
        x = np.transpose(reference[f"rotary_{name}"], (0, 2, 1, 3))
        got = np.transpose(to_numpy(_rotary.rotate(x, cos, sin)), (0, 2, 1, 3))
        np.testing.assert_allclose(
            got, reference[f"rotary_{base}_{name}"], atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.3])
def test_rotation_matches_numpy_reference(fraction):
    """Against 2-D rotations in float64 (tests/numpy_reference.py)."""
    x = np.random.default_rng(0).normal(size=(2, 12, 1, 10)).astype("float32")
    dim = _rotary.rotary_dim(10, fraction)
    cos, sin = _rotary.tables(12, _rotary.inverse_frequencies(dim, 500.0))
    got = to_numpy(_rotary.rotate(x, cos, sin))[:, :, 0]
    expected = ref.rotary(x[:, :, 0], 500.0, fraction)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_unsupported_checkpoints_are_clear_errors(tmp_path):
    config = json.loads((CHECKPOINT / "config.json").read_text())
    with pytest.raises(
        ValueError,
        match=r"Unsupported architecture: model_type='modernbert'. "
        r"Supported: \['bert'\]",
    ):
        convert.load_hf_bert(CHECKPOINT)
    with pytest.raises(
        ValueError,
        match=r"field `mlp_bias` must be equal to attention_bias=False "
        r"\(EncoderBlock has one use_bias\). Received: mlp_bias=True",
    ):
        convert.load_hf_modernbert(
            _checkpoint_copy(tmp_path, {**config, "mlp_bias": True})
        )
    shutil.rmtree(tmp_path / "checkpoint")
    scaled = {
        **config,
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 2.0}
        },
    }
    with pytest.raises(
        ValueError,
        match=r"field `rope_parameters.full_attention.rope_type` must be "
        r"'default': scaled rotary positions are not supported. Received: "
        r"rope_parameters.full_attention.rope_type='linear'",
    ):
        convert.load_hf_modernbert(_checkpoint_copy(tmp_path, scaled))
    shutil.rmtree(tmp_path / "checkpoint")
    hub_scaled = {**config, "rope_scaling": {"type": "linear", "factor": 4}}
    with pytest.raises(
        ValueError,
        match=r"field `rope_scaling` must be null or of rope_type 'default': "
        r"scaled rotary positions are not supported. Received: "
        r"rope_scaling=\{'type': 'linear', 'factor': 4\}",
    ):
        convert.load_hf_modernbert(_checkpoint_copy(tmp_path, hub_scaled))
    shutil.rmtree(tmp_path / "checkpoint")
    with pytest.raises(
        ValueError,
        match=r"field `hidden_activation` must be one of \[.*\] \(the "
        r"activations supported\). Received: hidden_activation='x'",
    ):
        convert.load_hf_modernbert(
            _checkpoint_copy(tmp_path, {**config, "hidden_activation": "x"})
        )


@needs_tensorflow
@pytest.mark.slow
def test_tflite_float32_matches_transformers(reference, tmp_path):
    """Builtin ops only, dynamic batch and sequence axes, and the same
    parity with transformers as the Keras model."""
    model = convert.load_hf_modernbert(CHECKPOINT)
    path = export.to_tflite(model, tmp_path / "modernbert.tflite")
    check_dynamic_builtin_tflite(path, ("input_ids", "attention_mask"))
    inputs = _inputs(reference)
    runner = export.litert_runner(path)
    out = runner(**inputs)
    _check_parity(out, reference)
    # Other shapes: shorter than the window, one token, one row.
    for batch, length in [(2, 3), (1, 1), (3, 11)]:
        sliced = {k: v[:batch, :length].copy() for k, v in inputs.items()}
        sliced["attention_mask"][:, 0] = 1
        assert export.verify(model, path, sliced).max_abs_diff <= 1e-5


def _calibration(batches=16, length=20, seed=0):
    """Random ids and padding, as the int8 converter's representative data."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(batches):
        ids = rng.integers(3, 99, size=(4, length)).astype("int32")
        lengths = rng.integers(1, length + 1, size=(4, 1))
        mask = (np.arange(length)[None] < lengths).astype("int32")
        data.append({"input_ids": ids * mask, "attention_mask": mask})
    return data


# Cosine with the float Keras model at real tokens: the export bars.
# Full int8 (sin and cos of the rotary angles stay float, between
# QUANTIZE/DEQUANTIZE) measured 0.9927 here.
@needs_tensorflow
@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,bar", [("float16", 0.999), ("dynamic", 0.99), ("int8", 0.99)]
)
def test_tflite_quantized_meets_bar(reference, tmp_path, mode, bar):
    model = convert.load_hf_modernbert(CHECKPOINT)
    path = export.to_tflite(
        model,
        tmp_path / f"{mode}.tflite",
        quantize=mode,
        representative_data=_calibration() if mode == "int8" else None,
    )
    result = export.verify(model, path, _inputs(reference))
    assert result.builtin_only, result.ops
    assert result.cosine >= bar, result.cosine
