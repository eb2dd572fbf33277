"""Real weights: PyTorch encoder layers and BERT checkpoints, against
outputs that torch, transformers and sentence-transformers computed
(tests/fixtures/make_fixtures.py)."""

import collections
import os
import pathlib
import shutil
import warnings

import keras
import numpy as np
import pytest

from keras_encoder import convert
from keras_encoder import export
from tests.conftest import load_example
from tests.helpers import check_dynamic_builtin_tflite
from tests.helpers import checkpoint_copy

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY_BERT = FIXTURES / "tiny_bert"
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
    check_dynamic_builtin_tflite(
        path, ("input_ids", "attention_mask", "token_type_ids")
    )
    for batch, length in [(4, 12), (1, 1), (2, 5)]:
        sliced = {k: v[:batch, :length] for k, v in inputs.items()}
        sliced["attention_mask"] = sliced["attention_mask"].copy()
        sliced["attention_mask"][:, 0] = 1
        result = export.verify(model, path, sliced)
        assert result.max_abs_diff <= 1e-4, (batch, length)


def _checkpoint_copy(tmp_path, **config_changes):
    return checkpoint_copy(
        TINY_BERT, tmp_path, config=lambda c: {**c, **config_changes}
    )


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
    with pytest.raises(
        ValueError,
        match=r"config.json at .*config.json: field `hidden_act` must be one "
        r"of \['gelu', 'relu', 'silu', 'swish'\] \(the activations "
        r"supported\). Received: hidden_act='tanh'",
    ):
        convert.load_hf_bert(_checkpoint_copy(tmp_path, hidden_act="tanh"))
    with pytest.raises(ValueError, match=r"argument `pooling`"):
        convert.load_hf_bert(FIXTURES / "tiny_bert", pooling="max")


def _extra_weight(weights):
    return {**weights, "encoder.layer.0.extra.weight": np.zeros(3, "float32")}


@pytest.mark.parametrize("loader", [convert.load_hf_bert, convert.load_hf])
def test_unused_weights_warn_by_default_and_fail_on_request(tmp_path, loader):
    checkpoint = checkpoint_copy(TINY_BERT, tmp_path, _extra_weight)
    message = (
        r"1 weight\(s\) of .*model.safetensors were not used: "
        r"'encoder.layer.0.extra.weight'"
    )
    with pytest.warns(UserWarning, match=message):
        loader(checkpoint)
    with pytest.raises(ValueError, match=message):
        loader(checkpoint, unused="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader(checkpoint, unused="ignore")
    with pytest.raises(ValueError, match=r"argument `unused`"):
        loader(checkpoint, unused="raise")


def test_torch_encoder_layer_reports_unused_entries(torch_layers):
    state = {
        **_state_dict(torch_layers, "post_relu"),
        "norm3.weight": np.ones(16),
    }
    with pytest.warns(UserWarning, match=r"the state dict .*'norm3.weight'"):
        convert.from_torch_encoder_layer(state, 4)
    with pytest.raises(ValueError, match=r"'norm3.weight'"):
        convert.from_torch_encoder_layer(state, 4, unused="error")


def test_a_wrong_shaped_weight_is_named(tmp_path):
    checkpoint = checkpoint_copy(
        TINY_BERT,
        tmp_path,
        lambda w: {**w, "embeddings.LayerNorm.weight": np.ones(31, "float32")},
    )
    with pytest.raises(
        ValueError,
        match=r"Weight 'embeddings.LayerNorm.weight' has shape \(31,\); "
        r"expected \(32,\)",
    ):
        convert.load_hf_bert(checkpoint)


def test_a_bert_with_heads_loads_its_encoder_silently(tiny_bert, tmp_path):
    """BertForPreTraining keeps the encoder under `bert.` beside its
    pooler, `position_ids` buffer and `cls.*` heads: none is reported."""

    def with_heads(weights):
        weights = {f"bert.{k}": v for k, v in weights.items()}
        weights["bert.embeddings.position_ids"] = np.arange(40)[None]
        weights["bert.pooler.dense.weight"] = np.zeros((32, 32), "float32")
        weights["cls.predictions.bias"] = np.zeros(99, "float32")
        weights["cls.seq_relationship.weight"] = np.zeros((2, 32), "float32")
        return weights

    inputs = _bert_inputs(tiny_bert)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = convert.load_hf_bert(
            checkpoint_copy(TINY_BERT, tmp_path, with_heads)
        )
    expected = convert.load_hf_bert(FIXTURES / "tiny_bert")(inputs)
    for name, value in model(inputs).items():
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(value),
            keras.ops.convert_to_numpy(expected[name]),
        )


def test_load_hf_reads_each_weight_once(monkeypatch):
    """One open file, each tensor read once: never the checkpoint twice."""
    import safetensors

    opened = []
    reads = collections.Counter()

    class CountingOpen:
        def __init__(self, *args, **kwargs):
            opened.append(args)
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc_info):
            return self.handle.__exit__(*exc_info)

        def keys(self):
            return self.handle.keys()

        def get_slice(self, key):
            return self.handle.get_slice(key)

        def get_tensor(self, key):
            reads[key] += 1
            return self.handle.get_tensor(key)

    real_open = safetensors.safe_open
    monkeypatch.setattr(safetensors, "safe_open", CountingOpen)
    convert.load_hf(FIXTURES / "tiny_bert")
    assert len(opened) == 1
    assert len(reads) == 37 and set(reads.values()) == {1}


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
@pytest.mark.parametrize("to_format", [export.to_tflite, export.to_onnx])
def test_minilm_artifact_matches_sentence_transformers(
    minilm, to_format, tmp_path
):
    """Float32 TFLite (builtin ops) and ONNX of the real checkpoint."""
    model, reference = minilm
    suffix = "tflite" if to_format is export.to_tflite else "onnx"
    path = to_format(model, tmp_path / f"minilm.{suffix}")
    if suffix == "tflite":
        assert export.describe_tflite(path)["builtin_only"]
    out = export.run_artifact(path, _bert_inputs(reference))
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
