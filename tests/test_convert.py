"""Real weights: PyTorch encoder layers and BERT checkpoints, against
outputs that torch, transformers and sentence-transformers computed
(tests/fixtures/make_fixtures.py)."""

import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest

from keras_encoder import convert
from keras_encoder import export
from tests.conftest import load_example

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
MINILM_DIR = os.environ.get("KERAS_ENCODER_MINILM_DIR")


@pytest.fixture(scope="module")
def torch_layers():
    return dict(np.load(FIXTURES / "torch_encoder_layer.npz"))


def _state_dict(arrays, name):
    prefix = f"{name}/"
    return {
        k[len(prefix) :]: v
        for k, v in arrays.items()
        if k.startswith(prefix) and k != f"{name}/output"
    }


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_torch_encoder_layer_parity(torch_layers, norm_first, activation):
    name = f"{'pre' if norm_first else 'post'}_{activation}"
    block = convert.from_torch_encoder_layer(
        _state_dict(torch_layers, name),
        num_heads=4,
        norm_first=norm_first,
        activation=activation,
    )
    real = ~torch_layers["src_key_padding_mask"]  # torch: True = padded
    out = keras.ops.convert_to_numpy(block(torch_layers["x"], mask=real))
    expected = torch_layers[f"{name}/output"]
    np.testing.assert_allclose(out[real], expected[real], atol=1e-5)


def test_torch_encoder_layer_bad_weights(torch_layers):
    state = _state_dict(torch_layers, "post_relu")
    with pytest.raises(ValueError, match=r"must stack q, k and v"):
        convert.from_torch_encoder_layer(
            {**state, "self_attn.in_proj_weight": np.zeros((16, 16))}, 4
        )
    with pytest.raises(ValueError, match=r"Missing weight 'norm2.bias'"):
        convert.from_torch_encoder_layer(
            {k: v for k, v in state.items() if k != "norm2.bias"}, 4
        )
    with pytest.raises(
        ValueError,
        match=r"Weight 'linear2.weight' has shape \(16, 23\); expected "
        r"\(16, 24\)",
    ):
        convert.from_torch_encoder_layer(
            {**state, "linear2.weight": np.zeros((16, 23))}, 4
        )


@pytest.fixture(scope="module")
def tiny_bert():
    return dict(np.load(FIXTURES / "tiny_bert_outputs.npz"))


def _bert_inputs(arrays):
    return {
        k: arrays[k] for k in ("input_ids", "attention_mask", "token_type_ids")
    }


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_tiny_bert_matches_transformers(tiny_bert, pooling):
    model = convert.load_hf_bert(FIXTURES / "tiny_bert", pooling=pooling)
    out = model(_bert_inputs(tiny_bert))
    real = tiny_bert["attention_mask"].astype(bool)
    states = keras.ops.convert_to_numpy(out["last_hidden_state"])
    np.testing.assert_allclose(
        states[real], tiny_bert["last_hidden_state"][real], atol=1e-5
    )
    embedding = keras.ops.convert_to_numpy(out["sentence_embedding"])
    if pooling == "mean":
        # Row 3 has no real token: its embedding is 0, as in the reference.
        np.testing.assert_allclose(
            embedding, tiny_bert["mean_embedding"], atol=1e-5
        )
    else:
        expected = tiny_bert["cls_embedding"]
        expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
        np.testing.assert_allclose(
            embedding[real[:, 0]], expected[real[:, 0]], atol=1e-5
        )
    assert np.isfinite(states).all() and np.isfinite(embedding).all()


@pytest.mark.slow
def test_tiny_bert_saves_and_exports(tiny_bert, tmp_path):
    model = convert.load_hf_bert(FIXTURES / "tiny_bert")
    inputs = _bert_inputs(tiny_bert)
    model.save(tmp_path / "bert.keras")
    reloaded = keras.saving.load_model(tmp_path / "bert.keras")
    np.testing.assert_array_equal(
        reloaded(inputs)["sentence_embedding"],
        model(inputs)["sentence_embedding"],
    )
    path = export.to_tflite(model, tmp_path / "bert.tflite")
    described = export.describe_tflite(path)
    assert described["builtin_only"], described["ops"]
    assert {t["name"]: t["shape"] for t in described["inputs"]} == {
        "input_ids": [-1, -1],
        "attention_mask": [-1, -1],
        "token_type_ids": [-1, -1],
    }
    for batch, length in [(4, 12), (1, 1), (2, 5)]:
        sliced = {k: v[:batch, :length] for k, v in inputs.items()}
        sliced["attention_mask"] = sliced["attention_mask"].copy()
        sliced["attention_mask"][:, 0] = 1
        result = export.verify(model, path, sliced)
        assert result.max_abs_diff <= 1e-4, (batch, length)


def _checkpoint_copy(tmp_path, **config_changes):
    target = tmp_path / "checkpoint"
    shutil.copytree(FIXTURES / "tiny_bert", target)
    config = json.loads((target / "config.json").read_text())
    config.update(config_changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_hf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json not found"):
        convert.load_hf_bert(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"Unsupported architecture: model_type='gpt2'. Supported: "
        r"\['bert'\]",
    ):
        convert.load_hf_bert(_checkpoint_copy(tmp_path, model_type="gpt2"))
    shutil.rmtree(tmp_path / "checkpoint")
    with pytest.raises(
        ValueError,
        match=r"Weight 'encoder.layer.0.intermediate.dense.weight' has shape "
        r"\(37, 32\); expected \(40, 32\)",
    ):
        convert.load_hf_bert(_checkpoint_copy(tmp_path, intermediate_size=40))
    shutil.rmtree(tmp_path / "checkpoint")
    with pytest.raises(ValueError, match=r"Unsupported hidden_act='tanh'"):
        convert.load_hf_bert(_checkpoint_copy(tmp_path, hidden_act="tanh"))
    with pytest.raises(ValueError, match=r"argument `pooling`"):
        convert.load_hf_bert(FIXTURES / "tiny_bert", pooling="max")


@pytest.fixture(scope="module")
def minilm():
    if not MINILM_DIR:
        pytest.skip("KERAS_ENCODER_MINILM_DIR is not set (.ci/run sets it)")
    reference = dict(np.load(FIXTURES / "minilm_reference.npz"))
    return convert.load_hf_bert(MINILM_DIR), reference


def _cosines(a, b):
    return (
        (a * b).sum(-1)
        / np.linalg.norm(a, axis=-1)
        / np.linalg.norm(b, axis=-1)
    )


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm):
    model, reference = minilm
    out = model(_bert_inputs(reference))
    real = reference["attention_mask"].astype(bool)
    states = keras.ops.convert_to_numpy(out["last_hidden_state"])[real]
    np.testing.assert_allclose(
        states, reference["real_token_states"], atol=1e-4
    )
    embedding = keras.ops.convert_to_numpy(out["sentence_embedding"])
    assert _cosines(embedding, reference["sentence_embedding"]).min() >= (
        0.99999
    )


@pytest.mark.slow
def test_minilm_tflite_float32_matches_sentence_transformers(minilm, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, reference = minilm
    path = export.to_tflite(model, tmp_path / "minilm.tflite")
    assert export.describe_tflite(path)["builtin_only"]
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    out = runner(**_bert_inputs(reference))
    real = reference["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        out["last_hidden_state"][real],
        reference["real_token_states"],
        atol=1e-4,
    )
    cosines = _cosines(
        out["sentence_embedding"], reference["sentence_embedding"]
    )
    assert cosines.min() >= 0.99999


@pytest.mark.slow
def test_minilm_onnx_matches_sentence_transformers(minilm, tmp_path):
    import onnxruntime

    model, reference = minilm
    path = export.to_onnx(model, tmp_path / "minilm.onnx")
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, _bert_inputs(reference))
    out = dict(zip(names, outputs, strict=True))
    real = reference["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        out["last_hidden_state"][real],
        reference["real_token_states"],
        atol=1e-4,
    )
    cosines = _cosines(
        out["sentence_embedding"], reference["sentence_embedding"]
    )
    assert cosines.min() >= 0.99999


@pytest.mark.slow
def test_semantic_search_tokenizes_like_sentence_transformers(minilm):
    _, reference = minilm
    search = load_example("semantic_search")
    tokenizer = search.load_tokenizer(MINILM_DIR)
    encoded = search.encode(tokenizer, [str(s) for s in reference["sentences"]])
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(encoded[name], reference[name])
    assert encoded["input_ids"].shape[1] > 128  # not tokenizer.json's 128


@pytest.mark.slow
def test_semantic_search_example_runs(minilm, tmp_path, capsys):
    search = load_example("semantic_search")
    code = search.main(["--model-dir", MINILM_DIR, "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    # The top hit of the first query, with both TFLite models.
    assert out.count("Query: A man is eating pasta.\n  0.70") == 2
    assert "Keras vs TFLite embedding cosine: min 1.000000" in out
